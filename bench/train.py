"""Images per second of a pretraining step in our training loop (zoo.training.train.pretrain)
against a bare PyTorch loop with the same model, batch, objective and augmentations,
in the same run. Target: >= 0.9 of the bare loop on CPU. With --device cuda both loops
run on the GPU; the bare loop then uses the same bf16 autocast and channels-last as ours,
so the ratio measures our loop's overhead, not the precision.

    .venv/bin/python bench/train.py [--method simclr] [--steps 40] [--batch 256]
                                    [--device cpu|cuda]
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
from zoo.datasets.readers import load_dataset  # noqa: E402
from zoo.training.augment import Policy  # noqa: E402
from zoo.training.pretext.registry import build_objective  # noqa: E402
from zoo.training.train import TrainConfig, pretrain, to_unit  # noqa: E402

POLICY = ["random_resized_crop", "horizontal_flip", "gaussian_blur", "intensity_shift"]


def objective(method: str):  # noqa: ANN201
    torch.manual_seed(0)
    arch = ("vit", {"patch_size": 4, "hidden_size": 96, "mlp_dim": 192, "num_layers": 4,
                    "num_heads": 3}) if method in ("mae", "ijepa") else (
        "resnet18", {"widths": [16, 32, 64, 128]})
    return build_objective(method, build_encoder(arch[0], 2, 1, [28, 28], arch[1]))


def bare(method: str, images: torch.Tensor, policy: Policy, batch: int, steps: int,
         device: torch.device) -> float:
    cuda = device.type == "cuda"
    obj = objective(method)
    if cuda:
        obj = obj.to(memory_format=torch.channels_last)
    obj = obj.to(device).train()
    opt = torch.optim.AdamW(obj.parameters(), lr=1e-3)
    data = to_unit(images.to(device))
    gen = torch.Generator(device=device).manual_seed(0)
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(data), (batch,), generator=gen, device=device)
        x = data[idx]
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = obj.loss(x, policy, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        obj.after_step()
        if step == 1:  # skip warm-up steps
            if cuda:
                torch.cuda.synchronize()
            t0, done = time.perf_counter(), 0
        done = (step - 1) * batch
    if cuda:
        torch.cuda.synchronize()
    return done / (time.perf_counter() - t0)


def ours(method: str, images: torch.Tensor, policy: Policy, batch: int, steps: int,
         device: torch.device) -> float:
    obj = objective(method)
    stamps: dict[int, float] = {}
    n = batch * (steps + 1)

    def stamp(step: int, _total: int, _loss: object = None) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps[step] = time.perf_counter()

    pretrain(obj, images[:n] if len(images) >= n else images, policy,
             TrainConfig(epochs=100, batch_size=batch, max_steps=steps, device=device.type),
             on_step=stamp)
    return (steps - 2) * batch / (stamps[steps] - stamps[2])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="simclr")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    device = torch.device(args.device)
    images = load_dataset("pneumoniamnist").splits["train"].images
    policy = Policy.build(POLICY, [], 1)
    print(f"{args.method}, resnet18 widths 16-128 / small ViT, batch {args.batch}, "
          f"{args.steps} steps, real PneumoniaMNIST, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} cpus, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "")
          + f"; median of {args.reps} interleaved runs")
    a, b = [], []
    for _ in range(args.reps):
        b.append(bare(args.method, images, policy, args.batch, args.steps, device))
        a.append(ours(args.method, images, policy, args.batch, args.steps, device))
    mine, base = statistics.median(a), statistics.median(b)
    print(f"  bare loop   {base:8.1f} img/s  runs {[round(x) for x in b]}")
    print(f"  our loop    {mine:8.1f} img/s  runs {[round(x) for x in a]}")
    verdict = "met" if mine / base >= 0.9 else "NOT met"
    print(f"  ratio {mine / base:.2f} (target >= 0.9: {verdict})")


if __name__ == "__main__":
    main()
