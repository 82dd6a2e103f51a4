"""The multi-model routes the HTTP workers serve: ``/models`` and ``/models/{name}``.

Workers hold no models: each route is one call to the model manager, answered with its result or its
error in the JSON envelope. ``/models/{name}/invoke`` never reaches them; nginx sends it straight to the
socket of the process that holds the model.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, request

from byoc_serve.app import TARGET_MODEL, batch_parameters
from byoc_serve.config import Settings
from byoc_serve.errors import BadRequest, ServingError, envelope
from byoc_serve.flask_app import install_error_handlers, json_response, request_id
from byoc_serve.mme.protocol import call_manager

log = logging.getLogger("byoc_serve.mme.routes")


def create_mme_app(settings: Settings) -> Flask:
    app = Flask("byoc_serve.mme")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_payload_bytes
    install_error_handlers(app)

    def answer(model: str | None, op: str, **arguments: Any) -> Response:
        try:
            return json_response(call_manager(settings.run_dir, op, **arguments))
        except ServingError as exc:
            return json_response(envelope(exc.message, exc.status, exc.kind, model, request_id(request)), exc.status)

    @app.post("/models")
    def load_model() -> Response:
        # Whatever the Content-Type: `curl -d` labels the JSON a form, and the body is the contract.
        try:
            body = request.get_json(force=True, silent=True)
        except RecursionError:  # nested too deep to parse; silent=True catches only ValueError
            body = None
        if not isinstance(body, dict):
            raise BadRequest('the body must be JSON: {"model_name": "...", "url": "..."}')
        name, url = _text(body.get("model_name")), _text(body.get("url"))
        target = request.headers.get(TARGET_MODEL)
        log.info("load requested name=%r url=%r target_model=%r request_id=%s", name, url, target, request_id(request))
        return answer(name, "load", model_name=name, url=url, target_model=target)

    @app.get("/models")
    def list_models() -> Response:
        return answer(None, "list", limit=request.args.get("limit"), next_page_token=request.args.get("next_page_token"))

    @app.get("/models/<name>")
    def describe_model(name: str) -> Response:
        return answer(name, "get", model_name=name)

    @app.delete("/models/<name>")
    def unload_model(name: str) -> Response:
        log.info("unload requested name=%s target_model=%s request_id=%s", name, request.headers.get(TARGET_MODEL), request_id(request))
        return answer(name, "unload", model_name=name)

    @app.post("/invocations")
    def invocations() -> Response:
        raise ServingError("this is a multi-model endpoint: invoke POST /models/{name}/invoke", status=404, kind="not_found")

    @app.get("/execution-parameters")
    def execution_parameters() -> Response:
        return json_response(batch_parameters(settings))

    return app


def _text(value: Any) -> str | None:
    """A field as sent if it is a string, else None, which the manager refuses with that field's 400:
    not every JSON value can be sent to it (orjson writes at most 254 levels of nesting)."""
    return value if isinstance(value, str) else None
