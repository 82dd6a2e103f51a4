"""ONNX models run by onnxruntime, including scikit-learn models converted with skl2onnx.

Inputs are matched by name (``{"inputs": {...}}``) or, for a one-input graph, taken as a plain array.
Outputs come back as a dict by output name (one output: just the array). skl2onnx classifiers by
default emit probabilities as a list of ``{class: p}`` maps (ZipMap); those become a 2-D array with
one column per class in the map's order. Converting with ``options={"zipmap": False}`` avoids the
maps altogether and is faster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from byoc_serve.errors import BadRequest
from model_handlers import devices
from model_handlers.base import Context, Handler, clip_reason, find_artifact, match_named_inputs
from model_handlers.inputs import numbers, shaped, strings

ARTIFACT_NAMES = ("model.onnx",)
ARTIFACT_SUFFIXES = (".onnx",)
# ONNX tensor element types as onnxruntime spells them.
DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}


@dataclass(frozen=True)
class OnnxInput:
    name: str
    shape: tuple[int | None, ...]  # symbolic dimensions ("batch", "N") are None
    dtype: Any


class OnnxHandler(Handler):
    name = "onnx"
    extra = "onnx"
    requires = "onnxruntime"
    # A session built before fork survives it, but its intra-op thread pool does not: measured here, a
    # 2-thread session ran at single-thread speed in the forked child (0.43 s vs 0.27 s for 20 MLP
    # batches). And a CUDA provider must never be created before fork. So load in each worker.
    fork_safe = False
    # Measured here (bench/dl.py --memory): load + one prediction of 4 and 17 MB MLPs peaked at 2.0x the .onnx
    # size (the parsed proto and the session's copy of the weights coexist while the session is built).
    memory_factor = 2.5

    def can_load(self, model_dir: Path) -> bool:
        return find_artifact(model_dir, ARTIFACT_NAMES, ARTIFACT_SUFFIXES) is not None

    def load(self, model_dir: Path, context: Context) -> Any:
        ort = devices.import_framework("onnxruntime", self.extra)
        path = find_artifact(model_dir, ARTIFACT_NAMES, ARTIFACT_SUFFIXES)
        if path is None:
            raise BadRequest(f"no model.onnx in {model_dir}")
        options, providers = devices.onnx_session_options(context.settings)
        session = ort.InferenceSession(str(path), options, providers=providers)
        session.byoc_inputs = tuple(_describe(i) for i in session.get_inputs())
        session.byoc_outputs = tuple(o.name for o in session.get_outputs())
        return session

    def predict(self, model: Any, data: Any, context: Context) -> Any:
        inputs = getattr(model, "byoc_inputs", None) or tuple(_describe(i) for i in model.get_inputs())
        feeds = {spec.name: _feed(spec, value) for spec, value in match_named_inputs(inputs, data)}
        names = getattr(model, "byoc_outputs", None) or tuple(o.name for o in model.get_outputs())
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

        try:
            results = model.run(None, feeds)
        except InvalidArgument as exc:  # an index out of bounds, a value a kernel refuses: the input's fault
            raise BadRequest(f"ONNX Runtime rejected the input: {_reason(exc)}") from exc
        except UnicodeDecodeError as exc:  # from a numpy bytes array fed to a string input
            raise BadRequest(f"string inputs take UTF-8 text (ONNX Runtime strings are text): {exc}") from None
        outputs = {name: _array(value) for name, value in zip(names, results)}
        return next(iter(outputs.values())) if len(outputs) == 1 else outputs

    def warmup_input(self, model: Any) -> Any | None:
        specs = getattr(model, "byoc_inputs", ())
        if not specs or any(spec.dtype is np.object_ for spec in specs):
            return None  # string inputs have no safe synthetic value
        return {spec.name: np.zeros([1 if d is None else d for d in spec.shape], spec.dtype) for spec in specs}


def _describe(node: Any) -> OnnxInput:
    if node.type not in DTYPES:
        raise BadRequest(f"input {node.name!r} has type {node.type}, which this handler cannot feed")
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in (node.shape or ()))
    return OnnxInput(node.name, shape, DTYPES[node.type])


def _feed(spec: OnnxInput, value: Any) -> np.ndarray:
    """``value`` as the input's dtype, a single example gaining its batch dimension, its shape checked."""
    if spec.dtype is np.object_:
        array = _text(spec.name, strings(spec.name, value))
    else:
        array = numbers(spec.name, value, np.dtype(spec.dtype))
    return shaped(spec.name, array, spec.shape or None)


def _text(name: str, array: np.ndarray) -> np.ndarray:
    """Strings as onnxruntime takes them, text: it reads a numpy bytes array as UTF-8 itself (no Python
    object per value), but turns a bytes object into its repr."""
    if array.dtype.kind == "U":
        return array
    if array.dtype.kind == "S":
        return _nul_terminated(name, array)
    try:
        return np.asarray(_DECODE(array), dtype=object)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"input {name!r} takes UTF-8 text (ONNX Runtime strings are text): {exc}") from None


def _nul_terminated(name: str, array: np.ndarray) -> np.ndarray:
    """A numpy bytes array one byte wider: onnxruntime reads its values as C strings, so one filling its
    width ran on into the next value. A NUL inside a value would cut it short there: a 400."""
    octets = np.ascontiguousarray(array).view(np.uint8).reshape(-1, array.itemsize)
    if ((octets[:, :-1] == 0) & (octets[:, 1:] != 0)).any():
        raise BadRequest(f"input {name!r} takes text, which holds no NUL characters inside a value")
    return array.astype(f"S{array.itemsize + 1}")


_DECODE = np.frompyfunc(bytes.decode, 1, 1)


def _reason(exc: Exception) -> str:
    """``idx=50 must be within ...``: the kernel's own words, without onnxruntime's status prefix and node name."""
    message = str(exc)
    reason = message.split("Status Message: ", 1)[1] if "Status Message: " in message else message.rsplit(" : ", 1)[-1]
    reason = reason.strip()
    return clip_reason(reason)


def _array(value: Any) -> Any:
    """ZipMap output (a list of {class: probability}) becomes a rows × classes array."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        classes = list(value[0])
        return np.array([[row[c] for c in classes] for row in value], dtype=np.float32)
    return value
