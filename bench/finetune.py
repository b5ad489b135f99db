"""A finetune job with 100 % labels on PneumoniaMNIST from a seed encoder, through the
real API and worker, compared with the MedMNIST v2 ResNet-18 (28) test AUC of 0.944
(Yang et al. 2023, Table 3; their protocol: Adam 1e-3, 100 epochs, batch 128).

    .venv/bin/python bench/finetune.py [--encoder OWNER/NAME] [--epochs 30] [--seeds 0 1 2]
                                       [--dataset pneumoniamnist] [--device auto|cpu|cuda]

One job per seed, run one after another by the server's local worker; each seed's test
AUC/ACC is printed, then the mean and standard deviation.
"""

from __future__ import annotations

import argparse
import statistics
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
    ap.add_argument("--encoder", default="taskalign/resnet18-2d.simclr-pneumoniamnist",
                    help="Repository id owner/name; the seed zoo is under taskalign/.")
    ap.add_argument("--dataset", default="pneumoniamnist")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--fraction", type=float, default=1.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args()
    jobs = []
    t0 = time.perf_counter()
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
            ids = [httpx.post(f"{s.url}/v1/jobs", headers=h(ADMIN), json={
                "type": "finetune", "encoder": args.encoder, "dataset_id": ds["id"],
                "label_fraction": args.fraction, "mode": "full", "epochs": args.epochs,
                "seed": seed, "device": args.device}).json()["id"] for seed in args.seeds]
            for job_id in ids:
                while True:
                    j = httpx.get(f"{s.url}/v1/jobs/{job_id}", headers=h(ADMIN)).json()
                    if j["status"] in ("succeeded", "failed", "cancelled"):
                        break
                    time.sleep(2)
                jobs.append(j)
        finally:
            s.stop()
    failed = [j for j in jobs if j["status"] != "succeeded"]
    for j in failed:
        print(f"job {j['id']} {j['status']}: {j['error']}")
    if failed:
        sys.exit(1)
    ref = REFERENCE.get(args.dataset)
    print(f"finetune jobs: {args.encoder} on {args.dataset}, {args.fraction:.0%} labels, "
          f"{args.epochs} epochs, device {jobs[0]['device']}, "
          f"{(time.perf_counter() - t0) / 60:.1f} min in all")
    aucs, accs = [], []
    for seed, j in zip(args.seeds, jobs, strict=True):
        auc, acc = j["result"]["evaluation"]["test_auc"], j["result"]["evaluation"]["test_acc"]
        aucs.append(auc)
        accs.append(acc)
        print(f"  seed {seed}: test AUC {auc:.4f}, ACC {acc:.4f} "
              f"({j['result']['seconds']:.0f} s, job {j['id']}, encoder {j['result']['encoder']})")
    mean = statistics.fmean(aucs)
    sd = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
    print(f"  mean test AUC {mean:.4f} +- {sd:.4f}, ACC {statistics.fmean(accs):.4f}; "
          f"MedMNIST v2 ResNet-18 (28): {ref}"
          + (f" -> {'reached' if mean >= ref else 'NOT reached'} (mean over seeds)" if ref else ""))


if __name__ == "__main__":
    main()
