"""Label efficiency for segmentation: SSL-initialised vs random-init U-Net, same run.

For each dataset, the encoder the rules engine ranks first among the implemented
objectives for that dataset's segmentation profile is pretrained on the training images
(masks unused), then a U-Net (`zoo.segmentation`) is fine-tuned from it and from random
weights at each label fraction and training seed, with identical settings: the epoch
with the best validation Dice is kept and the test split is scored once. Results go to
`results.jsonl` (one line per run, written as each ends) and a summary table; the
pretrained encoders are saved as seed-zoo folders (card.json + model.safetensors).

    .venv/bin/python bench/seg_study.py --device cuda --out study/      # the full study
    .venv/bin/python bench/seg_study.py --limit 16 --steps 20 --pretrain-epochs 1  # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zoo.architectures import build_encoder  # noqa: E402
from zoo.cards import EncoderCard  # noqa: E402
from zoo.datasets.base import Dataset, Split  # noqa: E402
from zoo.datasets.readers import load_npz  # noqa: E402
from zoo.segmentation import segmenter_from_encoder  # noqa: E402
from zoo.training.build import Recipe, plan_from_rules  # noqa: E402
from zoo.training.pretext.registry import OBJECTIVES, build_objective  # noqa: E402
from zoo.training.segment import SegmentSettings, finetune_segmenter  # noqa: E402
from zoo.training.train import TrainConfig, pretrain  # noqa: E402

# dataset -> (file, preset, profile for the rules, fine-tune batch, pretrain batch)
STUDIES: dict[str, dict[str, Any]] = {
    "kvasirseg": {"file": "kvasirseg_128.npz", "preset": "resnet18-2d",
                  "profile": {"task": "segmentation", "modality": "endoscopy",
                              "anatomy": "colon", "dimensionality": "2d"},
                  "batch": 16, "pretrain_batch": 128},
    "hippocampus": {"file": "hippocampus3d_48x64x48.npz", "preset": "resnet10-3d",
                    "profile": {"task": "segmentation", "modality": "mri",
                                "anatomy": "brain", "dimensionality": "3d"},
                    "batch": 4, "pretrain_batch": 32},
}
LICENCES = {"kvasirseg": "research and education only (Simula)",
            "hippocampus": "CC-BY-SA-4.0"}
WEIGHTS_LICENCES = {"kvasirseg": "research-only", "hippocampus": "CC-BY-SA-4.0"}
STUDY_FILES = {name: Path(study["file"]).stem for name, study in STUDIES.items()}


def cut(ds: Dataset, limit: int | None) -> Dataset:
    if not limit:
        return ds
    return Dataset(ds.name, {k: Split(s.images[:limit], None, masks=s.masks[:limit])
                             for k, s in ds.splits.items()}, ds.info)


def top_method(profile: dict[str, Any]) -> str:
    """The implemented objective the rules rank first for this profile."""
    from rules import TaskProfile, default_engine

    rec = default_engine().recommend(TaskProfile.model_validate(
        {**profile, "label_regime": "low", "top_k": 100}))
    return next(r.id for r in rec.recommendations if r.id in OBJECTIVES)


def default_recipe(name: str, study: dict[str, Any], method: str,
                   args: argparse.Namespace) -> Recipe:
    return Recipe(name=f"{study['preset']}.{method.replace('_', '-')}-{name}", method=method,
                  dataset=STUDY_FILES[name], architecture=study["preset"],
                  profile={**study["profile"], "label_regime": "low"},
                  train={"epochs": args.pretrain_epochs, "batch_size": study["pretrain_batch"],
                         "lr": args.pretrain_lr})


def pretrain_encoder(name: str, study: dict[str, Any], ds: Dataset, recipe: Recipe,
                     args: argparse.Namespace, out: Path) -> torch.nn.Module:
    from safetensors.torch import save_file

    method = recipe.method
    plan = plan_from_rules(recipe, ds.channels)
    plan.hyperparameters.update(recipe.hyperparameters)
    arch = recipe.architecture
    torch.manual_seed(0)
    encoder = build_encoder(arch["name"], ds.spatial_dims, ds.channels, ds.image_size,
                            arch.get("args"))
    objective = build_objective(method, encoder, **plan.hyperparameters)
    train = {"epochs": args.pretrain_epochs, "batch_size": study["pretrain_batch"],
             "lr": args.pretrain_lr, **recipe.train}
    config = TrainConfig(**train, device=args.device, seed=0,
                         max_steps=args.pretrain_steps)
    t0 = time.perf_counter()
    history = pretrain(objective, ds.splits["train"].images, plan.policy, config,
                       on_epoch=lambda r: print(f"  pretrain {r['epoch']:3d} loss "
                                                f"{r['loss']:.4f} {r['images_per_s']:.0f} "
                                                "img/s", flush=True))
    seconds = time.perf_counter() - t0
    encoder = objective.encoder.cpu().float().eval()
    folder = out / recipe.name
    folder.mkdir(parents=True, exist_ok=True)
    card = EncoderCard(
        name=recipe.name, architecture=arch, spatial_dims=ds.spatial_dims,
        in_channels=ds.channels, input_size=ds.image_size,
        normalization={"mean": [0.5] * ds.channels, "std": [0.5] * ds.channels},
        modality=study["profile"]["modality"],
        pretext={"method_id": method, "family": plan.family,
                 "hyperparameters": {**plan.hyperparameters,
                                     "augmentations": sorted(plan.policy.ops),
                                     "train": {**config.__dict__, "seconds": round(seconds, 1),
                                               "final_loss": history[-1]["loss"]}}},
        pretraining_data={"name": recipe.dataset, "licence": LICENCES[name], "split": "train",
                          "images": len(ds.splits["train"]), "citation": None},
        weights_licence=WEIGHTS_LICENCES[name],
        description=(f"{method} on the {recipe.dataset} training images (masks unused) at "
                     f"{'x'.join(map(str, ds.image_size))}, by bench/seg_study.py in "
                     f"{seconds / 60:.1f} min on {history[-1]['device']}; see "
                     "docs/alignment-study.md for its segmentation label efficiency."),
        lineage={"recipe": recipe.name, "notes": plan.notes})
    state = {k: v.half().contiguous() if v.is_floating_point() else v.contiguous()
             for k, v in encoder.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "card.json").write_text(card.model_dump_json(indent=2) + "\n")
    print(f"{recipe.name}: pretrained in {seconds:.0f} s, saved to {folder}", flush=True)
    return encoder


def fresh_encoder(arch: dict[str, Any], ds: Dataset, seed: int) -> torch.nn.Module:
    """The recipe's architecture with random weights (the baseline arm)."""
    torch.manual_seed(seed)
    return build_encoder(arch["name"], ds.spatial_dims, ds.channels, ds.image_size,
                         arch.get("args"))


