"""TensorFlow models: SavedModel directories called through a serving signature, and Keras files.

SavedModels are found at the top of the model directory or in the SageMaker TensorFlow layout
``<name>/<version>/saved_model.pb`` (highest numeric version wins). Named inputs and outputs map to JSON
objects (``{"inputs": {...}}``); a signature with one input also takes a plain array.
"""

from __future__ import annotations

import base64
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from byoc_serve import codecs
from byoc_serve.errors import BadRequest, ModelFailure
from model_handlers import devices
from model_handlers.base import Context, Handler, artifact_bytes, clip_reason, find_artifact, match_named_inputs
from model_handlers.inputs import numbers, shaped, strings

log = logging.getLogger("byoc_serve.handlers.tensorflow")

KERAS_NAMES = ("model.keras", "model.h5")
KERAS_SUFFIXES = (".keras", ".h5")
SAVED_MODEL = "saved_model.pb"
MAX_DEPTH = 3  # <name>/<version>/saved_model.pb and the older export/Servo/<version>/saved_model.pb
# What TensorFlow wraps around the reason of an error raised inside a graph.
_FRAMING = ("Graph execution error", "Detected at node", "<stack traces unavailable>")
_NODE_PREFIX = re.compile(r"^\{\{function_node [^}]*\}\}\s*")
_OP_SUFFIX = re.compile(r"\s*\[Op:[^\]]*\]$")
# TF Serving's columnar request: {"inputs": ...}, perhaps after its "signature_name".
_COLUMNAR = re.compile(rb'\s*\{\s*(?:"signature_name"\s*:\s*"[^"]*"\s*,\s*)?"inputs"\s*:')


@dataclass(frozen=True)
class TensorSpec:
    """One named input of a signature, framework-free: dtype is a numpy dtype (object for strings)."""

    name: str
    shape: tuple[int | None, ...] | None  # None: a rank the signature leaves open
    dtype: np.dtype


@dataclass
class SignatureModel:
    """A loaded SavedModel and the one signature it is served through."""

    loaded: Any  # held so the variables live on: a signature alone does not keep its SavedModel alive
    function: Any
    signature: str
    inputs: tuple[TensorSpec, ...]


