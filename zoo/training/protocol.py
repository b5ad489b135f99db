"""Evaluation protocol v2: every choice made on validation data scaled like the training
subset, the test split opened once at the end, and SSL compared with several random
initialisations by a paired bootstrap over test images.

Why: with a fixed probe penalty and checkpoints chosen on the full validation split, the
baseline was under-tuned and a 10 % label subset was tuned on more validation labels than
it had training labels (issue 14). Here the linear probe's L2 penalty and kNN's k are
picked from stated grids on a validation subset with the same label fraction (at least
one image per class), and test metrics include ACC, balanced accuracy and the
majority-class rate so that a probe at chance is visible as such.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from zoo.datasets.base import Split

from .evaluate import features, fit_linear_probe, knn, label_subset, medmnist_metrics

PROBE_PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # L2 weight on |W|^2, mean cross-entropy
KNN_KS = (1, 5, 10, 20, 50)
VAL_SEED_OFFSET = 1000  # validation subsets are drawn independently of the training ones


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """AUC and ACC as MedMNIST computes them, balanced accuracy, and the majority-class rate
    (the ACC of always answering the most frequent class) for reading ACC against."""
    out = medmnist_metrics(probs, labels)
    pred = (probs[:, 1] > 0.5).long() if probs.shape[1] == 2 else probs.argmax(1)
    recalls = [float((pred[labels == c] == c).float().mean())
               for c in torch.unique(labels).tolist()]
    out["balanced_acc"] = statistics.fmean(recalls)
    out["majority_rate"] = float(torch.bincount(labels).max()) / len(labels)
    return out


def val_subset(val_labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """The validation images a run at this label fraction may tune on: the same fraction
    of each class as its training subset, at least one per class."""
    return label_subset(val_labels, fraction, seed + VAL_SEED_OFFSET)


def _auc(probs: torch.Tensor, labels: torch.Tensor) -> float:
    value = medmnist_metrics(probs, labels)["auc"]
    return -1.0 if math.isnan(value) else value


@dataclass
class Fitted:
    """One protocol run fitted on train and tuned on validation, not yet scored on test."""

    label: str
    protocol: str
    fraction: float
    subset_seed: int
    chosen: dict[str, Any]
    val_auc: float
    predict: Callable[[torch.Tensor], torch.Tensor]  # test features (or images) -> probs
    on_images: bool = False  # fine-tuned models take images, frozen probes features


def fit_probe(f_train: torch.Tensor, y_train: torch.Tensor, f_val: torch.Tensor,
              y_val: torch.Tensor, classes: int, seed: int,
              penalties: Sequence[float] = PROBE_PENALTIES
              ) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any], float]:
    """The linear probe whose penalty scores best on validation (ties: the stronger one)."""
    best: tuple[float, float, Any] | None = None
    for wd in sorted(penalties, reverse=True):
        layer = fit_linear_probe(f_train, y_train, classes, seed, weight_decay=wd)
        with torch.no_grad():
            score = _auc(F.softmax(layer(f_val), 1), y_val)
        if best is None or score > best[0]:
            best = (score, wd, layer)
    score, wd, layer = best  # type: ignore[misc]

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return F.softmax(layer(x), 1)

    return predict, {"weight_decay": wd, "grid": list(penalties)}, score


def fit_knn(f_train: torch.Tensor, y_train: torch.Tensor, f_val: torch.Tensor,
            y_val: torch.Tensor, classes: int, ks: Sequence[int] = KNN_KS
            ) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any], float]:
    """kNN with the k (at most the subset size) that scores best on validation."""
    usable = sorted({min(k, len(f_train)) for k in ks})
    scored = [(_auc(knn(f_train, y_train, f_val, classes, k=k), y_val), -k) for k in usable]
    score, neg_k = max(scored)
    k = -neg_k
    # the grid as searched: k values above the subset size are capped at it
    return (lambda x: knn(f_train, y_train, x, classes, k=k)), {"k": k, "grid": usable}, score


@dataclass
class ProtocolV2:
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    subset_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    protocols: list[str] = field(default_factory=lambda: ["linear_probe", "knn"])
    bootstrap: int = 1000
    fine_tune_epochs: int = 10
    fine_tune_fractions: list[float] | None = None  # None: the same as `fractions`
    test_noise: list[str] = field(default_factory=list)  # e.g. ["gaussian:0.1"]

    def fractions_for(self, protocol: str) -> list[float]:
        if protocol == "fine_tune" and self.fine_tune_fractions is not None:
            return self.fine_tune_fractions
        return self.fractions

    def describe(self) -> dict[str, Any]:
        """The protocol as a card states it: what was tuned, on what, and what the spread
        and intervals mean."""
        return {
            "version": 2,
            "label_subsets": "stratified: the fraction of each class, at least one per "
                             f"class; subset seeds {self.subset_seeds}",
            "tuning": "on a validation subset with the same label fraction (at least one "
                      "per class), drawn with seed + 1000; the test split is opened once, "
                      "after every choice",
            "linear_probe": {"weight_decay_grid": list(PROBE_PENALTIES),
                             "criterion": "validation AUC; ties go to the stronger penalty"},
            "knn": {"k_grid": list(KNN_KS), "criterion": "validation AUC, k capped at the "
                    "subset size"},
            "fine_tune": {"epochs": self.fine_tune_epochs,
                          "checkpoint": "best validation AUC on the scaled subset"},
            "spread": "sample s.d. over replicates (pretraining seeds or random inits) x "
                      "label subsets",
            "interval": f"paired bootstrap over test images ({self.bootstrap} resamples, "
                        "percentile 95 %) of mean AUC(SSL) - mean AUC(random inits), and of "
                        "mean AUC(SSL) - the best random init (each init averaged over its "
                        "label subsets)",
            "metrics": ["AUC", "ACC", "BALANCED_ACC"],
            **({"test_noise": "the same fitted probes scored on test images with noise "
                              f"added ({', '.join(self.test_noise)}; zoo.training.protocol"
                              ".corrupt, seed 0)"} if self.test_noise else {}),
        }


def fit_fine_tune(encoder: torch.nn.Module, train: Split, idx: torch.Tensor, val: Split,
                  vidx: torch.Tensor, classes: int, seed: int, epochs: int
                  ) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any], float]:
    """Encoder and head trained end to end; the epoch kept is the best on the scaled
    validation subset, never on the full validation split."""
    from .evaluate import FineTuneConfig, fine_tune, predict

    val_images, val_y = val.images[vidx], val.labels[vidx]
    val_probs, model = fine_tune(encoder, train.images[idx], train.labels[idx], val_images,
                                 val_y, val_images, classes,
                                 FineTuneConfig(epochs=epochs, seed=seed), return_model=True)
    return ((lambda images: predict(model, images)), {"epochs": epochs, "checkpoint":
            "best validation AUC on the scaled subset"}, _auc(val_probs, val_y))


def fit_all(encoders: dict[str, list[torch.nn.Module]], train: Split, val: Split,
            classes: int, plan: ProtocolV2,
            log: Callable[[str], None] = print) -> list[Fitted]:
    """Phase 1, without the test split: every (encoder, protocol, fraction, subset) fitted
    and tuned. `encoders` maps an arm (e.g. 'ssl', 'random_init') to its replicates
    (pretraining seeds or random inits)."""
    fits: list[Fitted] = []
    for label, replicates in encoders.items():
        for rep, encoder in enumerate(replicates):
            f_train, f_val = features(encoder, train.images), features(encoder, val.images)
            for protocol in plan.protocols:
                for fraction in plan.fractions_for(protocol):
                    for seed in plan.subset_seeds:
                        idx = label_subset(train.labels, fraction, seed)
                        vidx = val_subset(val.labels, fraction, seed)
                        args = (f_train[idx], train.labels[idx], f_val[vidx], val.labels[vidx],
                                classes)
                        if protocol == "linear_probe":
                            predict, chosen, score = fit_probe(*args, seed)
                        elif protocol == "knn":
                            predict, chosen, score = fit_knn(*args)
                        else:
                            predict, chosen, score = fit_fine_tune(
                                encoder, train, idx, val, vidx, classes, seed,
                                plan.fine_tune_epochs)
                        fits.append(Fitted(label, protocol, fraction, seed,
                                           {**chosen, "replicate": rep, "subset_seed": seed,
                                            "val_images": len(vidx)}, score, predict,
                                           on_images=protocol == "fine_tune"))
            cells = sum(len(plan.fractions_for(p)) for p in plan.protocols)
            log(f"  fitted {label} #{rep}: {cells} protocol x fraction cells, chosen on "
                "validation")
    return fits


def paired_bootstrap(ssl: list[torch.Tensor], base: list[torch.Tensor], labels: torch.Tensor,
                     n: int, seed: int = 0, base_replicates: Sequence[int] | None = None
                     ) -> dict[str, float]:
    """95 % interval of mean AUC(SSL) - mean AUC(baseline), and of mean AUC(SSL) - the best
    baseline replicate (each random init's AUC averaged over its label subsets, then the
    highest), resampling test images jointly for every run. `base_replicates` names the
    replicate of each baseline run; without it every run is its own replicate. Resamples
    holding a single class have no AUC and are skipped."""
    groups = list(base_replicates) if base_replicates is not None else list(range(len(base)))
    gen = torch.Generator().manual_seed(seed)
    diffs, vs_best = [], []
    for _ in range(n):
        idx = torch.randint(len(labels), (len(labels),), generator=gen)
        y = labels[idx]
        if len(torch.unique(y)) < 2:
            continue
        a = [_auc(p[idx], y) for p in ssl]
        b = [_auc(p[idx], y) for p in base]
        by_init: dict[int, list[float]] = {}
        for g, value in zip(groups, b, strict=True):
            by_init.setdefault(g, []).append(value)
        diffs.append(statistics.fmean(a) - statistics.fmean(b))
        vs_best.append(statistics.fmean(a) - max(statistics.fmean(v) for v in by_init.values()))
    diffs.sort()
    vs_best.sort()

    def ci(values: list[float]) -> tuple[float, float]:
        m = len(values)
        return values[int(0.025 * m)], values[min(m - 1, int(0.975 * m))]

    lo, hi = ci(diffs)
    lo_b, hi_b = ci(vs_best)
    return {"diff_lo": round(lo, 4), "diff_hi": round(hi, 4),
            "vs_best_lo": round(lo_b, 4), "vs_best_hi": round(hi_b, 4)}


def corrupt(images: torch.Tensor, noise: str, seed: int = 0) -> torch.Tensor:
    """Test images with noise added, for robustness rows: `gaussian:<sigma>` adds
    N(0, sigma) to intensities in [0, 1]; `speckle:<sigma>` multiplies them by 1 + N(0,
    sigma), the multiplicative noise of ultrasound and coherent imaging. Seeded, uint8."""
    kind, sigma = parse_noise(noise)
    gen = torch.Generator().manual_seed(seed)
    x = images.float() / 255.0
    n = torch.randn(x.shape, generator=gen) * sigma
    x = x + n if kind == "gaussian" else x * (1 + n)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


NOISE_KINDS = ("gaussian", "speckle")


def parse_noise(noise: str) -> tuple[str, float]:
    kind, _, level = noise.partition(":")
    try:
        sigma = float(level)
    except ValueError:
        raise ValueError(f"noise {noise!r}: give kind:sigma, e.g. gaussian:0.1") from None
    if kind not in NOISE_KINDS or not 0 < sigma <= 1:
        raise ValueError(f"noise {noise!r}: kind is one of {', '.join(NOISE_KINDS)}, sigma "
                         "in (0, 1]")
    return kind, sigma


def score_all(fits: list[Fitted], encoders: dict[str, list[torch.nn.Module]], test: Split,
              dataset: str, plan: ProtocolV2, baseline: str = "random_init"
              ) -> list[dict[str, Any]]:
    """Phase 2: the test split, once. Mean and s.d. over replicates x label subsets for
    every metric, and the paired bootstrap of each arm against `baseline`; then the same
    fitted probes on the test images with each of `plan.test_noise` added."""
    rows = _score(fits, encoders, test.images, test.labels, dataset, plan, baseline)
    for noise in plan.test_noise:
        rows += [{**row, "test_noise": noise} for row in _score(
            fits, encoders, corrupt(test.images, noise), test.labels, dataset, plan,
            baseline)]
    return rows


def _score(fits: list[Fitted], encoders: dict[str, list[torch.nn.Module]],
           images: torch.Tensor, labels: torch.Tensor, dataset: str, plan: ProtocolV2,
           baseline: str) -> list[dict[str, Any]]:
    f_test = {(label, rep): features(enc, images)
              for label, reps in encoders.items() for rep, enc in enumerate(reps)}
    probs = {id(f): f.predict(images if f.on_images
                              else f_test[(f.label, f.chosen["replicate"])]) for f in fits}
    rows: list[dict[str, Any]] = []
    cells: dict[tuple[str, str, float], list[Fitted]] = {}
    for f in fits:
        cells.setdefault((f.label, f.protocol, f.fraction), []).append(f)
    for (label, protocol, fraction), group in cells.items():
        scores = [classification_metrics(probs[id(f)], labels) for f in group]
        row: dict[str, Any] = {
            "dataset": dataset, "arm": label, "protocol": protocol,
            "label_fraction": fraction, "runs": len(group), "split": "test",
            "spread": "s.d. over replicates x label subsets",
            "chosen": [{k: v for k, v in f.chosen.items() if k != "grid"} for f in group],
            "grid": group[0].chosen.get("grid")}
        for metric in ("auc", "acc", "balanced_acc"):
            values = [s[metric] for s in scores]
            row[metric] = round(statistics.fmean(values), 4)
            row[f"{metric}_sd"] = round(statistics.stdev(values), 4) if len(values) > 1 else None
        row["majority_rate"] = round(scores[0]["majority_rate"], 4)
        if label != baseline and (baseline, protocol, fraction) in cells:
            base = cells[(baseline, protocol, fraction)]
            row["vs_" + baseline] = paired_bootstrap(
                [probs[id(f)] for f in group], [probs[id(f)] for f in base], labels,
                plan.bootstrap, base_replicates=[f.chosen["replicate"] for f in base])
        rows.append(row)
    return rows


def evaluate_v2(encoders: dict[str, list[torch.nn.Module]], train: Split, val: Split,
                open_test: Callable[[], Split], classes: int, dataset: str,
                plan: ProtocolV2 | None = None,
                log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Fit and tune everything on train and validation, then open the test split once and
    score. `open_test` is called exactly once, after every choice has been made."""
    plan = plan or ProtocolV2()
    fits = fit_all(encoders, train, val, classes, plan, log)
    return score_all(fits, encoders, open_test(), dataset, plan)


