"""XGBoost artifacts in every save format, served on the real stack."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xgboost

from harness import npy

ROWS = np.array([[0.9, 0.1, 0.2, 0.3], [0.1, 0.8, 0.5, 0.5], [0.7, 0.3, 0.9, 0.1]])
LEGACY_XGBOOST = Path(sys.executable).parents[1] / "xgboost-legacy"


def training_data():
    rng = np.random.default_rng(1)
    features = rng.random((300, 4))
    return features, (features[:, 0] > 0.5).astype(int)


@pytest.fixture(scope="module")
def booster():
    features, labels = training_data()
    return xgboost.train({"objective": "binary:logistic", "max_depth": 3}, xgboost.DMatrix(features, label=labels), 10)


def save(booster, tmp_path: Path, fmt: str) -> Path:
    model_dir = tmp_path / fmt
    model_dir.mkdir()
    if fmt in ("json", "ubj"):
        booster.save_model(str(model_dir / f"model.{fmt}"))
    elif fmt == "pickled-booster":
        (model_dir / "xgboost-model").write_bytes(pickle.dumps(booster))
    return model_dir


@pytest.mark.parametrize("fmt", ["json", "ubj", "pickled-booster"])
def test_booster_formats_serve_the_same_predictions(serve_factory, booster, tmp_path, fmt):
    # One worker gets two OpenMP threads: the case that hung when the master's main thread owned the pool.
    server = serve_factory(save(booster, tmp_path, fmt), {"BYOC_WORKERS": "1"})
    body = "\n".join(",".join(map(str, r)) for r in ROWS)
    response = server.post("/invocations", data=body, headers={"Content-Type": "text/csv"})
    assert response.status_code == 200, response.text
    assert np.allclose(response.json(), booster.inplace_predict(ROWS), atol=1e-6)


def test_legacy_binary_artifact_from_xgboost_1x(serve_factory, tmp_path):
    """SageMaker's built-in XGBoost 1.x wrote `xgboost-model` in the legacy binary format."""
    if not (LEGACY_XGBOOST / "xgboost").is_dir():
        pytest.fail(f"xgboost 1.7.6 is missing from {LEGACY_XGBOOST}: run .ci/setup.sh")
    model_dir = tmp_path / "legacy"
    model_dir.mkdir()
    script = (
        "import numpy as np, xgboost as x\n"
        "rng = np.random.default_rng(1); f = rng.random((300, 4)); y = (f[:, 0] > 0.5).astype(int)\n"
        "b = x.train({'objective': 'binary:logistic', 'max_depth': 3}, x.DMatrix(f, label=y), 10)\n"
        f"b.save_model({str(model_dir / 'xgboost-model')!r})\n"
        f"np.save({str(tmp_path / 'expected.npy')!r}, b.predict(x.DMatrix(np.array({ROWS.tolist()}))))\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, env={"PYTHONPATH": str(LEGACY_XGBOOST)})
    assert (model_dir / "xgboost-model").read_bytes()[:4] == b"binf"  # really the legacy format
    server = serve_factory(model_dir, {"BYOC_WORKERS": "1"})
    body = "\n".join(",".join(map(str, r)) for r in ROWS)
    response = server.post("/invocations", data=body, headers={"Content-Type": "text/csv"})
    assert response.status_code == 200, response.text
    assert np.allclose(response.json(), np.load(tmp_path / "expected.npy"), atol=1e-6)


def test_pickled_sklearn_wrapper_with_predict_proba(serve_factory, tmp_path):
    features, labels = training_data()
    model = xgboost.XGBClassifier(n_estimators=10, max_depth=3).fit(features, labels)
    model_dir = tmp_path / "wrapper"
    model_dir.mkdir()
    (model_dir / "model.pkl").write_bytes(pickle.dumps(model))
    server = serve_factory(model_dir, {"BYOC_WORKERS": "1", "BYOC_PREDICT_METHOD": "predict_proba"})
    response = server.post("/invocations", json=ROWS.tolist())
    assert response.status_code == 200, response.text
    assert np.allclose(response.json(), model.predict_proba(ROWS), atol=1e-6)


@pytest.mark.parametrize(
    "body, content_type, reason",
    [
        ("0.1,0.2", "text/csv", "Feature shape mismatch, expected: 4, got 2"),
        (npy(np.ones((1, 4, 2))), "application/x-npy", "Only 2 dimensional array is valid"),
        (b'[[{"a": 1}, 1, 2, 3]]', "application/json", "float() argument must be a string or a real number, not 'dict'"),
    ],
    ids=["feature-count", "3-d", "json-object"],
)
def test_input_the_booster_rejects_is_400_with_xgboosts_reason(serve_factory, booster, tmp_path, body, content_type, reason):
    server = serve_factory(save(booster, tmp_path, "json"), {"BYOC_WORKERS": "1"})
    response = server.post("/invocations", data=body, headers={"Content-Type": content_type})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error.startswith("XGBoost rejected the input: ") and reason in error, error
    assert "Stack trace" not in error and "/workspace/" not in error  # native frames and paths stay out
    good = server.post("/invocations", data="0.9,0.1,0.2,0.3", headers={"Content-Type": "text/csv"})
    assert good.status_code == 200 and server.get("/ping").status_code == 200
