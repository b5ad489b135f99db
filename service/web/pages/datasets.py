"""Datasets: the list with an upload (drag and drop, with progress), and a dataset's
counts and thumbnails."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile

from ..api_client import ApiError
from ..context import Page

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50


async def list_page(page: Page, offset: int = 0, status: int = 200,
                    error: str | None = None) -> Response:
    """The list with the upload form, and the upload's error when it was refused."""
    listing = await page.api.get("/v1/datasets", {"limit": PAGE_SIZE, "offset": offset})
    modalities = page.request.app.state.rules_engine.kb.vocabulary.allowed("modality")
    return page.render("datasets.html", status, listing=listing, offset=offset,
                       page_size=PAGE_SIZE, modalities=modalities, error=error)


@router.get("/datasets", response_class=HTMLResponse)
async def dataset_list(request: Request, offset: int = 0) -> Response:
    page = Page(request)
    page.require_user()
    return await list_page(page, max(0, offset))


@router.post("/datasets", response_model=None)
async def dataset_upload(request: Request) -> Response:
    """The upload form (sent by the page's script, or plainly without one): checked here,
    then handed to POST /v1/datasets as it is."""
    page = Page(request)
    form = await page.check_form()
    upload = form.get("file")
    wants_json = "application/json" in request.headers.get("accept", "")
    if not isinstance(upload, UploadFile):
        return JSONResponse({"detail": "choose a file (npz or zip)"}, 422)
    fields = {k: str(form.get(k) or "") for k in ("name", "modality", "channels")}
    try:
        created = await page.api.post(
            "/v1/datasets", json=None, data={k: v for k, v in fields.items() if v},
            files={"file": (upload.filename or "upload", upload.file,
                            upload.content_type or "application/octet-stream")})
    except ApiError as err:
        if wants_json:
            return JSONResponse({"detail": err.message}, err.status)
        return await list_page(page, status=err.status, error=err.message)
    location = f"/datasets/{created['id']}"
    if wants_json:
        return JSONResponse({"id": created["id"], "location": location}, 201)
    return RedirectResponse(location, status_code=303)


@router.get("/datasets/{dataset_id}", response_class=HTMLResponse)
async def dataset_detail(request: Request, dataset_id: int) -> HTMLResponse:
    page = Page(request)
    page.require_user()
    dataset = await page.api.get(f"/v1/datasets/{dataset_id}")
    return page.render("dataset.html", dataset=dataset)