class TensorFlowHandler(Handler):
    name = "tensorflow"
    extra = "tensorflow"
    requires = "tensorflow"
    fork_safe = False  # a TF runtime started before fork hangs the workers (environment.md)
    # Measured here (bench/dl.py --memory), load + one prediction of 4 and 17 MB MLPs: a SavedModel grew RSS by
    # 1.05-1.16x its directory size (peak the same); a .keras file by 4.0-5.1x, peaking at 5.9-7.0x (the zip,
    # its HDF5 weights and the variables coexist while loading, and freed memory stays with the allocator).
    memory_factor = 1.5
    keras_memory_factor = 8.0

    def can_load(self, model_dir: Path) -> bool:
        return find_saved_model(model_dir) is not None or find_artifact(model_dir, KERAS_NAMES, KERAS_SUFFIXES) is not None

    def prepare(self, context: Context) -> str:
        """Device and thread setup for this process; also wanted before a user's model_fn runs."""
        devices.import_framework("tensorflow", self.extra)
        return devices.tensorflow_device(context.settings)

    def load(self, model_dir: Path, context: Context) -> Any:
        self.prepare(context)
        import tensorflow as tf

        saved_model = find_saved_model(model_dir)
        if saved_model is not None:
            log.info("loading SavedModel %s signature=%s", saved_model, context.settings.tf_signature)
            return _load_signature(tf, saved_model, context.settings.tf_signature)
        path = find_artifact(model_dir, KERAS_NAMES, KERAS_SUFFIXES)
        if path is None:
            raise BadRequest(f"no {SAVED_MODEL} or {' / '.join(KERAS_NAMES)} in {model_dir}")
        import keras

        model = keras.models.load_model(str(path), compile=False)
        _trace_for_any_batch(model)
        return model

    def handle(self, model: Any, body: bytes, content_type: str, accept: str, context: Context) -> tuple[bytes, str]:
        """With ``BYOC_TF_RESPONSE=tfserving`` a JSON answer takes TensorFlow Serving's form, so clients of
        SageMaker's TensorFlow Serving container keep working: ``{"outputs": ...}`` for a columnar
        ``{"inputs": ...}`` request, ``{"predictions": [one per instance]}`` for anything else."""
        if context.settings.tf_response != "tfserving" or accept != "application/json" or context.settings.batch:
            return super().handle(model, body, content_type, accept, context)
        body, content_type = _utf8_json(body, content_type)
        prediction = self.predict(model, self.decode(body, content_type, context), context)
        if _COLUMNAR.match(body):
            return codecs.encode({"outputs": prediction}, accept), accept
        return codecs.encode({"predictions": _rows(prediction)}, accept), accept

    def decode(self, body: bytes, content_type: str, context: Context) -> Any:
        """TensorFlow Serving's ``"signature_name"`` may come with the data: it must name the signature served."""
        body, content_type = _utf8_json(body, content_type)
        if b'"signature_name"' in body and codecs.parse_media_type(content_type) == "application/json":
            body = _without_signature_name(body, context.settings.tf_signature)
        return super().decode(body, content_type, context)

    def predict(self, model: Any, data: Any, context: Context) -> Any:
        """Run the model; an InvalidArgumentError from TensorFlow is a 400, as TensorFlow Serving answers it."""
        import tensorflow as tf

        try:
            return self._run(model, data)
        except tf.errors.InvalidArgumentError as exc:
            raise BadRequest(f"TensorFlow rejected the input: {_reason(exc.message)}") from exc
        except UnicodeDecodeError as exc:
            # TensorFlow quotes the input it could not parse in its message, and fails to decode the message
            # when that input is not UTF-8 (a corrupt serialized tf.Example): the reason is still in its bytes.
            raise BadRequest(f"TensorFlow rejected the input: {_reason(exc.object.decode('utf-8', 'backslashreplace'))}") from exc

    def _run(self, model: Any, data: Any) -> Any:
        if isinstance(model, SignatureModel):
            tensors = {spec.name: _tensor(spec, value) for spec, value in match_named_inputs(model.inputs, data)}
            outputs = {name: _to_numpy(value) for name, value in model.function(**tensors).items()}
            return next(iter(outputs.values())) if len(outputs) == 1 else outputs
        specs = keras_inputs(model)
        if specs is None:
            return model.predict_on_batch(_unknown_input(data))
        arrays = {spec.name: _array(spec, value) for spec, value in match_named_inputs(specs, data)}
        return model.predict_on_batch(arrays if len(arrays) > 1 else next(iter(arrays.values())))

    def estimate_bytes(self, model_dir: Path) -> int:
        if find_saved_model(model_dir) is None and find_artifact(model_dir, KERAS_NAMES, KERAS_SUFFIXES) is not None:
            return int(artifact_bytes(model_dir) * self.keras_memory_factor)
        return super().estimate_bytes(model_dir)

    def warmup_input(self, model: Any) -> Any | None:
        specs = model.inputs if isinstance(model, SignatureModel) else keras_inputs(model)
        if not specs or any(spec.dtype.kind == "O" for spec in specs):
            return None  # string inputs (e.g. serialized tf.Example) have no safe synthetic value
        return {spec.name: np.zeros([1 if d is None else d for d in spec.shape or ()], spec.dtype) for spec in specs}


def find_saved_model(model_dir: Path) -> Path | None:
    """The SavedModel directory to serve: ``model_dir`` itself, or the highest numeric version below it."""
    model_dir = Path(model_dir)
    if (model_dir / SAVED_MODEL).is_file():
        return model_dir
    if not model_dir.is_dir():
        return None
    for depth in range(1, MAX_DEPTH + 1):
        found = sorted(p.parent for p in model_dir.glob("/".join(["*"] * depth + [SAVED_MODEL])) if p.parts[len(model_dir.parts)] != "code")
        if found:
            base = found[0].parent  # several models side by side: the first by name
            versions = [p for p in found if p.parent == base and p.name.isdigit()]
            return max(versions, key=lambda p: int(p.name)) if versions else found[0]
    return None


def _load_signature(tf: Any, path: Path, signature: str) -> SignatureModel:
    loaded = tf.saved_model.load(str(path))
    if signature not in loaded.signatures:
        available = ", ".join(loaded.signatures) or "none"
        raise ModelFailure(f"SavedModel {path} has no signature {signature!r} (BYOC_TF_SIGNATURE); it has: {available}")
    function = loaded.signatures[signature]
    _, named = function.structured_input_signature
    inputs = tuple(
        TensorSpec(name, tuple(spec.shape.as_list()) if spec.shape.rank is not None else None, _numpy_dtype(spec.dtype))
        for name, spec in sorted(named.items())
    )
    return SignatureModel(loaded=loaded, function=function, signature=signature, inputs=inputs)


