"""The torch-free list of pretrainable methods must name exactly the implemented objectives,
and every one of them must be a catalog method the rules engine can recommend."""

from rules import default_engine
from zoo.training.pretext.ids import PRETRAINABLE
from zoo.training.pretext.registry import OBJECTIVES


def test_pretrainable_ids_match_the_registry() -> None:
    assert set(OBJECTIVES) == PRETRAINABLE


def test_pretrainable_ids_are_catalog_methods() -> None:
    assert set(default_engine().kb.methods) >= PRETRAINABLE


def test_recommendations_say_which_methods_can_be_pretrained() -> None:
    from rules import TaskProfile

    rec = default_engine().recommend(TaskProfile(task="classification", modality="xray",
                                                 label_regime="low", top_k=100))
    assert {r.id for r in rec.recommendations if r.pretrainable} == (
        PRETRAINABLE & {r.id for r in rec.recommendations})
    assert any(not r.pretrainable for r in rec.recommendations)
