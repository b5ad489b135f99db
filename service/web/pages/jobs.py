"""Jobs: a submit form prefilled from a recommendation or an encoder, the list, and a live
page fed by the job's event stream."""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ..api_client import ApiError
from ..context import Page

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50
FORM_DATASETS = 500
LOG_TAIL = 200
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
# The form's fields, in order; empty ones are left out so the planner's "auto" applies.
FORM_FIELDS = ("type", "dataset_id", "eval_dataset_id", "encoder", "method", "task", "mode",
               "label_fraction", "epochs", "lr", "batch_size", "seed", "device", "name")


def job_request(form: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {k: str(form[k]).strip() for k in FORM_FIELDS
                            if str(form.get(k) or "").strip()}
    spec["private"] = form.get("private") == "on"
    return spec


async def choosable_datasets(page: Page, chosen: Any) -> list[dict[str, Any]]:
    """The newest FORM_DATASETS datasets (the API lists oldest first), plus the one the
    form was opened for, wherever it is in the list."""
    count = (await page.api.get("/v1/datasets", {"limit": 1}))["count"]
    listing = await page.api.get("/v1/datasets", {
        "limit": FORM_DATASETS, "offset": max(0, count - FORM_DATASETS)})
    rows = list(reversed(listing["data"]))
    if str(chosen or "").isdigit() and all(str(d["id"]) != str(chosen) for d in rows):
        # One the user cannot see is left out: the planner names it when submitted.
        with contextlib.suppress(ApiError):
            rows.insert(0, await page.api.get(f"/v1/datasets/{chosen}"))
    return rows


async def _form(page: Page, values: dict[str, Any], errors: dict[str, Any],
                status: int = 200, message: str | None = None) -> HTMLResponse:
    datasets = await choosable_datasets(page, values.get("dataset_id"))
    methods = await page.api.get("/v1/methods", {"limit": 500})
    return page.render("job_new.html", status, values=values, errors=errors,
                       datasets=datasets, message=message,
                       methods=[m for m in methods["data"] if m.get("pretrainable")])


@router.get("/jobs", response_class=HTMLResponse)
async def job_list(request: Request, status: str = "", offset: int = 0) -> Response:
    page = Page(request)
    offset = max(0, offset)
    page.require_user()
    listing = await page.api.get("/v1/jobs", {"status": status if status in STATUSES else "",
                                              "limit": PAGE_SIZE, "offset": offset})
    return page.render("jobs.html", listing=listing, status=status, statuses=STATUSES,
                       offset=offset, page_size=PAGE_SIZE)


@router.get("/jobs/new", response_class=HTMLResponse)
async def job_new(request: Request) -> Response:
    page = Page(request)
    page.require_user()
    values = dict(request.query_params)
    values.setdefault("type", "pretrain" if values.get("method") and not values.get(
        "encoder") else "finetune")
    values.setdefault("private", "on")  # private unless unticked (the API's default)
    return await _form(page, values, {})


@router.post("/jobs", response_model=None)
async def job_submit(request: Request) -> Response:
    page = Page(request)
    form = await page.check_form()
    try:
        job = await page.api.post("/v1/jobs", json=job_request(form))
    except ApiError as err:
        if err.status >= 500:
            raise
        errors = {k.split(".")[0]: v for k, v in err.field_errors.items()}
        return await _form(page, form, errors, err.status, err.message)
    return RedirectResponse(f"/jobs/{job['id']}", status_code=303)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_detail(request: Request, job_id: int) -> HTMLResponse:
    page = Page(request)
    page.require_user()
    job = await page.api.get(f"/v1/jobs/{job_id}")
    log_tail, last_event = await event_tail(page, job_id)
    return page.render("job.html", job=job, history=job["metrics"].get("history", []),
                       log_tail=log_tail, last_event=last_event)


async def event_tail(page: Page, job_id: int) -> tuple[list[str], int]:
    """The last LOG_TAIL log lines and the last event id (where the page's live stream
    resumes), read page by page in id order."""
    lines: list[str] = []
    last = 0
    while True:
        batch = (await page.api.get(f"/v1/jobs/{job_id}/events",
                                    {"after": last, "limit": 500}))["data"]
        lines = (lines + [e["data"].get("line", "") for e in batch
                          if e["type"] == "log"])[-LOG_TAIL:]
        if batch:
            last = batch[-1]["id"]
        if len(batch) < 500:
            return lines, last


@router.post("/jobs/{job_id}/cancel")
async def job_cancel(request: Request, job_id: int) -> RedirectResponse:
    page = Page(request)
    await page.check_form()
    try:
        await page.api.post(f"/v1/jobs/{job_id}/cancel")
    except ApiError as err:
        if err.status != 409:  # already ended: the page shows how it ended
            raise
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)
