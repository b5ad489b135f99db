"""Model cards a stranger can use: the README.md of real registered encoders, read by the real
huggingface_hub client, with usage snippets executed where TaskAlign cannot be imported."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import Server
from tests.utils import DATA_DIR, card, medmnist, npy_bytes, upload_files, weights
from zoo.cards import StoredCard
from zoo.embed import decode
from zoo.loader import build_from_card
from zoo.modelcard import dataset_facts, known_datasets, render

TOKEN = "modelcard-test-admin-token-0123456789"
EVALUATION = [{"dataset": "pneumoniamnist", "protocol": "linear_probe", "label_fraction": 0.1,
               "metric": "AUC", "value": 0.8123, "spread": 0.0342, "seeds": [0, 1, 2]}]
# Real MedMNIST data for each architecture the zoo builds: a 2D ResNet (CIFAR stem), a 3D
# ResNet (ImageNet stem) on the adrenal shape masks, an RGB ViT, and a task model (encoder
# plus classification head, its MONAI network one level deeper in the state dict).
CASES: dict[str, dict[str, Any]] = {
    "resnet-2d": {"name": "resnet18-2d.card-pneumoniamnist", "dims": 2, "channels": 1,
                  "data": "pneumoniamnist", "modality": "xray", "method": "simclr",
                  "arch": {"name": "resnet18", "args": {"widths": [8, 16, 32, 64]}},
                  "evaluation": EVALUATION},
    "resnet-3d": {"name": "resnet10-3d.card-adrenalmnist3d", "dims": 3, "channels": 1,
                  "data": "adrenalmnist3d", "modality": "ct", "method": "rubiks_cube",
                  "arch": {"name": "resnet10",
                           "args": {"widths": [8, 16, 16, 32], "stem": "imagenet"}}},
    "vit-2d": {"name": "vit-2d.card-retinamnist", "dims": 2, "channels": 3,
               "data": "retinamnist", "modality": "fundus", "method": "mae",
               "arch": {"name": "vit", "args": {"patch_size": 7, "hidden_size": 24,
                                                "mlp_dim": 48, "num_layers": 2,
                                                "num_heads": 2}}},
    "task-2d": {"name": "resnet18-2d.card-task-pneumoniamnist", "dims": 2, "channels": 1,
                "data": "pneumoniamnist", "modality": "xray", "method": "simclr",
                "arch": {"name": "resnet18", "args": {"widths": [8, 16, 16, 32]}},
                "task": {"classes": ["normal", "pneumonia"]}},
}


def card_of(case: dict[str, Any]) -> dict[str, Any]:
    return card(case["name"], dims=case["dims"], arch=case["arch"], channels=case["channels"],
                modality=case["modality"],
                pretext={"method_id": case["method"], "hyperparameters": {}},
                pretraining_data={"name": case["data"], "licence": "CC-BY-4.0",
                                  "split": "train", "images": 1000},
                evaluation=case.get("evaluation", []),
                **({"task": case["task"]} if "task" in case else {}))


def weights_of(case: dict[str, Any], seed: int) -> bytes:
    c = card_of(case)
    if "task" not in case:
        return weights(c, seed=seed)
    from safetensors.torch import save

    from zoo.cards import EncoderCard
    from zoo.task_models import build_task_model

    torch.manual_seed(seed)
    model = build_task_model(EncoderCard.model_validate(c))
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A live zoo with the CASES registered through the upload route (so their README.md is
    rendered by the registry, as for any upload)."""
    for case in CASES.values():
        medmnist(case["data"], n=1)  # skips when the real data is absent
    server = Server(tmp_path_factory.mktemp("cards"), TASKALIGN_ADMIN_TOKENS=TOKEN)
    stored = {}
    try:
        for i, (key, case) in enumerate(CASES.items()):
            c = card_of(case)
            r = httpx.post(f"{server.url}/v1/encoders", files=upload_files(c, weights_of(case, i)),
                           headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300)
            assert r.status_code == 201, r.text
            stored[key] = r.json()
        yield {"url": server.url, "stored": stored}
    finally:
        server.stop()


def readme_of(zoo: dict[str, Any], key: str, cache: Path) -> str:
    """README.md as a Hugging Face client gets it, from the zoo's /hf mirror."""
    from huggingface_hub import hf_hub_download

    stored = zoo["stored"][key]
    path = hf_hub_download(stored["repo_id"], "README.md", revision=stored["commit"],
                           endpoint=f"{zoo['url']}/hf", cache_dir=cache)
    return Path(path).read_text()


