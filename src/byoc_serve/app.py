"""The Flask app behind nginx: /invocations, /execution-parameters, and the JSON error envelope."""

from __future__ import annotations

import logging
import uuid

import orjson
from flask import Flask, Request, Response, request
from werkzeug.exceptions import HTTPException

from byoc_serve.config import Settings
from byoc_serve.errors import NotReady, ServingError, envelope
from byoc_serve.servable import Invocation, Servable

log = logging.getLogger("byoc_serve.app")

CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"


class ModelSlot:
    """Where a worker keeps its servable; empty until the model is loaded (before or after fork)."""

    def __init__(self, servable: Servable | None = None):
        self.servable = servable


def request_id(req: Request) -> str:
    """nginx's $request_id, so one id ties the access log, the app log and the error body together."""
    return req.headers.get("X-Request-Id") or uuid.uuid4().hex


def invoke(servable: Servable, req: Request) -> Response:
    """Serve one inference request with ``servable`` (shared by /invocations and MME model hosts)."""
    body = req.get_data(cache=False)
    if not body:
        return Response(status=204)
    result = servable.invoke(
        Invocation(
            body=body,
            content_type=req.headers.get("Content-Type"),
            accept=req.headers.get("Accept"),
            custom_attributes=req.headers.get(CUSTOM_ATTRIBUTES),
            request_id=request_id(req),
            target_model=req.headers.get(TARGET_MODEL),
        )
    )
    response = Response(result.body, 200, content_type=result.content_type)
    if result.custom_attributes:
        response.headers[CUSTOM_ATTRIBUTES] = result.custom_attributes
    return response


def json_response(payload: object, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status, content_type="application/json")


def install_error_handlers(app: Flask, model_name: str | None = None) -> None:
    """Every error leaves as the one JSON envelope; tracebacks stay in the log."""

    @app.errorhandler(ServingError)
    def serving_error(exc: ServingError) -> Response:
        rid = request_id(request)
        if exc.status >= 500:
            log.error("request_id=%s status=%s %s", rid, exc.status, exc.message)
        return json_response(envelope(exc.message, exc.status, exc.kind, model_name, rid), exc.status)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        kind = (exc.name or "error").lower().replace(" ", "_")
        return json_response(envelope(exc.description or exc.name, status, kind, model_name, request_id(request)), status)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        rid = request_id(request)
        log.exception("request_id=%s unhandled error", rid)
        message = f"internal error; see the server log for request {rid}"
        return json_response(envelope(message, 500, "internal_error", model_name, rid), 500)


def create_app(settings: Settings, slot: ModelSlot) -> Flask:
    """The single-model app (the multi-model routes are added by byoc_serve.mme when enabled)."""
    app = Flask("byoc_serve")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_payload_bytes
    install_error_handlers(app)

    @app.post("/invocations")
    def invocations() -> Response:
        if slot.servable is None:
            raise NotReady("the model is not loaded yet")
        return invoke(slot.servable, request)

    @app.get("/execution-parameters")
    def execution_parameters() -> Response:
        return json_response(batch_parameters(settings))

    return app


def batch_parameters(settings: Settings) -> dict[str, object]:
    """What batch transform asks ``GET /execution-parameters`` for."""
    return {
        "MaxConcurrentTransforms": settings.max_concurrent_transforms,
        "BatchStrategy": settings.batch_strategy,
        "MaxPayloadInMB": settings.max_payload_mb,
    }
