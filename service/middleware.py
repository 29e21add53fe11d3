"""Two small ASGI middlewares: request metrics, and a cap on request body size."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError
from .metrics import Metrics


class RequestMetrics:
    """Counts requests and times them by model, route template and status code.

    The model label is set only for models being served, so unknown names in URLs cannot grow the
    number of series without bound; requests that match no route count as endpoint "other".
    """

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            name = scope.get("path_params", {}).get("name", "")
            registry = getattr(scope["app"].state, "registry", None) if "app" in scope else None
            model = name if registry is not None and name in registry.entries else ""
            self.metrics.requests.labels(model, endpoint, str(status)).inc()
            self.metrics.request_duration.labels(model, endpoint).observe(
                time.perf_counter() - started
            )


class BodyLimit:
    """Refuses request bodies over `max_bytes` with 413, by Content-Length or by counting chunks.

    The error is raised when the app reads the body, so it is answered by the app's own error
    handler (same JSON shape, same metrics) and bodies nobody reads are never counted. Before the
    413 the rest of the body is read and dropped, up to `drain_bytes` in all: a client that sends
    its whole body before reading the answer (urllib, and any client that says `Connection:
    close`) would otherwise see its connection reset instead of the 413. The answer says
    `Connection: close`, so the client does not send its next request on that connection.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, drain_bytes: int | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.drain_bytes = drain_bytes if drain_bytes is not None else drain_limit(max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        received = 0

        def too_large(size: str) -> ApiError:
            msg = f"request body of {size} bytes exceeds the limit of {limit} bytes"
            return ApiError(413, "body_too_large", msg, {"Connection": "close"})

        async def drain(seen: int) -> None:
            while seen <= self.drain_bytes:
                message = await receive()
                if message["type"] != "http.request":
                    return
                seen += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return

        async def counted_receive() -> Message:
            nonlocal received
            if declared is not None and declared.isdigit() and int(declared) > limit:
                if int(declared) <= self.drain_bytes:
                    await drain(0)
                raise too_large(declared.decode())
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if message.get("more_body", False):
                        await drain(received)
                    size = f"more than {limit}"
                    raise too_large(size)
            return message

        await self.app(scope, counted_receive, send)


def drain_limit(max_bytes: int) -> int:
    """How much of an oversized body is read before the 413: four times the limit, and at least
    64 MiB, past what loopback and LAN socket buffers hold."""
    return max(4 * max_bytes, 64 * 2**20)
