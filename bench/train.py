"""Images per second of a pretraining step in our training loop (zoo.train.pretrain)
against a bare PyTorch loop with the same model, batch, objective and augmentations,
in the same run. Target: >= 0.9 of the bare loop on CPU.

    .venv/bin/python bench/train.py [--method simclr] [--steps 40] [--batch 256]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo.architectures import build_encoder  # noqa: E402
from zoo.augment import Policy  # noqa: E402
from zoo.data import load_dataset  # noqa: E402
from zoo.pretext.registry import build_objective  # noqa: E402
from zoo.train import TrainConfig, pretrain, to_unit  # noqa: E402

POLICY = ["random_resized_crop", "horizontal_flip", "gaussian_blur", "intensity_shift"]


def objective(method: str):  # noqa: ANN201
    torch.manual_seed(0)
    arch = ("vit", {"patch_size": 4, "hidden_size": 96, "mlp_dim": 192, "num_layers": 4,
                    "num_heads": 3}) if method in ("mae", "ijepa") else (
        "resnet18", {"widths": [16, 32, 64, 128]})
    return build_objective(method, build_encoder(arch[0], 2, 1, [28, 28], arch[1]))


def bare(method: str, images: torch.Tensor, policy: Policy, batch: int, steps: int) -> float:
    obj = objective(method).train()
    opt = torch.optim.AdamW(obj.parameters(), lr=1e-3)
    data = to_unit(images)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(data), (batch,), generator=gen)
        loss = obj.loss(data[idx], policy, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        obj.after_step()
        if step == 1:  # skip warm-up steps
            t0, done = time.perf_counter(), 0
        done = (step - 1) * batch
    return done / (time.perf_counter() - t0)


def ours(method: str, images: torch.Tensor, policy: Policy, batch: int, steps: int) -> float:
    obj = objective(method)
    stamps: dict[int, float] = {}
    n = batch * (steps + 1)
    pretrain(obj, images[:n] if len(images) >= n else images, policy,
             TrainConfig(epochs=100, batch_size=batch, max_steps=steps, device="cpu"),
             on_step=lambda s, _t: stamps.__setitem__(s, time.perf_counter()))
    return (steps - 2) * batch / (stamps[steps] - stamps[2])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="simclr")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    images = load_dataset("pneumoniamnist").splits["train"].images
    policy = Policy.build(POLICY, [], 1)
    print(f"{args.method}, resnet18 widths 16-128 / small ViT, batch {args.batch}, "
          f"{args.steps} steps, real PneumoniaMNIST, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} cpus; median of {args.reps} interleaved runs")
    a, b = [], []
    for _ in range(args.reps):
        b.append(bare(args.method, images, policy, args.batch, args.steps))
        a.append(ours(args.method, images, policy, args.batch, args.steps))
    mine, base = statistics.median(a), statistics.median(b)
    print(f"  bare loop   {base:8.1f} img/s  runs {[round(x) for x in b]}")
    print(f"  our loop    {mine:8.1f} img/s  runs {[round(x) for x in a]}")
    verdict = "met" if mine / base >= 0.9 else "NOT met"
    print(f"  ratio {mine / base:.2f} (target >= 0.9: {verdict})")


if __name__ == "__main__":
    main()
