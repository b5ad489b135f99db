"""Refuse request URLs that no route can mean, before routing: a NUL byte (raw or %00) in
the path or query. PostgreSQL cannot store NUL in text, so such a value would otherwise
reach the database driver and fail there as a 500."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send


class RejectNulInUrl:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _has_nul(scope):
            body = json.dumps({"detail": "the URL contains a NUL byte (%00); no path or "
                                         "query value may"}).encode()
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def _has_nul(scope: Scope) -> bool:
    query = scope.get("query_string", b"")  # still percent-encoded; the path is decoded
    return "\x00" in scope["path"] or b"\x00" in query or b"%00" in query
