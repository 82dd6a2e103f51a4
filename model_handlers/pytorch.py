"""PyTorch models: TorchScript archives, ``torch.export`` programs (.pt2) and eager modules from user code.

The SageMaker PyTorch layout (``model.pth`` state_dict + ``code/inference.py`` with ``model_fn``) goes through
the user-code adapter, which falls back to this handler's decode/predict/encode for the hooks it lacks.
Like the SageMaker PyTorch toolkit, ``decode`` hands ``predict_fn`` a tensor: float32 for JSON and CSV, the
sent dtype for NPY.
"""

from __future__ import annotations

import inspect
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from byoc_serve import codecs
from byoc_serve.errors import BadRequest, ModelFailure
from model_handlers import devices
from model_handlers.base import Context, Handler, check_input_names, clip_reason, find_artifact, named_columns

ARTIFACT_NAMES = ("model.pt2", "model.pt", "model.pth")
ARTIFACT_SUFFIXES = (".pt2", ".pt", ".pth")
TEXT_TYPES = ("application/json", "text/csv", "application/jsonlines")
MAX_ANSWERED_SHAPES = 64  # a model taking varying sequence lengths would otherwise grow the set forever
EMBEDDINGS = ("Embedding", "EmbeddingBag")  # TorchScript keeps a module's class name as original_name
# ATen's index checks (a c10::IndexError, which TorchScript reports as a plain RuntimeError) and what
# TorchScript code raised itself.
_INPUT_FAULT = re.compile(r"^(builtins\.(IndexError|ValueError|TypeError): |(RuntimeError: )?index .*out of (range|bounds))")
_ERROR_TYPE = re.compile(r"^(RuntimeError|builtins\.\w+): ")


@dataclass(frozen=True)
class ExportSignature:
    """What a ``torch.export`` program was traced with: input names in order and their example tensors."""

    names: tuple[str, ...]
    examples: tuple[Any, ...]


class PyTorchHandler(Handler):
    name = "pytorch"
    extra = "torch"
    requires = "torch"
    fork_safe = False  # torch's OpenMP pool and CUDA do not survive a fork: load in each worker
    # Measured here (bench/dl.py --memory): load + one prediction of 4 and 17 MB MLPs grew RSS (and its peak)
    # by 1.00-1.04x the file size, TorchScript and .pt2 alike; 1.5 leaves room for activations.
    memory_factor = 1.5

    def __init__(self) -> None:
        self.answered_shapes: dict[int, set[str]] = {}  # id(model) → input shapes it has answered, batch aside
        # id(model) → its device and input dtype: looking them up walks the modules, as long as a small forward.
        self.placements: dict[int, tuple[Any, Any]] = {}

    def can_load(self, model_dir: Path) -> bool:
        return find_artifact(model_dir, ARTIFACT_NAMES, ARTIFACT_SUFFIXES) is not None

    def prepare(self, context: Context) -> str:
        """Device and thread setup for this process; also wanted before a user's model_fn runs."""
        torch = devices.import_framework("torch", self.extra)
        device = devices.torch_device(context.settings)
        if device == "cuda":
            context.system_properties["gpu_id"] = torch.cuda.current_device()
        return device

    def load(self, model_dir: Path, context: Context) -> Any:
        device = self.prepare(context)
        import torch

        path = find_artifact(model_dir, ARTIFACT_NAMES, ARTIFACT_SUFFIXES)
        if path is None:
            raise BadRequest(f"no {' / '.join(ARTIFACT_NAMES)} in {model_dir}")
        if path.suffix == ".pt2":
            return _load_exported(path, device)
        if not is_torchscript(path):
            raise ModelFailure(
                f"{path.name} is not a TorchScript archive (a state_dict or pickled module?): add code/inference.py "
                "with model_fn(model_dir) that builds the module and loads it, or save it with torch.jit.save / torch.export.save"
            )
        module = torch.jit.load(str(path), map_location=device)
        module.eval()
        return module

    def decode(self, body: bytes, content_type: str, context: Context) -> Any:
        data = named_columns(codecs.decode(body, content_type))
        as_float = codecs.parse_media_type(content_type) in TEXT_TYPES
        device = _request_device(context)
        if isinstance(data, dict):
            return {name: _to_tensor(value, as_float, device) for name, value in data.items()}
        return _to_tensor(data, as_float, device)

    def predict(self, model: Any, data: Any, context: Context) -> Any:
        import torch

        signature: ExportSignature | None = getattr(model, "byoc_signature", None)
        if signature is None and getattr(model, "training", False):
            model.eval()  # eager modules from model_fn, as the SageMaker toolkit's default predict_fn does
        placement = self.placements.get(id(model))
        if placement is None:
            placement = self.placements[id(model)] = _placement(model)
        device, dtype = placement
        with torch.inference_mode():
            if signature is not None:
                return to_numpy(_run_exported(model, _exported_args(signature, data, device, dtype)))
            if isinstance(data, dict):
                _check_names(model, data)
                inputs = {name: _input(value, device, dtype) for name, value in data.items()}
            else:
                inputs = _input(data, device, dtype)
            return to_numpy(self._run(model, inputs))

    def _run(self, model: Any, inputs: Any) -> Any:
        """Run a module that declares no input shapes. Once it has answered, an error for an input shaped
        unlike every input it has answered is the request's fault (a 400 naming both shapes), and so is
        an error about the values (see ``_rejected``)."""
        import torch

        shape = _shape_of(inputs)
        answered = self.answered_shapes.setdefault(id(model), set())
        try:
            output = model(**inputs) if isinstance(inputs, dict) else model(inputs)
        except (RuntimeError, torch.jit.Error, IndexError, ValueError, TypeError) as exc:
            if not answered:
                raise
            if shape not in answered:
                raise BadRequest(f"PyTorch rejected the input: {_reason(exc)} (this model has answered inputs of "
                                 f"shape {' or '.join(sorted(answered))}; got {shape})") from exc
            raise _rejected(exc) or exc
        if len(answered) < MAX_ANSWERED_SHAPES:
            answered.add(shape)
        return output

    def encode(self, prediction: Any, accept: str, context: Context) -> tuple[bytes, str]:
        return codecs.encode(to_numpy(prediction), accept), accept

    def warmup_input(self, model: Any) -> Any | None:
        signature: ExportSignature | None = getattr(model, "byoc_signature", None)
        if signature is None or not signature.examples:
            return None  # TorchScript and eager modules do not say what they take
        return {name: (example[:1] if example.dim() else example).cpu().numpy() for name, example in zip(signature.names, signature.examples)}


