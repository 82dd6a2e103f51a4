"""Which handler serves a model directory: BYOC_HANDLER, else the first whose can_load says yes;
``code/<SAGEMAKER_PROGRAM>`` (default ``inference.py``), when present, wraps whichever was chosen."""

from __future__ import annotations

import functools
import importlib
import importlib.util
from importlib.metadata import entry_points
from pathlib import Path

from byoc_serve.config import Settings
from byoc_serve.errors import BadRequest
from model_handlers.base import Handler

ENTRY_POINT_GROUP = "byoc_serve.handlers"
# Sniffing order: specific artifact names first; xgboost takes any top-level .json, sklearn any pickle.
BUILTIN_HANDLERS = {
    "pytorch": "model_handlers.pytorch:PyTorchHandler",
    "tensorflow": "model_handlers.tensorflow:TensorFlowHandler",
    "onnx": "model_handlers.onnx:OnnxHandler",
    "xgboost": "model_handlers.xgboost:XGBoostHandler",
    "sklearn": "model_handlers.sklearn:SklearnHandler",
}


class HandlerUnavailable(BadRequest):
    """The artifact needs a framework this image does not have; the message names the extra to install."""

    kind = "handler_unavailable"


@functools.cache
def handler_classes() -> dict[str, type[Handler]]:
    """Built-in handlers whose module exists, then third-party ones from the entry-point group."""
    found: dict[str, type[Handler]] = {}
    for name, target in BUILTIN_HANDLERS.items():
        module_name, _, attr = target.partition(":")
        if importlib.util.find_spec(module_name) is not None:
            found[name] = getattr(importlib.import_module(module_name), attr)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.load()
    return found


def framework_installed(handler: type[Handler]) -> bool:
    return not handler.requires or importlib.util.find_spec(handler.requires) is not None


def select_handler(model_dir: Path, settings: Settings) -> Handler:
    """The handler for ``model_dir``; raises BadRequest (HandlerUnavailable) with a reason when none fits."""
    model_dir = Path(model_dir)
    classes = handler_classes()
    framework: Handler | None = None
    if settings.handler:
        cls = classes.get(settings.handler)
        if cls is None:
            raise BadRequest(f"BYOC_HANDLER={settings.handler!r} is not one of {', '.join(classes)}")
        if not framework_installed(cls):
            raise HandlerUnavailable(_missing(cls))
        framework = cls()
    else:
        for cls in classes.values():
            if not framework_installed(cls):
                continue
            candidate = cls()
            if candidate.can_load(model_dir):
                framework = candidate
                break
    script = model_dir / "code" / settings.program
    if script.is_file():
        from model_handlers.user_code import UserCodeHandler

        return UserCodeHandler(script, framework)
    if framework is None:
        raise BadRequest(_nothing_fits(model_dir, classes))
    return framework


def _missing(cls: type[Handler]) -> str:
    return f"the {cls.name} handler needs {cls.requires}: pip install 'byoc-serve[{cls.extra}]'"


def _nothing_fits(model_dir: Path, classes: dict[str, type[Handler]]) -> str:
    files = sorted(p.name for p in model_dir.iterdir())[:10]
    unavailable = [cls for cls in classes.values() if not framework_installed(cls) and _claims(cls, model_dir)]
    if unavailable:
        return "; ".join(_missing(cls) for cls in unavailable)
    return f"no handler recognises the files in {model_dir} ({', '.join(files)}); set BYOC_HANDLER or add code/inference.py"


def _claims(cls: type[Handler], model_dir: Path) -> bool:
    try:
        return cls().can_load(model_dir)
    except ImportError:
        return False
