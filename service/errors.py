"""HTTP errors: every error answer is `{"error": {"code": ..., "message": ...}}`, except under
/v2, where the Open Inference Protocol puts a plain string under "error" (Triton's and KServe's
clients read it as one): `{"error": "...", "code": ...}` there.

Library code raises InputError/BundleError; only service/ turns them into status codes.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from detectors.errors import InputError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "unavailable",
}


class ApiError(Exception):
    """An error answer: HTTP status, a stable machine-readable code, and a message for people."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


V2_PREFIX = "/v2"


def error_body(code: str, message: str, *, v2: bool = False) -> dict:
    if v2:  # the protocol's shape; the code rides along for people and logs
        return {"error": message, "code": code}
    return {"error": {"code": code, "message": message}}


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    path = request.url.path
    v2 = path == V2_PREFIX or path.startswith(V2_PREFIX + "/")
    return JSONResponse(error_body(code, message, v2=v2), status_code=status, headers=headers)


def _where(location: tuple) -> str:
    parts = [str(p) for p in location if p not in ("body", "query", "path", "header")]
    source = location[0] if location else ""
    name = ".".join(parts) or source
    return f"{name} ({source})" if source in ("query", "path", "header") else name


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(request, exc.status, exc.code, exc.message, exc.headers)


async def _input_error(request: Request, exc: InputError) -> JSONResponse:
    return error_response(request, 400, "invalid_input", str(exc))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, "error")
    headers = getattr(exc, "headers", None)
    return error_response(request, exc.status_code, code, str(exc.detail), headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [
        f"{_where(tuple(e.get('loc', ())))}: {e.get('msg', 'invalid')}" for e in exc.errors()
    ]
    message = "; ".join(problems) or "invalid request"
    return error_response(request, 422, "invalid_request", message)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # A bug or a broken model, not bad input: log it with its traceback, say little.
    log.error("unhandled error: %r", exc, exc_info=exc)
    message = "internal error; the server log has details"
    return error_response(request, 500, "internal_error", message)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(InputError, _input_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
