"""Build an encoder from a recipe: ask the rules engine how, pretrain, evaluate against
baselines in the same run, write the card and fp16 safetensors, and register.

A recipe is data (zoo/training/recipes/*.yaml). The recommendation for the recipe's profile
supplies augmentations to use and avoid and the method's hyperparameters; the recipe may
override hyperparameters, and says so in the card.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from zoo.architectures import build_encoder
from zoo.cards import EncoderCard
from zoo.datasets.readers import Dataset, load_dataset
from zoo.presets import preset
from zoo.storage import sha256_file, write_atomic

from .augment import Policy
from .pretext.registry import OBJECTIVES, build_objective
from .protocol import ProtocolV2, card_rows, evaluate_v2, parse_noise
from .train import TrainConfig, pretrain

RECIPES_DIR = Path(__file__).with_name("recipes")
SEED_DIR = Path(__file__).resolve().parents[1] / "seed"


class EvalPlan(BaseModel):
    """Protocol v2 (zoo/training/protocol.py) as a recipe states it."""

    model_config = ConfigDict(extra="forbid")

    fractions: list[float] = [0.01, 0.1, 1.0]
    seeds: list[int] = Field([0, 1, 2], description="Label-subset seeds.")
    protocols: list[str] = ["linear_probe", "knn"]
    fine_tune_fractions: list[float] = [0.1]
    fine_tune_epochs: int = 10
    pretrain_seeds: list[int] | None = Field(
        None, description="Pretraining runs, one per seed; the first is the one shipped. "
                          "None: the recipe's own train seed only.")
    inits: list[int] = Field([0, 1, 2], description="Random-init baselines, one per seed.")
    bootstrap: int = Field(1000, ge=100, le=10000)
    test_noise: list[str] = Field(default_factory=list, description="Robustness rows: the "
                                  "probes scored again on noisy test images, e.g. "
                                  "gaussian:0.1, speckle:0.2.")

    @field_validator("test_noise")
    @classmethod
    def _noise(cls, value: list[str]) -> list[str]:
        for noise in value:
            parse_noise(noise)
        return value

    def protocol(self) -> ProtocolV2:
        return ProtocolV2(fractions=self.fractions, subset_seeds=self.seeds,
                          protocols=self.protocols, bootstrap=self.bootstrap,
                          fine_tune_epochs=self.fine_tune_epochs,
                          fine_tune_fractions=self.fine_tune_fractions,
                          test_noise=self.test_noise)


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
    weights_licence: str = Field("CC-BY-4.0", description="Follows the pretraining data's "
                                 "terms, e.g. CC-BY-NC-4.0 for weights trained on NC images.")

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


def evaluate(ssl: list[torch.nn.Module], inits: list[torch.nn.Module], ds: Dataset,
             plan: EvalPlan, replicates: dict[str, list[int]],
             log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Protocol v2 card rows for SSL replicates against random inits; no protocols (an
    unlabelled set with nothing to evaluate on): no rows."""
    if not plan.protocols:
        return []
    arms = {"ssl": ssl, "random_init": inits} if ssl else {"random_init": inits}
    rows = evaluate_v2(arms, ds.splits["train"], ds.splits["val"],
                       lambda: ds.splits["test"], ds.num_classes, ds.name, plan.protocol(), log)
    for row in rows:
        vs = row.get("vs_random_init")
        gap = (f" SSL-init [{vs['diff_lo']:+.3f}, {vs['diff_hi']:+.3f}]" if vs else "")
        log(f"  {row['arm']:>11s} {row['protocol']:12s} {row['label_fraction']:>5.0%} AUC "
            f"{row['auc']:.3f}±{row['auc_sd'] or 0:.3f} ACC {row['acc']:.3f} (majority "
            f"{row['majority_rate']:.3f}){gap}")
    return card_rows(rows, replicates)


def random_inits(architecture: dict[str, Any], ds: Dataset, seeds: list[int]
                 ) -> list[torch.nn.Module]:
    """One untrained encoder per seed, {name, args} as a recipe or card states it."""
    arch = architecture
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        out.append(build_encoder(arch["name"], ds.spatial_dims, ds.channels, ds.image_size,
                                 dict(arch.get("args", {}))).eval())
    return out


