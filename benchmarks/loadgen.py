"""A closed-loop HTTP/1.1 load generator on asyncio (uvloop when installed).

`concurrency` connections each send a request, wait for the answer and send the next, over
keep-alive. The client is a minimal hand-written HTTP/1.1 client (Content-Length and chunked
answers) rather than httpx or aiohttp, so that the client costs far less CPU per request than the
servers it measures. Latency is measured per request from the write to the last byte read;
requests that start during the warm-up are not counted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    requests: int
    errors: int
    latencies_s: list[float] = field(repr=False, default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    def summary(self, images_per_request: int = 1) -> dict:
        lat = np.asarray(self.latencies_s) * 1000.0
        ok = self.requests - self.errors
        return {
            "concurrency": self.concurrency,
            "seconds": round(self.seconds, 3),
            "requests": self.requests,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "requests_per_s": ok / self.seconds if self.seconds else 0.0,
            "images_per_s": ok * images_per_request / self.seconds if self.seconds else 0.0,
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
        }


def http_request(
    host: str,
    port: int,
    path: str,
    body: bytes,
    content_type: str,
    headers: dict[str, str] | None = None,
) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    if not status_line:
        msg = "connection closed by the server"
        raise ConnectionError(msg)
    status = int(status_line.split()[1])
    length, chunked = 0, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        return status, await reader.readexactly(length)
    body = bytearray()
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            await reader.readline()
            return status, bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def _worker(
    host: str,
    port: int,
    requests: list[bytes],
    offset: int,
    start: float,
    measure_from: float,
    stop_at: float,
    result: LoadResult,
) -> None:
    reader = writer = None
    i = offset
    while time.perf_counter() < stop_at:
        if writer is None:
            reader, writer = await asyncio.open_connection(host, port)
        payload = requests[i % len(requests)]
        i += 1
        began = time.perf_counter()
        try:
            writer.write(payload)
            status, _ = await read_response(reader)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            writer.close()
            reader = writer = None
            status = 599
        ended = time.perf_counter()
        if began >= measure_from and ended <= stop_at:
            result.requests += 1
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status == 200:
                result.latencies_s.append(ended - began)
            else:
                result.errors += 1
    if writer is not None:
        writer.close()


async def drive(
    host: str, port: int, requests: list[bytes], concurrency: int, seconds: float, warmup_s: float
) -> LoadResult:
    """Run `concurrency` closed-loop connections for warmup_s + seconds; count the last seconds."""
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + seconds
    result = LoadResult(concurrency, seconds, 0, 0)
    await asyncio.gather(
        *(
            _worker(host, port, requests, k * 7, start, measure_from, stop_at, result)
            for k in range(concurrency)
        )
    )
    return result


def run(
    host: str, port: int, requests: list[bytes], concurrency: int, seconds: float, warmup_s: float
) -> LoadResult:
    try:
        import uvloop

        return uvloop.run(drive(host, port, requests, concurrency, seconds, warmup_s))
    except ImportError:
        return asyncio.run(drive(host, port, requests, concurrency, seconds, warmup_s))
