"""Runs one job in its own process: `python -m service.jobs.runner JOB_ID`.

The worker starts it, heartbeats for it and kills it on cancel. The runner is job glue:
it reads the stored plan, loads data and encoder, hands them to the training library
(zoo.training), reports progress and events, and registers the result. Every decision
was made by the planner (service/jobs/plan.py) when the job was submitted.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from zoo.access import ADMIN, Principal
from zoo.cards import StoredCard, slug
from zoo.catalog import DatasetRow
from zoo.datasets.readers import Dataset, load_folder, load_npz
from zoo.storage import BlobStore

from ..config import get_settings
from ..db import make_engine, session_factory
from . import queue
from .models import JobRow
from .plan import FinetunePlan, PretrainPlan

Log = Callable[[str], None]
Sessions = sessionmaker[Session]


def report_to(sessions: Sessions, job_id: int, lease: int
              ) -> Callable[[dict[str, Any], dict[str, Any] | None, str | None], None]:
    """Progress and metrics into the job's row and events; log lines also to stdout, which
    the worker keeps as the attempt's log. Raises LeaseLost once the attempt is stale."""
    def report(values: dict[str, Any], metrics: dict[str, Any] | None,
               line: str | None) -> None:
        if line:
            print(line, flush=True)
        queue.progress(sessions, job_id, lease, values, metrics, line)

    return report


LEASE_LOST_EXIT = 3


def watch_lease(sessions: Sessions, job_id: int, lease: int, every: float = 1.0) -> None:
    """Exit the process within about `every` seconds of the job being taken from this
    attempt (reaped while its worker was paused, handed back, cancelled and finished), even
    in the middle of a long training step: a retry must not compete with a stale attempt
    for CPU or GPU. Writes are fenced anyway; this frees the machine."""
    import os
    import threading

    def loop() -> None:
        while True:
            time.sleep(every)
            try:
                if not queue.owns(sessions, job_id, lease):
                    print(f"job {job_id}: lease {lease} lost; this attempt stops", flush=True)
                    os._exit(LEASE_LOST_EXIT)
            except Exception:  # database unreachable: fencing still guards every write
                continue

    threading.Thread(target=loop, daemon=True, name="lease-watch").start()


def load_job_dataset(row: DatasetRow, store: BlobStore) -> Dataset:
    if row.kind == "path":
        path = Path(row.path or "")
        return load_npz(path, row.name) if path.suffix == ".npz" else load_folder(path)
    return load_npz(store.path(row.sha256 or ""), row.name)


def start_run(job: JobRow, lease: int, sessions: Sessions, store: BlobStore, dataset_id: int,
              device_name: str) -> tuple[DatasetRow, Dataset, str]:
    """What both job types do first: load the dataset and record the device used."""
    # The training stack loads in the runner process only, never in the API that plans jobs.
    from zoo.training.train import pick_device

    with sessions() as session:
        dataset_row = session.get(DatasetRow, dataset_id)
    if dataset_row is None:
        raise LookupError(f"dataset {dataset_id} no longer exists")
    dataset = load_job_dataset(dataset_row, store)
    device = pick_device(device_name).type
    with sessions.begin() as session:
        done = session.execute(update(JobRow).where(*queue.holds(job.id, lease))
                               .values(device=device))
        if done.rowcount != 1:
            raise queue.LeaseLost(job.id, lease)
    return dataset_row, dataset, device


def complete(job_id: int, lease: int, result: Callable[[StoredCard], dict[str, Any]]
             ) -> Callable[[Session, StoredCard], None]:
    """The job ends as succeeded in the transaction that registers its encoder, only while
    this attempt holds the lease: a stale attempt registers nothing."""
    def within(session: Session, stored: StoredCard) -> None:
        if not queue.finish_in(session, job_id, lease, "succeeded", result=result(stored)):
            raise queue.LeaseLost(job_id, lease)
    return within


def parent_encoder(registry: Any, plan: FinetunePlan, job: JobRow, store: BlobStore
                   ) -> tuple[StoredCard, Any, str]:
    """The card, encoder module and weights sha256 of the revision a fine-tune starts from
    (the exact commit resolved at submission); a task model gives its encoder."""
    from zoo.loader import build_from_card
    from zoo.registry import WEIGHTS

    revision = registry.revision(plan.encoder, plan.encoder_commit or plan.encoder_revision,
                                 job_reader(job))
    if revision is None:
        raise LookupError(f"encoder {plan.encoder} revision {plan.encoder_revision} is gone")
    weights = next(f for f in revision.files if f.filename == WEIGHTS)
    model = build_from_card(revision.card, store.path(weights.sha256))
    parent = StoredCard.model_validate(revision.card)
    return parent, (model.encoder if parent.task else model), weights.sha256


