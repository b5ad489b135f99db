"""Benchmark prediction with task models.

(a) Throughput of a 128-px RGB classification task model (ResNet-18, full width, ImageNet
    stem, 7 classes as HAM10000), onnxruntime against PyTorch eager in the same run, on
    the same batch of 32 real HAM10000 images (resized by the API's own reader), with
    the same thread count. The ONNX file is the one registration exports. Target:
    onnxruntime >= 1.3x eager at batch 32.
(b) The same model behind `POST /v1/encoders/{repo}/predict` on a live server: images/s
    end to end (PNG upload, decode, resize, onnxruntime, JSON), for reference.

    .venv/bin/python bench/predict.py [--threads 2] [--reps 10]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import Server  # noqa: E402
from tests.utils import DATA_DIR  # noqa: E402
from zoo.export import onnx_session  # noqa: E402
from zoo.imaging import load  # noqa: E402
from zoo.registry import prepare  # noqa: E402
from zoo.task_models import build_task_model  # noqa: E402

TOKEN = "bench-admin-token-0123456789"
CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
CARD = {
    "name": "resnet18-2d.bench-ham10000-128",
    "architecture": {"name": "resnet18", "args": {"stem": "imagenet"}},
    "spatial_dims": 2, "in_channels": 3, "input_size": [128, 128],
    "modality": "dermoscopy", "pretext": {"method_id": "simclr"},
    "pretraining_data": {"name": "none (benchmark weights)", "licence": "CC-BY-4.0"},
    "task": {"classes": CLASSES},
}


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, "PNG")
    return out.getvalue()


def timed(fn, reps: int) -> float:  # noqa: ANN001
    fn()  # warm: first runs allocate and pick kernels
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from safetensors.torch import save

    from zoo.cards import EncoderCard

    torch.manual_seed(0)
    model = build_task_model(EncoderCard.model_validate(CARD)).eval()
    weights = save({k: v.contiguous() for k, v in model.state_dict().items()})
    prepared = prepare(CARD, weights)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
          f"ONNX parity {prepared.parity:.1e}")

    data = np.load(DATA_DIR / "extra" / "ham10000_64.npz")["test_images"][:args.batch]
    files = [png(im) for im in data]
    batch = np.stack([load("x.png", f, spatial_dims=2, channels=3, input_size=[128, 128])
                      for f in files])
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        onnx_path.write_bytes(prepared.onnx)
        session = onnx_session(onnx_path, ["CPUExecutionProvider"])
        x = torch.from_numpy(batch)

        def run_eager() -> None:
            with torch.inference_mode():
                model(x)

        # Interleaved, so that a change in machine load hits both alike.
        pairs = [(timed(run_eager, 1), timed(lambda: session.run(None, {"x": batch}), 1))
                 for _ in range(args.reps)]
        eager = statistics.median(p[0] for p in pairs)
        ort = statistics.median(p[1] for p in pairs)
    n = len(batch)
    print(f"(a) batch {n}, {args.threads} threads: eager {n / eager:.1f} img/s, onnxruntime "
          f"{n / ort:.1f} img/s -> ratio {eager / ort:.2f} (target >= 1.3)")

    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp), TASKALIGN_WORKER="false", TASKALIGN_ADMIN_TOKENS=TOKEN)
        try:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            import json

            r = httpx.post(f"{server.url}/v1/encoders", headers=auth, timeout=300, files={
                "config": ("config.json", json.dumps(CARD), "application/json"),
                "weights": ("model.safetensors", weights, "application/octet-stream")})
            r.raise_for_status()
            repo = r.json()["repo_id"]
            parts = [("images", (f"{i}.png", f, "image/png")) for i, f in enumerate(files)]

            def call() -> None:
                httpx.post(f"{server.url}/v1/encoders/{repo}/predict", files=parts,
                           timeout=120).raise_for_status()

            http = timed(call, max(3, args.reps // 2))
            print(f"(b) POST /predict, {n} PNGs of 64 px resized to 128: {n / http:.1f} img/s "
                  f"end to end ({http * 1000:.0f} ms per request)")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
