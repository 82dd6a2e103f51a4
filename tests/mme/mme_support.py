"""Tiny real artifacts and stack helpers for the multi-model tests."""

from __future__ import annotations

import io
import tarfile
import textwrap
import time
from pathlib import Path

import joblib
import numpy as np
import psutil
from sklearn.linear_model import LogisticRegression

from harness import ServeProcess

MIB = 1024 * 1024
CSV = {"data": "0.5,1.0,-0.3,2.0", "headers": {"Content-Type": "text/csv"}}


def start_mme(env: dict[str, str] | None = None) -> ServeProcess:
    """serve in multi-model mode, returned once the manager has pre-imported the frameworks."""
    server = ServeProcess(env={"SAGEMAKER_MULTI_MODEL": "true", **(env or {})}).start()
    deadline = time.monotonic() + 60
    while "frameworks pre-imported" not in server.log():
        if time.monotonic() > deadline or server.proc.poll() is not None:
            server.stop()
            raise RuntimeError(f"the model manager did not get ready:\n{server.log()}")
        time.sleep(0.05)
    return server


def sklearn_model(model_dir: Path, ballast_mb: float = 0, seed: int = 0) -> Path:
    """A fitted LogisticRegression on 4 features; ``ballast_mb`` of random floats ride along inside it,
    so its memory is easy to see in a process."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(100, 4))
    model = LogisticRegression().fit(features, (features[:, 0] > 0).astype(int))
    if ballast_mb:
        model.ballast_ = rng.random(int(ballast_mb * MIB / 8))
    model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, model_dir / "model.joblib")
    return model_dir


def user_code_model(model_dir: Path, tag: str, ballast_mb: float = 0) -> Path:
    """A model whose own code/inference.py answers ``[tag, target_model]``; it sleeps for the seconds in
    ``code/model_fn_sleep`` (if present) while loading, and for the ``sleep=`` custom attribute per request."""
    sklearn_model(model_dir, ballast_mb)
    (model_dir / "code").mkdir()
    (model_dir / "code" / "inference.py").write_text(
        textwrap.dedent(
            f"""
            import os
            import time

            import joblib

            TAG = {tag!r}


            def model_fn(model_dir):
                sleep_file = os.path.join(model_dir, "code", "model_fn_sleep")
                if os.path.exists(sleep_file):
                    time.sleep(float(open(sleep_file).read()))
                return joblib.load(os.path.join(model_dir, "model.joblib"))


            def predict_fn(data, model, context):
                time.sleep(float(context.custom_attribute("sleep") or 0))
                return [TAG, context.target_model]
            """
        )
    )
    return model_dir


def slow_loading(model_dir: Path, seconds: float) -> Path:
    (model_dir / "code" / "model_fn_sleep").write_text(str(seconds))
    return model_dir


def xgboost_model(model_dir: Path) -> Path:
    import xgboost

    rng = np.random.default_rng(0)
    features = rng.normal(size=(100, 4))
    booster = xgboost.train(
        {"objective": "binary:logistic", "max_depth": 2, "nthread": 1},
        xgboost.DMatrix(features, label=(features[:, 0] > 0).astype(int)),
        num_boost_round=5,
    )
    model_dir.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(model_dir / "model.json"))
    return model_dir


def tarball(source_dir: Path, archive: Path) -> Path:
    """``source_dir``'s contents at the archive root, like a SageMaker model.tar.gz."""
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(source_dir.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(source_dir)), recursive=False)
    return archive


def hostile_tarball(archive: Path, member: tarfile.TarInfo, payload: bytes = b"owned") -> Path:
    """A model.tar.gz with a valid model plus one hostile ``member``."""
    model = sklearn_model(archive.parent / (archive.name + ".src"))
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(model / "model.joblib", arcname="model.joblib")
        member.size = len(payload) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(payload) if member.isfile() else None)
    return archive


def load(server: ServeProcess, name: str, url: Path | str, **kwargs) -> dict:
    response = server.post("/models", json={"model_name": name, "url": str(url)}, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def assert_healthy(server: ServeProcess, model: str) -> None:
    """After any bad request: /ping is still 200 and the loaded ``model`` still answers a good request."""
    assert server.get("/ping").status_code == 200
    response = server.post(f"/models/{model}/invoke", **CSV)
    assert response.status_code == 200, response.text


def tree(server: ServeProcess) -> list[psutil.Process]:
    root = psutil.Process(server.proc.pid)
    return [root, *root.children(recursive=True)]


def tree_pss(server: ServeProcess) -> int:
    """The container's memory: PSS summed over serve and everything under it (shared pages once)."""
    total = 0
    for proc in tree(server):
        try:
            total += proc.memory_full_info().pss
        except psutil.NoSuchProcess:
            pass
    return total


def http_workers(server: ServeProcess) -> list[psutil.Process]:
    master = next(p for p in psutil.Process(server.proc.pid).children() if "byoc_serve.workers" in " ".join(p.cmdline()))
    return master.children()


def wait_for(condition, timeout: float = 10.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(interval)
