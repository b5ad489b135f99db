"""A finetune job with 100 % labels on PneumoniaMNIST from a seed encoder, through the
real API and worker, compared with the MedMNIST v2 ResNet-18 (28) test AUC of 0.944
(Yang et al. 2023, Table 3; their protocol: Adam 1e-3, 100 epochs, batch 128).

    .venv/bin/python bench/finetune.py [--encoder NAME] [--epochs 30] [--dataset pneumoniamnist]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import Server  # noqa: E402
from tests.service.test_jobs import ADMIN, TOKENS, h  # noqa: E402
from tests.utils import DATA_DIR  # noqa: E402

REFERENCE = {"pneumoniamnist": 0.944, "breastmnist": 0.901}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", default="resnet18-2d.simclr-pneumoniamnist")
    ap.add_argument("--dataset", default="pneumoniamnist")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--fraction", type=float, default=1.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        s = Server(Path(tmp), TASKALIGN_WORKER="true", TASKALIGN_SEED_ZOO="true", **TOKENS)
        try:
            for _ in range(600):
                if httpx.get(f"{s.url}/v1/encoders/{args.encoder}").status_code == 200:
                    break
                time.sleep(1)
            ds = httpx.post(f"{s.url}/v1/datasets", headers=h(ADMIN), json={
                "name": args.dataset,
                "path": str(DATA_DIR / "medmnist" / f"{args.dataset}.npz")}).json()
            t0 = time.perf_counter()
            job = httpx.post(f"{s.url}/v1/jobs", headers=h(ADMIN), json={
                "type": "finetune", "encoder": args.encoder, "dataset_id": ds["id"],
                "label_fraction": args.fraction, "mode": "full", "epochs": args.epochs,
                "seed": 0}).json()
            while True:
                j = httpx.get(f"{s.url}/v1/jobs/{job['id']}", headers=h(ADMIN)).json()
                if j["status"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(2)
        finally:
            s.stop()
    if j["status"] != "succeeded":
        print(f"job {j['status']}: {j['error']}")
        sys.exit(1)
    auc = j["result"]["evaluation"]["test_auc"]
    acc = j["result"]["evaluation"]["test_acc"]
    ref = REFERENCE.get(args.dataset)
    print(f"finetune job: {args.encoder} on {args.dataset}, {args.fraction:.0%} labels, "
          f"{args.epochs} epochs, seed 0, device {j['device']}, "
          f"{(time.perf_counter() - t0) / 60:.1f} min")
    print(f"  test AUC {auc:.4f}, ACC {acc:.4f}; MedMNIST v2 ResNet-18 (28): {ref}"
          + (f" -> {'reached' if auc >= ref else 'NOT reached'}" if ref else ""))


if __name__ == "__main__":
    main()