def finetune(encoder: torch.nn.Module, ds: Dataset, study: dict[str, Any], fraction: float,
             seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One run: the same steps whatever the fraction (epochs scale up as masks shrink)."""
    import copy

    masked = max(1, round(len(ds.splits["train"]) * fraction))
    per_epoch = max(1, masked // study["batch"])
    epochs = max(1, min(args.max_epochs, math.ceil(args.steps / per_epoch)))
    torch.manual_seed(seed)
    model = segmenter_from_encoder(copy.deepcopy(encoder), len(ds.info["mask_classes"]),
                                   ds.image_size, [0.5], [0.5])
    settings = SegmentSettings(label_fraction=fraction, seed=seed, epochs=epochs,
                               lr=args.lr, batch_size=study["batch"],
                               device=torch.device(args.device), augmentations=args.augment)
    outcome = finetune_segmenter(model, ds, settings)
    return {"epochs": epochs, "masked": outcome.labelled, "seconds": round(outcome.seconds, 1),
            "val_dice": outcome.report.get("val_dice"), "test": outcome.metrics}


def summarise(rows: list[dict[str, Any]]) -> str:
    lines = ["| dataset | init | label fraction | test Dice (mean ± s.d.) | seeds | "
             "val Dice | HD95 mm |", "|---|---|---|---|---|---|---|"]
    keys = sorted({(r["dataset"], r["init"], r["fraction"]) for r in rows})
    for dataset, init, fraction in keys:
        group = [r for r in rows if (r["dataset"], r["init"], r["fraction"]) ==
                 (dataset, init, fraction)]
        dice = [r["test"]["dice"] for r in group]
        val = [r["val_dice"] for r in group if r["val_dice"] is not None]
        hd = [r["test"]["hd95_mm"] for r in group if r["test"].get("hd95_mm") is not None]
        sd = statistics.stdev(dice) if len(dice) > 1 else float("nan")
        lines.append(f"| {dataset} | {init} | {fraction:g} | {statistics.fmean(dice):.4f} ± "
                     f"{sd:.4f} | {len(dice)} | "
                     f"{statistics.fmean(val):.4f} | "
                     f"{statistics.fmean(hd) if hd else float('nan'):.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=list(STUDIES), choices=list(STUDIES))
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" /
                    "segmentation")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.1, 1.0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=1000, help="optimiser steps per run")
    ap.add_argument("--max-epochs", type=int, default=250)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--augment", nargs="*", default=["horizontal_flip", "small_rotation"])
    ap.add_argument("--pretrain-epochs", type=int, default=100)
    ap.add_argument("--pretrain-lr", type=float, default=1e-3)
    ap.add_argument("--method", default=None, help="default: the rules' top implemented one")
    ap.add_argument("--recipes", nargs="+", default=None,
                    help="segmentation recipes (zoo/training/recipes) to pretrain and study "
                         "instead of --datasets/--method: their method, architecture, "
                         "profile and pretraining settings")
    ap.add_argument("--pretrain-steps", type=int, default=None,
                    help="stop pretraining after this many steps (smoke runs)")
    ap.add_argument("--limit", type=int, default=None, help="images per split (smoke runs)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="start no new run after this many seconds")
    ap.add_argument("--out", type=Path, default=ROOT / "var" / "seg_study")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    results = args.out / "results.jsonl"
    rows: list[dict[str, Any]] = []
    if args.recipes:
        from zoo.training.build import load_recipes

        by_file = {f: n for n, f in STUDY_FILES.items()}
        jobs = [(by_file[r.dataset], r) for _, r in load_recipes(args.recipes)]
    else:
        jobs = [(name, default_recipe(name, STUDIES[name],
                                      args.method or top_method(STUDIES[name]["profile"]),
                                      args)) for name in args.datasets]
    for name, recipe in jobs:
        study = STUDIES[name]
        ds = cut(load_npz(args.data_dir / study["file"], name), args.limit)
        method = recipe.method
        print(f"{name}: {len(ds.splits['train'])} train images {ds.image_size}, "
              f"{ds.info.get('mask_classes')}; SSL = {recipe.name}", flush=True)
        ssl = pretrain_encoder(name, study, ds, recipe, args, args.out)
        for fraction in args.fractions:  # both inits at one fraction before the next
            for seed in args.seeds:
                for init in ("random", method):
                    if args.budget_s and time.monotonic() - start > args.budget_s:
                        print("budget spent: no new runs", flush=True)
                        break
                    encoder = ssl if init == method else fresh_encoder(
                        recipe.architecture, ds, seed)
                    run = finetune(encoder, ds, study, fraction, seed, args)
                    row = {"dataset": name, "init": init, "fraction": fraction, "seed": seed,
                           "device": args.device, **run}
                    rows.append(row)
                    with results.open("a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    print(f"  {init:15s} {fraction:>4.0%} seed {seed}: test Dice "
                          f"{run['test']['dice']:.4f} (val {run['val_dice']}) "
                          f"{run['epochs']} epochs {run['seconds']:.0f} s", flush=True)
    table = summarise(rows)
    (args.out / "summary.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
