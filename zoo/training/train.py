"""The pretraining loop. Data lives in memory (on the GPU when there is one), views are
made in batches on tensors, so the loop is bound by the model, not by Python."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .augment import Policy
from .pretext.base import Objective


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    seed: int = 0
    device: str = "auto"
    max_steps: int | None = None


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255.0)


def pretrain(objective: Objective, images: torch.Tensor, policy: Policy, config: TrainConfig,
             groups: torch.Tensor | None = None,
             on_epoch: Callable[[dict[str, Any]], None] | None = None,
             on_step: Callable[[int, int, torch.Tensor], None] | None = None,
             metrics_path: Path | None = None) -> list[dict[str, Any]]:
    """Train `objective` on uint8 images (N, C, *S); returns per-epoch metrics.

    `on_step` gets (step, total, loss) with the loss still on the device: a caller that
    reports now and then synchronises once per report, not once per step."""
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    cpu_gen = torch.Generator().manual_seed(config.seed)
    data = to_unit(images.to(device))
    group_ids = groups.to(device) if groups is not None else None
    cuda = device.type == "cuda"
    if cuda and data.dim() == 4:
        objective = objective.to(memory_format=torch.channels_last)
    objective.to(device).train()
    params = [p for p in objective.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    n = data.shape[0]
    batch = min(config.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    total = steps_per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    warm = config.warmup_epochs * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warm:
            return config.lr * (step + 1) / warm
        return config.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    history: list[dict[str, Any]] = []
    step = 0
    for epoch in range(config.epochs):
        if step >= total:
            break
        order = torch.randperm(n, generator=cpu_gen).to(device)
        t0, losses, seen = time.perf_counter(), [], 0
        for i in range(steps_per_epoch):
            if step >= total:
                break
            idx = order[i * batch:(i + 1) * batch]
            x = data[idx]
            if cuda and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = objective.loss(x, policy, gen if cuda else cpu_gen,
                                      groups=group_ids[idx] if group_ids is not None else None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            objective.after_step()
            losses.append(loss.detach())
            seen += x.shape[0]
            step += 1
            if on_step:
                on_step(step, total, loss.detach())
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "loss": float(torch.stack(losses).mean()),
                  "seconds": round(seconds, 3), "images_per_s": round(seen / seconds, 1),
                  "lr": lr_at(max(0, step - 1)), "device": device.type}
        history.append(record)
        if metrics_path:
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        if on_epoch:
            on_epoch(record)
    objective.eval()
    return history


def config_dict(config: TrainConfig) -> dict[str, Any]:
    return asdict(config)
