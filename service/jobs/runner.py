"""Runs one job in its own process: `python -m service.jobs.runner JOB_ID`.

The worker starts it, heartbeats for it and kills it on cancel; the runner itself loads
data and encoder, trains, reports progress and events, and registers the result.
"""

from __future__ import annotations

import sys
import time
import traceback
from typing import Any

import torch

from zoo.catalog import DatasetRow
from zoo.datasets.readers import Dataset, load_folder, load_npz

from ..config import get_settings
from ..db import make_engine, session_factory
from . import queue
from .models import JobRow


def load_job_dataset(row: DatasetRow, store: Any) -> Dataset:
    if row.kind == "path":
        from pathlib import Path

        p = Path(row.path)
        return load_npz(p, row.name) if p.suffix == ".npz" else load_folder(p)
    return load_npz(store.path(row.sha256), row.name)


def run_finetune(job: JobRow, sessions: Any, store: Any, log: Any) -> dict[str, Any]:
    from safetensors.torch import save

    from zoo.cards import StoredCard
    from zoo.loader import _build
    from zoo.registry import WEIGHTS, Registry, prepare
    from zoo.training.evaluate import (
        FineTuneConfig,
        features,
        fine_tune,
        label_subset,
        linear_probe,
        medmnist_metrics,
    )

    p = job.params
    registry = Registry(sessions, store)
    with sessions() as s:
        dataset_row = s.get(DatasetRow, p["dataset_id"])
    ds = load_job_dataset(dataset_row, store)
    rev = registry.revision(p["encoder"], p.get("encoder_revision"))
    weights = next(f for f in rev.files if f.filename == WEIGHTS)
    encoder = _build(rev.card, store.path(weights.sha256))
    parent = StoredCard.model_validate(rev.card)
    device = p["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with sessions.begin() as s:
        s.get(JobRow, job.id).device = device
    train, val, test = ds.splits["train"], ds.splits["val"], ds.splits["test"]
    idx = label_subset(train.labels, p["label_fraction"], p["seed"])
    k = ds.num_classes
    log(f"{p['mode']} on {len(idx)} of {len(train)} labelled images, {k} classes, {device}")
    start = time.monotonic()
    epochs = p["epochs"]
    queue.progress(sessions, job.id, {"phase": "training", "epoch": 0, "epochs": epochs},
                   line="first training step")
    if p["mode"] == "linear_probe":
        queue.progress(sessions, job.id, {"epoch": 0, "epochs": 1, "phase": "features"})
        f_train = features(encoder, train.images[idx], device=torch.device(device))
        f_test = features(encoder, test.images, device=torch.device(device))
        probs = linear_probe(f_train, train.labels[idx], f_test, k, p["seed"])
        model_encoder = encoder
        queue.progress(sessions, job.id, {"epoch": 1, "epochs": 1, "eta_s": 0})
    else:
        def on_epoch(epoch: int, val_auc: float) -> None:
            elapsed = time.monotonic() - start
            queue.progress(sessions, job.id,
                           {"epoch": epoch, "epochs": epochs,
                            "eta_s": round(elapsed / epoch * (epochs - epoch), 1)},
                           {"val_auc": round(val_auc, 4)},
                           f"epoch {epoch}/{epochs} val AUC {val_auc:.4f}")

        probs, model = fine_tune(encoder, train.images[idx], train.labels[idx], val.images,
                                 val.labels, test.images, k,
                                 FineTuneConfig(epochs=epochs, batch_size=p["batch_size"],
                                                lr=p["lr"], seed=p["seed"], device=device),
                                 on_epoch=on_epoch, return_model=True)
        model_encoder = model[0]
    test_metrics = medmnist_metrics(probs, test.labels)
    log(f"test AUC {test_metrics['auc']:.4f} ACC {test_metrics['acc']:.4f}")
    queue.progress(sessions, job.id, {"phase": "registering"},
                   {"test_auc": round(test_metrics["auc"], 4),
                    "test_acc": round(test_metrics["acc"], 4)})
    arch, _, _ = parent.name.partition(".")
    name = f"{arch}.ft-job{job.id}-{dataset_row.name.lower().replace('_', '-')}"[:96]
    card = parent.model_dump(include={"architecture", "spatial_dims", "in_channels",
                                      "input_size", "normalization", "pretext",
                                      "pretraining_data", "weights_licence"})
    card.update({
        "name": name,
        "modality": dataset_row.modality or parent.modality,
        "parent": parent.name,
        "lineage": {"parent": parent.name, "parent_revision": parent.revision,
                    "dataset_id": dataset_row.id, "dataset": dataset_row.name,
                    "job_id": job.id, "params": p},
        "description": f"{parent.name} after {p['mode']} on {dataset_row.name} "
                       f"({p['label_fraction']:.0%} labels) by job {job.id}.",
        "evaluation": [{"dataset": dataset_row.name, "protocol": "fine_tune" if p["mode"] ==
                        "full" else "linear_probe", "label_fraction": p["label_fraction"],
                        "metric": m.upper(), "value": round(v, 4), "seeds": [p["seed"]],
                        "split": "test"} for m, v in test_metrics.items()],
    })
    state = {k2: v.contiguous() for k2, v in model_encoder.cpu().float().state_dict().items()}
    stored = registry.register(prepare(card, save(state)), family=parent.pretext.family)
    return {"encoder": stored.name, "revision": stored.revision,
            "evaluation": {"test_auc": test_metrics["auc"], "test_acc": test_metrics["acc"]},
            "seconds": round(time.monotonic() - start, 1)}


def run_pretrain(job: JobRow, sessions: Any, store: Any, log: Any) -> dict[str, Any]:
    import json

    from zoo.registry import Registry, prepare
    from zoo.training.build import EvalPlan, Recipe, build

    from ..config import get_settings

    p = job.params
    with sessions() as s:
        dataset_row = s.get(DatasetRow, p["dataset_id"])
    ds = load_job_dataset(dataset_row, store)
    name = p["name"] or f"{p['name_template']}-job{job.id}"[:96]
    device = p["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with sessions.begin() as s:
        s.get(JobRow, job.id).device = device
    recipe = Recipe(name=name, method=p["method"], dataset=dataset_row.name,
                    architecture=p["architecture"], profile=p["profile"],
                    train={"epochs": p["epochs"], "batch_size": p["batch_size"], "lr": p["lr"],
                           "seed": p["seed"], "device": device},
                    evaluate=EvalPlan(fractions=[0.1, 1.0], seeds=[0],
                                      protocols=["linear_probe"]))
    last = [0.0]
    queue.progress(sessions, job.id, {"phase": "training", "epoch": 0,
                                      "epochs": p["epochs"]}, line="first training step")
    start = time.monotonic()

    def on_step(step: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0 or step == total:
            last[0] = now
            elapsed = now - start
            queue.progress(sessions, job.id, {"step": step, "steps": total,
                                              "epoch": step * p["epochs"] // max(total, 1),
                                              "eta_s": round(elapsed / step * (total - step),
                                                             1)})

    out_dir = get_settings().home / "jobs" / str(job.id) / "build"
    folder = build(recipe, out_dir, log=log, on_step=on_step, dataset=ds)
    card = json.loads((folder / "card.json").read_text())
    card["lineage"] = {**card.get("lineage", {}), "dataset_id": dataset_row.id,
                       "dataset": dataset_row.name, "job_id": job.id}
    stored = Registry(sessions, store).register(
        prepare(card, (folder / "model.safetensors").read_bytes()),
        family=card["pretext"].get("family"))
    evaluation = {f"{e['protocol']}@{e['label_fraction']:g}:{e['metric']}": e["value"]
                  for e in card["evaluation"]}
    return {"encoder": stored.name, "revision": stored.revision, "evaluation": evaluation,
            "seconds": round(time.monotonic() - start, 1)}


def main(job_id: int) -> int:
    from zoo.storage import BlobStore

    settings = get_settings()
    engine = make_engine(settings)
    sessions = session_factory(engine)
    store = BlobStore(settings.artifacts_dir)
    with sessions() as s:
        job = s.get(JobRow, job_id)

    def log(line: str) -> None:
        print(line, flush=True)
        queue.progress(sessions, job_id, {}, line=line)

    try:
        runner = {"finetune": run_finetune, "pretrain": run_pretrain}[job.type]
        result = runner(job, sessions, store, log)
        queue.finish(sessions, job_id, "succeeded", result=result)
        return 0
    except Exception as err:  # the job fails with the reason; the worker sees exit 1
        traceback.print_exc()
        queue.finish(sessions, job_id, "failed", error=f"{type(err).__name__}: {err}")
        return 1
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
