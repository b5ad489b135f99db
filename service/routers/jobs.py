from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from rules import TaskProfile
from zoo.catalog import DatasetRow

from ..auth import User, UserDep
from ..deps import EngineDep, SettingsDep, ZooDep
from ..jobs import queue
from ..jobs.models import TERMINAL, JobEventRow, JobRow
from ..pagination import Limit, Offset

router = APIRouter(prefix="/jobs", tags=["jobs"])

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["finetune", "pretrain"]
    dataset_id: int
    encoder: str | None = Field(None, description="Zoo encoder to fine-tune (finetune).")
    encoder_revision: str | None = None
    mode: Literal["auto", "linear_probe", "full"] = "auto"
    label_fraction: float = Field(1.0, gt=0, le=1)
    epochs: int | Literal["auto"] = "auto"
    lr: float | Literal["auto"] = "auto"
    batch_size: int | Literal["auto"] = "auto"
    seed: int = Field(0, ge=0, le=2**31)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    method: str | None = Field(None, description="Pretext method id (pretrain).")
    name: str | None = Field(None, max_length=96, description="Name of the new encoder "
                             "(pretrain); default arch-Nd.method-dataset-jobID.")


class JobPublic(BaseModel):
    id: int
    owner: str
    type: str
    status: Status
    request: dict[str, Any]
    params: dict[str, Any]
    attempts: int
    max_attempts: int
    worker: str | None
    device: str | None
    progress: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None
    result: dict[str, Any] | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def public(job: JobRow) -> JobPublic:
    return JobPublic.model_validate(job, from_attributes=True)


def _bad(field: str, msg: str, status: int = 422) -> HTTPException:
    return HTTPException(status, detail=[{"loc": ["body", field], "msg": msg,
                                          "type": "invalid_job"}])


def resolve(spec: JobCreate, user: User, zoo: Any, engine: Any) -> dict[str, Any]:
    """Pre-flight checks and 'auto' values; the answer is stored on the job."""
    with zoo.registry.sessions() as s:
        ds = s.get(DatasetRow, spec.dataset_id)
        if ds is None or (ds.owner != user.name and not user.admin):
            raise _bad("dataset_id", f"no dataset {spec.dataset_id} of yours "
                                     "(see GET /v1/datasets)")
        ds = {"id": ds.id, "name": ds.name, "modality": ds.modality, "dims": ds.spatial_dims,
              "channels": ds.channels, "size": ds.image_size, "classes": ds.num_classes,
              "train": ds.summary["splits"]["train"]["images"]}
    if spec.type == "pretrain":
        return resolve_pretrain(spec, ds)
    if not spec.encoder:
        raise _bad("encoder", "finetune jobs need an encoder from the zoo")
    rev = zoo.registry.revision(spec.encoder, spec.encoder_revision)
    if rev is None:
        raise _bad("encoder", f"unknown encoder '{spec.encoder}' (revision "
                              f"{spec.encoder_revision or 'latest'}); see GET /v1/encoders")
    card = rev.card
    if card["spatial_dims"] != ds["dims"]:
        raise _bad("encoder", f"{spec.encoder} is a {card['spatial_dims']}D encoder; dataset "
                              f"{ds['name']} is {ds['dims']}D")
    if card["in_channels"] != ds["channels"]:
        raise _bad("encoder", f"{spec.encoder} expects {card['in_channels']} channel(s); "
                              f"dataset {ds['name']} has {ds['channels']}")
    if card["architecture"]["name"] == "vit" and list(card["input_size"]) != list(ds["size"]):
        raise _bad("encoder", f"{spec.encoder} is a ViT for {card['input_size']} inputs; "
                              f"dataset images are {ds['size']}")
    for name, value, lo, hi in (("epochs", spec.epochs, 1, 500), ("lr", spec.lr, 1e-7, 1.0),
                                ("batch_size", spec.batch_size, 2, 4096)):
        if value != "auto" and not lo <= value <= hi:
            raise _bad(name, f"{name} must be 'auto' or between {lo} and {hi}")
    labeled = max(1, round(ds["train"] * spec.label_fraction))
    modality = ds["modality"] or card["modality"]
    advice = engine.recommend(TaskProfile(
        task="classification", modality=modality, labeled=labeled,
        unlabeled=ds["train"] - labeled, classes=ds["classes"],
        dimensionality="3d" if ds["dims"] == 3 else "2d", top_k=1)).label_advice
    mode = spec.mode
    if mode == "auto":
        mode = "linear_probe" if advice.regime in ("none", "few_shot") else "full"
    return {
        "encoder": spec.encoder, "encoder_revision": str(rev.number), "dataset_id": ds["id"],
        "mode": mode, "label_fraction": spec.label_fraction, "seed": spec.seed,
        "epochs": 20 if spec.epochs == "auto" else spec.epochs,
        "lr": 1e-3 if spec.lr == "auto" else spec.lr,
        "batch_size": 128 if spec.batch_size == "auto" else spec.batch_size,
        "device": spec.device,
        "auto": {"label_regime": advice.regime, "derived_from": advice.derived_from,
                 "advice": advice.evaluation,
                 "defaults": "epochs 20, lr 1e-3 (Adam, as the MedMNIST baselines), batch 128"},
    }


