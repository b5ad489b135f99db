"""Pure ASGI middleware that refuses request bodies over a size limit with 413.

Written as raw ASGI rather than BaseHTTPMiddleware so that it adds almost nothing to
the hot path and can stop a chunked upload as soon as it crosses the limit.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    pass


def _matches(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    return len(pattern) == len(path) and all(p in ("*", s) for p, s in zip(pattern, path,
                                                                             strict=True))


class BodySizeLimit:
    """`max_bytes` for every route, except the routes named in `overrides` (method, path
    with `*` for one segment, limit), which get their own. Paths match whole, so
    /v1/encoders (an upload) says nothing about /v1/encoders/OWNER/NAME/embed."""

    def __init__(self, app: ASGIApp, max_bytes: int,
                 overrides: list[tuple[str, str, int]] | None = None):
        self.app, self.default = app, max_bytes
        self.overrides = [(m, tuple(p.strip("/").split("/")), limit)
                          for m, p, limit in overrides or []]

    def limit_for(self, method: str, path: str) -> int:
        parts = tuple(path.strip("/").split("/"))
        for m, pattern, limit in self.overrides:
            if method == m and _matches(pattern, parts):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.limit_for(scope["method"], scope["path"])
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > max_bytes or declared < 0:
                    await self._reject(send, max_bytes)
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send, max_bytes)

    async def _reject(self, send: Send, max_bytes: int) -> None:
        body = json.dumps({
            "detail": f"request body exceeds the limit of {max_bytes} bytes",
            "limit_bytes": max_bytes,
        }).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
