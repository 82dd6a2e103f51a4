"""Shared pieces of the deep-learning tests: the artifact table, comparisons and process inspection."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

import dl_models


@dataclass
class Artifact:
    """A model directory and the in-process answer for a batch of rows."""

    model_dir: Path
    expected: Callable[[np.ndarray], Any]


def _torchscript_pth(path: Path):
    return dl_models.torchscript(path, filename="model.pth")


def _saved_model_top(path: Path):
    return dl_models.saved_model(path)


def _saved_model_versioned(path: Path):
    dl_models.saved_model(path / "2", seed=2)
    return dl_models.saved_model(path / "10", seed=10)  # numerically highest, lexically lowest


def _saved_model_named(path: Path):
    dl_models.saved_model(path / "my_model" / "1", seed=3)
    return dl_models.saved_model(path / "my_model" / "3", seed=4)


def _onnx_zipmap(path: Path):
    return dl_models.onnx_classifier(path, zipmap=True)


def _onnx_tensor(path: Path):
    return dl_models.onnx_classifier(path, zipmap=False)


def _sklearn_pair(value):
    labels, probabilities = value
    return {"label": labels, "probabilities": probabilities}


BUILDERS: dict[str, tuple[Callable[[Path], Callable], Callable[[Any], Any]]] = {
    # name: (builder, how the reference's answer maps to the served answer)
    "torchscript": (dl_models.torchscript, lambda v: v),
    "torchscript_pth": (_torchscript_pth, lambda v: v),
    "torch_export": (dl_models.torch_export, lambda v: v),
    "torch_state_dict": (dl_models.torch_state_dict, lambda v: v),
    "torch_state_dict_predict_fn": (lambda p: dl_models.torch_state_dict(p, with_predict_fn=True), lambda v: v),
    "saved_model": (_saved_model_top, lambda v: v),
    "saved_model_versioned": (_saved_model_versioned, lambda v: v),
    "saved_model_named_versioned": (_saved_model_named, lambda v: v),
    "keras": (dl_models.keras_file, lambda v: v),
    "onnx_skl2onnx": (_onnx_tensor, _sklearn_pair),
    "onnx_skl2onnx_zipmap": (_onnx_zipmap, lambda v: {"output_label": v[0], "output_probability": v[1]}),
}


def npy(array: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array))
    return buffer.getvalue()


def assert_close(actual: Any, expected: Any) -> None:
    """Same keys (for dicts) and values within float32 tolerance."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), actual
        assert sorted(actual) == sorted(expected)
        for key in expected:
            assert_close(actual[key], expected[key])
        return
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64), rtol=1e-5, atol=1e-6)


# Shared libraries each framework maps into a process that imported it.
FRAMEWORK_LIBRARIES = {"torch": "libtorch_cpu", "tensorflow": "libtensorflow_framework", "onnxruntime": "onnxruntime_pybind11_state"}


def mapped_frameworks(pid: int) -> set[str]:
    """Which DL frameworks a live process has loaded, from its memory map (no help from the process needed)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return set()
    return {name for name, library in FRAMEWORK_LIBRARIES.items() if library in maps}