def resolve_pretrain(spec: JobCreate, ds: dict[str, Any]) -> dict[str, Any]:
    from zoo.cards import NAME_PATTERN
    from zoo.training.build import Recipe, plan_from_rules
    from zoo.training.pretext.registry import OBJECTIVES

    if not spec.method or spec.method not in OBJECTIVES:
        raise _bad("method", f"pretrain needs an implemented method; one of "
                             f"{', '.join(sorted(OBJECTIVES))}")
    if not ds["modality"]:
        raise _bad("dataset_id", "the dataset has no modality; the rules need one to choose "
                                 "augmentations (give it when uploading)")
    dims = ds["dims"]
    vit = OBJECTIVES[spec.method][1] == "vit"
    if vit:
        patch = 4 if dims == 2 else 7
        if any(s % patch for s in ds["size"]):
            raise _bad("method", f"{spec.method} uses a ViT with {patch}-pixel patches; image "
                                 f"size {ds['size']} is not a multiple")
        arch = {"name": "vit", "args": {"patch_size": patch, "hidden_size": 96, "mlp_dim": 192,
                                        "num_layers": 4, "num_heads": 3}}
    elif dims == 3:
        arch = {"name": "resnet10", "args": {"widths": [8, 16, 32, 64]}}
    else:
        arch = {"name": "resnet18", "args": {"widths": [16, 32, 64, 128]}}
    profile = {"task": "classification", "modality": ds["modality"],
               "dimensionality": f"{dims}d", "label_regime": "low"}
    slug = ds["name"].lower().replace("_", "-").replace(".", "-")
    recipe = Recipe(name=spec.name or "pending", method=spec.method, dataset=ds["name"],
                    architecture=arch, profile=profile)
    try:
        plan = plan_from_rules(recipe, ds["channels"])
    except ValueError as err:
        raise _bad("method", str(err)) from None
    import re

    if spec.name and not re.match(NAME_PATTERN, spec.name):
        raise _bad("name", "encoder names are arch.tag in lower case, e.g. resnet18-2d.my-ssl")
    return {
        "dataset_id": ds["id"], "method": spec.method, "architecture": arch,
        "profile": profile, "name": spec.name,
        "name_template": f"{arch['name']}-{dims}d.{spec.method.replace('_', '-')}-{slug}",
        "epochs": 10 if spec.epochs == "auto" else spec.epochs,
        "lr": 2e-3 if spec.lr == "auto" else spec.lr,
        "batch_size": (256 if dims == 2 else 64) if spec.batch_size == "auto"
        else spec.batch_size,
        "seed": spec.seed, "device": spec.device,
        "auto": {"hyperparameters": plan.hyperparameters,
                 "augmentations": sorted(plan.policy.ops),
                 "recommended_rank": plan.recommended_rank},
    }


@router.post("", status_code=202, response_model=JobPublic)
async def submit_job(spec: JobCreate, user: UserDep, zoo: ZooDep, engine: EngineDep,
                     idempotency_key: str | None = Header(None, max_length=128)) -> JobPublic:
    """Queue a job; repeat the same Idempotency-Key to get the same job back."""
    params = await run_in_threadpool(resolve, spec, user, zoo, engine)
    try:
        job, _ = await run_in_threadpool(queue.submit, zoo.registry.sessions, user.name,
                                         spec.type, spec.model_dump(), params, idempotency_key)
    except queue.JobConflict as err:
        raise HTTPException(409, str(err)) from None
    return public(job)


