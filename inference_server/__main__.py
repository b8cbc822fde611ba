"""`python -m inference_server --settings FILE.json`: serve one model with uvicorn, one worker."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from inference_server import settings as server_settings
from inference_server.engines.base import EngineError


def serve(settings: server_settings.ServerSettings) -> None:
    """Run until SIGINT/SIGTERM; requests in flight get `stop_grace_s` to finish."""
    import logging

    import uvicorn

    from inference_server.app import create_app

    # uvicorn configures its own loggers only: the pool's loads and unloads go to the same log
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        workers=1,
        timeout_graceful_shutdown=int(max(1, settings.stop_grace_s)),
        log_level="info",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference_server", description=__doc__)
    parser.add_argument("--settings", type=Path, required=True, help="JSON file of ServerSettings")
    args = parser.parse_args(argv)
    try:
        settings = server_settings.load(args.settings)
    except (OSError, ValidationError) as exc:
        print(f"error: {args.settings}: {_one_line(exc)}", file=sys.stderr)
        return 2
    try:
        serve(settings)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {first['msg']}" if where else str(first["msg"]).removeprefix("Value error, ")
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
