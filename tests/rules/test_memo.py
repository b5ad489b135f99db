"""The engine's memos (eligibility, which rules fire, per-signature outcome) must never
change an answer: a memoising engine and one that keeps (almost) nothing agree byte for
byte on random profiles, repeats included, and the key of the rule-decision memo holds
every fact a condition reads."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import yaml

from rules import Engine, ProfileConflict, TaskProfile, default_engine, load_knowledge
from rules.vocabulary import PACKAGE_DIR

PROPERTIES = {
    "lesion_scale": ["small_focal", "large", "diffuse"],
    "signal_organization": ["localized", "global", "mixed"],
    "noise": ["low", "gaussian", "rician", "speckle", "poisson", "stain_variation"],
    "gpu_memory_gb": [8, 24, 80],
    **{flag: [True, False] for flag in ("patient_ids", "orientation_sensitive", "color",
                                         "multi_sequence", "temporal", "kspace", "atlas")},
}


def random_profiles(n: int, seed: int) -> list[TaskProfile]:
    """Valid profiles that vary every fact the rule tables read."""
    vocab = default_engine().kb.vocabulary.raw
    modalities, anatomies = list(vocab["modalities"]), list(vocab["anatomies"])
    rnd = random.Random(seed)
    out: list[TaskProfile] = []
    while len(out) < n:
        modality = rnd.choice(modalities)
        props = {k: rnd.choice(v) for k, v in PROPERTIES.items() if rnd.random() < 0.3}
        if rnd.random() < 0.3:
            props["paired_modalities"] = rnd.sample(modalities, rnd.randint(1, 2))
        raw = {"task": rnd.choice(list(vocab["tasks"])), "modality": modality,
               "dimensionality": rnd.choice(vocab["modalities"][modality]["dims"]),
               "labeled": rnd.randint(0, 5000), "unlabeled": rnd.randint(0, 50_000),
               "classes": rnd.randint(2, 12), "properties": props,
               "top_k": rnd.choice([3, 10, 60])}
        if rnd.random() < 0.5:
            raw["anatomy"] = rnd.choice(anatomies)
        profile = TaskProfile.model_validate(raw)
        try:
            default_engine().evaluate(profile)
        except ProfileConflict:
            continue
        out.append(profile)
    return out


@pytest.fixture(scope="module")
def profiles() -> list[TaskProfile]:
    return random_profiles(800, seed=7)


def answers(engine: Engine, profiles: list[TaskProfile]) -> list[bytes]:
    return [engine.evaluate(p).json for p in profiles]


def test_memoised_answers_equal_computed_ones(profiles: list[TaskProfile]) -> None:
    kb = default_engine().kb
    memoised = Engine(kb)
    repeated = profiles + profiles[::3]  # repeats hit the memos
    assert answers(memoised, repeated) == answers(Engine(kb, memo_bytes=0), repeated)
    assert len(memoised.memo) > 1


class ReadRecorder(dict):
    """A fact table that remembers which facts a predicate read."""

    def __init__(self, facts: dict) -> None:
        super().__init__(facts)
        self.read: set[str] = set()

    def get(self, key: str, default: object = None) -> object:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> object:
        self.read.add(key)
        return super().__getitem__(key)


def test_the_decision_key_holds_every_fact_a_condition_reads(
        profiles: list[TaskProfile]) -> None:
    """Which needs are met and which rules fire is memoised by `condition_facts`: no rule
    or need predicate may read a fact outside it, for any profile."""
    from rules.profile import facts_of, resolve_dicts

    kb = default_engine().kb
    read: set[str] = set()
    for profile in profiles:
        facts = ReadRecorder(facts_of(resolve_dicts(profile, kb.vocabulary)[0]))
        for predicate, _ in kb.needs.values():
            predicate(facts)
        for loaded in kb.rules:
            loaded.predicate(facts)
        read |= facts.read
    assert read <= set(kb.condition_facts)
    assert read == set(kb.condition_facts)  # and every fact in the key is read somewhere


def test_list_valued_facts_can_be_conditions(tmp_path: Path) -> None:
    root = tmp_path / "rules"
    shutil.copytree(PACKAGE_DIR, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    table = root / "tables" / "transfer.yaml"
    doc = yaml.safe_load(table.read_text())
    doc["rules"].append({**doc["rules"][0], "id": "tr.test.paired_with_ct",
                         "when": {"fact": "paired_modalities", "op": "contains",
                                  "value": "ct"}})
    table.write_text(yaml.safe_dump(doc, sort_keys=False))
    engine = Engine(load_knowledge(root))
    paired = TaskProfile(task="classification", modality="mri", label_regime="low",
                         properties={"paired_modalities": ["ct"]})
    assert b"tr.test.paired_with_ct" in engine.evaluate(paired).json
    alone = TaskProfile(task="classification", modality="mri", label_regime="low")
    assert b"tr.test.paired_with_ct" not in engine.evaluate(alone).json
