"""The pages' way into the JSON API: an in-process httpx client over ASGI.

A page therefore sees exactly what the API would show its user, with the same validation,
the same error bodies (allowed values, did-you-mean) and the same size limits, and no page
can drift from the API's permission checks.
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

BASE_URL = "http://taskalign.internal"


class ApiError(Exception):
    """A 4xx/5xx from the API, with its JSON detail for the page to show."""

    def __init__(self, status: int, detail: Any):
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail

    @property
    def field_errors(self) -> dict[str, dict[str, Any]]:
        """A 422's errors by field name (the last part of `loc`), for inline messages."""
        out: dict[str, dict[str, Any]] = {}
        if isinstance(self.detail, list):
            for item in self.detail:
                loc = [str(part) for part in item.get("loc", []) if part != "body"]
                out[".".join(loc) or "form"] = item
        return out

    @property
    def message(self) -> str:
        if isinstance(self.detail, list):
            return "; ".join(str(item.get("msg", item)) for item in self.detail)
        return str(self.detail)


def client_for(app: FastAPI) -> httpx.AsyncClient:
    """One client per app, made on first use (requests reach the app without a socket)."""
    client = getattr(app.state, "web_api", None)
    if client is None:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL,
                                   timeout=None)
        app.state.web_api = client
    return client


class Api:
    """Calls made on behalf of one signed-in user (or anonymously)."""

    def __init__(self, app: FastAPI, token: str | None):
        self.client = client_for(app)
        self.headers = {"authorization": f"Bearer {token}"} if token else {}

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.client.request(method, path, headers=self.headers, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    async def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        clean = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        return await self.call("GET", path, params=clean)

    async def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return await self.call("POST", path, json=json, **kwargs)
