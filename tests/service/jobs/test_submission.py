"""A job request stored before fields were added is still the same request, so a client
retrying with its Idempotency-Key across an upgrade gets its job back, not a 409."""

from __future__ import annotations

from service.jobs.plan import JobCreate
from service.jobs.submission import same_shape


def test_request_stored_before_new_fields_matches_todays_dump() -> None:
    stored = {"type": "finetune", "dataset_id": 1, "encoder": "taskalign/resnet18-2d.simclr-x",
              "encoder_revision": None, "mode": "auto", "label_fraction": 1.0,
              "epochs": "auto", "lr": "auto", "batch_size": "auto", "seed": 0,
              "device": "auto", "method": None, "name": None}  # as written before issue 9
    today = JobCreate(type="finetune", dataset_id=1, encoder="taskalign/resnet18-2d.simclr-x")
    assert stored != today.model_dump()
    assert same_shape(stored) == today.model_dump()
    changed = {**stored, "epochs": 3}
    assert same_shape(changed) != today.model_dump()