def is_torchscript(path: Path) -> bool:
    """``torch.jit.save`` archives carry ``constants.pkl`` and a ``code/`` tree; ``torch.save`` ones do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _load_exported(path: Path, device: str) -> Any:
    import torch

    program = torch.export.load(str(path))
    module = program.module()
    if device != "cpu":
        module = module.to(device)
    examples = program.example_inputs[0] if program.example_inputs else ()
    module.byoc_signature = ExportSignature(names=tuple(program.graph_signature.user_inputs), examples=tuple(examples))
    return module


def _request_device(context: Context) -> str:
    gpu = context.system_properties.get("gpu_id")
    return "cpu" if gpu is None else f"cuda:{gpu}"


def _to_tensor(value: Any, as_float: bool, device: str) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged lists, or lists nested deeper than numpy's 32 dimensions
        raise BadRequest(f"the input is not an array of numbers: {clip_reason(str(exc))}") from None
    if array.dtype.kind not in "biuf":
        raise BadRequest(f"a PyTorch model takes numbers; got values of type {array.dtype}")
    if as_float:
        array = array.astype(np.float32)
    elif not array.dtype.isnative:  # torch.from_numpy refuses big-endian arrays
        array = array.astype(array.dtype.newbyteorder("="))
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor if device == "cpu" else tensor.to(device)


def _placement(model: Any) -> tuple[Any, Any]:
    """The module's device and the dtype its inputs take, from its first parameter or buffer: int64 ids when
    that is an embedding table, else its floating dtype; None when it is not floating (or there is none)."""
    import torch

    tensor = next(model.parameters(), None) if hasattr(model, "parameters") else None
    if tensor is None and hasattr(model, "buffers"):
        tensor = next(model.buffers(), None)
    if tensor is None:
        return torch.device("cpu"), None
    if not tensor.is_floating_point():
        return tensor.device, None
    return tensor.device, torch.int64 if _takes_ids(model) else tensor.dtype


def _takes_ids(model: Any) -> bool:
    """Is the module's first parameter an embedding table, so that its input is ids rather than features?"""
    import torch

    modules = model.modules() if hasattr(model, "modules") else ()
    owner = next((m for m in modules if next(m.parameters(recurse=False), None) is not None), None)
    return isinstance(owner, (torch.nn.Embedding, torch.nn.EmbeddingBag)) or getattr(owner, "original_name", None) in EMBEDDINGS


def _input(value: Any, device: Any, dtype: Any, rank: int | None = None) -> Any:
    """A tensor on ``device`` cast to ``dtype`` (see ``_cast``); a single row gains its batch dimension."""
    import torch

    tensor = _cast(value if isinstance(value, torch.Tensor) else _to_tensor(value, False, "cpu"), dtype)
    if tensor.device != device:
        tensor = tensor.to(device)
    if (rank is None and tensor.dim() == 1) or (rank is not None and tensor.dim() == rank - 1):
        tensor = tensor.unsqueeze(0)
    return tensor