def pretrain_replicates(recipe: Recipe, ds: Dataset, plan: Plan, cfg: TrainConfig,
                        seeds: list[int], log: Callable[[str], None] = print,
                        metrics_path: Path | None = None,
                        on_step: Callable[[int, int, torch.Tensor], None] | None = None,
                        on_epoch: Callable[[dict[str, Any]], None] | None = None,
                        ) -> tuple[list[torch.nn.Module], list[float], list[dict[str, Any]]]:
    """One pretraining run per seed (the seed fixes the initial weights and the views);
    returns the encoders, seconds per run and the first run's per-epoch history, which is
    the one `metrics_path` records."""
    args = dict(recipe.architecture.get("args", {}))
    encoders, seconds, history = [], [], []
    for i, seed in enumerate(seeds):
        if len(seeds) > 1:
            log(f"  pretraining seed {seed} ({i + 1} of {len(seeds)})")
        torch.manual_seed(seed)
        encoder = build_encoder(recipe.architecture["name"], ds.spatial_dims, ds.channels,
                                ds.image_size, args)
        objective = build_objective(recipe.method, encoder, **plan.hyperparameters)
        started = time.perf_counter()

        def step(done: int, total: int, loss: torch.Tensor, i: int = i) -> None:
            # one progress bar over every run: the runs have the same number of steps
            if on_step is not None:
                on_step(i * total + done, len(seeds) * total, loss)

        run = pretrain(objective, ds.splits["train"].images, plan.policy,
                       replace(cfg, seed=seed), groups=ds.splits["train"].groups,
                       metrics_path=metrics_path if i == 0 else None, on_epoch=on_epoch,
                       on_step=step)
        seconds.append(round(time.perf_counter() - started, 1))
        history = history or run
        encoders.append(objective.encoder.cpu().float().eval())
    return encoders, seconds, history


