"""A loaded, warmed model and the request pipeline around it: decode → predict → encode."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from byoc_serve import codecs, requirements
from byoc_serve.config import Settings
from byoc_serve.errors import BadRequest, ModelFailure, ServingError
from byoc_serve.selection import select_handler
from model_handlers.base import Context, Handler

log = logging.getLogger("byoc_serve.servable")

WARMUP_FILES = {"warmup.json": "application/json", "warmup.csv": "text/csv", "warmup.npy": "application/x-npy"}


@dataclass
class Invocation:
    """One request as the pipeline sees it (HTTP-free)."""

    body: bytes
    content_type: str | None
    accept: str | None = None
    custom_attributes: str | None = None
    request_id: str | None = None
    target_model: str | None = None


@dataclass
class Result:
    body: bytes
    content_type: str
    custom_attributes: str | None = None


class Servable:
    """A model ready to serve: its handler, the loaded object and the load-time context."""

    def __init__(self, handler: Handler, model: Any, context: Context):
        self.handler = handler
        self.model = model
        self.context = context

    @classmethod
    def load(
        cls,
        model_dir: Path,
        settings: Settings,
        name: str | None = None,
        warm_up: bool = True,
        handler: Handler | None = None,
    ) -> "Servable":
        """Select the handler (unless given), load the model and (by default) run the warm-up prediction.

        Each step logs its phase so a failed start names where it failed.
        """
        model_dir = Path(model_dir)
        if handler is None:
            handler = choose_handler(model_dir, settings, name)
        context = Context(model_dir=model_dir, settings=settings, model_name=name)
        with phase("load", model=name, handler=handler.name):
            model = handler.load(model_dir, context)
        servable = cls(handler, model, context)
        if warm_up:
            with phase("warm-up", model=name, handler=handler.name) as info:
                info["sample"] = servable.warm_up()
        return servable

    def warm_up(self) -> str:
        """Run one prediction: the artifact's own sample if it ships one, else one from the signature."""
        code_dir = self.context.model_dir / "code"
        for filename, content_type in WARMUP_FILES.items():
            sample = code_dir / filename
            if sample.is_file():
                self.invoke(Invocation(sample.read_bytes(), content_type, accept=None))
                return str(sample.relative_to(self.context.model_dir))
        data = self.handler.warmup_input(self.model)
        if data is None:
            return "none available"
        self.handler.predict(self.model, data, self.context)
        return "from signature"

    def invoke(self, request: Invocation) -> Result:
        """Run the pipeline for one request; ServingErrors pass through, anything else becomes a 500."""
        context = self.context.for_request(request.request_id, request.custom_attributes, request.target_model)
        accept = codecs.negotiate(request.accept, context.settings.default_accept)
        try:
            body, content_type = self.handler.handle(self.model, request.body, request.content_type or "", accept, context)
        except ServingError:
            raise
        except Exception as exc:
            log.exception("model failure request_id=%s model=%s", request.request_id, context.model_name)
            raise ModelFailure(f"{type(exc).__name__} while running the model; see the server log for request {request.request_id}") from exc
        if isinstance(body, str):
            body = body.encode()
        return Result(body=body, content_type=content_type, custom_attributes=context.response_custom_attributes)


def choose_handler(model_dir: Path, settings: Settings, name: str | None = None) -> Handler:
    """The model's handler, once the artifacts exist and ``code/requirements.txt`` (if any) is checked or installed."""
    with phase("artifacts", model=name):
        if not model_dir.is_dir():
            raise BadRequest(f"model directory {model_dir} does not exist")
        if not any(model_dir.iterdir()):
            raise BadRequest(f"model directory {model_dir} is empty")
    if settings.requirements != "ignore" and requirements.find(model_dir) is not None:
        with phase("requirements", model=name) as info:
            info.update(requirements.prepare(model_dir, settings))
    with phase("handler", model=name) as info:
        try:
            handler = select_handler(model_dir, settings)
        except ImportError as exc:
            advice = requirements.advice(model_dir, settings)
            if advice is None:
                raise
            raise ImportError(f"{exc}; {advice}") from exc
        info["handler"] = handler.name
    return handler


class phase:
    """Context manager logging one start-up phase with its duration; on failure names the phase."""

    def __init__(self, name: str, **fields: Any):
        self.name = name
        self.info: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}

    def __enter__(self) -> dict[str, Any]:
        self.started = time.perf_counter()
        return self.info

    def __exit__(self, exc_type, exc, tb) -> bool:
        elapsed_ms = (time.perf_counter() - self.started) * 1000
        details = " ".join(f"{k}={v}" for k, v in self.info.items())
        if exc is None:
            log.info("phase=%s ok %.1fms %s", self.name, elapsed_ms, details)
        else:
            log.error("phase=%s FAILED after %.1fms %s: %s: %s", self.name, elapsed_ms, details, type(exc).__name__, exc)
            if not hasattr(exc, "phase"):
                exc.phase = self.name  # type: ignore[attr-defined]
        return False
