"""Serve stored blobs: ETag is the sha256, If-None-Match gives 304, Range gives 206."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request, Response
from starlette.responses import FileResponse


class BlobResponse(FileResponse):
    chunk_size = 1024 * 1024  # larger reads than Starlette's 64 KiB: fewer syscalls per MB


def blob_response(request: Request, path: Path, sha256: str, filename: str,
                  extra: dict[str, str] | None = None) -> Response:
    etag = f'"{sha256}"'
    headers = {"etag": etag, "accept-ranges": "bytes", "cache-control": "public, immutable",
               **(extra or {})}
    candidates = [t.strip() for t in request.headers.get("if-none-match", "").split(",")]
    if etag in candidates or f"W/{etag}" in candidates or "*" in candidates:
        return Response(status_code=304, headers=headers)
    media = "application/json" if filename.endswith(".json") else (
        "text/markdown; charset=utf-8" if filename.endswith(".md") else
        "application/octet-stream")
    return BlobResponse(path, media_type=media, headers=headers,
                        content_disposition_type="attachment", filename=filename)