def build(recipe: Recipe, out_dir: Path | None = None, data_dir: Path | None = None,
          log: Callable[[str], None] = print,
          on_step: Callable[[int, int, torch.Tensor], None] | None = None,
          dataset: Dataset | None = None, eval_dataset: Dataset | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Train, evaluate and save one encoder; returns the folder with card and weights.
    `dataset` (already loaded, e.g. a user's upload) replaces the recipe's named one;
    `eval_dataset` (labelled) is evaluated on instead of it, as an unlabelled one must be."""
    from safetensors.torch import save

    ds = dataset or load_dataset(recipe.dataset, data_dir)
    plan = plan_from_rules(recipe, ds.channels)
    log(f"{recipe.name}: {recipe.method} on {ds.name} ({len(ds.splits['train'])} train images)"
        f", recommended rank {plan.recommended_rank}, hyperparameters {plan.hyperparameters}, "
        f"augmentations {sorted(plan.policy.ops)}")
    cfg = TrainConfig(**recipe.train)
    seeds = recipe.evaluate.pretrain_seeds or [cfg.seed]
    args = dict(recipe.architecture.get("args", {}))
    out = Path(out_dir or SEED_DIR) / recipe.name
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    encoders, seconds, history = pretrain_replicates(
        recipe, ds, plan, cfg, seeds, log=log, metrics_path=metrics_path, on_step=on_step,
        on_epoch=lambda r: (log(f"  epoch {r['epoch']:3d} loss {r['loss']:.4f} "
                                f"{r['images_per_s']:.0f} img/s"), on_epoch and on_epoch(r)))
    train_s = seconds[0]
    encoder = encoders[0]
    scored = eval_dataset or ds
    inits = random_inits(recipe.architecture, ds, recipe.evaluate.inits)
    evaluations = evaluate(encoders, inits, scored, recipe.evaluate,
                           {"ssl": seeds, "random_init": recipe.evaluate.inits}, log)
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
                                     "train": {**cfg.__dict__, "seed": seeds[0],
                                               "device": history[-1]["device"],
                                               # CPU results depend on the thread count
                                               "cpu_threads": torch.get_num_threads(),
                                               "torch": torch.__version__.split("+")[0],
                                               "seconds": train_s,
                                               "final_loss": history[-1]["loss"]}}},
        pretraining_data={"name": ds.name, "licence": info.get("licence", "not stated"),
                          "split": "train", "images": len(ds.splits["train"]),
                          "citation": info.get("citation")},
        weights_licence=recipe.weights_licence,
        evaluation=evaluations,
        evaluation_protocol=recipe.evaluate.protocol().describe() if evaluations else None,
        description=recipe.description or (
            f"{recipe.method} on {ds.name}, trained by `taskalign zoo build` in "
            f"{train_s / 60:.1f} min ({history[-1]['device']}). Evaluations use the official "
            "test split; random_init rows are the same architecture untrained, same run."),
        lineage={"recipe": recipe.name, "notes": plan.notes, "pretrain_seeds": seeds,
                 "pretrain_seconds": seconds, "shipped_seed": seeds[0]},
    )
    state = {k: v.half().contiguous() if v.is_floating_point() else v.contiguous()
             for k, v in encoder.state_dict().items()}
    write_atomic(out / "model.safetensors", save(state))
    write_atomic(out / "card.json", (card.model_dump_json(indent=2) + "\n").encode())
    pin_folder(out)
    log(f"saved {out} ({(out / 'model.safetensors').stat().st_size / 1e6:.1f} MB) "
        f"in {(time.perf_counter() - t0) / 60:.1f} min")
    return out


COMPARED_FIELDS = ("value", "spread", "majority_rate", "difference_ci95",
                   "difference_vs_best_ci95")


def card_differences(shipped: dict[str, Any], rebuilt: dict[str, Any],
                     tolerance: float = 0.0) -> list[str]:
    """Where a rebuilt card's evaluation differs from the shipped one by more than
    `tolerance` (rows missing on either side included): empty when it reproduces."""

    def key(e: dict[str, Any]) -> tuple[Any, ...]:
        return e["protocol"], e["label_fraction"], e["metric"], e.get("test_noise")

    def close(x: Any, y: Any) -> bool:
        if x is None or y is None:
            return x is None and y is None
        if isinstance(x, list | tuple):
            return len(x) == len(y) and all(close(a, b) for a, b in zip(x, y, strict=True))
        return abs(x - y) <= tolerance

    a = {key(e): e for e in shipped.get("evaluation", [])}
    b = {key(e): e for e in rebuilt.get("evaluation", [])}
    out = []
    for k in sorted(a.keys() | b.keys(), key=str):
        if k not in a or k not in b:
            out.append(f"{k}: only in the {'rebuilt' if k in b else 'shipped'} card")
            continue
        out += [f"{k} {f}: shipped {a[k].get(f)}, rebuilt {b[k].get(f)}"
                for f in COMPARED_FIELDS if not close(a[k].get(f), b[k].get(f))]
    return out


def seed_folders(root: Path | None = None) -> list[Path]:
    root = root or SEED_DIR
    return sorted(p for p in root.iterdir() if (p / "card.json").exists()
                  and (p / "model.safetensors").exists()) if root.exists() else []


# Every shipped seed file's sha256, kept beside them (`<sha256>  <folder>/<file>`, the
# format `sha256sum -c` reads). Start-up registers a seed only when its card and weights
# match; the ONNX graph, README and config.json are generated from them at registration.
PINS = "SHA256SUMS"
PINNED_FILES = ("card.json", "model.safetensors", "metrics.jsonl")


def read_pins(root: Path) -> dict[str, str]:
    path = root / PINS
    if not path.exists():
        return {}
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            pins[name.strip()] = digest
    return pins


def pin_folder(folder: Path) -> None:
    """Record the sha256 of a (re)built seed folder's files in its parent's SHA256SUMS."""
    root = folder.parent
    pins = {k: v for k, v in read_pins(root).items()
            if not k.startswith(f"{folder.name}/")}
    for name in PINNED_FILES:
        if (folder / name).exists():
            pins[f"{folder.name}/{name}"] = sha256_file(folder / name)
    write_atomic(root / PINS, "".join(f"{d}  {n}\n" for n, d in sorted(pins.items())).encode())


def pin_mismatches(folder: Path, pins: dict[str, str],
                   contents: dict[str, bytes] | None = None) -> list[str]:
    """Files of a seed folder that are not pinned or differ from their pin; `contents`
    (name -> bytes already read) is checked instead of the files, so that what is
    registered is exactly what was hashed."""
    import hashlib

    bad = []
    for name in ("card.json", "model.safetensors"):
        key = f"{folder.name}/{name}"
        digest = (hashlib.sha256(contents[name]).hexdigest() if contents and name in contents
                  else sha256_file(folder / name))
        if key not in pins:
            bad.append(f"{key} is not pinned in {PINS}")
        elif digest != pins[key]:
            bad.append(f"{key} does not match its pinned sha256")
    return bad


def register_seed_zoo(registry: Any, root: Path | None = None,
                      log: Callable[[str], None] = print) -> list[str]:
    """Register every shipped seed encoder the registry does not have yet."""
    from zoo.access import ORG, SYSTEM, repo_id
    from zoo.registry import RegistrationError, prepare

    added = []
    known = set(registry.names(SYSTEM))
    folders = seed_folders(root)
    pins = read_pins(folders[0].parent) if folders else {}
    for folder in folders:
        contents = {name: (folder / name).read_bytes()
                    for name in ("card.json", "model.safetensors")}
        bad = pin_mismatches(folder, pins, contents)
        if bad:
            log(f"seed encoder {folder.name} refused: {'; '.join(bad)}")
            continue
        card = json.loads(contents["card.json"])
        repo = repo_id(ORG, card["name"])
        if repo in known:
            continue
        try:
            prepared = prepare(card, contents["model.safetensors"])
            registry.register(prepared, family=card.get("pretext", {}).get("family"),
                              owner=ORG, private=False)
            added.append(repo)
        except RegistrationError as err:
            log(f"seed encoder {folder.name} refused: {err}")
    return added