def run_finetune(job: JobRow, lease: int, sessions: Sessions, store: BlobStore,
                 log: Log) -> None:
    import torch
    from safetensors.torch import load_file, save

    from zoo.registry import Registry, prepare
    from zoo.training.finetune import FinetuneSettings, finetune_classifier

    plan = FinetunePlan.model_validate(job.params)
    if plan.task == "segmentation":
        from .run_segment import run_segmentation

        return run_segmentation(job, lease, sessions, store, log)
    registry = Registry(sessions, store)
    dataset_row, dataset, device = start_run(job, lease, sessions, store, plan.dataset_id,
                                             plan.device)
    parent, encoder, weights_sha = parent_encoder(registry, plan, job, store)
    report = report_to(sessions, job.id, lease)
    settings = FinetuneSettings(
        mode=plan.mode, label_fraction=plan.label_fraction, seed=plan.seed,
        epochs=plan.epochs, lr=plan.lr, batch_size=plan.batch_size,
        device=torch.device(device), encoder_lr_multiplier=plan.encoder_lr_multiplier,
        augmentations=plan.augmentations)
    norm = parent.normalization
    outcome = finetune_classifier(encoder, dataset, settings, report, mean=norm.mean,
                                  std=norm.std)
    metrics = outcome.metrics
    report({"phase": "registering"},
           {"test_auc": round(metrics["auc"], 4), "test_acc": round(metrics["acc"], 4)}, None)
    curves = save_curves(job.id, outcome.history,
                         f"job {job.id}: {plan.mode} on {dataset_row.name}")
    card = task_model_card(parent, plan, dataset_row, job.id, outcome,
                           class_names(dataset, dataset_row), curves, dataset.image_size)
    state = {f"encoder.{k}": v for k, v in outcome.model.encoder.state_dict().items()}
    if plan.mode == "linear_probe":  # the encoder is the parent's, stored as the parent was
        stored_as = {k: v.dtype for k, v in load_file(str(store.path(weights_sha))).items()}
        # A task-model parent names its encoder tensors as we do; an encoder, without prefix.
        state = {k: v.to(stored_as.get(k if parent.task else k.removeprefix("encoder."),
                                       v.dtype)) for k, v in state.items()}
    else:
        state = {k: v.float() for k, v in state.items()}
    state.update({f"head.{k}": v.float() for k, v in outcome.model.head.state_dict().items()})
    state = {k: v.contiguous() for k, v in state.items()}
    registry.register(prepare(card, save(state)), family=parent.pretext.family,
                      owner=plan.namespace, private=plan.private,
                      within=complete(job.id, lease, lambda stored: {
                          **outcome_of(stored, plan.private), "task": "classification",
                          "evaluation": {"test_auc": metrics["auc"], "test_acc": metrics["acc"]},
                          **({"curves": curves} if curves else {}),
                          "seconds": round(outcome.seconds, 1)}))


CURVES = "curves.png"
FEW_LABELS = 10  # labelled images of the rarest class below which a card says "few labels"


def save_curves(job_id: int, history: list[dict[str, Any]], title: str) -> str | None:
    """Plot the per-epoch history into the job's folder; returns the artifact's URL path."""
    from zoo.training.curves import curves_png

    if not history:
        return None
    folder = get_settings().home / "jobs" / str(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / CURVES, curves_png(history, title))
    return f"/v1/jobs/{job_id}/artifacts/{CURVES}"


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def class_names(dataset: Dataset, row: DatasetRow) -> list[str]:
    """The dataset's class names when it has them (labels.csv, or a known file), else
    their indices."""
    from zoo.datasets.readers import registry as known_files

    names = dataset.info.get("labels")
    if not names and row.path:
        names = known_files().get(Path(row.path).stem, {}).get("labels")
    if names and len(names) == dataset.num_classes:
        return [str(n) for n in names]
    return [str(i) for i in range(dataset.num_classes)]


