"""Reading code/requirements.txt against the running interpreter, and the cached offline install."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy

from byoc_serve import requirements
from byoc_serve.config import load_settings
from harness import build_wheel


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_lines_are_sorted_by_what_the_interpreter_has(tmp_path):
    code = tmp_path / "code"
    write(code / "more.txt", "byoc-nested-absent\n")
    path = write(
        code / "requirements.txt",
        f"""\
# a comment line
numpy>={numpy.__version__}  # installed, and new enough
scikit-learn==0.0.1
byoc-surely-absent>=1
byoc-absent-too ; python_version < "3"
https://example.invalid/pkg-1.0-py3-none-any.whl
-e ./localpkg
--index-url https://pypi.internal/simple
--find-links ./wheels
byoc-hashed==1.0 \\
    --hash=sha256:abc
-r more.txt
-c constraints-that-do-not-exist.txt
""",
    )
    found = requirements.read(path)
    assert found.missing == ["byoc-surely-absent>=1", "byoc-hashed==1.0 --hash=sha256:abc", "byoc-nested-absent"]
    assert len(found.conflicts) == 1 and found.conflicts[0].startswith("scikit-learn==0.0.1 (the image has ")
    assert found.unchecked == ["https://example.invalid/pkg-1.0-py3-none-any.whl", f"-e {code}/localpkg"]
    assert found.options == ["--index-url", "https://pypi.internal/simple", "--find-links", f"{code}/wheels"]
    assert found.to_install == found.missing + found.unchecked


def test_files_that_include_each_other_are_read_once(tmp_path):
    write(tmp_path / "b.txt", "-r requirements.txt\nbyoc-from-b\n")
    found = requirements.read(write(tmp_path / "requirements.txt", "-r b.txt\nbyoc-from-a\n-r not-shipped.txt\n"))
    assert found.missing == ["byoc-from-b", "byoc-from-a"]
    assert found.unchecked == [f"-r {tmp_path}/not-shipped.txt"]  # left for pip to report, never a crash


def test_check_mode_reports_and_installs_nothing(tmp_path):
    write(tmp_path / "model" / "code" / "requirements.txt", "byoc-surely-absent\n")
    settings = load_settings({"BYOC_RUN_DIR": str(tmp_path / "run")})
    info = requirements.prepare(tmp_path / "model", settings)
    assert info["mode"] == "check" and info["missing"] == "byoc-surely-absent"
    assert requirements.advice(tmp_path / "model", settings) is not None
    assert not (tmp_path / "run").exists()


def test_install_goes_to_a_directory_keyed_by_content_and_is_reused(tmp_path, monkeypatch):
    model = tmp_path / "model"
    build_wheel(model / "code" / "wheels", "byoc_unit_dep", "1.0", "VALUE = 42\n")
    write(model / "code" / "requirements.txt", "byoc-unit-dep==1.0\nnumpy\n")
    image_path = list(sys.path)
    monkeypatch.setattr(sys, "path", list(image_path))
    settings = load_settings({"BYOC_RUN_DIR": str(tmp_path / "run"), "BYOC_REQUIREMENTS": "install"})

    first = requirements.prepare(model, settings)
    assert first["installed"] == 1 and first["cached"] is False
    assert sys.path == [*image_path, str(first["into"])]  # appended: the image's own packages keep precedence
    assert (Path(first["into"]) / "byoc_unit_dep.py").is_file()
    assert not (Path(first["into"]) / "numpy").exists()  # what the image has is not installed again
    assert requirements.prepare(model, settings)["missing"] == 0  # this process now has it

    monkeypatch.setattr(sys, "path", list(image_path))  # as a restarted process sees it
    again = requirements.prepare(model, settings)
    assert again["into"] == first["into"] and again["cached"] is True

    monkeypatch.setattr(sys, "path", list(image_path))
    write(model / "code" / "requirements.txt", "byoc-unit-dep>=1.0\n")
    assert requirements.prepare(model, settings)["into"] != first["into"]
