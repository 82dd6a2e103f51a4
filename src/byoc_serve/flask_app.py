"""The Flask side: ``/execution-parameters``, the MME routes' helpers, every error as the envelope."""

from __future__ import annotations

import uuid

import orjson
from flask import Flask, Request, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from byoc_serve.app import batch_parameters, error_body
from byoc_serve.config import Settings
from byoc_serve.errors import ServingError, envelope

EVERY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


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
        message, headers = exc.description or exc.name, {}
        if isinstance(exc, NotFound):  # worded as nginx words its own 404s
            message = f"no route for {request.method} {request.environ.get('PATH_INFO') or request.path}"
        elif isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            allowed = ", ".join(sorted(exc.valid_methods))
            message, headers = f"{request.path} accepts {allowed} only", {"Allow": allowed}
        response = json_response(envelope(message, status, kind, model_name, request_id(request)), status)
        response.headers.update(headers)
        return response

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

    @app.route("/models", methods=EVERY_METHOD)
    @app.route("/models/<name>", methods=EVERY_METHOD)
    def multi_model_only(name: str | None = None) -> Response:
        raise ServingError("the multi-model API is off in this container (SAGEMAKER_MULTI_MODEL=true turns it on)", status=404, kind="not_found")

    return app
