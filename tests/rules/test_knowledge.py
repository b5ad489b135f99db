from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from rules import KnowledgeError, TaskProfile, default_engine, load_knowledge
from rules.vocabulary import PACKAGE_DIR


def test_catalog_size_and_coverage() -> None:
    kb = default_engine().kb
    assert len(kb.methods) >= 30
    assert {m.family for m in kb.methods.values()} == {
        "contrastive_global", "contrastive_local", "predictive", "generative", "hybrid"}
    assert all(m.references and m.summary for m in kb.methods.values())


def test_all_97_references_present() -> None:
    refs = default_engine().kb.references
    assert all(i in refs for i in range(1, 98))
    assert refs[23].year == 2023 and "Goncharov" in refs[23].authors
    assert "seed2" in refs


def test_every_rule_cites_evidence() -> None:
    for lr in default_engine().kb.rules:
        assert (lr.rule.refs or lr.rule.source) and lr.rule.rationale, lr.rule.id
        assert lr.rule.sections or lr.rule.source, lr.rule.id


def test_table3_restored_cells() -> None:
    cells = default_engine().kb.alignment.cells
    assert cells["contrastive_global"]["classification"].rating == "strong"
    assert cells["contrastive_global"]["segmentation"].rating == "weak"
    assert cells["contrastive_local"]["segmentation"].rating == "strong"
    assert cells["generative"]["detection_anomaly"].rating == "strong"
    assert cells["contrastive_global"]["reconstruction_regression"].per_task == {
        "reconstruction": "weak"}


def test_same_input_same_output() -> None:
    engine = default_engine()
    profile = {"task": "segmentation", "modality": "ct", "labeled": 40, "unlabeled": 2000}
    first = engine.recommend(TaskProfile.model_validate(profile)).model_dump_json()
    again = load_knowledge()
    from rules import Engine
    second = Engine(again).recommend(TaskProfile.model_validate(profile)).model_dump_json()
    assert first == second


def test_trace_explains_every_score() -> None:
    rec = default_engine().recommend(TaskProfile(task="segmentation", modality="mri",
                                                 anatomy="cardiac", label_regime="few_shot"))
    top = rec.recommendations[0]
    total = 0.0
    for entry in rec.trace:
        for eff in entry.effects:
            if eff.kind == "score" and top.id in eff.methods:
                total += float(eff.detail.split()[-1])
    assert total == pytest.approx(top.score)


def _copy_knowledge(tmp_path: Path) -> Path:
    root = tmp_path / "rules"
    shutil.copytree(PACKAGE_DIR, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return root


def _edit(path: Path, mutate) -> None:  # noqa: ANN001
    doc = yaml.safe_load(path.read_text())
    mutate(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.mark.parametrize(("file", "mutate", "entry", "message"), [
    ("tables/transfer.yaml",
     lambda d: d["rules"][0]["when"].update({"fact": "lesion_size"}),
     "tr.medical_mim.lower_mask_ratio", "unknown fact 'lesion_size'"),
    ("tables/objectives.yaml",
     lambda d: d["rules"][0]["effects"][0]["score"]["select"].update({"tags": ["instanse"]}),
     "t4.classification.instance_patient_contrast", "no method has tag 'instanse'"),
    ("tables/modality.yaml",
     lambda d: d["rules"][0].update({"refs": [98]}),
     "m.volumetric.structure_preserving", "unknown reference 98"),
    ("tables/objectives.yaml",
     lambda d: d["rules"][1].update({"id": d["rules"][0]["id"]}),
     "t4.classification.instance_patient_contrast", "duplicate rule id"),
    ("catalog/contrastive.yaml",
     lambda d: d["methods"][0].update({"family": "contrastiv"}),
     "simclr", "family"),
    ("catalog/generative.yaml",
     lambda d: d["methods"][0].update({"needs": ["labels"]}),
     "mae", "unknown need 'labels'"),
])
def test_bad_knowledge_fails_with_file_and_id(tmp_path: Path, file: str, mutate, entry: str,
                                              message: str) -> None:
    root = _copy_knowledge(tmp_path)
    _edit(root / file, mutate)
    with pytest.raises(KnowledgeError) as info:
        load_knowledge(root)
    assert info.value.file == file
    assert info.value.entry == entry
    assert message in str(info.value)


def test_copied_knowledge_loads(tmp_path: Path) -> None:
    kb = load_knowledge(_copy_knowledge(tmp_path))
    assert kb.fingerprint == default_engine().kb.fingerprint