def keras_inputs(model: Any) -> tuple[TensorSpec, ...] | None:
    """Input specs of a functional/sequential Keras model; None for subclassed models that never declared them."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs:
        return None
    return tuple(TensorSpec(t.name, tuple(t.shape), np.dtype(object if t.dtype == "string" else t.dtype)) for t in inputs)


def _trace_for_any_batch(model: Any) -> None:
    """Keras traces its predict function per input shape; after two batch sizes it traces one for any
    batch, so no request pays for a retrace (measured here: ~95 ms on the first request of a new size)."""
    specs = keras_inputs(model)
    if not specs or any(spec.dtype.kind == "O" for spec in specs):
        return
    for batch in (1, 2):
        inputs = {spec.name: np.zeros([batch, *[1 if d is None else d for d in spec.shape[1:]]], spec.dtype) for spec in specs}
        model.predict_on_batch(inputs if len(inputs) > 1 else next(iter(inputs.values())))


def _numpy_dtype(dtype: Any) -> np.dtype:
    return np.dtype(object) if dtype.name == "string" else np.dtype(dtype.as_numpy_dtype)


def _array(spec: TensorSpec, value: Any) -> np.ndarray:
    """``value`` as the spec's dtype, a single example gaining its batch dimension, its shape checked."""
    if spec.dtype.kind == "O":
        array = strings(spec.name, value)
    else:
        array = numbers(spec.name, value, spec.dtype)
    return shaped(spec.name, array, spec.shape)


def _tensor(spec: TensorSpec, value: Any) -> Any:
    import tensorflow as tf

    return tf.constant(_array(spec, value))


def _unknown_input(data: Any) -> Any:
    if isinstance(data, dict):
        return {name: _unknown_input(value) for name, value in data.items()}
    array = np.asarray(data)
    return array.astype(np.float32) if array.dtype == np.float64 else array


def _utf8_json(body: bytes, content_type: str) -> tuple[bytes, str]:
    """A JSON body as UTF-8 without a byte order mark, whatever its charset, so its keys can be looked for."""
    if codecs.parse_media_type(content_type) != "application/json":
        return body, content_type
    if content_type == "application/json" and not body.startswith(b"\xef\xbb\xbf"):
        return body, content_type  # UTF-8 already: no copy of the body
    return codecs.as_text(body, content_type).encode(), "application/json"


def _without_signature_name(body: bytes, served: str) -> bytes:
    """The request without its ``"signature_name"``; a 400 when it names another signature than ``served``."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body  # the codec says what is wrong with it
    if not isinstance(value, dict) or "signature_name" not in value:
        return body
    asked = value.pop("signature_name")
    if asked != served:
        raise BadRequest(f"this endpoint serves signature {served!r} (BYOC_TF_SIGNATURE); the request asks for {asked!r}")
    return orjson.dumps(value)


def _rows(prediction: Any) -> Any:
    """Named outputs as one object per instance (TensorFlow Serving's row format); one output as is.

    As TensorFlow Serving does, a 400 unless every output has the same batch dimension to split on.
    """
    batch = None
    for name, value in (prediction if isinstance(prediction, dict) else {None: prediction}).items():
        output = "the output" if name is None else f"output {name!r}"
        if np.ndim(value) == 0 or batch is not None and len(value) != batch:
            detail = "has no batch dimension" if np.ndim(value) == 0 else f"has {len(value)} rows, the others {batch}"
            raise BadRequest(
                f"the row format answers one prediction per instance, but {output} {detail}; "
                "send {\"inputs\": ...} for the columnar answer"
            )
        batch = len(value)
    if not isinstance(prediction, dict):
        return prediction
    return [dict(zip(prediction, values)) for values in zip(*prediction.values())]


def _reason(message: str) -> str:
    """The line of TensorFlow's message that says what was wrong, without the graph node, the op and
    the stack trace around it (``indices[1] = 50 is not in [0, 10)``)."""
    lines = [line for line in message.splitlines() if line.strip() and not line[0].isspace()]
    reason = next((line for line in reversed(lines) if not line.startswith(_FRAMING)), message.strip())
    reason = _OP_SUFFIX.sub("", _NODE_PREFIX.sub("", reason))
    return clip_reason(reason)


def _to_numpy(tensor: Any) -> np.ndarray:
    array = tensor.numpy()
    if array.dtype.kind == "O":  # tf.string comes back as bytes objects; JSON needs text
        return np.asarray(_TEXT_OR_B64(array), dtype=object)
    return array


def _text_or_b64(value: bytes) -> str | dict[str, str]:
    """A string output as text when it is UTF-8, else as TensorFlow Serving writes bytes: ``{"b64": ...}``."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode("ascii")}


_TEXT_OR_B64 = np.frompyfunc(_text_or_b64, 1, 1)
