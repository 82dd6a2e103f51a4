"""Error types that carry their HTTP status, and the one JSON envelope every layer answers with."""

from __future__ import annotations

from typing import Any

import orjson


class ServingError(Exception):
    """An error with an HTTP status and a short kind; its message is safe to show the caller."""

    status = 500
    kind = "internal_error"

    def __init__(self, message: str, *, status: int | None = None, kind: str | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if kind is not None:
            self.kind = kind


class BadRequest(ServingError):
    status, kind = 400, "bad_request"


class ModelNotLoaded(ServingError):
    status, kind = 404, "model_not_loaded"


class NotAcceptable(ServingError):
    status, kind = 406, "not_acceptable"


class ModelAlreadyLoaded(ServingError):
    status, kind = 409, "model_already_loaded"


class PayloadTooLarge(ServingError):
    status, kind = 413, "payload_too_large"


class UnsupportedContentType(ServingError):
    status, kind = 415, "unsupported_content_type"


class ModelFailure(ServingError):
    status, kind = 500, "model_error"


class NotReady(ServingError):
    status, kind = 503, "not_ready"


class InsufficientMemory(ServingError):
    status, kind = 507, "insufficient_memory"


class InferenceError(ServingError):
    """Raise from user code to answer with your own status (4xx or 5xx) and message.

    Mirrors the SageMaker inference toolkit's ``BaseInferenceToolkitError(status_code, message, phrase)``.
    """

    kind = "user_error"

    def __init__(self, status_code: int, message: str, phrase: str | None = None):
        if not 400 <= int(status_code) <= 599:
            raise ValueError(f"status_code must be 4xx or 5xx, got {status_code}")
        super().__init__(message, status=int(status_code), kind=phrase or "user_error")


def describe_load_failure(exc: BaseException) -> str:
    """``Type: message`` for a model that failed to load; a bare ``MemoryError`` gets its usual cause."""
    if isinstance(exc, MemoryError) and not str(exc):
        return "MemoryError: one allocation was refused; a corrupt or truncated pickle asks for terabytes this way"
    return f"{type(exc).__name__}: {exc}"


def envelope(message: str, status: int, kind: str, model: str | None = None, request_id: str | None = None) -> dict[str, Any]:
    """The JSON error body used by the app, the model hosts and (via nginx.conf) nginx itself."""
    return {"error": message, "code": status, "type": kind, "model": model, "request_id": request_id}


def envelope_bytes(error: ServingError, model: str | None = None, request_id: str | None = None) -> bytes:
    return orjson.dumps(envelope(error.message, error.status, error.kind, model, request_id))
