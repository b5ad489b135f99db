"""Error bodies are bounded (security issue: a 57 KB upload produced a 44 MB error body).

Whatever a refusal quotes from the request, a text field is cut to a few KB with a note and
an itemised body to MAX_ITEMS items; the shape of each body stays the same."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from service import errors
from service.config import Settings
from service.datasets import InvalidDataset
from service.main import create_app
from service.problems import NotFound
from zoo.registry import RegistrationError

pytestmark = pytest.mark.anyio
ADMIN = "admin-token-0123456789"
HUGE = "x" * 200_000
BOUND = 8 * 1024  # one capped message with its note and the JSON around it


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Numbers(BaseModel):
    values: list[int]


def small_app() -> FastAPI:
    app = FastAPI()
    errors.install(app)

    @app.get("/itemised")
    async def itemised() -> None:
        raise InvalidDataset("file", f"labels.csv line 2: split '{HUGE}' is not one of ...")

    @app.get("/plain")
    async def plain() -> None:
        raise NotFound("dataset_id", f"no dataset {HUGE}")

    @app.get("/registration")
    async def registration() -> None:
        raise RegistrationError("config", HUGE)

    @app.get("/http")
    async def http() -> None:
        raise HTTPException(404, f"unknown encoder '{HUGE}'", headers={"X-Why": "test"})

    @app.get("/short")
    async def short() -> None:
        raise HTTPException(404, "unknown encoder 'a'")

    @app.post("/numbers")
    async def numbers(body: Numbers) -> None:
        return None

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=small_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.mark.parametrize("path", ["/itemised", "/registration"])
async def test_itemised_messages_are_cut_with_a_note(client: httpx.AsyncClient,
                                                     path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 422 and len(r.content) < BOUND
    [item] = r.json()["detail"]
    assert set(item) == {"loc", "msg", "type"}
    assert item["loc"] == ["body", path.strip("/").replace("itemised", "file")
                           .replace("registration", "config")]
    assert "(truncated; " in item["msg"] and item["msg"].endswith(" characters in all)")


async def test_plain_and_http_details_stay_strings(client: httpx.AsyncClient) -> None:
    for path in ("/plain", "/http"):
        r = await client.get(path)
        assert r.status_code == 404 and len(r.content) < BOUND, path
        detail = r.json()["detail"]
        assert isinstance(detail, str) and "truncated;" in detail
    assert (await client.get("/http")).headers["x-why"] == "test"
    assert (await client.get("/short")).json() == {"detail": "unknown encoder 'a'"}


async def test_many_validation_errors_are_counted_not_listed(client: httpx.AsyncClient
                                                             ) -> None:
    r = await client.post("/numbers", json={"values": [HUGE[:1000]] * 500})
    assert r.status_code == 422 and len(r.content) < 20 * 1024
    detail = r.json()["detail"]
    assert len(detail) == errors.MAX_ITEMS + 1
    assert detail[0]["loc"] == ["body", "values", 0] and len(detail[0]["input"]) < 400
    assert detail[-1] == {"loc": [], "msg": f"and {500 - errors.MAX_ITEMS} more errors "
                          "(not shown)", "type": "truncated"}


async def test_the_api_echoes_no_huge_input(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, data_dir=None, seed_zoo=False, worker=False,
                        admin_tokens=ADMIN)
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver",
                                 headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        for body in ({"task": "x" * 60_000, "modality": "ct"},
                     {"task": "classification", "modality": "ct", "y" * 60_000: 1}):
            r = await c.post("/v1/recommendations", json=body)
            assert r.status_code == 422 and len(r.content) < BOUND, r.text[:200]
            assert r.json()["detail"][0]["msg"]
        r = await c.get("/v1/encoders/" + "z" * 60_000)
        assert r.status_code in (404, 422) and len(r.content) < BOUND