def card_rows(rows: list[dict[str, Any]], replicates: dict[str, list[int]],
              baseline: str = "random_init") -> list[dict[str, Any]]:
    """Protocol v2 results as encoder-card evaluation rows: one per arm, protocol, fraction
    and metric; the baseline's protocols carry its prefix (random_init_linear_probe...)."""
    out = []
    for row in rows:
        protocol = row["protocol"] if row["arm"] != baseline else f"{baseline}_{row['protocol']}"
        chosen = row.get("chosen") or []
        tuned_key = next((k for k in ("weight_decay", "k") if chosen and k in chosen[0]), None)
        vs = row.get("vs_" + baseline)
        for metric in ("auc", "acc", "balanced_acc"):
            entry: dict[str, Any] = {
                "dataset": row["dataset"], "protocol": protocol,
                "label_fraction": row["label_fraction"], "metric": metric.upper(),
                "value": row[metric], "spread": row[f"{metric}_sd"],
                "seeds": sorted({c.get("subset_seed", 0) for c in chosen}) if chosen and
                "subset_seed" in chosen[0] else [],
                "replicates": replicates.get(row["arm"], []), "runs": row["runs"],
                "split": row["split"], "protocol_version": 2,
                "majority_rate": row["majority_rate"]}
            if row.get("test_noise"):
                entry["test_noise"] = row["test_noise"]
            if tuned_key:
                entry["tuned"] = {"name": tuned_key, "grid": row.get("grid"),
                                  "chosen": [c[tuned_key] for c in chosen]}
            if vs and metric == "auc":
                entry["difference_ci95"] = (vs["diff_lo"], vs["diff_hi"])
                entry["difference_vs_best_ci95"] = (vs["vs_best_lo"], vs["vs_best_hi"])
            out.append(entry)
    return out
