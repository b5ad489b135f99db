"""Factories shared by tests: encoder cards, safetensors weights, real MedMNIST images."""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

DATA_DIR = Path(os.environ.get("TASKALIGN_DATA_DIR", Path(__file__).resolve().parents[2]
                               / "shared" / "data"))

ORG = "taskalign"  # the namespace of the seed zoo and of admin uploads

SMALL_2D = {"name": "resnet18", "args": {"widths": [8, 16, 32, 64]}}
SMALL_3D = {"name": "resnet10", "args": {"widths": [8, 16, 16, 32]}}


def card(name: str = "resnet18-2d.test-pneumoniamnist", dims: int = 2,
         arch: dict[str, Any] | None = None, channels: int = 1, **extra: Any) -> dict[str, Any]:
    size = [28] * dims
    return {
        "name": name,
        "architecture": copy.deepcopy(arch or (SMALL_2D if dims == 2 else SMALL_3D)),
        "spatial_dims": dims,
        "in_channels": channels,
        "input_size": size,
        "normalization": {"mean": [0.5] * channels, "std": [0.5] * channels},
        "modality": "xray" if dims == 2 else "ct",
        "pretext": {"method_id": "simclr" if dims == 2 else "rubiks_cube",
                    "hyperparameters": {"temperature": 0.1}},
        "pretraining_data": {"name": "PneumoniaMNIST" if dims == 2 else "AdrenalMNIST3D",
                             "licence": "CC-BY-4.0", "split": "train"},
        "weights_licence": "CC-BY-4.0",
        "description": "test encoder",
        **extra,
    }


def repo(name: str, owner: str = ORG) -> str:
    """The repository id `owner/name` an encoder called `name` is served under."""
    return f"{owner}/{name}"


def user_dataset(home: Path, user: str, source: Path) -> Path:
    """A copy of `source` where `user` may register paths: TASKALIGN_HOME/datasets/<user>/
    (only an admin may register paths under the data dir)."""
    target = home / "datasets" / user / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copyfile(source, target)
    return target


def weights(card_data: dict[str, Any], seed: int = 0, fp16: bool = False) -> bytes:
    import torch
    from safetensors.torch import save

    from zoo.architectures import build_encoder

    torch.manual_seed(seed)
    model = build_encoder(card_data["architecture"]["name"], card_data["spatial_dims"],
                          card_data["in_channels"], card_data["input_size"],
                          card_data["architecture"]["args"])
    state = {k: (v.half() if fp16 and v.is_floating_point() else v).contiguous()
             for k, v in model.state_dict().items()}
    return save(state)


def upload_files(card_data: dict[str, Any], weight_bytes: bytes,
                 weights_name: str = "model.safetensors") -> dict[str, Any]:
    return {"config": ("config.json", json.dumps(card_data).encode(), "application/json"),
            "weights": (weights_name, weight_bytes, "application/octet-stream")}


def medmnist(name: str, split: str = "test", n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    path = DATA_DIR / "medmnist" / f"{name}.npz"
    if not path.exists():
        pytest.skip(f"real data not found at {path} (see shared/data/README.md)")
    with np.load(path) as data:
        return data[f"{split}_images"][:n], data[f"{split}_labels"][:n]


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


@contextmanager
def fresh_postgres_database(base_url: str) -> Iterator[str]:
    """Create an empty database for one test and drop it afterwards."""
    import sqlalchemy as sa

    name = f"taskalign_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(base_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name})
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def breast_subset(train: int, val: int, test: int):  # noqa: ANN201 - zoo Dataset
    """The first images of each BreastMNIST split (real data), or skip when it is absent."""
    import pytest

    from zoo.datasets.readers import Dataset, Split, load_dataset

    path = DATA_DIR / "medmnist" / "breastmnist.npz"
    if not path.exists():
        pytest.skip(f"real data not found at {path} (see shared/data/README.md)")
    full = load_dataset("breastmnist", DATA_DIR)
    cut = {"train": train, "val": val, "test": test}
    return Dataset(name="breastmnist", info=full.info, splits={
        k: Split(s.images[:cut[k]], s.labels[:cut[k]]) for k, s in full.splits.items()})
