"""Device choice and thread sizing for the deep-learning handlers (torch, TensorFlow, onnxruntime).

Everything here runs inside ``Handler.load``, i.e. after gunicorn has forked: asking a framework about
CUDA initialises the driver, and a CUDA context does not survive a fork.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from byoc_serve.config import Settings
from byoc_serve.errors import ModelFailure

log = logging.getLogger("byoc_serve.devices")

# Frameworks accept thread settings once per process, before they run anything.
_configured: set[str] = set()


def import_framework(module: str, extra: str) -> ModuleType:
    """Import a framework, or fail with the pip extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{module} is not installed (or fails to import: {exc}): pip install 'byoc-serve[{extra}]'") from exc


def _choose(settings: Settings, framework: str, cuda_available: bool) -> str:
    if settings.device == "cuda" and not cuda_available:
        raise ModelFailure(f"BYOC_DEVICE=cuda but {framework} sees no CUDA device")
    return "cuda" if settings.device != "cpu" and cuda_available else "cpu"


def _announce(framework: str, device: str, settings: Settings) -> None:
    log.info(
        "%s device=%s intra_op_threads=%d inter_op_threads=%d (BYOC_DEVICE=%s, workers=%d)",
        framework, device, settings.intra_op_threads, settings.intra_op_threads, settings.device, settings.workers,
    )


def torch_device(settings: Settings) -> str:
    """Configure torch's thread pools once per process and return "cuda" or "cpu"."""
    import torch

    device = _choose(settings, "torch", settings.device != "cpu" and torch.cuda.is_available())
    if "torch" not in _configured:
        torch.set_num_threads(settings.intra_op_threads)
        try:
            torch.set_num_interop_threads(settings.intra_op_threads)
        except RuntimeError:  # already fixed by earlier torch work in this process
            log.warning("torch inter-op threads were already set in this process; keeping %d", torch.get_num_interop_threads())
        _configured.add("torch")
        _announce("torch", device, settings)
    return device


def tensorflow_device(settings: Settings) -> str:
    """Configure TensorFlow's thread pools and visible GPUs once per process; return "cuda" or "cpu"."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU") if settings.device != "cpu" else []
    device = _choose(settings, "TensorFlow", bool(gpus))
    if "tensorflow" not in _configured:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(settings.intra_op_threads)
            tf.config.threading.set_inter_op_parallelism_threads(settings.intra_op_threads)
            if device == "cpu":
                tf.config.set_visible_devices([], "GPU")
            for gpu in gpus:
                # Without this every worker process grabs all GPU memory at its first op.
                tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # the TF runtime already started in this process; its settings stand
            log.warning("TensorFlow was already initialised in this process; thread and device settings unchanged")
        _configured.add("tensorflow")
        _announce("tensorflow", device, settings)
    return device


def onnx_session_options(settings: Settings) -> tuple[object, list[str]]:
    """onnxruntime SessionOptions sized for one worker, and the execution providers to use."""
    import onnxruntime as ort

    device = _choose(settings, "onnxruntime", "CUDAExecutionProvider" in ort.get_available_providers())
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.intra_op_threads
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    if "onnx" not in _configured:
        _configured.add("onnx")
        _announce("onnxruntime", device, settings)
    return options, providers
