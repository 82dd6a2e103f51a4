"""The WSGI app behind nginx: ``POST /invocations`` as bare WSGI, every other path via Flask.

Flask is imported when a request first needs it (``/execution-parameters``), in the worker: the
import is ~0.15 s, a seventh of a scikit-learn model's start-up.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping

import orjson

from byoc_serve.config import Settings
from byoc_serve.errors import NotReady, PayloadTooLarge, ServingError, envelope
from byoc_serve.http1 import status_line
from byoc_serve.servable import Invocation, Servable

log = logging.getLogger("byoc_serve.app")

CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]


class ModelSlot:
    """Where a worker keeps its servable (empty until loaded, before or after fork) and its model's name."""

    def __init__(self, servable: Servable | None = None, name: str | None = None):
        self.servable = servable
        self.name = name


# The request headers the route reads, by field name (lower-case) and by WSGI environ key.
ROUTE_FIELDS = (
    ("content-type", "CONTENT_TYPE"),
    ("accept", "HTTP_ACCEPT"),
    ("x-request-id", "HTTP_X_REQUEST_ID"),
    ("x-amzn-sagemaker-custom-attributes", "HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES"),
    ("x-amzn-sagemaker-target-model", "HTTP_X_AMZN_SAGEMAKER_TARGET_MODEL"),
)


def invocation(fields: Mapping[str, str], body: bytes, rid: str) -> Invocation:
    """The HTTP-free request the pipeline sees, from the header fields and the body already read."""
    return Invocation(
        body=body,
        content_type=fields.get("content-type"),
        accept=fields.get("accept"),
        custom_attributes=fields.get("x-amzn-sagemaker-custom-attributes"),
        request_id=rid,
        target_model=fields.get("x-amzn-sagemaker-target-model"),
    )


def error_body(exc: BaseException, rid: str, model_name: str | None) -> tuple[int, bytes]:
    """Status and envelope for any exception; server-side failures are logged with the request id."""
    if isinstance(exc, ServingError):
        if exc.status >= 500:
            log.error("request_id=%s model=%s status=%s %s", rid, model_name, exc.status, exc.message)
        return exc.status, orjson.dumps(envelope(exc.message, exc.status, exc.kind, model_name, rid))
    log.error("request_id=%s model=%s unhandled error", rid, model_name, exc_info=exc)
    message = f"internal error; see the server log for request {rid}"
    return 500, orjson.dumps(envelope(message, 500, "internal_error", model_name, rid))


class InvokeRoute:
    """``<path>`` answered without Flask; every other path of a WSGI request goes to ``fallback``.

    Flask's request and response objects cost about a quarter of a worker's CPU on a one-row request
    (py-spy, issue 2's benchmark), and inference is the only hot route, so it does without them. A
    LoopWorker calls ``respond`` with the header fields it framed, without building a WSGI environ
    (in a worker's loop that was ~7 µs of a ~90 µs one-row request); gthread workers and model hosts
    come through ``__call__``. Both answer through ``respond``.
    """

    def __init__(self, path: str, slot: ModelSlot, fallback: WSGIApp, max_payload_bytes: int):
        self.path = path
        self.slot = slot
        self.fallback = fallback
        self.max_payload_bytes = max_payload_bytes

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != self.path:
            return self.fallback(environ, start_response)
        fields = {name: environ[key] for name, key in ROUTE_FIELDS if key in environ}
        status, headers, body = self.respond(environ.get("REQUEST_METHOD", ""), fields, lambda: self.read_body(environ))
        start_response(status, headers)
        return [body]

    def respond(
        self, method: str, fields: Mapping[str, str], read_body: Callable[[], bytes]
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        """Status line, headers and body for one request; any failure is answered with the JSON envelope."""
        rid = fields.get("x-request-id") or uuid.uuid4().hex
        headers: list[tuple[str, str]] = []
        try:
            if method != "POST":
                headers.append(("Allow", "POST"))
                raise ServingError(f"{self.path} accepts POST only", status=405, kind="method_not_allowed")
            status, body, content_type = self.answer(fields, read_body, rid, headers)
        except Exception as exc:
            status, body = error_body(exc, rid, self.slot.name)
            content_type = "application/json"
        if body or status != 204:
            headers += [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        return status_line(status), headers, body

    def answer(
        self, fields: Mapping[str, str], read_body: Callable[[], bytes], rid: str, headers: list[tuple[str, str]]
    ) -> tuple[int, bytes, str]:
        servable = self.slot.servable
        if servable is None:
            raise NotReady("the model is not loaded yet")
        body = read_body()
        if not body:
            return 204, b"", ""
        result = servable.invoke(invocation(fields, body, rid))
        if result.custom_attributes:
            headers.append((CUSTOM_ATTRIBUTES, result.custom_attributes))
        return 200, result.body, result.content_type

    def read_body(self, environ: dict) -> bytes:
        length = environ.get("CONTENT_LENGTH")
        if length:
            if int(length) > self.max_payload_bytes:
                raise self.too_large()
            return environ["wsgi.input"].read(int(length))
        body = environ["wsgi.input"].read(self.max_payload_bytes + 1)  # chunked: no length up front
        if len(body) > self.max_payload_bytes:
            raise self.too_large()
        return body

    def too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"the body is larger than the {self.max_payload_bytes}-byte limit")


def create_app(settings: Settings, slot: ModelSlot) -> WSGIApp:
    """The single-model app (the multi-model routes are added by byoc_serve.mme when enabled)."""
    return InvokeRoute("/invocations", slot, FlaskOnFirstUse(settings), settings.max_payload_bytes)


class FlaskOnFirstUse:
    """The Flask app for every other path, imported and built by the first request for one."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.app: WSGIApp | None = None
        self.lock = threading.Lock()

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if self.app is None:
            with self.lock:
                if self.app is None:
                    from byoc_serve.flask_app import create_flask_app

                    self.app = create_flask_app(self.settings)
        return self.app(environ, start_response)


def batch_parameters(settings: Settings) -> dict[str, object]:
    """What batch transform asks ``GET /execution-parameters`` for."""
    return {
        "MaxConcurrentTransforms": settings.max_concurrent_transforms,
        "BatchStrategy": settings.batch_strategy,
        "MaxPayloadInMB": settings.max_payload_mb,
    }
