"""Random draws made on the generator's device and moved to where the data lives.

Why: `pretrain` hands objectives a CUDA generator on a GPU (so noise is drawn next to the
images) and a CPU generator elsewhere, and torch only draws with a generator on that
generator's own device. Drawing through these helpers works for both, and on the CPU it
draws exactly what plain torch calls would, so seeded CPU runs are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Gen = torch.Generator | None


def home(gen: Gen) -> torch.device:
    return gen.device if gen is not None else torch.device("cpu")


def _to(t: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    return t if device is None else t.to(device)


def rand(shape: Sequence[int], gen: Gen, device: torch.device | None = None) -> torch.Tensor:
    return _to(torch.rand(tuple(shape), device=home(gen), generator=gen), device)


def randn(shape: Sequence[int], gen: Gen, device: torch.device | None = None) -> torch.Tensor:
    return _to(torch.randn(tuple(shape), device=home(gen), generator=gen), device)


def randint(low: int, high: int, shape: Sequence[int], gen: Gen,
            device: torch.device | None = None) -> torch.Tensor:
    return _to(torch.randint(low, high, tuple(shape), device=home(gen), generator=gen), device)


def randperm(n: int, gen: Gen, device: torch.device | None = None) -> torch.Tensor:
    return _to(torch.randperm(n, device=home(gen), generator=gen), device)


def uniform(lo: float, hi: float, gen: Gen) -> float:
    return float(torch.empty((), device=home(gen)).uniform_(lo, hi, generator=gen))


def poisson(rates: torch.Tensor, gen: Gen) -> torch.Tensor:
    return torch.poisson(rates.to(home(gen)), generator=gen).to(rates.device)
