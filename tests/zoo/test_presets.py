"""Named encoder presets: the arch part of encoder names means one architecture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from zoo.architectures import build_encoder
from zoo.presets import preset, preset_for, presets
from zoo.training.build import Recipe

SEED = Path(__file__).resolve().parents[2] / "zoo" / "seed"


@pytest.mark.parametrize("name", sorted(presets()))
def test_each_preset_builds_an_encoder_of_its_dimensionality(name: str) -> None:
    p = preset(name)
    size = [7 * (p.patch_size or 4)] * p.spatial_dims
    model = build_encoder(p.architecture["name"], p.spatial_dims, 1, size,
                          p.architecture["args"])
    out = model(torch.zeros(2, 1, *size))
    assert out.shape == (2, model.feature_dim)
    # jobs get the first preset of a kind and dimensionality (vit-2d, not vit-2d-p8)
    default = preset_for(p.encoder, p.spatial_dims)
    assert (default.encoder, default.spatial_dims) == (p.encoder, p.spatial_dims)
    assert list(presets()).index(default.name) <= list(presets()).index(name)


@pytest.mark.parametrize("folder", sorted(p for p in SEED.iterdir() if p.is_dir()),
                         ids=lambda f: f.name)
def test_seed_encoders_match_the_preset_in_their_name(folder: Path) -> None:
    card = json.loads((folder / "card.json").read_text())
    arch = card["name"].split(".")[0]
    assert card["architecture"] == preset(arch).architecture


def test_recipe_names_a_preset_or_gets_the_known_ones() -> None:
    base = {"name": "x.y", "method": "simclr", "dataset": "breastmnist",
            "profile": {"task": "classification"}}
    recipe = Recipe(**base, architecture="resnet10-3d")
    assert recipe.architecture == {"name": "resnet10", "args": {"widths": [8, 16, 32, 64]}}
    recipe.architecture["args"]["widths"][0] = 99  # a copy: the preset is unchanged
    assert preset("resnet10-3d").architecture["args"]["widths"][0] == 8
    with pytest.raises(ValidationError, match="known: resnet18-2d"):
        Recipe(**base, architecture="resnet50-2d")
