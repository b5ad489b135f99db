"""Tokens: every token long enough, the admin identity apart from user names, one token
one identity, and a wrong token refused."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.main import create_app
from service.users import load_tokens

GOOD = "x" * 16


def settings(tmp_path: Path, **values: str) -> Settings:
    return Settings(home=tmp_path, data_dir=None, seed_zoo=False, worker=False, **values)


@pytest.mark.parametrize(("values", "message"), [
    ({"api_tokens": "alice=short"}, "at least 16 characters"),
    ({"admin_tokens": "short-admin"}, "at least 16 characters"),
    ({"api_tokens": f"admin={GOOD}"}, "'admin' is reserved"),
    ({"api_tokens": f"taskalign={GOOD}"}, "'taskalign' is reserved"),  # the seed namespace
    ({"api_tokens": f"Alice Smith={GOOD}"}, "user names in lower case"),
    ({"api_tokens": f"alice={GOOD},bob={GOOD}"}, "given to both alice and bob"),
    ({"api_tokens": f"alice={GOOD}", "admin_tokens": GOOD}, "given to both alice and admin"),
])
def test_unsafe_token_settings_stop_start_up(tmp_path: Path, values: dict[str, str],
                                             message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_tokens(settings(tmp_path, **values))


def test_admin_and_users_are_distinct(tmp_path: Path) -> None:
    tokens = load_tokens(settings(tmp_path, api_tokens=f"alice={'a' * 16}",
                                  admin_tokens="b" * 16))
    assert {(u.name, u.admin) for u in tokens.values()} == {("alice", False), ("admin", True)}


@pytest.mark.anyio
async def test_wrong_or_missing_token_is_401(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path, api_tokens=f"alice={'a' * 16}"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as client:
        assert (await client.get("/v1/jobs")).status_code == 401
        wrong = await client.get("/v1/jobs", headers={"Authorization": f"Bearer {'a' * 15}b"})
        assert wrong.status_code == 401
        ok = await client.get("/v1/jobs", headers={"Authorization": f"Bearer {'a' * 16}"})
        assert ok.status_code == 200


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_openapi_declares_bearer_security_on_write_routes(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path, api_tokens=f"alice={'a' * 16}"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as client:
        spec = (await client.get("/openapi.json")).json()
        lower = await client.get("/v1/jobs", headers={"Authorization": f"bearer {'a' * 16}"})
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert spec["paths"]["/v1/jobs"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in spec["paths"]["/v1/recommendations"]["post"]
    assert lower.status_code == 200  # the scheme name is case-insensitive
