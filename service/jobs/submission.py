"""Accept a job request: plan it, then queue the plan, so the router makes one call."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from rules import Engine

from ..users import User
from ..zoo_state import ZooState
from . import queue
from .models import JobRow
from .plan import JobCreate, plan_job


def submit(spec: JobCreate, user: User, zoo: ZooState, engine: Engine,
           idempotency_key: str | None) -> JobRow:
    """Raises InvalidJob (nothing queued) or JobConflict (a reused Idempotency-Key)."""
    plan = plan_job(spec, user, zoo.registry, engine)
    job, _ = queue.submit(zoo.registry.sessions, user.name, spec.type, spec.model_dump(),
                          plan.model_dump(mode="json"), idempotency_key, same_shape)
    return job


def same_shape(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored request as today's JobCreate dumps it (fields added since get defaults)."""
    try:
        return JobCreate.model_validate(stored).model_dump()
    except ValidationError:
        return stored
