"""Every segmentation recipe pretrains at the real resolution of its data (128 px RGB
Kvasir-SEG, 48x64x48 hippocampus MRI) with what the rules give it, and a U-Net can be
built on the result: one pretraining step and one forward pass each, on real images.
The studies themselves (bench/seg_study.py --recipes NAME) need a GPU."""

from __future__ import annotations

import math

import pytest
import torch

from tests.zoo.seg_data import HIPPOCAMPUS, KVASIR, load_seg
from zoo.architectures import build_encoder
from zoo.segmentation import segmenter_from_encoder
from zoo.training.build import load_recipes, plan_from_rules
from zoo.training.pretext.registry import build_objective
from zoo.training.train import TrainConfig, pretrain

RECIPES = [r for _, r in load_recipes() if r.profile.get("task") == "segmentation"]
FILES = {"kvasirseg_128": KVASIR, "hippocampus3d_48x64x48": HIPPOCAMPUS}


def test_the_recipes_cover_the_objectives_the_issue_names() -> None:
    methods = {r.method for r in RECIPES}
    assert {"dense_contrast", "models_genesis", "context_restoration", "rubiks_cube",
            "vox2vec", "simmim", "mae"} <= methods
    # Small focal lesions: the rules cap the masking ratio at 0.4 for the MIM recipes.
    for recipe in RECIPES:
        if recipe.method in ("mae", "simmim"):
            assert plan_from_rules(recipe, 3).hyperparameters["mask_ratio"] <= 0.4


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_recipe_pretrains_at_real_resolution(recipe) -> None:  # noqa: ANN001
    torch.set_num_threads(1)
    ds = load_seg(FILES[recipe.dataset], {"train": 4, "val": 1, "test": 1})
    assert ds.image_size == ([128, 128] if recipe.dataset.startswith("kvasir")
                             else [48, 64, 48])
    plan = plan_from_rules(recipe, ds.channels)
    arch = recipe.architecture
    torch.manual_seed(0)
    encoder = build_encoder(arch["name"], ds.spatial_dims, ds.channels, ds.image_size,
                            arch.get("args"))
    objective = build_objective(recipe.method, encoder, **plan.hyperparameters)
    history = pretrain(objective, ds.splits["train"].images, plan.policy,
                       TrainConfig(epochs=1, batch_size=4, max_steps=1, device="cpu"))
    assert math.isfinite(history[-1]["loss"])
    model = segmenter_from_encoder(objective.encoder, len(ds.info["mask_classes"]),
                                   ds.image_size, [0.5], [0.5]).eval()
    with torch.no_grad():
        probs = model(ds.splits["val"].images.float() / 255)
    assert probs.shape == (1, len(ds.info["mask_classes"]), *ds.image_size)
