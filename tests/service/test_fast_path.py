"""The raw-ASGI success path of POST /v1/recommendations must answer byte for byte as the
FastAPI route does, and leave every refusal to the route.

The route is reached with the same bytes under a `+json` content type, which FastAPI
parses as JSON and the fast path leaves alone.
"""

from __future__ import annotations

import json
import random

import httpx
import pytest

from service.config import Settings
from service.main import create_app

pytestmark = pytest.mark.anyio
ROUTE_ONLY = {"content-type": "application/vnd.taskalign+json"}
FAST = {"content-type": "application/json"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def profiles(n: int, seed: int = 11) -> list[object]:
    """Valid, oddly spelled, contradictory and invalid bodies, in one shuffled list."""
    rnd = random.Random(seed)
    tasks = ["classification", "Segmentation", "detection", "anomaly-detection",
             "reconstruction", "regression", "segmentaton"]
    modalities = ["ct", "MRI", "cxr", "x-ray", "wsi", "ultrasound", "fundus", "oct",
                  "dermatology", "pet", "endoscopy", "mammography", "fmri", "unicorn"]
    out: list[object] = []
    for _ in range(n):
        p: dict = {"task": rnd.choice(tasks), "modality": rnd.choice(modalities)}
        if rnd.random() < 0.4:
            p["dimensionality"] = rnd.choice(["2d", "3D", "video"])
        if rnd.random() < 0.5:
            p["label_regime"] = rnd.choice(["none", "few_shot", "low", "moderate", "full"])
        else:  # numbers as strings are valid too (lax validation)
            p["labeled"] = rnd.choice([0, 40, "40", 5000])
            p["unlabeled"] = rnd.choice([2000, "100000", 10])
        props = {}
        for key, values in (("lesion_scale", ["small_focal", "large", "tiny"]),
                            ("orientation_sensitive", [True, False, "true"]),
                            ("gpu_memory_gb", [8, "24", 0]),
                            ("paired_modalities", [["oct"], ["fundus", "FUNDUS"]])):
            if rnd.random() < 0.3:
                props[key] = rnd.choice(values)
        if props:
            p["properties"] = props
        if rnd.random() < 0.2:
            p["top_k"] = rnd.choice([1, 5, 100, 1000])
        out.append(p)
    out += [[], "ct", None, 3, {"task": "classification"}]
    return out


async def test_fast_path_answers_exactly_as_the_route(tmp_path) -> None:
    app = create_app(Settings(home=tmp_path / "var", data_dir=None, seed_zoo=False,
                              worker=False))
    transport = httpx.ASGITransport(app=app)
    statuses: dict[int, int] = {}
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for body in profiles(300):
            raw = json.dumps(body).encode()
            fast = await client.post("/v1/recommendations", content=raw, headers=FAST)
            route = await client.post("/v1/recommendations", content=raw, headers=ROUTE_ONLY)
            assert fast.status_code == route.status_code, body
            assert fast.content == route.content, body
            statuses[fast.status_code] = statuses.get(fast.status_code, 0) + 1
            again = await client.post("/v1/recommendations", content=raw, headers=FAST)
            assert again.content == fast.content  # from the answer cache when it was a 200
    # Both answers and refusals were exercised.
    assert statuses.get(200, 0) > 50 and statuses.get(422, 0) > 50, statuses


async def test_not_json_is_left_to_the_route(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/recommendations", content=b"task=ct",
                          headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 422
    r = await client.post("/v1/recommendations", content=b"{not json",
                          headers=FAST)
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
