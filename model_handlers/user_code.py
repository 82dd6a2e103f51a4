"""SageMaker user-code hooks (``code/inference.py``) on top of a framework handler's defaults.

Keeps the SageMaker inference toolkit's contract: ``model_fn(model_dir[, context])``,
``input_fn(body, content_type[, context])``, ``predict_fn(data, model[, context])``,
``output_fn(prediction, accept[, context])`` or ``transform_fn(model, body, content_type, accept[, context])``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from byoc_serve import codecs
from byoc_serve.errors import ServingError
from model_handlers.base import Context, Handler

log = logging.getLogger("byoc_serve.user_code")

# The toolkit hands input_fn a str for these types and bytes for everything else.
UTF8_TYPES = ("application/json", "text/csv")
# Each hook and the arguments it is given before the optional trailing context.
HOOKS = {"model_fn": 1, "input_fn": 2, "predict_fn": 2, "output_fn": 2, "transform_fn": 4}


class UserCodeHandler(Handler):
    """Runs the user's hooks; any hook they did not write falls back to ``fallback``."""

    name = "user_code"

    def __init__(self, script: Path, fallback: Handler | None):
        self.script = Path(script)
        self.fallback = fallback
        self.module = import_user_module(self.script)
        self.hooks = {
            name: Hook(getattr(self.module, name), given)
            for name, given in HOOKS.items()
            if callable(getattr(self.module, name, None))
        }
        if "transform_fn" in self.hooks and {"input_fn", "predict_fn", "output_fn"} & self.hooks.keys():
            raise ValueError(f"{self.script.name}: transform_fn cannot be combined with input_fn, predict_fn or output_fn")
        if fallback is None and "model_fn" not in self.hooks:
            raise ValueError(f"{self.script.name} has no model_fn and no framework handler recognises the artifacts")
        self.fork_safe = fallback.fork_safe if fallback else False
        self.memory_factor = fallback.memory_factor if fallback else Handler.memory_factor
        self.name = f"user_code+{fallback.name}" if fallback else "user_code"

    def can_load(self, model_dir: Path) -> bool:
        return True

    def load(self, model_dir: Path, context: Context) -> Any:
        if "model_fn" in self.hooks:
            if self.fallback is not None:
                self.fallback.prepare(context)  # the framework's device and threads, as if it loaded the model
            return self.hooks["model_fn"](context, str(model_dir))
        assert self.fallback is not None
        return self.fallback.load(model_dir, context)

    def handle(self, model: Any, body: bytes, content_type: str, accept: str, context: Context) -> tuple[bytes, str]:
        if "transform_fn" in self.hooks:
            return _as_response(self.hooks["transform_fn"](context, model, body, content_type, accept), accept)
        return super().handle(model, body, content_type, accept, context)

    def decode(self, body: bytes, content_type: str, context: Context) -> Any:
        if "input_fn" in self.hooks:
            media_type = codecs.parse_media_type(content_type) or content_type
            payload = codecs.as_text(body, content_type) if media_type in UTF8_TYPES else body
            return self.hooks["input_fn"](context, payload, content_type)
        return self._default().decode(body, content_type, context)

    def predict(self, model: Any, data: Any, context: Context) -> Any:
        if "predict_fn" in self.hooks:
            return self.hooks["predict_fn"](context, data, model)
        if self.fallback is None:
            raise ValueError(f"{self.script.name} has no predict_fn and there is no framework default")
        return self.fallback.predict(model, data, context)

    def encode(self, prediction: Any, accept: str, context: Context) -> tuple[bytes, str]:
        if "output_fn" in self.hooks:
            return _as_response(self.hooks["output_fn"](context, prediction, accept), accept)
        return self._default().encode(prediction, accept, context)

    def warmup_input(self, model: Any) -> Any | None:
        if self.fallback is None or {"predict_fn", "transform_fn"} & self.hooks.keys():
            return None
        return self.fallback.warmup_input(model)

    def _default(self) -> Handler:
        return self.fallback or Handler()


def import_user_module(script: Path) -> ModuleType:
    """Import ``script`` as a package member under a name unique to its path.

    Two models with their own ``inference.py`` in one process never collide, and the script can import
    its siblings relatively (``from .utils import x``) without sys.path changes.
    """
    script = script.resolve()
    package = "byoc_user_" + hashlib.sha1(str(script.parent).encode()).hexdigest()[:12]
    if package not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            package, script.parent / "__init__.py", submodule_search_locations=[str(script.parent)]
        )
        assert spec is not None
        pkg = importlib.util.module_from_spec(spec)
        if (script.parent / "__init__.py").is_file():
            spec.loader.exec_module(pkg)  # type: ignore[union-attr]
        sys.modules[package] = pkg
    name = f"{package}.{script.stem}"
    spec = importlib.util.spec_from_file_location(name, script)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {script}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    log.info("user code imported script=%s as=%s hooks=%s", script, name, [h for h in HOOKS if hasattr(module, h)])
    return module


class Hook:
    """A user hook, called with ``context`` appended when its signature takes one more argument.

    The signature is read once, at import: inspect.signature costs ~6 us, and three hooks run per request.
    A user exception that carries an HTTP status (ours or the toolkit's ``BaseInferenceToolkitError``) keeps it.
    """

    def __init__(self, fn: Callable[..., Any], given: int):
        self.fn = fn
        self.takes_context = _takes_context(fn, given)

    def __call__(self, context: Context, *args: Any) -> Any:
        try:
            return self.fn(*args, context) if self.takes_context else self.fn(*args)
        except ServingError:
            raise
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            if isinstance(status, int) and 400 <= status <= 599:
                message = str(getattr(exc, "message", None) or exc)
                raise ServingError(message, status=status, kind=str(getattr(exc, "phrase", None) or "user_error")) from exc
            raise


def _takes_context(fn: Callable[..., Any], given: int) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) > given or any(p.kind == p.VAR_POSITIONAL for p in params)


def _as_response(result: Any, accept: str) -> tuple[bytes, str]:
    """output_fn/transform_fn may return a body or (body, content_type), as str or bytes."""
    if isinstance(result, tuple) and len(result) == 2:
        body, content_type = result
    else:
        body, content_type = result, accept
    if isinstance(body, str):
        body = body.encode("utf-8")
    elif not isinstance(body, (bytes, bytearray)):
        body = codecs.encode(body, "application/json")
        content_type = "application/json"
    return bytes(body), content_type
