"""Disk: model.tar.gz artifacts are extracted into the cache directory within its byte budget; copies of
unloaded models are deleted least recently used first; a shortfall is a 507 naming directory and bytes."""

from __future__ import annotations

import os
from pathlib import Path

from mme_support import CSV, assert_healthy, load, sklearn_model, tarball

PADDING = 1_500_000  # incompressible bytes per archive: three extracted copies fit a 5 MiB budget, four do not


def padded_archive(tmp_path: Path, name: str) -> Path:
    model = sklearn_model(tmp_path / f"{name}-src")
    (model / "padding.bin").write_bytes(os.urandom(PADDING))
    (model / "which.txt").write_text(name)
    return tarball(model, tmp_path / f"{name}.tar.gz")


def copies(cache: Path) -> dict[str, Path]:
    """Extracted copies in the cache directory, by the model they hold."""
    return {(d / "which.txt").read_text(): d for d in cache.iterdir() if (d / "which.txt").is_file()}


def test_disk_budget_evicts_extracted_copies_of_unloaded_models_lru_first(mme_factory, tmp_path):
    server = mme_factory(BYOC_DISK_BUDGET_MB="5")
    cache = Path(server.env["BYOC_CACHE_DIR"])
    archives = {name: padded_archive(tmp_path, name) for name in "abcd"}
    beside_the_archives = sorted(os.listdir(tmp_path))
    for name in "abc":
        load(server, name, archives[name])
    assert sorted(copies(cache)) == ["a", "b", "c"]
    assert server.delete("/models/a").status_code == 200
    assert server.delete("/models/b").status_code == 200
    assert sorted(copies(cache)) == ["a", "b", "c"]  # unloaded models keep their copy while there is room
    b_copy = copies(cache)["b"]
    b_inode = (b_copy / "padding.bin").stat().st_ino

    load(server, "d", archives["d"])  # no room for a fourth copy: a's, the least recently used, goes
    assert sorted(copies(cache)) == ["b", "c", "d"]
    assert "extracted copy deleted" in server.log()

    load(server, "b", archives["b"])  # a reload reuses the copy instead of extracting again
    assert copies(cache)["b"] == b_copy and (b_copy / "padding.bin").stat().st_ino == b_inode
    assert server.post("/models/b/invoke", **CSV).status_code == 200

    # b, c and d are loaded: their copies cannot go, so there is no room for a.
    response = server.post("/models", json={"model_name": "a", "url": str(archives["a"])})
    assert response.status_code == 507, response.text
    message = response.json()["error"]
    assert response.json()["type"] == "insufficient_disk"
    assert str(cache) in message and "bytes needed" in message
    assert sorted(copies(cache)) == ["b", "c", "d"]
    assert server.get("/models/a").status_code == 404
    assert sorted(os.listdir(tmp_path)) == beside_the_archives  # nothing is ever extracted next to an archive
    assert_healthy(server, "b")
