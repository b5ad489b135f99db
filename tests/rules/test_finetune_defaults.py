"""Fine-tuning defaults come from rules/tables/finetune.yaml, keyed by task and label
regime, and every value says which entry set it and on what evidence."""

from __future__ import annotations

import pytest

from rules import KnowledgeError, TaskProfile, default_engine, load_knowledge
from tests.rules.test_knowledge import _copy_knowledge, _edit


def defaults(labeled: int, unlabeled: int = 0, classes: int = 2):  # noqa: ANN201
    return default_engine().finetune_defaults(TaskProfile(
        task="classification", modality="ultrasound", labeled=labeled, unlabeled=unlabeled,
        classes=classes))


def test_few_labels_freeze_the_encoder() -> None:
    d = defaults(labeled=10, unlabeled=536)
    assert d.label_regime == "few_shot"
    assert d.mode.value == "linear_probe" and d.mode.rule == "ft.scarce.frozen_encoder"
    assert d.mode.sections == ["5.4", "6.3"] and {e.id for e in d.mode.evidence} == {1, 11, 6}


def test_low_regime_tunes_the_encoder_gently() -> None:
    d = defaults(labeled=80, unlabeled=2000, classes=2)  # 4 % labelled, 40 per class
    assert d.label_regime == "low"
    assert d.mode.value == "full"
    assert d.encoder_lr_multiplier.value == 0.1
    assert d.encoder_lr_multiplier.rule == "ft.low.gentle_encoder"
    assert "TaskAlign default" in (d.encoder_lr_multiplier.source or "")


# All of BreastMNIST (546 images) is a mid-sized set, `moderate`; `full` needs thousands
# of labelled images (vocabulary.yaml, label_regime). Both keep the baseline settings.
@pytest.mark.parametrize(("labeled", "regime"), [(546, "moderate"), (5000, "full")])
def test_plenty_of_labels_keep_the_baseline_settings(labeled: int, regime: str) -> None:
    d = defaults(labeled=labeled)
    assert d.label_regime == regime
    assert (d.mode.value, d.epochs.value, d.lr.value, d.batch_size.value,
            d.encoder_lr_multiplier.value, d.augmentations.value) == (
        "full", 20, 1e-3, 128, 1.0, [])
    assert d.epochs.rule == "ft.default"
    assert [e.id for e in d.epochs.evidence] == ["ext:yang2023medmnist"]


@pytest.mark.parametrize(("mutate", "entry", "message"), [
    (lambda d: d["settings"][0]["set"].pop("epochs"), "ft.default", "missing ['epochs']"),
    (lambda d: d["settings"][1].update({"refs": [98]}), "ft.scarce.frozen_encoder",
     "unknown reference 98"),
    (lambda d: d["settings"][1]["set"].update({"mode": "frozen"}), "ft.scarce.frozen_encoder",
     "mode"),
    (lambda d: d["settings"][2]["when"].update({"value": "lots"}), "ft.low.gentle_encoder",
     "'lots' is not a value of fact 'label_regime'"),
    (lambda d: d["settings"][1]["set"].update({"augmentations": ["spin"]}),
     "ft.scarce.frozen_encoder", "unknown augmentation 'spin'"),
    (lambda d: [d["settings"][2].pop(k) for k in ("refs", "sections", "source")],
     "ft.low.gentle_encoder", "give refs/sections"),
])
def test_bad_finetune_table_fails_with_entry(tmp_path, mutate, entry: str,  # noqa: ANN001
                                             message: str) -> None:
    root = _copy_knowledge(tmp_path)
    _edit(root / "tables" / "finetune.yaml", mutate)
    with pytest.raises(KnowledgeError) as info:
        load_knowledge(root)
    assert info.value.file == "tables/finetune.yaml"
    assert info.value.entry == entry
    assert message in str(info.value)
