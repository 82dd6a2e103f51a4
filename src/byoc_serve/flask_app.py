"""The Flask side: ``/execution-parameters``, the MME routes' helpers, every error as the envelope."""

from __future__ import annotations

import uuid

import orjson
from flask import Flask, Request, Response, request
from werkzeug.exceptions import HTTPException

from byoc_serve.app import batch_parameters, error_body
from byoc_serve.config import Settings
from byoc_serve.errors import envelope


def request_id(req: Request) -> str:
    """nginx's $request_id, so one id ties the access log, the app log and the error body together."""
    return req.headers.get("X-Request-Id") or uuid.uuid4().hex


def json_response(payload: object, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status, content_type="application/json")


def install_error_handlers(app: Flask, model_name: str | None = None) -> None:
    """Every error leaves as the one JSON envelope; tracebacks stay in the log."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        kind = (exc.name or "error").lower().replace(" ", "_")
        return json_response(envelope(exc.description or exc.name, status, kind, model_name, request_id(request)), status)

    @app.errorhandler(Exception)
    def any_error(exc: Exception) -> Response:
        status, body = error_body(exc, request_id(request), model_name)
        return Response(body, status, content_type="application/json")


def create_flask_app(settings: Settings) -> Flask:
    """What a single-model worker serves besides ``POST /invocations``."""
    app = Flask("byoc_serve")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_payload_bytes
    install_error_handlers(app)

    @app.get("/execution-parameters")
    def execution_parameters() -> Response:
        return json_response(batch_parameters(settings))

    return app
