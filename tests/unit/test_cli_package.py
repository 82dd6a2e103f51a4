"""`byoc package` and the archive rules it shares with run/smoke/check (no Docker needed)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from byoc_serve.cli import main
from byoc_serve.cli.archive import UnsafeArchive, extract
from byoc_serve.cli.exits import CHECK_FAILED, USAGE


def make_model(root: Path) -> Path:
    (root / "weights").mkdir(parents=True)
    (root / "model.joblib").write_bytes(b"fake-model" * 1000)
    (root / "weights" / "part-0.bin").write_bytes(os.urandom(4096))
    return root


def members(archive: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(archive) as tar:
        return {m.name: m for m in tar.getmembers()}


def add_member(tar: tarfile.TarFile, name: str, data: bytes = b"x", **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if info.isfile() else None)


def test_package_writes_fast_gzip_with_root_owned_readable_entries(tmp_path):
    model = make_model(tmp_path / "model")
    os.chmod(model / "model.joblib", 0o600)
    out = tmp_path / "model.tar.gz"

    assert main(["package", str(model), "-o", str(out)]) == 0

    entries = members(out)
    assert set(entries) == {"model.joblib", "weights", "weights/part-0.bin"}
    assert all(m.uid == 0 and m.gid == 0 for m in entries.values())
    assert entries["model.joblib"].mode == 0o644  # readable by an unprivileged container user
    assert entries["weights"].isdir() and entries["weights"].mode == 0o755
    # gzip header byte 8 (XFL) is 4 when the fastest compression level was used
    assert out.read_bytes()[8] == 4


def test_package_puts_code_directory_under_code(tmp_path):
    model = make_model(tmp_path / "model")
    code = tmp_path / "src"
    code.mkdir()
    (code / "inference.py").write_text("def model_fn(model_dir):\n    return 1\n")
    out = tmp_path / "model.tar.gz"

    assert main(["package", str(model), "--code", str(code), "-o", str(out)]) == 0

    entries = members(out)
    assert entries["code"].isdir()
    assert entries["code/inference.py"].isfile()


def test_package_stores_symlink_to_file_inside_as_regular_file(tmp_path):
    model = make_model(tmp_path / "model")
    (model / "alias.joblib").symlink_to("model.joblib")
    out = tmp_path / "model.tar.gz"

    assert main(["package", str(model), "-o", str(out)]) == 0

    alias = members(out)["alias.joblib"]
    assert alias.isfile() and not alias.issym()
    with tarfile.open(out) as tar:
        assert tar.extractfile("alias.joblib").read() == (model / "model.joblib").read_bytes()


def test_package_refuses_symlink_pointing_outside(tmp_path, capsys):
    model = make_model(tmp_path / "model")
    (tmp_path / "secret").write_text("outside")
    (model / "leak").symlink_to(tmp_path / "secret")
    out = tmp_path / "model.tar.gz"

    assert main(["package", str(model), "-o", str(out)]) == CHECK_FAILED

    assert "outside the model directory" in capsys.readouterr().err
    assert not out.exists()
    assert not out.with_name("model.tar.gz.partial").exists()


def test_package_refuses_symlinked_directory(tmp_path, capsys):
    model = make_model(tmp_path / "model")
    (model / "loop").symlink_to(model)

    assert main(["package", str(model), "-o", str(tmp_path / "m.tar.gz")]) == CHECK_FAILED
    assert "link to a directory" in capsys.readouterr().err


def test_package_skips_its_own_output_inside_the_directory(tmp_path):
    model = make_model(tmp_path / "model")
    out = model / "model.tar.gz"

    assert main(["package", str(model), "-o", str(out)]) == 0
    assert main(["package", str(model), "-o", str(out)]) == 0  # again, with the old archive present

    assert "model.tar.gz" not in members(out)


@pytest.mark.parametrize("bad", [
    {"name": "../evil.py"},
    {"name": "/etc/evil.py"},
    {"name": "link", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"},
    {"name": "hard", "type": tarfile.LNKTYPE, "linkname": "model.joblib"},
])
def test_package_refuses_existing_archive_with_unsafe_member(tmp_path, capsys, bad):
    source = tmp_path / "in.tar.gz"
    with tarfile.open(source, "w:gz") as tar:
        add_member(tar, "model.joblib", b"model")
        add_member(tar, **bad)

    assert main(["package", str(source), "-o", str(tmp_path / "out.tar.gz")]) == CHECK_FAILED
    assert "refused" in capsys.readouterr().err


def test_package_rewrites_a_safe_archive_normalized(tmp_path):
    source = tmp_path / "in.tar.gz"
    with tarfile.open(source, "w:gz", compresslevel=9) as tar:
        add_member(tar, "model.joblib", b"model", uid=1234, mode=0o600)
    out = tmp_path / "out.tar.gz"

    assert main(["package", str(source), "-o", str(out)]) == 0

    entry = members(out)["model.joblib"]
    assert (entry.uid, entry.mode) == (0, 0o644)


def test_package_missing_source_is_a_usage_error(tmp_path):
    assert main(["package", str(tmp_path / "nope"), "-o", str(tmp_path / "m.tar.gz")]) == USAGE


def test_extract_refuses_parent_path_before_writing_anything(tmp_path):
    source = tmp_path / "in.tar.gz"
    with tarfile.open(source, "w:gz") as tar:
        add_member(tar, "model.joblib", b"model")
        add_member(tar, "../../escape.txt", b"boo")

    with pytest.raises(UnsafeArchive, match="outside the model directory"):
        extract(source, tmp_path / "out")
    assert not (tmp_path / "out" / "model.joblib").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_package_refuses_corrupt_archive_without_traceback(tmp_path, capsys):
    source = tmp_path / "in.tar.gz"
    source.write_bytes(b"\x1f\x8b not really gzip")
    assert main(["package", str(source), "-o", str(tmp_path / "out.tar.gz")]) == CHECK_FAILED
    assert "not a readable tar archive" in capsys.readouterr().err