def outcome_of(stored: StoredCard, private: bool) -> dict[str, Any]:
    return {"encoder": stored.repo_id, "revision": stored.revision, "commit": stored.commit,
            "private": private}


def job_reader(job: JobRow) -> Principal:
    """A job reads the zoo as the user who submitted it: a repository made private since
    submission is not used on their behalf."""
    return Principal(name=job.owner, admin=job.owner == ADMIN)


def tuned_card(parent: StoredCard, plan: FinetunePlan, dataset_row: DatasetRow,
               job_id: int, kind: str, input_size: list[int]) -> dict[str, Any]:
    """What every task model's card takes from its parent and its job: the parent
    encoder's facts at the size it was trained at (a 28-px encoder tuned on 64-px images
    is a 64-px model), its name `arch.{kind}-jobN-dataset`, and the lineage."""
    arch, _, _ = parent.name.partition(".")
    parent_repo = parent.repo_id or plan.encoder
    card = parent.model_dump(include={"architecture", "spatial_dims", "in_channels",
                                      "normalization", "pretext", "pretraining_data",
                                      "weights_licence"})
    card.update({
        "name": f"{arch}.{kind}-job{job_id}-{slug(dataset_row.name)}"[:96].rstrip("-"),
        "input_size": list(input_size),
        "modality": dataset_row.modality or parent.modality,
        "parent": parent_repo,
        "lineage": {"parent": parent_repo, "parent_revision": parent.revision,
                    "parent_commit": parent.commit,
                    "dataset_id": dataset_row.id, "dataset": dataset_row.name,
                    "job_id": job_id, "params": plan.model_dump(mode="json")},
    })
    return card


def task_model_card(parent: StoredCard, plan: FinetunePlan, dataset_row: DatasetRow,
                    job_id: int, outcome: Any, classes: list[str],
                    curves: str | None, input_size: list[int]) -> dict[str, Any]:
    """The classifier's card: `tuned_card`, the head and what it predicts, and test
    scores with their intervals."""
    card = tuned_card(parent, plan, dataset_row, job_id, "ft", input_size)
    parent_repo = card["parent"]
    protocol = "fine_tune" if plan.mode == "full" else "linear_probe"
    summary = outcome.report
    few = outcome.labelled_per_class_min < FEW_LABELS
    card.update({
        "description": f"Classifier for {dataset_row.name} ({len(classes)} classes): "
                       f"{parent_repo} after {plan.mode.replace('_', ' ')} with "
                       f"{outcome.labelled} labelled images ({plan.label_fraction:.0%}) by "
                       f"job {job_id}." + (" Few labels: read its metrics as fragile."
                                           if few else ""),
        "evaluation": [{"dataset": dataset_row.name, "protocol": protocol,
                        "label_fraction": plan.label_fraction, "metric": m.upper(),
                        "value": round(v, 4), "seeds": [plan.seed], "split": "test",
                        **({"ci95": [round(x, 4) for x in summary["ci95"][m]]}
                           if m in summary["ci95"] else {})}
                       for m, v in outcome.metrics.items()],
        "task": {"kind": "classification", "classes": classes,
                 "threshold": (round(summary["threshold"], 6)
                               if summary["threshold"] is not None else None),
                 "threshold_rule": ("Youden's J on the validation split" if
                                    summary["threshold"] is not None else None),
                 "calibration_ece": summary["calibration_ece"],
                 "confusion_matrix": summary["confusion_matrix"],
                 "balanced_accuracy": summary["balanced_accuracy"],
                 "majority_rate": summary["majority_rate"],
                 "labelled_images": outcome.labelled,
                 "labelled_per_class_min": outcome.labelled_per_class_min,
                 "few_labels": few, "curves": outcome.history, "curves_png": curves},
    })
    return card


