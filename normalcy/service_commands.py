"""`normalcy serve`: the HTTP scoring service (`service`)."""

from __future__ import annotations

import logging
import sys

from .arguments import add_command


def add_serve(sub) -> None:
    p = add_command(
        sub,
        "serve",
        help="serve every bundle in a folder over HTTP (scores, v2 protocol, metrics)",
        description="Flags override NORMALCY_* environment variables (NORMALCY_API_KEY, "
        "NORMALCY_ADMIN_KEY, NORMALCY_MAX_BODY_BYTES, ...; see service/settings.py).",
    )
    p.add_argument("--models", help="folder of bundles; FILE.onnx serves as model FILE")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads per model")
    p.add_argument("--max-batch-size", type=int, help="images per ONNX Runtime call (64)")
    p.add_argument("--max-wait-ms", type=float, help="longest an image waits for a batch (2)")
    p.add_argument("--max-queue-images", type=int, help="queued images per model before 429 (1024)")
    p.add_argument("--watch-interval-s", type=float, help="model folder poll period, 0 = off (2)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--no-access-log", dest="access_log", action="store_const", const=False)
    p.set_defaults(run=run_serve)


# Settings whose flag is not their name with dashes.
FLAG_NAMES = {"models_dir": "--models DIR", "access_log": "--no-access-log"}


def _problem(error: dict, *, has_flag: set[str]) -> str:
    """A settings error named by what the user sets: the flag and the environment variable."""
    field = ".".join(map(str, error["loc"]))
    if not field:
        return error["msg"]
    variable = f"NORMALCY_{field.upper()}"
    flag = FLAG_NAMES.get(field, "--" + field.replace("_", "-"))
    where = f"{flag} or {variable}" if field in has_flag else variable
    if error["type"] == "missing":
        return f"{where} is required"
    return f"{where}: {error['msg']}"


def run_serve(args) -> int:
    import uvicorn
    from pydantic import ValidationError

    from service.app import create_app
    from service.settings import Settings

    names = [
        "host",
        "port",
        "device",
        "threads",
        "max_batch_size",
        "max_wait_ms",
        "max_queue_images",
        "watch_interval_s",
        "log_level",
        "access_log",
    ]
    flags = {name: getattr(args, name) for name in names} | {"models_dir": args.models}
    try:
        settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as error:
        problems = "; ".join(_problem(e, has_flag=set(flags)) for e in error.errors())
        print(f"normalcy serve: bad settings: {problems}", file=sys.stderr)
        return 2
    logging.getLogger().setLevel(settings.log_level.upper())
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
    )
    return 0
