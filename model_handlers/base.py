"""The handler contract: one framework's artifact sniffing, loading and batch prediction."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from byoc_serve import codecs
from byoc_serve.config import Settings
from byoc_serve.errors import BadRequest

MAX_REASON_CHARS = 300
# XGBoost's messages open with "[03:25:47] /workspace/src/<file>.h:499: ", then the reason.
_NATIVE_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


@dataclass
class Context:
    """What a handler (and user code) knows about the model and the current request.

    ``system_properties`` keeps the SageMaker inference toolkit's spelling so existing
    ``inference.py`` files that read ``context.system_properties["model_dir"]`` keep working.
    """

    model_dir: Path
    settings: Settings
    model_name: str | None = None
    target_model: str | None = None
    request_id: str | None = None
    custom_attributes: str | None = None
    response_custom_attributes: str | None = None
    system_properties: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.system_properties.setdefault("model_dir", str(self.model_dir))
        self.system_properties.setdefault("gpu_id", None)

    def for_request(
        self, request_id: str | None, custom_attributes: str | None, target_model: str | None = None
    ) -> "Context":
        """A copy for one request, so concurrent requests never share mutable state."""
        return Context(
            model_dir=self.model_dir,
            settings=self.settings,
            model_name=self.model_name,
            target_model=target_model or self.target_model,
            request_id=request_id,
            custom_attributes=custom_attributes,
            system_properties=dict(self.system_properties),
        )

    def set_response_custom_attributes(self, value: str) -> None:
        """Set ``X-Amzn-SageMaker-Custom-Attributes`` on the response."""
        self.response_custom_attributes = value

    def custom_attribute(self, key: str) -> str | None:
        """One ``key=value`` entry of the request's custom attributes (``;`` or ``,`` separated)."""
        if not self.custom_attributes:
            return None
        for part in self.custom_attributes.replace(",", ";").split(";"):
            name, sep, value = part.partition("=")
            if sep and name.strip() == key:
                return value.strip()
        return None


class Handler:
    """Base class: subclasses know one framework and nothing about HTTP."""

    name: ClassVar[str] = "base"
    extra: ClassVar[str] = ""  # the pip extra that installs the framework, for error messages
    requires: ClassVar[str] = ""  # the framework's import name, checked before the handler is chosen
    fork_safe: ClassVar[bool] = False  # may the model be loaded before gunicorn forks?
    memory_factor: ClassVar[float] = 2.0  # in-memory bytes per artifact byte (admission estimate)

    def can_load(self, model_dir: Path) -> bool:
        raise NotImplementedError

    def prepare(self, context: Context) -> None:
        """Per-process framework set-up (device, thread pools) before any model is loaded."""

    def load(self, model_dir: Path, context: Context) -> Any:
        raise NotImplementedError

    def predict(self, model: Any, data: Any, context: Context) -> Any:
        raise NotImplementedError

    def handle(self, model: Any, body: bytes, content_type: str, accept: str, context: Context) -> tuple[bytes, str]:
        """One request end to end; user code with ``transform_fn`` replaces all three steps."""
        return self.encode(self.predict(model, self.decode(body, content_type, context), context), accept, context)

    def decode(self, body: bytes, content_type: str, context: Context) -> Any:
        return codecs.decode(body, content_type)

    def encode(self, prediction: Any, accept: str, context: Context) -> tuple[bytes, str]:
        # Batch transform joins outputs by line: one output line per input record, in order.
        if context.settings.batch:
            return codecs.encode_records(prediction, accept), _record_type(accept)
        return codecs.encode(prediction, accept), accept

    def warmup_input(self, model: Any) -> Any | None:
        """A small input built from the model's signature for the warm-up prediction, if known.

        An artifact's own sample (``code/warmup.json``) takes precedence; see byoc_serve.servable.
        """
        return None

    def estimate_bytes(self, model_dir: Path) -> int:
        """Admission estimate: artifact bytes times the handler's factor."""
        return int(artifact_bytes(model_dir) * self.memory_factor)


def rejected_input(framework: str, exc: ValueError | TypeError) -> BadRequest:
    """A 400 carrying the framework's own complaint about a request's data (its first line).

    For handlers whose predict runs only framework code: the warm-up prediction showed the model
    works on well-formed input, so a ValueError or TypeError (a JSON null among the numbers, a
    datetime array) there is the request's fault.
    """
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    reason = _NATIVE_PREFIX.sub("", lines[0]).rstrip(":")  # sklearn's first line may end "instead:"
    return BadRequest(f"{framework} rejected the input: {clip_reason(reason)}")


def clip_reason(reason: str) -> str:
    """A framework's complaint cut to ``MAX_REASON_CHARS`` for a response body."""
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 3] + "..."


def match_named_inputs(specs: tuple[Any, ...], data: Any) -> list[tuple[Any, Any]]:
    """Pair each declared input (anything with ``.name``) with its value: by name for a dict of named
    inputs or for TensorFlow Serving's row format (one object per instance), positionally when the
    model takes a single input."""
    names = [spec.name for spec in specs]
    data = named_columns(data)
    if isinstance(data, dict):
        check_input_names(names, data)
        return [(spec, data[spec.name]) for spec in specs]
    if len(specs) != 1:
        raise BadRequest(clip_reason(f"this model takes named inputs {names}: send {{\"inputs\": {{name: values}}}}"))
    return [(specs[0], data)]


def named_columns(data: Any) -> Any:
    """TensorFlow Serving's row format (a list of objects, one per instance) as a dict of named columns;
    anything else unchanged."""
    # {"b64": ...} is one binary value in TF Serving's JSON, not an input named b64.
    if isinstance(data, list) and data and all(isinstance(row, dict) and row.keys() != {"b64"} for row in data):
        return _columns(data)
    return data


def check_input_names(names: list[str], given: dict[str, Any], required: list[str] | None = None) -> None:
    """A 400 listing the ``required`` names (default: all) ``given`` lacks and those it has beyond ``names``."""
    known = set(names)
    missing = [n for n in (names if required is None else required) if n not in given]
    unknown = [n for n in given if n not in known]
    if missing or unknown:
        raise BadRequest(clip_reason(f"this model takes inputs {names}; missing {missing}, unknown {unknown}"))


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """``[{"a": 1, "b": 2}, {"a": 3, "b": 4}]`` -> ``{"a": [1, 3], "b": [2, 4]}``."""
    names = list(rows[0])
    if any(row.keys() != rows[0].keys() for row in rows):
        raise BadRequest(clip_reason(f"every instance must name the same inputs; the first names {names}"))
    return {name: [row[name] for row in rows] for name in names}


def _record_type(accept: str) -> str:
    return "application/jsonlines" if accept == "application/json" else accept


def artifact_bytes(model_dir: Path) -> int:
    """Total size of the regular files under a model directory."""
    return sum(p.stat().st_size for p in Path(model_dir).rglob("*") if p.is_file())


def find_artifact(model_dir: Path, names: tuple[str, ...], suffixes: tuple[str, ...] = ()) -> Path | None:
    """The first file at the top of ``model_dir`` with one of ``names``, else one ending in ``suffixes``."""
    model_dir = Path(model_dir)
    for name in names:
        candidate = model_dir / name
        if candidate.is_file():
            return candidate
    if suffixes and model_dir.is_dir():
        for candidate in sorted(model_dir.iterdir()):
            if candidate.is_file() and candidate.name.endswith(suffixes):
                return candidate
    return None
