"""A small keep-alive HTTP/1.1 load generator on raw asyncio sockets.

A Python HTTP client would be slower than the server it measures; writing pre-encoded
requests and reading responses by Content-Length keeps the generator cheap, so the
figures reflect the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence


def encode_post(path: str, body: bytes, host: str = "127.0.0.1") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def encode_get(path: str, host: str = "127.0.0.1") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


async def _worker(host: str, port: int, requests: Sequence[bytes], start: int, stop_at: float,
                  latencies: list[float], statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = start
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            writer.write(requests[i % len(requests)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def run_load(host: str, port: int, requests: Sequence[bytes], seconds: float,
                   connections: int) -> dict[str, float]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    stop_at = time.perf_counter() + seconds
    t0 = time.perf_counter()
    step = max(1, len(requests) // connections)
    await asyncio.gather(*(
        _worker(host, port, requests, c * step, stop_at, latencies, statuses)
        for c in range(connections)
    ))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1e3 if latencies else float("nan"),
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3 if latencies else float("nan"),
        "non_2xx": sum(n for s, n in statuses.items() if not 200 <= s < 300),
    }
