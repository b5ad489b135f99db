"""The zoo browser: search with filters, and an encoder's page (card, evaluation chart,
files, usage, lineage)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from ..api_client import ApiError
from ..context import Page

router = APIRouter(include_in_schema=False)

FILTERS = ("q", "modality", "method", "family", "dims", "task")
PAGE_SIZE = 50


def evaluation_chart(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Series for the chart: each protocol beside its random-init baseline (same colour,
    dashed), across label fractions, on clean test images only, in the card's main
    metric (AUC where there is one, else the first row's, e.g. Dice)."""
    metrics = [r["metric"] for r in rows]
    metric = "AUC" if "AUC" in metrics else (metrics[0] if metrics else "AUC")
    clean = [r for r in rows if r["metric"] == metric and not r.get("test_noise")]
    fractions = sorted({r["label_fraction"] for r in clean})
    protocols = {r["protocol"] for r in clean}
    bases = sorted({p.removeprefix("random_init_") for p in protocols})
    series = []
    for colour, base in enumerate(bases):
        for protocol in (base, f"random_init_{base}"):
            if protocol not in protocols:
                continue
            by_fraction = {r["label_fraction"]: r["value"] for r in clean
                           if r["protocol"] == protocol}
            series.append({"label": protocol.replace("_", " "), "colour": colour,
                           "baseline": protocol != base,
                           "values": [by_fraction.get(f) for f in fractions]})
    return {"metric": metric, "fractions": fractions, "series": series}


def usage(repo: str, server: str) -> str:
    return (f'from huggingface_hub import snapshot_download\n\n'
            f'path = snapshot_download("{repo}", endpoint="{server}/hf")\n'
            f'# or: TASKALIGN_URL={server} taskalign zoo pull {repo}')


@router.get("/zoo", response_class=HTMLResponse)
async def zoo_list(request: Request, offset: int = 0) -> HTMLResponse:
    page = Page(request)
    offset = max(0, offset)
    params = {k: request.query_params.get(k, "") for k in FILTERS}
    errors: dict[str, Any] = {}
    try:
        listing = await page.api.get("/v1/encoders", {**params, "limit": PAGE_SIZE,
                                                      "offset": offset})
    except ApiError as err:
        if err.status != 422:
            raise
        errors = {k.split(".")[-1]: v for k, v in err.field_errors.items()}
        listing = {"data": [], "count": 0}
    methods = await page.api.get("/v1/methods", {"limit": 500})
    families = sorted({m["family"] for m in methods["data"]})
    vocabulary = request.app.state.rules_engine.kb.vocabulary
    return page.render("zoo_list.html", 422 if errors else 200, listing=listing,
                       params=params, errors=errors, offset=offset, page_size=PAGE_SIZE,
                       methods=sorted(m["id"] for m in methods["data"]), families=families,
                       modalities=vocabulary.allowed("modality"))


@router.get("/zoo/{owner}/{name}", response_class=HTMLResponse)
async def zoo_detail(request: Request, owner: str, name: str) -> HTMLResponse:
    page = Page(request)
    repo = f"{owner}/{name}"
    encoder = await page.api.get(f"/v1/encoders/{repo}")
    card = encoder["card"]
    readme = ""
    if "README.md" in card["files"]:
        readme = await page.api.get(f"/v1/encoders/{repo}/files/README.md")
    children = await page.api.get("/v1/encoders", {"parent": repo, "limit": 100})
    return page.render("zoo_detail.html", encoder=encoder, card=card, repo=repo,
                       readme=readme if isinstance(readme, str) else "",
                       chart=evaluation_chart(card.get("evaluation", [])),
                       children=children["data"],
                       usage=usage(repo, str(request.base_url).rstrip("/")))
