"""`byoc build` arguments and build context (the build itself is in tests/docker)."""

from __future__ import annotations

import argparse
import tarfile
from pathlib import Path

import pytest

from byoc_serve.cli import build, main
from byoc_serve.cli.exits import USAGE, CliError

REPO = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> argparse.Namespace:
    root = argparse.ArgumentParser()
    build.add_parser(root.add_subparsers())
    return root.parse_args(["build", *argv])


def test_cpu_build_defaults_to_sklearn_and_xgboost():
    assert build.build_arguments(parse()) == {"FRAMEWORKS": "sklearn,xgboost"}


def test_gpu_build_defaults_include_torch_on_nvidia_base():
    values = build.build_arguments(parse("--gpu"))
    assert values == {"FRAMEWORKS": "sklearn,xgboost,torch", "TRITON_SOURCE": "base"}


def test_gpu_wheel_form_leaves_out_cuda_torch_by_default():
    values = build.build_arguments(parse("--gpu", "--triton-source", "pytriton-wheel", "--base-image", "byoc-base:bookworm"))
    assert values == {"FRAMEWORKS": "sklearn,xgboost", "TRITON_SOURCE": "pytriton-wheel", "BASE_IMAGE": "byoc-base:bookworm"}


def test_explicit_build_arg_wins():
    values = build.build_arguments(parse("--frameworks", "torch", "--build-arg", "TORCH_INDEX_URL="))
    assert values == {"FRAMEWORKS": "torch", "TORCH_INDEX_URL": ""}


def test_unknown_framework_is_a_usage_error():
    with pytest.raises(CliError) as error:
        build.build_arguments(parse("--frameworks", "sklearn,pytorch"))
    assert error.value.code == USAGE
    assert "pytorch" in str(error.value)


def test_triton_source_without_gpu_is_a_usage_error():
    with pytest.raises(CliError):
        build.build_arguments(parse("--triton-source", "pytriton-wheel"))


def test_missing_dockerfile_is_a_usage_error(tmp_path, capsys):
    assert main(["build", "--context", str(tmp_path)]) == USAGE
    assert "has no Dockerfile" in capsys.readouterr().err


def test_context_follows_dockerignore_and_adds_wheels(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-none-any.whl").write_bytes(b"wheel")
    (wheels / "notes.txt").write_text("not a wheel")
    out = tmp_path / "context.tar"

    with out.open("wb") as f:
        build.write_context(REPO, "Dockerfile.gpu", wheels, None, f)

    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    assert {"Dockerfile", "Dockerfile.gpu", "pyproject.toml", "src/byoc_serve/cli/__init__.py"} <= names
    assert "wheels/torch-2.13.0+cpu-cp311-none-any.whl" in names
    assert "wheels/notes.txt" not in names
    assert not any(n.startswith((".git/", ".venv/", "tests/")) for n in names)


def test_context_carries_requirements_file_as_wheels_requirements_txt(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("byoc-probe==1.0\n")
    out = tmp_path / "context.tar"

    with out.open("wb") as f:
        build.write_context(REPO, "Dockerfile", None, requirements, f)

    with tarfile.open(out) as tar:
        carried = tar.extractfile("wheels/requirements.txt")
        assert carried is not None and carried.read() == b"byoc-probe==1.0\n"


def test_stray_wheels_paths_in_the_context_root_stay_out(tmp_path):
    root = tmp_path / "checkout"
    (root / "wheels").mkdir(parents=True)
    (root / "wheels-old").mkdir()
    (root / "Dockerfile").write_text("FROM scratch\n")
    (root / ".dockerignore").write_text((REPO / ".dockerignore").read_text())
    for stray in ("wheels/requirements.txt", "wheels-old/pyproject.toml", "wheels.txt"):
        (root / stray).write_text("stray")
    (root / "wheels" / "torch-2.13.0+cpu-cp311-none-any.whl").write_bytes(b"wheel")
    out = tmp_path / "context.tar"

    with out.open("wb") as f:
        build.write_context(root, "Dockerfile", None, None, f)

    with tarfile.open(out) as tar:
        files = {m.name for m in tar.getmembers() if m.isfile() and m.name.startswith("wheels")}
    assert files == {"wheels/torch-2.13.0+cpu-cp311-none-any.whl"}


def test_local_build_output_stays_out_of_the_context(tmp_path):
    # `pip install .` leaves build/lib behind, and the image's own `pip install` packages whatever is
    # there: a module deleted from src/ would still ship in the image.
    root = tmp_path / "checkout"
    (root / "src" / "byoc_serve").mkdir(parents=True)
    (root / "Dockerfile").write_text("FROM scratch\n")
    (root / ".dockerignore").write_text((REPO / ".dockerignore").read_text())
    (root / "src" / "byoc_serve" / "app.py").write_text("current")
    for stray in ("build/lib/byoc_serve/deleted.py", "dist/byoc_serve-0.1.0.tar.gz", "byoc_serve.egg-info/PKG-INFO",
                  "src/byoc_serve.egg-info/PKG-INFO"):
        (root / stray).parent.mkdir(parents=True, exist_ok=True)
        (root / stray).write_text("stale")
    out = tmp_path / "context.tar"

    with out.open("wb") as f:
        build.write_context(root, "Dockerfile", None, None, f)

    with tarfile.open(out) as tar:
        files = {m.name for m in tar.getmembers() if m.isfile()}
    assert files == {"Dockerfile", ".dockerignore", "src/byoc_serve/app.py"}


def test_missing_requirements_file_is_a_usage_error(tmp_path, capsys):
    assert main(["build", "--context", str(REPO), "--requirements", str(tmp_path / "requirements.txt")]) == USAGE
    assert "is not a file" in capsys.readouterr().err