def _cast(tensor: Any, dtype: Any) -> Any:
    """``tensor`` as ``dtype``, floats only if they are whole numbers when that is an integer type; with no
    dtype floats become float32 and the rest stay as they are."""
    import torch

    if dtype is None:
        dtype = torch.float32 if tensor.is_floating_point() else tensor.dtype
    if tensor.dtype == dtype:
        return tensor
    if tensor.is_floating_point() and not dtype.is_floating_point and dtype != torch.bool:
        if not bool((torch.isfinite(tensor) & (tensor == tensor.trunc())).all()):
            raise BadRequest(f"this model takes whole numbers ({str(dtype).removeprefix('torch.')}); got fractions or non-finite values")
    return tensor.to(dtype)


def _check_names(model: Any, inputs: dict[str, Any]) -> None:
    """A 400 for named inputs the module's forward does not take, or without one it needs."""
    forward = getattr(model, "forward", model)  # model_fn may return any callable
    schema = getattr(forward, "schema", None)
    if schema is not None:  # TorchScript; its first argument is self
        arguments = [(a.name, a.has_default_value()) for a in schema.arguments[1:]]
    else:
        try:
            parameters = inspect.signature(forward).parameters.values()
        except (TypeError, ValueError):
            return
        if any(p.kind == p.VAR_KEYWORD for p in parameters):
            return
        named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        arguments = [(p.name, p.default is not p.empty) for p in named]
    check_input_names([name for name, _ in arguments], inputs, [name for name, optional in arguments if not optional])


def _exported_args(signature: ExportSignature, data: Any, device: Any, dtype: Any) -> list[Any]:
    """Positional arguments for an exported program, cast to the dtypes and checked against the shapes it was traced with."""
    if isinstance(data, dict):
        check_input_names(list(signature.names), data)
        values = [data[n] for n in signature.names]
    elif len(signature.names) == 1:
        values = [data]
    else:
        raise BadRequest(clip_reason(f"this model takes named inputs {list(signature.names)}: send {{\"inputs\": {{name: values}}}}"))
    if not signature.examples:
        return [_input(v, device, dtype) for v in values]
    args = []
    for name, value, example in zip(signature.names, values, signature.examples):
        tensor = _input(value, device, example.dtype, rank=example.dim())
        if tensor.dim() != example.dim() or tuple(tensor.shape[1:]) != tuple(example.shape[1:]):
            expected = ", ".join(["batch", *map(str, example.shape[1:])])
            raise BadRequest(f"input {name!r} must have shape ({expected}); got {tuple(tensor.shape)}")
        args.append(tensor)
    return args


def _run_exported(model: Any, args: list[Any]) -> Any:
    """Run an exported program: the warm-up ran it on its example inputs, so its guards on their shapes
    and errors about the values (see ``_rejected``) are the request's fault."""
    import torch

    try:
        return model(*args)
    except AssertionError as exc:
        if not str(exc).startswith("Guard failed"):
            raise
        raise BadRequest(f"PyTorch rejected the input: {clip_reason(str(exc))}") from exc
    except (RuntimeError, torch.jit.Error, IndexError, ValueError, TypeError) as exc:
        raise _rejected(exc) or exc


def _rejected(exc: Exception) -> BadRequest | None:
    """A 400 for a model's error about a request's values, from a model that has shown it works: Python's
    IndexError, ValueError and TypeError, and ATen's index checks. None for the rest (running out of memory,
    CUDA errors, the model's bugs), which stay 500s."""
    if isinstance(exc, (IndexError, ValueError, TypeError)) or _INPUT_FAULT.match(_last_line(exc)):
        return BadRequest(f"PyTorch rejected the input: {_reason(exc)}")
    return None


def _shape_of(inputs: Any) -> str:
    """``(batch, 4)``: an input's shape with its batch size left out; ``{name: ...}`` for named inputs."""
    if isinstance(inputs, dict):
        return "{" + ", ".join(f"{name}: {_shape_of(tensor)}" for name, tensor in sorted(inputs.items())) + "}"
    if inputs.dim() == 0:
        return "()"
    return "(" + ", ".join(["batch", *map(str, inputs.shape[1:])]) + ")"


def _reason(exc: Exception) -> str:
    """The error's last line without its type."""
    return clip_reason(_ERROR_TYPE.sub("", _last_line(exc)))


def _last_line(exc: Exception) -> str:
    """TorchScript puts the interpreter's traceback first and the error last."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return lines[-1]


def to_numpy(value: Any) -> Any:
    """Tensors become numpy arrays, inside tuples, lists and dicts too; a one-element tuple becomes its element."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            value = value.float()
        return value.numpy()
    if isinstance(value, dict):
        return {key: to_numpy(item) for key, item in value.items()}
    if hasattr(value, "_asdict"):  # named tuples keep their field names
        return to_numpy(value._asdict())
    if isinstance(value, tuple) and len(value) == 1:
        return to_numpy(value[0])
    if isinstance(value, (tuple, list)):
        return [to_numpy(item) for item in value]
    return value
