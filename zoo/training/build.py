"""Build an encoder from a recipe: ask the rules engine how, pretrain, evaluate against
baselines in the same run, write the card and fp16 safetensors, and register.

A recipe is data (zoo/training/recipes/*.yaml). The recommendation for the recipe's profile
supplies augmentations to use and avoid and the method's hyperparameters; the recipe may
override hyperparameters, and says so in the card.
"""

from __future__ import annotations

import inspect
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from zoo.architectures import build_encoder
from zoo.cards import EncoderCard
from zoo.datasets.readers import Dataset, load_dataset
from zoo.presets import preset

from .augment import Policy
from .evaluate import (
    FineTuneConfig,
    features,
    fine_tune,
    knn,
    label_subset,
    linear_probe,
    medmnist_metrics,
)
from .pretext.registry import OBJECTIVES, build_objective
from .train import TrainConfig, pretrain

RECIPES_DIR = Path(__file__).with_name("recipes")
SEED_DIR = Path(__file__).resolve().parents[1] / "seed"


class EvalPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fractions: list[float] = [0.01, 0.1, 1.0]
    seeds: list[int] = [0, 1, 2]
    protocols: list[str] = ["linear_probe", "knn"]
    fine_tune_fractions: list[float] = [0.1]
    fine_tune_seeds: list[int] = [0]
    fine_tune_epochs: int = 10


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    method: str
    dataset: str
    architecture: dict[str, Any] = Field(
        description="A preset name from zoo/presets.yaml (e.g. resnet18-2d), or "
                    "{name, args} for build_encoder.")
    profile: dict[str, Any]
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    evaluate: EvalPlan = Field(default_factory=EvalPlan)
    description: str = ""

    @field_validator("architecture", mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return preset(value).spec()
            except KeyError as err:
                raise ValueError(err.args[0]) from None
        return value


def load_recipes(names: list[str] | None = None) -> list[tuple[Path, Recipe]]:
    paths = sorted(RECIPES_DIR.glob("*.yaml"))
    out = []
    for path in paths:
        recipe = Recipe.model_validate(yaml.safe_load(path.read_text()))
        if not names or path.stem in names or recipe.name in names:
            out.append((path, recipe))
    if names:
        found = {p.stem for p, _ in out} | {r.name for _, r in out}
        missing = [n for n in names if n not in found]
        if missing:
            raise ValueError(f"unknown recipes {missing}; known: "
                             f"{', '.join(p.stem for p in paths)}")
    return out


@dataclass
class Plan:
    hyperparameters: dict[str, Any]
    policy: Policy
    family: str
    recommended_rank: int | None
    notes: list[str] = field(default_factory=list)


def plan_from_rules(recipe: Recipe, channels: int) -> Plan:
    from rules import TaskProfile, default_engine

    engine = default_engine()
    rec = engine.recommend(TaskProfile.model_validate({**recipe.profile, "top_k": 100}))
    method = next((r for r in rec.recommendations if r.id == recipe.method), None)
    if method is None:
        why = next((e.reasons for e in rec.excluded if e.id == recipe.method), ["not ranked"])
        raise ValueError(f"the rules exclude {recipe.method} for this profile: {why}")
    cls, _ = OBJECTIVES[recipe.method]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "encoder"}
    hp = {k: v for k, v in method.hyperparameters.items() if k in accepted}
    notes = []
    for k, v in recipe.hyperparameters.items():
        if k in hp and hp[k] != v:
            notes.append(f"{k}: recipe {v} overrides the recommended {hp[k]}")
        hp[k] = v
    crop = method.hyperparameters.get("crop_scale") or method.hyperparameters.get(
        "global_crop_scale") or [0.3, 1.0]
    policy = Policy.build(method.augmentations.use,
                          [a.name for a in method.augmentations.avoid], channels, crop)
    return Plan(hp, policy, method.family, method.rank, notes)