def run_pretrain(job: JobRow, lease: int, sessions: Sessions, store: BlobStore,
                 log: Log) -> None:
    from zoo.registry import Registry, prepare
    from zoo.training.build import EvalPlan, Recipe, build

    plan = PretrainPlan.model_validate(job.params)
    dataset_row, dataset, device = start_run(job, lease, sessions, store, plan.dataset_id,
                                             plan.device)
    report = report_to(sessions, job.id, lease)
    name = plan.name or f"{plan.name_template}-job{job.id}"[:96]
    recipe = Recipe(name=name, method=plan.method, dataset=dataset_row.name,
                    architecture=plan.architecture, profile=plan.profile,
                    train={"epochs": plan.epochs, "batch_size": plan.batch_size,
                           "lr": plan.lr, "seed": plan.seed, "device": device},
                    evaluate=EvalPlan.model_validate(plan.evaluation))
    report({"phase": "training", "epoch": 0, "epochs": plan.epochs}, None,
           "first training step")
    start = time.monotonic()
    last = [0.0]

    def on_step(step: int, total: int, loss: Any) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0 or step == total:
            last[0] = now
            eta = round((now - start) / step * (total - step), 1)
            report({"step": step, "steps": total, "percent": round(100 * step / total, 1),
                    "loss": round(float(loss), 4), "eta_s": eta,
                    "epoch": step * plan.epochs // max(total, 1)}, None, None)

    def on_epoch(record: dict[str, Any]) -> None:  # appended to metrics.history
        report({}, {"epoch": record["epoch"], "loss": round(record["loss"], 4),
                    "images_per_s": record["images_per_s"]}, None)

    eval_row, eval_dataset = None, None
    if plan.eval_dataset_id is not None:  # a labelled set to score an unlabelled one's encoder
        with sessions() as session:
            eval_row = session.get(DatasetRow, plan.eval_dataset_id)
        if eval_row is None:
            raise LookupError(f"evaluation dataset {plan.eval_dataset_id} no longer exists")
        eval_dataset = load_job_dataset(eval_row, store)
    out_dir = get_settings().home / "jobs" / str(job.id) / "build"
    folder = build(recipe, out_dir, log=log, on_step=on_step, dataset=dataset,
                   eval_dataset=eval_dataset, on_epoch=on_epoch)
    card = json.loads((folder / "card.json").read_text())
    curves = save_curves(job.id, [json.loads(line) for line in
                                  (folder / "metrics.jsonl").read_text().splitlines() if line],
                         f"job {job.id}: {plan.method} on {dataset_row.name}")
    card["lineage"] = {**card.get("lineage", {}), "dataset_id": dataset_row.id,
                       "dataset": dataset_row.name, "job_id": job.id,
                       **({"curves_png": curves} if curves else {}),
                       **({"eval_dataset_id": eval_row.id, "eval_dataset": eval_row.name}
                          if eval_row else {}),
                       **({"evaluation_skipped": plan.evaluation_skipped}
                          if plan.evaluation_skipped else {})}
    evaluation = {f"{e['protocol']}@{e['label_fraction']:g}:{e['metric']}"
                  + (f"+{e['test_noise']}" if e.get("test_noise") else ""): e["value"]
                  for e in card["evaluation"]}
    seconds = round(time.monotonic() - start, 1)
    Registry(sessions, store).register(
        prepare(card, (folder / "model.safetensors").read_bytes()),
        family=card["pretext"].get("family"), owner=plan.namespace, private=plan.private,
        within=complete(job.id, lease, lambda stored: {
            **outcome_of(stored, plan.private), "evaluation": evaluation,
            **({"curves": curves} if curves else {}),
            **({"evaluation_skipped": plan.evaluation_skipped}
               if plan.evaluation_skipped else {}),
            "seconds": seconds}))


RUNNERS = {"finetune": run_finetune, "pretrain": run_pretrain}


def main(job_id: int, lease: int) -> int:
    """Run attempt `lease` of a job. Exit 0: it succeeded (ended in the registering
    transaction); 1: it failed and says why; 3: the lease was lost, nothing more written."""
    settings = get_settings()
    engine = make_engine(settings)
    sessions = session_factory(engine)
    store = BlobStore(settings.artifacts_dir)
    with sessions() as session:
        job = session.get(JobRow, job_id)
    watch_lease(sessions, job_id, lease)
    report = report_to(sessions, job_id, lease)

    def log(line: str) -> None:
        report({}, None, line)

    try:
        RUNNERS[job.type](job, lease, sessions, store, log)
        return 0
    except queue.LeaseLost as err:
        print(err, flush=True)
        return LEASE_LOST_EXIT
    except Exception as err:  # the job fails with the reason; the worker sees exit 1
        traceback.print_exc()
        if not queue.finish(sessions, job_id, lease, "failed",
                            error=f"{type(err).__name__}: {err}"):
            return LEASE_LOST_EXIT
        return 1
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