def _own(zoo: Any, job_id: int, user: User) -> JobRow:
    with zoo.registry.sessions() as s:
        job = s.get(JobRow, job_id)
    if job is None or (job.owner != user.name and not user.admin):
        raise HTTPException(404, f"no job {job_id} of yours")
    return job


@router.get("")
def list_jobs(user: UserDep, zoo: ZooDep, status: Status | None = None, limit: Limit = 100,
              offset: Offset = 0) -> dict[str, Any]:
    """Your jobs, newest first (an admin token sees all)."""
    query = select(JobRow)
    if not user.admin:
        query = query.where(JobRow.owner == user.name)
    if status:
        query = query.where(JobRow.status == status)
    with zoo.registry.sessions() as s:
        count = s.scalar(select(func.count()).select_from(query.subquery()))
        rows = s.scalars(query.order_by(JobRow.id.desc()).limit(limit).offset(offset)).all()
        return {"data": [public(r) for r in rows], "count": int(count or 0)}


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: int, user: UserDep, zoo: ZooDep) -> JobPublic:
    """Status, progress (epoch, totals, ETA), latest metrics, error, result."""
    return public(_own(zoo, job_id, user))


def _events(zoo: Any, job_id: int, after: int, limit: int) -> list[dict[str, Any]]:
    with zoo.registry.sessions() as s:
        rows = s.scalars(select(JobEventRow).where(JobEventRow.job_id == job_id,
                                                   JobEventRow.id > after)
                         .order_by(JobEventRow.id).limit(limit)).all()
        return [{"id": r.id, "type": r.type, "data": r.data,
                 "created_at": r.created_at.isoformat()} for r in rows]


@router.get("/{job_id}/events")
async def job_events(job_id: int, request: Request, user: UserDep, zoo: ZooDep,
                     after: int = Query(0, ge=0), limit: Limit = 100) -> Any:
    """Typed events (status, metrics, log): JSON pages, or a server-sent event stream when
    the client accepts text/event-stream."""
    await run_in_threadpool(_own, zoo, job_id, user)
    if "text/event-stream" not in request.headers.get("accept", ""):
        data = await run_in_threadpool(_events, zoo, job_id, after, limit)
        return {"data": data, "count": len(data)}

    async def stream():  # noqa: ANN202
        last = after
        while True:
            batch = await run_in_threadpool(_events, zoo, job_id, last, 500)
            for e in batch:
                last = e["id"]
                yield f"id: {e['id']}\nevent: {e['type']}\ndata: {json.dumps(e)}\n\n"
            job = await run_in_threadpool(_own, zoo, job_id, user)
            if job.status in TERMINAL and not batch:
                yield "event: end\ndata: {}\n\n"
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.5)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache"})


@router.post("/{job_id}/cancel", response_model=JobPublic)
async def cancel_job(job_id: int, user: UserDep, zoo: ZooDep) -> JobPublic:
    """Cancel: a queued job ends at once; a running one is stopped within seconds."""
    await run_in_threadpool(_own, zoo, job_id, user)
    try:
        job = await run_in_threadpool(queue.request_cancel, zoo.registry.sessions, job_id)
    except queue.JobConflict as err:
        raise HTTPException(409, str(err)) from None
    return public(job)


@router.get("/{job_id}/logs", response_class=PlainTextResponse)
def job_logs(job_id: int, user: UserDep, zoo: ZooDep, settings: SettingsDep) -> str:
    """The runner's output, every attempt in order (from Ray for Ray-run jobs)."""
    job = _own(zoo, job_id, user)
    if job.worker and job.worker.startswith("ray:"):
        from ..jobs.ray_executor import ray_logs

        return ray_logs(job.worker[4:], job)
    folder = settings.home / "jobs" / str(job_id)
    parts = sorted(folder.glob("attempt-*.log")) if folder.exists() else []
    return "".join(f"--- {p.stem} ---\n{p.read_text(errors='replace')}" for p in parts)
