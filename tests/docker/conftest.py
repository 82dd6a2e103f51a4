"""Fixtures for the image tests: a Docker engine, the local base image, the CPU and GPU images
built with `byoc build`, tiny real models, and a local registry. Every test here is marked
`docker`; locally skip them with -m 'not docker'. In CI a missing engine is a failure, not a skip."""

from __future__ import annotations

import os
import shutil
import subprocess
import types
from pathlib import Path

import joblib
import numpy as np
import pytest

from byoc_serve.cli import main
from byoc_serve.cli.archive import make_readable

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("BYOC_BASE_IMAGE", "byoc-base:bookworm")
CPU_IMAGE = "byoc-serve:ci-cpu"
GPU_IMAGE = "byoc-serve:ci-gpu"
SAMPLE_CSV = "0.1,0.2,0.3\n0.9,0.8,0.7\n"


def run_script(name: str) -> str:
    """Run one of the .ci scripts; fail (not skip) with its output if it does not succeed."""
    done = subprocess.run(["bash", str(REPO / ".ci" / name)], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.fail(f".ci/{name} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout.strip()


@pytest.fixture(scope="session")
def docker_client():
    run_script("docker-engine.sh")
    import docker

    return docker.from_env(timeout=900)


@pytest.fixture(scope="session")
def base_image(docker_client) -> str:
    if BASE_IMAGE == "byoc-base:bookworm":
        run_script("base-image.sh")
    return BASE_IMAGE


@pytest.fixture(scope="session")
def cpu_image(base_image) -> str:
    assert main(["build", "--context", str(REPO), "--base-image", base_image, "--tag", CPU_IMAGE]) == 0
    return CPU_IMAGE


@pytest.fixture(scope="session")
def gpu_image(base_image) -> str:
    assert main(["build", "--gpu", "--triton-source", "pytriton-wheel", "--context", str(REPO),
                 "--base-image", base_image, "--tag", GPU_IMAGE]) == 0
    return GPU_IMAGE


@pytest.fixture(scope="session")
def registry(docker_client) -> str:
    return run_script("registry.sh").splitlines()[-1]


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> types.SimpleNamespace:
    """Tiny real models: sklearn and xgboost directories, a packaged archive, a corrupt model and an
    MME directory. All world-readable so containers started as --user 1000 can read them."""
    import xgboost
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("docker-models")
    features = np.random.RandomState(0).rand(60, 3).astype(np.float32)
    labels = (features[:, 0] > 0.5).astype(int)

    def with_sample(model_dir: Path) -> Path:
        (model_dir / "code").mkdir(parents=True, exist_ok=True)
        (model_dir / "code" / "warmup.csv").write_text(SAMPLE_CSV)
        return model_dir

    sklearn_dir = with_sample(root / "sklearn")
    joblib.dump(LogisticRegression().fit(features, labels), sklearn_dir / "model.joblib")
    xgb_dir = with_sample(root / "xgboost")
    booster = xgboost.train({"objective": "binary:logistic", "max_depth": 2}, xgboost.DMatrix(features, label=labels), 5)
    booster.save_model(str(xgb_dir / "model.ubj"))
    broken = with_sample(root / "broken")
    (broken / "model.joblib").write_bytes(b"this is not a pickle")

    archive = root / "xgboost.tar.gz"
    assert main(["package", str(xgb_dir), "-o", str(archive)]) == 0
    mme = root / "mme"
    shutil.copytree(sklearn_dir, mme / "alpha")
    shutil.copy(archive, mme / "beta.tar.gz")
    make_readable(root)
    return types.SimpleNamespace(sklearn=sklearn_dir, xgboost=xgb_dir, archive=archive, broken=broken, mme=mme)