def evaluate_encoder(encoder: torch.nn.Module, ds: Dataset, plan: EvalPlan, label: str,
                     log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Linear probe / kNN / fine-tune at label fractions; mean and spread over seeds. No
    protocols (an unlabelled set with nothing to evaluate on): no results."""
    if not plan.protocols:
        return []
    train, val, test = ds.splits["train"], ds.splits["val"], ds.splits["test"]
    k = ds.num_classes
    results = []
    frozen = {"linear_probe", "knn"} & set(plan.protocols)
    if frozen:
        f_train, f_test = features(encoder, train.images), features(encoder, test.images)
    for protocol in plan.protocols:
        fractions = plan.fine_tune_fractions if protocol == "fine_tune" else plan.fractions
        seeds = plan.fine_tune_seeds if protocol == "fine_tune" else plan.seeds
        for fraction in fractions:
            scores = []
            for seed in seeds:
                idx = label_subset(train.labels, fraction, seed)
                if protocol == "linear_probe":
                    probs = linear_probe(f_train[idx], train.labels[idx], f_test, k, seed)
                elif protocol == "knn":
                    probs = knn(f_train[idx], train.labels[idx], f_test, k,
                                k=min(20, max(1, len(idx) // 2)))
                else:
                    probs = fine_tune(encoder, train.images[idx], train.labels[idx], val.images,
                                      val.labels, test.images, k,
                                      FineTuneConfig(epochs=plan.fine_tune_epochs, seed=seed))
                scores.append(medmnist_metrics(probs, test.labels))
            for metric in ("auc", "acc"):
                values = [s[metric] for s in scores]
                results.append({
                    "dataset": ds.name, "protocol": f"{label}{protocol}",
                    "label_fraction": fraction, "metric": metric.upper(),
                    "value": round(statistics.fmean(values), 4),
                    "spread": round(statistics.stdev(values), 4) if len(values) > 1 else None,
                    "seeds": seeds, "split": "test"})
            log(f"  {label}{protocol:12s} {fraction:>5.0%} AUC "
                f"{results[-2]['value']:.3f} ACC {results[-1]['value']:.3f}")
    return results


def build(recipe: Recipe, out_dir: Path | None = None, data_dir: Path | None = None,
          log: Callable[[str], None] = print,
          on_step: Callable[[int, int, torch.Tensor], None] | None = None,
          dataset: Dataset | None = None, eval_dataset: Dataset | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Train, evaluate and save one encoder; returns the folder with card and weights.
    `dataset` (already loaded, e.g. a user's upload) replaces the recipe's named one;
    `eval_dataset` (labelled) is evaluated on instead of it, as an unlabelled one must be."""
    from safetensors.torch import save_file

    ds = dataset or load_dataset(recipe.dataset, data_dir)
    plan = plan_from_rules(recipe, ds.channels)
    log(f"{recipe.name}: {recipe.method} on {ds.name} ({len(ds.splits['train'])} train images)"
        f", recommended rank {plan.recommended_rank}, hyperparameters {plan.hyperparameters}, "
        f"augmentations {sorted(plan.policy.ops)}")
    cfg = TrainConfig(**recipe.train)
    torch.manual_seed(cfg.seed)
    args = dict(recipe.architecture.get("args", {}))
    encoder = build_encoder(recipe.architecture["name"], ds.spatial_dims, ds.channels,
                            ds.image_size, args)
    objective = build_objective(recipe.method, encoder, **plan.hyperparameters)
    out = Path(out_dir or SEED_DIR) / recipe.name
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    history = pretrain(objective, ds.splits["train"].images, plan.policy, cfg,
                       groups=ds.splits["train"].groups, metrics_path=metrics_path,
                       on_epoch=lambda r: (log(f"  epoch {r['epoch']:3d} loss {r['loss']:.4f} "
                                               f"{r['images_per_s']:.0f} img/s"),
                                           on_epoch and on_epoch(r)),
                       on_step=on_step)
    train_s = time.perf_counter() - t0
    encoder = objective.encoder.cpu().float().eval()
    scored = eval_dataset or ds
    evaluations = evaluate_encoder(encoder, scored, recipe.evaluate, "", log)
    torch.manual_seed(cfg.seed)
    random_init = build_encoder(recipe.architecture["name"], ds.spatial_dims, ds.channels,
                                ds.image_size, args).eval()
    evaluations += evaluate_encoder(random_init, scored, recipe.evaluate, "random_init_", log)
    info = ds.info
    card = EncoderCard(
        name=recipe.name,
        architecture={"name": recipe.architecture["name"], "args": args},
        spatial_dims=ds.spatial_dims, in_channels=ds.channels, input_size=ds.image_size,
        normalization={"mean": [0.5] * ds.channels, "std": [0.5] * ds.channels},
        modality=recipe.profile["modality"],
        pretext={"method_id": recipe.method, "family": plan.family,
                 "hyperparameters": {**plan.hyperparameters,
                                     "augmentations": sorted(plan.policy.ops),
                                     "train": {**cfg.__dict__, "seconds": round(train_s, 1),
                                               "final_loss": history[-1]["loss"]}}},
        pretraining_data={"name": ds.name, "licence": info.get("licence", "not stated"),
                          "split": "train", "images": len(ds.splits["train"]),
                          "citation": info.get("citation")},
        weights_licence="CC-BY-4.0",
        evaluation=evaluations,
        description=recipe.description or (
            f"{recipe.method} on {ds.name}, trained by `taskalign zoo build` in "
            f"{train_s / 60:.1f} min ({history[-1]['device']}). Evaluations use the official "
            "test split; random_init rows are the same architecture untrained, same run."),
        lineage={"recipe": recipe.name, "notes": plan.notes},
    )
    state = {k: v.half().contiguous() if v.is_floating_point() else v.contiguous()
             for k, v in encoder.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    (out / "card.json").write_text(card.model_dump_json(indent=2) + "\n")
    log(f"saved {out} ({(out / 'model.safetensors').stat().st_size / 1e6:.1f} MB) "
        f"in {(time.perf_counter() - t0) / 60:.1f} min")
    return out


def seed_folders(root: Path | None = None) -> list[Path]:
    root = root or SEED_DIR
    return sorted(p for p in root.iterdir() if (p / "card.json").exists()
                  and (p / "model.safetensors").exists()) if root.exists() else []


def register_seed_zoo(registry: Any, root: Path | None = None,
                      log: Callable[[str], None] = print) -> list[str]:
    """Register every shipped seed encoder the registry does not have yet."""
    from zoo.access import ORG, SYSTEM, repo_id
    from zoo.registry import RegistrationError, prepare

    added = []
    known = set(registry.names(SYSTEM))
    for folder in seed_folders(root):
        card = json.loads((folder / "card.json").read_text())
        repo = repo_id(ORG, card["name"])
        if repo in known:
            continue
        try:
            prepared = prepare(card, (folder / "model.safetensors").read_bytes())
            registry.register(prepared, family=card.get("pretext", {}).get("family"),
                              owner=ORG, private=False)
            added.append(repo)
        except RegistrationError as err:
            log(f"seed encoder {folder.name} refused: {err}")
    return added
