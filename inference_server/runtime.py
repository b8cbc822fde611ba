"""The per-app state routes share: settings, engine, admission queue, metrics, load status."""

from __future__ import annotations

import fnmatch
import logging
import threading
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from inference_server.admission import Admission
from inference_server.engines.base import Engine, EngineError
from inference_server.errors import ApiError
from inference_server.generation import Generation
from inference_server.metrics import Metrics
from inference_server.settings import ServerSettings

log = logging.getLogger("inference_server")


@dataclass
class Runtime:
    settings: ServerSettings
    engine: Engine
    admission: Admission
    metrics: Metrics
    generation: Generation
    loaded: threading.Event = field(default_factory=threading.Event)
    load_error: str = ""

    def load(self) -> None:
        """Start the engine (blocking; runs on a helper thread while /health answers 503)."""
        try:
            self.engine.start()
        except EngineError as exc:  # expected (a bad file, too little memory): one line says it
            self.load_error = str(exc)
            log.error("loading %s failed: %s", self.settings.model_path, exc)
            return
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("loading %s failed", self.settings.model_path)
            return
        self.loaded.set()
        log.info("serving %s with %s", self.settings.model_name, self.engine.info.engine)

    def ready(self) -> bool:
        return self.loaded.is_set() and self.engine.healthy()

    def listed_names(self) -> list[str]:
        """The served name and every alias that is a plain name (patterns are matched, not listed)."""
        aliases = [a for a in self.settings.model_aliases if not any(ch in a for ch in "*?[")]
        return [self.settings.model_name, *aliases]

    def check_model(self, requested: str) -> None:
        if requested == self.settings.model_name:
            return
        if any(fnmatch.fnmatchcase(requested, pattern) for pattern in self.settings.model_aliases):
            return
        names = ", ".join(self.listed_names())
        raise ApiError("not_found", f"model '{requested}' is not served here; available: {names}")


def runtime(request: Request) -> Runtime:
    state: Runtime = request.app.state.runtime
    if not state.loaded.is_set():
        reason = state.load_error or "the model is still loading"
        raise ApiError("overloaded", f"not ready: {reason}", retry_after_s=2)
    return state


Ready = Annotated[Runtime, Depends(runtime)]
