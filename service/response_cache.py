"""Pure ASGI cache of successful JSON answers to POST requests on deterministic routes.

The rules engine gives the same output for the same input, so a byte-identical request
to /v1/recommendations can be answered from memory without parsing or validating it
again. Only 200 answers are stored, keyed by path, content type and the exact body.
Changing the knowledge base changes the app (new process), which empties the cache; a
new zoo revision changes `generation()`, which is part of the key.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RawResponseCache:
    def __init__(self, app: ASGIApp, paths: set[str], size: int = 4096,
                 max_body: int = 16 * 1024, generation: Callable[[], Any] = lambda: 0):
        self.app, self.paths, self.size, self.max_body = app, paths, size, max_body
        self.generation = generation
        self._items: OrderedDict[tuple[Any, ...], tuple[bytes, bytes]] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        ctype = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
        key = (self.generation(), scope["path"], ctype, body)
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            await _send_json(send, *hit)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status = 0
        out: list[bytes] = []
        media = b"application/json"

        async def capture(message: Message) -> None:
            nonlocal status, media
            if message["type"] == "http.response.start":
                status = message["status"]
                media = dict(message.get("headers", [])).get(b"content-type", media)
            elif message["type"] == "http.response.body":
                out.append(message.get("body", b""))
            await send(message)

        await self.app(scope, replay, capture)
        if status == 200 and len(body) <= self.max_body:
            self._items[key] = (b"".join(out), media)
            if len(self._items) > self.size:
                self._items.popitem(last=False)


async def _send_json(send: Send, payload: bytes, media: bytes) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", media),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
