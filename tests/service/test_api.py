from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.limits import BodySizeLimit
from service.main import create_app

pytestmark = pytest.mark.anyio

PROFILE = {"task": "segmentation", "modality": "ct", "labeled": 40, "unlabeled": 2000}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_health(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["database"] == "ok" and body["rules"]["methods_in_catalog"] >= 30


async def test_recommendation_shape(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/recommendations", json=PROFILE)
    assert r.status_code == 200
    body = r.json()
    assert body["profile"]["label_regime"] == "low"
    first = body["recommendations"][0]
    assert {"rank", "id", "score", "family", "alignment", "hyperparameters", "augmentations",
            "rationale", "supports", "cautions", "pretrainable"} <= set(first)
    assert first["supports"] and all({"id", "authors", "year"} <= set(e)
                                     for e in first["supports"] + first["cautions"])
    assert all(line["rule"] for line in first["rationale"])
    assert body["trace"] and body["label_advice"]["evaluation"]
    assert "qualitative" in body["alignment_note"]


async def test_aliases_share_answer(client: httpx.AsyncClient) -> None:
    a = await client.post("/v1/recommendations", json={"task": "classification",
                                                      "modality": "cxr", "label_regime": "low"})
    b = await client.post("/v1/recommendations", json={"task": "Classification",
                                                      "modality": "X-ray", "label_regime": "low"})
    assert a.json() == b.json()


@pytest.mark.parametrize(("body", "loc", "did_you_mean"), [
    ({"task": "segmentaton", "modality": "ct", "label_regime": "low"}, ["body", "task"],
     "segmentation"),
    ({"task": "segmentation", "modality": "catscan", "label_regime": "low"},
     ["body", "modality"], None),
    ({"task": "segmentation", "modality": "ct", "label_regime": "lo"},
     ["body", "label_regime"], "low"),
    ({"task": "segmentation", "modality": "ct", "label_regime": "low",
      "properties": {"lesion_scale": "smal"}}, ["body", "properties", "lesion_scale"], "small"),
])
async def test_unknown_values_get_422_with_allowed(client: httpx.AsyncClient, body: dict,
                                                   loc: list, did_you_mean: str | None) -> None:
    r = await client.post("/v1/recommendations", json=body)
    assert r.status_code == 422
    err = r.json()["detail"][0]
    assert err["loc"] == loc
    assert err["allowed"]
    if did_you_mean:
        assert err["did_you_mean"] in (did_you_mean, "small_focal")


async def test_contradiction_gets_422_with_reason(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/recommendations", json={
        "task": "classification", "modality": "dermatology", "dimensionality": "3d",
        "label_regime": "low"})
    assert r.status_code == 422
    err = r.json()["detail"][0]
    assert err["type"] == "contradiction" and "2d" in err["msg"]


async def test_body_over_64_kib_gets_413(client: httpx.AsyncClient) -> None:
    big = json.dumps({**PROFILE, "padding": "x" * 70_000})
    r = await client.post("/v1/recommendations", content=big,
                          headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["limit_bytes"] == 65536


async def test_malformed_json_gets_422(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/recommendations", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert r.status_code == 422


async def test_random_bodies_never_500(client: httpx.AsyncClient) -> None:
    """Throw mangled profiles at the endpoint; every answer must be 200 or 422."""
    rnd = random.Random(7)
    values = ["ct", "mri", "x-ray", "3d", "video", "low", None, 0, -1, 10**12, 3.5, True, [],
              {}, "", "wsi", "classification", "segmentation", "small_focal", ["oct"], "🙂"]
    keys = ["task", "modality", "anatomy", "dimensionality", "label_regime", "labeled",
            "unlabeled", "classes", "top_k", "properties"]
    prop_keys = ["orientation_sensitive", "lesion_scale", "signal_organization", "patient_ids",
                 "paired_modalities", "gpu_memory_gb", "noise", "kspace"]
    for _ in range(300):
        body = {k: rnd.choice(values) for k in rnd.sample(keys, rnd.randint(0, len(keys)))}
        if rnd.random() < 0.5:
            body["properties"] = {k: rnd.choice(values) for k in rnd.sample(prop_keys, 3)}
        r = await client.post("/v1/recommendations", json=body)
        assert r.status_code in (200, 422), (body, r.status_code, r.text)


async def test_methods_list_and_filters(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/methods")
    body = r.json()
    assert set(body) == {"data", "count"} and body["count"] >= 30
    r = await client.get("/v1/methods", params={"family": "generative", "dims": "3d"})
    assert all(m["family"] == "generative" and "3d" in m["dims"] for m in r.json()["data"])
    r = await client.get("/v1/methods", params={"limit": 5, "offset": 5})
    assert len(r.json()["data"]) == 5 and r.json()["count"] == body["count"]


async def test_method_detail_and_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/methods/vox2vec")
    assert r.status_code == 200 and r.json()["evidence"][0]["id"] == 23
    r = await client.get("/v1/methods/vox2vek")
    assert r.status_code == 404 and "vox2vec" in r.json()["detail"]


async def test_rules_references_matrix(client: httpx.AsyncClient) -> None:
    rules = (await client.get("/v1/rules")).json()
    ids = {r["id"] for r in rules["data"]}
    assert "table3.contrastive_global.segmentation" in ids
    assert "tr.small_lesions.gentle_masking" in ids
    only = (await client.get("/v1/rules", params={"section": "6.5"})).json()["data"]
    assert only and all("6.5" in r["sections"] for r in only)
    refs = (await client.get("/v1/references", params={"limit": 500})).json()
    assert refs["count"] >= 97
    assert (await client.get("/v1/references/41")).json()["year"] == 2020
    matrix = (await client.get("/v1/alignment-matrix")).json()
    assert matrix["cells"]["hybrid"]["segmentation"]["rating"] == "strong"


async def test_openapi_documents_versioned_routes(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path in ("/v1/recommendations", "/v1/methods", "/v1/methods/{method_id}", "/v1/rules",
                 "/v1/references", "/v1/alignment-matrix", "/healthz", "/v1/encoders",
                 "/v1/encoders/{owner}/{name}", "/v1/encoders/{owner}/{name}/files/{filename}",
                 "/v1/encoders/{owner}/{name}/embed"):
        assert path in spec["paths"]
    assert "patch" in spec["paths"]["/v1/encoders/{owner}/{name}"]
    assert "/v1/encoders/{name}" not in spec["paths"]  # the bare-name hint is undocumented
    assert (await client.get("/docs")).status_code == 200


async def test_repeated_request_is_served_identically(client: httpx.AsyncClient) -> None:
    body = json.dumps(PROFILE).encode()
    headers = {"content-type": "application/json"}
    first = await client.post("/v1/recommendations", content=body, headers=headers)
    second = await client.post("/v1/recommendations", content=body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert second.headers["content-length"] == str(len(first.content))


async def test_cache_does_not_bypass_validation(client: httpx.AsyncClient) -> None:
    body = json.dumps(PROFILE).encode()
    ok = await client.post("/v1/recommendations", content=body,
                           headers={"content-type": "application/json"})
    assert ok.status_code == 200
    # Same bytes under another content type must still be refused by FastAPI.
    other = await client.post("/v1/recommendations", content=body,
                              headers={"content-type": "text/plain"})
    assert other.status_code == 422
    bad = json.dumps({**PROFILE, "task": "segmentaton"}).encode()
    for _ in range(2):
        r = await client.post("/v1/recommendations", content=bad,
                              headers={"content-type": "application/json"})
        assert r.status_code == 422


async def test_rules_include_finetune_defaults(client: httpx.AsyncClient) -> None:
    from rules import default_engine

    kb = default_engine().kb
    entries = [lf.entry for lf in kb.finetune]
    r = await client.get("/v1/rules", params={"file": "tables/finetune.yaml"})
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == len(entries) >= 1
    assert [e["id"] for e in body["data"]] == [e.id for e in entries]
    for got, entry in zip(body["data"], entries, strict=True):
        assert got["file"] == "tables/finetune.yaml" and got["effects"] == []
        assert got["when"] == entry.when  # null: always applies (the first entry)
        assert got["set"] == entry.set.model_dump(exclude_none=True)
        assert got["rationale"] == entry.rationale and got["refs"] == entry.refs
        assert got["sections"] == entry.sections and got.get("source") == entry.source
    assert body["data"][0]["when"] is None
    everything = (await client.get("/v1/rules")).json()
    cells = sum(len(row) for row in kb.alignment.cells.values())
    assert everything["count"] == cells + len(kb.rules) + len(entries)


async def test_health_reports_503_when_database_is_down(settings: Settings) -> None:
    app = create_app(settings)
    app.state.db_engine.dispose()
    shutil.rmtree(settings.home)  # SQLite cannot open a file in a missing directory
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        r = await c.get("/healthz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "degraded" and body["database"].startswith("unavailable: ")
    assert body["rules"]["methods_in_catalog"] >= 30


async def test_openapi_names_response_models(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()

    def schema(path: str, status: str = "200") -> str:
        content = spec["paths"][path]["get"]["responses"][status]["content"]
        return content["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]

    assert schema("/v1/methods") == "Page_MethodPublic_"
    assert schema("/v1/methods/{method_id}") == "MethodPublic"
    assert schema("/v1/rules") == "Page_RulePublic_"
    assert schema("/v1/references") == "Page_Reference_"
    assert schema("/v1/references/{ref_id}") == "Reference"
    assert schema("/v1/alignment-matrix") == "AlignmentMatrix"
    assert schema("/healthz") == schema("/healthz", "503") == "Health"
    assert schema("/hf/api/models/{repo_id}") == "HfModelInfo"
    assert schema("/hf/api/models/{repo_id}", "404") == "HfError"


@pytest.mark.parametrize(("method", "path", "limit"), [
    ("POST", "/v1/encoders", 200_000),                 # uploads
    ("POST", "/v1/datasets", 200_000),
    ("POST", "/v1/encoders/taskalign/resnet18-2d.x/embed", 50_000),  # the most specific wins
    ("POST", "/v1/recommendations", 4096),             # everything else
    ("POST", "/v1/encoders/taskalign/resnet18-2d.x/other", 4096),
    ("POST", "/v1/encoders/resnet18-2d.x/embed", 4096),  # a bare name is no repository id
])
def test_each_route_gets_its_own_body_limit(method: str, path: str, limit: int) -> None:
    async def app(scope: dict, receive: object, send: object) -> None:  # never reached
        raise AssertionError

    limits = BodySizeLimit(app, 4096, overrides=[
        ("POST", "/v1/encoders", 200_000), ("POST", "/v1/datasets", 200_000),
        ("POST", "/v1/encoders/*/*/embed", 50_000)])
    assert limits.limit_for(method, path) == limit


async def test_embed_body_over_its_limit_gets_413(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, data_dir=None, seed_zoo=False, worker=False,
                        max_embed_bytes=4096, max_upload_bytes=1 << 20)
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as c:
        r = await c.post("/v1/encoders/taskalign/resnet18-2d.nope/embed",
                         files={"images": ("a.npy", b"\0" * 8192)})
    assert r.status_code == 413 and r.json()["limit_bytes"] == 4096