def code_blocks(readme: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", readme, flags=re.S)


def block_with(readme: str, marker: str) -> str:
    found = [b for b in code_blocks(readme) if marker in b]
    assert len(found) == 1, f"expected one python block with {marker!r}, got {len(found)}"
    return found[0]


def stranger(cwd: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `code` as a stranger would: a fresh interpreter in an empty folder, with the
    installed libraries but not TaskAlign. `-S` skips site-packages' .pth files, among them
    the editable install's import hook, and the libraries come in through PYTHONPATH."""
    script = cwd / "snippet.py"
    script.write_text(code)
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd),
             "PYTHONPATH": sysconfig.get_paths()["purelib"], "HF_HOME": str(cwd / "hf"),
             "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-S", script.name], cwd=cwd, env=clean,
                          capture_output=True, text=True, timeout=300)


def channels_first(image: np.ndarray, channels: int, dims: int) -> np.ndarray:
    if image.ndim == dims:
        return image[None]
    return np.moveaxis(image, -1, 0) if channels > 1 else image


def test_the_stranger_cannot_import_taskalign(tmp_path: Path) -> None:
    out = stranger(tmp_path, "import importlib.util\n"
                   "for m in ('zoo', 'service', 'rules'):\n"
                   "    assert importlib.util.find_spec(m) is None, m\n"
                   "import monai, safetensors, huggingface_hub\n"
                   "import zoo\n")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "ModuleNotFoundError: No module named 'zoo'" in out.stderr, out.stderr


@pytest.mark.parametrize("key", list(CASES))
def test_snippets_run_without_taskalign(zoo: dict[str, Any], key: str, tmp_path: Path) -> None:
    case, stored = CASES[key], zoo["stored"][key]
    readme = readme_of(zoo, key, tmp_path / "cache")
    work = tmp_path / "stranger"
    work.mkdir()

    hub = stranger(work, block_with(readme, "from huggingface_hub import"),
                   TASKALIGN_ZOO_URL=zoo["url"])
    assert hub.returncode == 0, hub.stderr
    downloaded = Path(hub.stdout.strip().splitlines()[-1])
    assert hashlib.sha256(downloaded.read_bytes()).hexdigest() == \
        stored["files"]["model.safetensors"]["sha256"]
    (work / "model.safetensors").symlink_to(downloaded)

    images, _ = medmnist(case["data"], n=1)
    image = channels_first(images[0], case["channels"], case["dims"])
    np.save(work / "image.npy", image)
    output = "probabilities" if "task" in case else "features"
    code = block_with(readme, "from monai") + f"\nnp.save('out.npy', {output}.numpy())\n"
    out = stranger(work, code)
    assert out.returncode == 0, out.stderr
    theirs = np.load(work / "out.npy")

    # The zoo's own path: its decoder (normalised input for an encoder, [0, 1] for a task
    # model, which normalises inside) and the module zoo.loader builds from config.json.
    card_obj = StoredCard.model_validate(stored)
    if "task" in case:
        from zoo.task_models import build_task_model

        model = build_task_model(card_obj)
        model.load_state_dict(load_file(downloaded), strict=True)
        width = len(case["task"]["classes"])
    else:
        model, width = build_from_card(stored, downloaded), stored["feature_dim"]
    x = decode("image.npy", npy_bytes(image), card_obj)
    with torch.inference_mode():
        ours = model.eval()(torch.from_numpy(x)[None]).numpy()
    assert theirs.shape == ours.shape == (1, width)
    assert np.abs(ours).max() > 0
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("key", list(CASES))
def test_front_matter_reads_with_huggingface_hub(zoo: dict[str, Any], key: str,
                                                 tmp_path: Path) -> None:
    from huggingface_hub import ModelCard, ModelCardData

    case = CASES[key]
    readme = readme_of(zoo, key, tmp_path)
    parsed = ModelCard(readme)
    data = parsed.data
    assert isinstance(data, ModelCardData)
    assert data.library_name == "monai"
    assert data.pipeline_tag == ("image-classification" if "task" in case
                                 else "image-feature-extraction")
    assert data.license == "cc-by-4.0"
    assert data.datasets == [case["data"]]
    assert {"medical-imaging", "self-supervised", case["modality"], case["method"]} <= \
        set(data.tags)
    again = ModelCardData(**data.to_dict())  # what a Hub upload would write back
    assert again.to_dict() == data.to_dict()
    assert parsed.text.lstrip().startswith(f"# {case['name']}")


