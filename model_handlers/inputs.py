"""Request values as the arrays a declared input takes, by TensorFlow Serving's rules, for the
TensorFlow and ONNX handlers: numbers only when the input's dtype holds them unchanged, strings as
JSON text or ``{"b64": ...}`` bytes, shapes as declared."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

from byoc_serve.errors import BadRequest

# What a value that is not a fixed-size number (text, a Python int beyond 64 bits) is read as first,
# per kind of the input's dtype; strings for an unsigned input too, as "-1" would wrap round in uint64.
_READ_AS = {"b": np.bool_, "i": np.int64, "u": np.int64, "f": np.float64}


def numbers(name: str, value: Any, dtype: np.dtype) -> np.ndarray:
    """``value`` as ``dtype``; a 400 naming both when that would change a value: an integer the dtype
    cannot hold, a fraction or NaN for an integer input, a finite number beyond a float's range."""
    try:
        array = np.asarray(value)
        if array.dtype.kind == "O" and not all(isinstance(item, (int, float)) for item in array.flat):
            raise BadRequest(f"input {name!r} takes numbers ({dtype})")
        if array.dtype.kind not in "biuf":
            array = np.asarray(array, dtype=_READ_AS.get(dtype.kind, dtype))
    except OverflowError:
        raise BadRequest(f"input {name!r} takes {dtype}, which cannot hold integers this large") from None
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"input {name!r} cannot be read as {dtype}: {exc}") from None
    if np.can_cast(array.dtype, dtype):
        return array.astype(dtype, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):
        cast = array.astype(dtype)
        # An integer or boolean must survive the cast exactly; a float (bfloat16 too) may round, not overflow.
        changed = cast != array if dtype.kind in "biu" else np.isinf(cast) & ~np.isinf(array)
    if changed.any():
        raise BadRequest(f"input {name!r} takes {dtype}, which cannot hold {array[changed].flat[0].item()!r}")
    return cast


def strings(name: str, value: Any) -> np.ndarray:
    """JSON text as UTF-8 and ``{"b64": ...}`` objects as the bytes they carry, in an object array (a numpy
    bytes dtype would drop a serialized proto's trailing NULs); a numpy bytes or text array as it is."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "SU":
        return value
    array = np.asarray(_as_bytes(name, value.tolist() if isinstance(value, np.ndarray) else value), dtype=object)
    if not all(isinstance(item, bytes) for item in array.flat):
        raise BadRequest(f"input {name!r} takes strings (or {{\"b64\": ...}} for bytes)")
    return array


def _as_bytes(name: str, value: Any) -> Any:
    """JSON strings as UTF-8 and TensorFlow Serving's ``{"b64": ...}`` objects as the bytes they carry."""
    if isinstance(value, list):
        return [_as_bytes(name, item) for item in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and value.keys() == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except binascii.Error as exc:
            raise BadRequest(f"input {name!r}: a {{\"b64\": ...}} string is not base64: {exc}") from None
    return value


def shaped(name: str, array: np.ndarray, shape: tuple[int | None, ...] | None) -> np.ndarray:
    """``array`` in the declared ``shape`` (None: any rank), a single example gaining its batch dimension."""
    if shape is None:
        return array
    if array.ndim == len(shape) - 1:
        array = array[np.newaxis]
    if array.ndim != len(shape) or any(d is not None and d != n for d, n in zip(shape, array.shape)):
        expected = ", ".join("batch" if d is None else str(d) for d in shape)
        raise BadRequest(f"input {name!r} must have shape ({expected}); got {array.shape}")
    return array
