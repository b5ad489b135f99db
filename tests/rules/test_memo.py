"""The engine's memos (eligibility, which rules fire, per-signature outcome) must never
change an answer: a memoising engine and one that keeps (almost) nothing agree byte for
byte on random profiles, repeats included."""

from __future__ import annotations

import random

from rules import Engine, ProfileConflict, TaskProfile, default_engine


def random_profiles(n: int, seed: int) -> list[TaskProfile]:
    vocab = default_engine().kb.vocabulary.raw
    rnd = random.Random(seed)
    out = []
    while len(out) < n:
        modality = rnd.choice(list(vocab["modalities"]))
        props: dict = {}
        for name, values in (("lesion_scale", ["small_focal", "large", "diffuse"]),
                             ("patient_ids", [True, False]), ("gpu_memory_gb", [8, 24, 80]),
                             ("signal_organization", ["localized", "global"]),
                             ("orientation_sensitive", [True, False]), ("color", [True])):
            if rnd.random() < 0.3:
                props[name] = rnd.choice(values)
        raw = {"task": rnd.choice(list(vocab["tasks"])), "modality": modality,
               "dimensionality": rnd.choice(vocab["modalities"][modality]["dims"]),
               "labeled": rnd.randint(0, 5000), "unlabeled": rnd.randint(0, 50_000),
               "classes": rnd.randint(2, 12), "properties": props,
               "top_k": rnd.choice([3, 10, 60])}
        out.append(TaskProfile.model_validate(raw))
    return out


def test_memoised_answers_equal_computed_ones() -> None:
    kb = default_engine().kb
    memoised, bare = Engine(kb), Engine(kb, memo_bytes=0)
    profiles = random_profiles(600, seed=7)
    compared = 0
    for profile in profiles + profiles[::3]:  # repeats hit the memos
        try:
            expected = bare.evaluate(profile).json
        except ProfileConflict:
            continue
        assert memoised.evaluate(profile).json == expected, profile
        compared += 1
    assert compared > 500
    assert len(memoised.memo) > 1  # the memo was in use
