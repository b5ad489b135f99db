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

    for profile in (TaskProfile(task="classification", modality="xray", label_regime="low",
                                top_k=100),
                    TaskProfile(task="segmentation", modality="mri", anatomy="brain",
                                dimensionality="3d", label_regime="low", top_k=100)):
        rec = default_engine().recommend(profile)
        assert {r.id for r in rec.recommendations if r.pretrainable} == (
            PRETRAINABLE & {r.id for r in rec.recommendations})
    assert any(not r.pretrainable for r in rec.recommendations)


def test_literature_only_methods_are_not_pretrainable_and_say_why() -> None:
    marked = {m.id: m.literature_only for m in default_engine().kb.methods.values()
              if m.literature_only}
    assert marked, "the catalog marks the methods no data here can feed"
    assert not set(marked) & PRETRAINABLE
    assert all(len(reason) > 40 for reason in marked.values())


def test_a_literature_only_recommendation_carries_its_reason() -> None:
    from rules import TaskProfile

    profile = TaskProfile(task="segmentation", modality="mri", anatomy="brain",
                          dimensionality="3d", label_regime="low", top_k=100)
    rec = default_engine().recommend(profile)
    by_id = {r.id: r for r in rec.recommendations}
    assert by_id["geodesic_distance"].literature_only.startswith("It needs serial sections")
    assert by_id["geodesic_distance"].pretrainable is False
    assert all(r.literature_only is None for r in rec.recommendations if r.pretrainable)
