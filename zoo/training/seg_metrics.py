"""Segmentation metrics on label maps, per case and class, computed by MONAI.

Dice (`DiceMetric`), the 95th-percentile Hausdorff distance (`HausdorffDistanceMetric`,
percentile=95) and surface Dice / normalised surface distance (`SurfaceDiceMetric`,
Nikolov et al. 2021, arXiv:1809.04430) with the voxel spacing, so distances are in mm.

Empty cases, counted rather than hidden (MONAI returns nan or inf for them):
- reference without the class: Dice is undefined and left out of the mean (MONAI's
  `ignore_empty`); if the prediction has the class there, the case is counted as
  `false_positive_on_empty`. HD95 and surface Dice are left out too.
- reference with the class, prediction without: Dice 0 and surface Dice 0 (both in the
  means); HD95 is infinite, so it is left out of the HD95 mean and counted as `missed`.
HD95 is thus the mean over cases where both have the class (`hd95_cases` of them). Class
means are over cases; the overall means are over foreground classes (background is never
scored). Values that are undefined are written as None.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

AGGREGATION = ("per class, mean over cases whose reference has the class (Dice, surface "
               "Dice) and over cases where reference and prediction both have it (HD95); "
               "empty cases counted, not scored; overall = mean of the foreground classes")
CHUNK = 16  # cases one-hot encoded at a time


def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(N, *spatial) integer labels -> (N, K, *spatial) float indicators."""
    dims = labels.dim() - 1
    hot = F.one_hot(labels.long(), classes)
    return hot.permute(0, dims + 1, *range(1, dims + 1)).float()


def dice_per_case(pred: torch.Tensor, truth: torch.Tensor, classes: int) -> torch.Tensor:
    """(N, K - 1) foreground Dice; nan where the reference lacks the class."""
    from monai.metrics import DiceMetric

    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    return torch.cat([metric(one_hot(pred[i:i + CHUNK], classes),
                             one_hot(truth[i:i + CHUNK], classes)).cpu()
                      for i in range(0, len(pred), CHUNK)])


def mean_foreground_dice(pred: torch.Tensor, truth: torch.Tensor, classes: int) -> float:
    """The validation score that chooses a checkpoint: per class over the cases that have
    it, then over classes; nan when no case has any foreground."""
    per_class = nanmean(dice_per_case(pred, truth, classes), dim=0)
    return float(nanmean(per_class, dim=0))


def nanmean(values: torch.Tensor, dim: int) -> torch.Tensor:
    ok = ~torch.isnan(values)
    total = torch.where(ok, values, torch.zeros_like(values)).sum(dim)
    count = ok.sum(dim)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))


def _distances(pred: torch.Tensor, truth: torch.Tensor, classes: int, spacing: list[float],
               tolerance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K - 1) HD95 and surface Dice, in mm, as MONAI gives them (nan / inf included)."""
    from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric

    hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
    nsd = SurfaceDiceMetric([tolerance] * (classes - 1), include_background=False,
                            reduction="none")
    hds, nsds = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty masks: counted by the caller instead
        for i in range(0, len(pred), CHUNK):
            p, t = one_hot(pred[i:i + CHUNK], classes), one_hot(truth[i:i + CHUNK], classes)
            hds.append(hd(p, t, spacing=spacing).cpu())
            nsds.append(nsd(p, t, spacing=spacing).cpu())
    return torch.cat(hds), torch.cat(nsds)


def _present(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(N, K - 1) whether each case contains each foreground class."""
    flat = labels.reshape(len(labels), -1).long()
    return torch.stack([(flat == c).any(1) for c in range(1, classes)], 1)


def _value(x: float) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else round(x, 4)


def segmentation_scores(pred: torch.Tensor, truth: torch.Tensor, names: Sequence[str],
                        spacing: Sequence[float] | None = None,
                        tolerance: float | None = None) -> dict[str, Any]:
    """Per-class and per-case Dice, HD95 (mm) and surface Dice of label maps.

    pred, truth: (N, *spatial) integer labels; names: class names, background first;
    spacing: mm per axis (default 1, and then distances are in pixels, as the report's
    `spacing_declared` says); tolerance: the surface Dice distance in mm (default the
    largest spacing: one voxel)."""
    classes, dims = len(names), pred.dim() - 1
    declared = spacing is not None
    spacing = [float(s) for s in (spacing or [1.0] * dims)]
    tolerance = float(tolerance if tolerance is not None else max(spacing))
    pred, truth = pred.cpu(), truth.cpu()
    dice = dice_per_case(pred, truth, classes)
    hd, nsd = _distances(pred, truth, classes, spacing, tolerance)
    has_ref, has_pred = _present(truth, classes), _present(pred, classes)
    both = has_ref & has_pred
    nsd = torch.where(has_ref, nsd, torch.full_like(nsd, math.nan))
    hd = torch.where(both, hd, torch.full_like(hd, math.nan))
    per_class: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(names[1:]):
        per_class[name] = {
            "dice": _value(float(nanmean(dice[:, k], 0))),
            "hd95_mm": _value(float(nanmean(hd[:, k], 0))),
            "surface_dice": _value(float(nanmean(nsd[:, k], 0))),
            "cases": int(has_ref[:, k].sum()),
            "hd95_cases": int(both[:, k].sum()),
            "reference_empty": int((~has_ref[:, k]).sum()),
            "false_positive_on_empty": int((~has_ref[:, k] & has_pred[:, k]).sum()),
            "missed": int((has_ref[:, k] & ~has_pred[:, k]).sum()),
        }

    def overall(key: str) -> float | None:
        values = [c[key] for c in per_class.values() if c[key] is not None]
        return round(sum(values) / len(values), 4) if values else None

    per_case = [{metric: {name: _value(float(table[i, k])) for k, name in enumerate(names[1:])}
                 for metric, table in (("dice", dice), ("hd95_mm", hd), ("surface_dice", nsd))}
                for i in range(len(pred))]
    return {"classes": per_class,
            "mean": {key: overall(key) for key in ("dice", "hd95_mm", "surface_dice")},
            "per_case": per_case, "cases": len(pred), "spacing_mm": spacing,
            "spacing_declared": declared,
            "surface_tolerance_mm": tolerance, "aggregation": AGGREGATION}
