"""Request values as the arrays a declared input takes, by TensorFlow Serving's rules, for the
TensorFlow and ONNX handlers: numbers only when the input's dtype holds them unchanged, shapes as
declared."""

from __future__ import annotations

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