@pytest.mark.parametrize("key", list(CASES))
def test_card_says_use_limits_size_and_data(zoo: dict[str, Any], key: str,
                                            tmp_path: Path) -> None:
    case, stored = CASES[key], zoo["stored"][key]
    readme = readme_of(zoo, key, tmp_path)
    size = "x".join(["28"] * case["dims"])
    for text in ("## Intended use", "Out of scope: any clinical use", "## Limitations",
                 "Research use only. Not a medical device", f"trained at {size} ",
                 f"{case['data']} (train split, 1,000 images), licence CC-BY-4.0"):
        assert text in readme, text
    path = hf_path(zoo, key, tmp_path)
    if "task" in case:
        from zoo.task_models import build_task_model

        model = build_task_model(StoredCard.model_validate(stored))
        model.load_state_dict(load_file(path), strict=True)
    else:
        model = build_from_card(stored, Path(path))
    count = sum(p.numel() for p in model.parameters())
    assert stored["parameters"] == count
    assert f"{count:,} parameters" in readme
    content = dataset_facts(case["data"]).get("content")
    if case["data"] == "adrenalmnist3d":
        assert content and "binary shape masks" in content
    if content:
        assert f"The pretraining images are {content}." in readme
    else:
        assert "mask" not in readme.lower()


def hf_path(zoo: dict[str, Any], key: str, cache: Path) -> str:
    from huggingface_hub import hf_hub_download

    stored = zoo["stored"][key]
    return hf_hub_download(stored["repo_id"], "model.safetensors", revision=stored["commit"],
                           endpoint=f"{zoo['url']}/hf", cache_dir=cache)


def test_evaluation_table_says_what_spread_means(zoo: dict[str, Any], tmp_path: Path) -> None:
    readme = readme_of(zoo, "resnet-2d", tmp_path)
    assert "| pneumoniamnist | test | linear_probe | 10% | AUC | 0.812 ± 0.034 | 0,1,2 |" \
        in readme
    assert "sample standard deviation" in readme and "not a confidence interval" in readme
    assert "No evaluation reported." in readme_of(zoo, "vit-2d", tmp_path)


def test_mask_datasets_say_so_and_only_they() -> None:
    """datasets.yaml's `content` is a fact about the files: every set whose images hold only
    0 and 255 declares binary masks, and no other set does."""
    checked = 0
    for name, info in known_datasets().items():
        path = DATA_DIR / info["file"]
        if not path.exists():
            continue
        with np.load(path) as data:
            values = set(np.unique(data["val_images"]).tolist())
        binary = values <= {0, 255}
        assert binary == ("binary" in info.get("content", "")), (name, sorted(values)[:5])
        checked += 1
    if not checked:
        pytest.skip(f"no dataset files under {DATA_DIR}")
    assert dataset_facts("AdrenalMNIST3D") == known_datasets()["adrenalmnist3d"]


def seed_cards() -> list[dict[str, Any]]:
    root = Path(__file__).resolve().parents[2] / "zoo" / "seed"
    return [json.loads(p.read_text()) for p in sorted(root.glob("*/card.json"))]


@pytest.mark.parametrize("seed", seed_cards(), ids=lambda c: c["name"])
def test_seed_cards_render(seed: dict[str, Any]) -> None:
    """The shipped seed encoders' cards, as start-up registration renders them."""
    from huggingface_hub import ModelCard

    stored = StoredCard(**seed, repo_id=f"taskalign/{seed['name']}", revision=1,
                        commit="0" * 40, created_at=datetime.now(UTC), feature_dim=64,
                        parameters=1, onnx_parity_max_abs_diff=0.0, files={})
    readme = render(stored)
    assert ModelCard(readme).data.library_name == "monai"
    blocks = code_blocks(readme)
    assert len(blocks) == 2
    for block in blocks:
        compile(block, seed["name"], "exec")
    content = dataset_facts(seed["pretraining_data"]["name"]).get("content")
    # The MedMNIST 3D sets are binary shape masks, which the card must say; hippocampus
    # MRI is an intensity volume, as the modality suggests.
    shape_masks = seed["pretraining_data"]["name"] in ("adrenalmnist3d", "vesselmnist3d")
    assert (content is not None) == shape_masks
    if content:
        assert content in readme
