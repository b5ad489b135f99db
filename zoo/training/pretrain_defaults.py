"""The optimiser settings a pretrain job uses where its request says "auto"
(pretrain_defaults.yaml). Readable without torch: the API's job planner loads it."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict

DEFAULTS_FILE = Path(__file__).with_name("pretrain_defaults.yaml")


class PretrainDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    epochs: int
    lr: float
    batch_size: dict[int, int]
    encoder_for_any: Literal["cnn", "vit"]
    evaluation: dict[str, Any]


@cache
def pretrain_defaults() -> PretrainDefaults:
    return PretrainDefaults.model_validate(yaml.safe_load(DEFAULTS_FILE.read_text()))
