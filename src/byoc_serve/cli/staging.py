"""Model artifacts laid out on the host the way SageMaker presents them to the container."""

from __future__ import annotations

import re
import shutil
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from byoc_serve.cli import archive
from byoc_serve.cli.exits import CHECK_FAILED, USAGE, CliError

SINGLE_MODEL_DIR = "/opt/ml/model"
MULTI_MODEL_ROOT = "/opt/ml/models"
MODEL_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@contextmanager
def model_directory(model: Path) -> Iterator[Path]:
    """The host directory to mount at /opt/ml/model: the directory itself, or an archive
    extracted (and checked) into a temporary directory that is removed afterwards."""
    if model.is_dir():
        yield model.resolve()
        return
    if not archive.is_archive(model):
        raise CliError(f"{model} is neither a model directory nor a .tar.gz archive", USAGE)
    scratch = Path(tempfile.mkdtemp(prefix="byoc-model-"))
    try:
        try:
            archive.extract(model, scratch / "model")
        except archive.UnsafeArchive as exc:
            raise CliError(f"{model}: refused: {exc}", CHECK_FAILED) from None
        archive.make_readable(scratch)
        yield scratch / "model"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def multi_model_directories(source: Path) -> Iterator[dict[str, Path]]:
    """Model name → host directory for every model in source (subdirectories and archives).

    Each is mounted at /opt/ml/models/{name}/model, where SageMaker puts an extracted artifact.
    """
    if not source.is_dir():
        raise CliError(f"--multi-model {source} must be a directory of model directories or archives", USAGE)
    candidates = sorted(p for p in source.iterdir() if p.is_dir() or archive.is_archive(p))
    if not candidates:
        raise CliError(f"{source} holds no model directories or .tar.gz archives", USAGE)
    with ExitStack() as stack:
        models: dict[str, Path] = {}
        for path in candidates:
            name = model_name(path)
            if name in models:
                raise CliError(f"two models in {source} are both named {name!r}", USAGE)
            models[name] = stack.enter_context(model_directory(path))
        yield models


def model_name(path: Path) -> str:
    """The MME model name for an artifact: its file name without the archive suffix, made URL-safe."""
    name = path.name
    for suffix in archive.ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return MODEL_NAME.sub("-", name).strip("-") or "model"


def container_path(name: str) -> str:
    return f"{MULTI_MODEL_ROOT}/{name}/model"
