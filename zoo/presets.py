"""Named encoder presets (presets.yaml), readable without torch so that planners in the
API process can choose an architecture without loading the training stack."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict

PRESETS_FILE = Path(__file__).with_name("presets.yaml")
EncoderKind = Literal["cnn", "vit"]


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    spatial_dims: Literal[2, 3]
    encoder: EncoderKind
    architecture: dict[str, Any]

    def spec(self) -> dict[str, Any]:
        """A copy of {name, args} for build_encoder, safe to change."""
        return copy.deepcopy(self.architecture)

    @property
    def patch_size(self) -> int | None:
        return self.architecture["args"].get("patch_size") if self.encoder == "vit" else None


@cache
def presets() -> dict[str, Preset]:
    raw = yaml.safe_load(PRESETS_FILE.read_text())["presets"]
    return {name: Preset(name=name, **spec) for name, spec in raw.items()}


def preset(name: str) -> Preset:
    """Raises KeyError naming the known presets."""
    known = presets()
    if name not in known:
        raise KeyError(f"unknown architecture preset '{name}'; known: {', '.join(known)}")
    return known[name]


def preset_for(encoder: EncoderKind, spatial_dims: int) -> Preset:
    """The preset a job uses for an objective's encoder kind at a dimensionality."""
    return next(p for p in presets().values()
                if p.encoder == encoder and p.spatial_dims == spatial_dims)
