"""Deep-learning models in multi-model mode, side by side with a scikit-learn model on one real stack."""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

import dl_models
from dl_support import assert_close, mapped_frameworks, npy
from harness import ServeProcess, train_sklearn_classifier

ROWS = dl_models.ROWS
MME_MODELS = ["torchscript", "torch_export", "torch_state_dict", "saved_model_versioned", "keras", "onnx_skl2onnx"]
FRAMEWORK = {"torchscript": "torch", "torch_export": "torch", "torch_state_dict": "torch", "saved_model_versioned": "tensorflow",
             "keras": "tensorflow", "onnx_skl2onnx": "onnxruntime"}


def model_name(name: str) -> str:
    return name.replace("_", "-")


@pytest.fixture(scope="module")
def mme(tmp_path_factory, artifacts):
    """One multi-model serve holding every DL model and a scikit-learn one."""
    server = ServeProcess(env={"SAGEMAKER_MULTI_MODEL": "true", "BYOC_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}).start()
    try:
        deadline = time.monotonic() + 60
        while "frameworks pre-imported" not in server.log():
            assert time.monotonic() < deadline and server.proc.poll() is None, server.log()
            time.sleep(0.05)
        sklearn_dir = train_sklearn_classifier(tmp_path_factory.mktemp("sk") / "model")
        for name, model_dir in [("sklearn", sklearn_dir), *((model_name(n), artifacts(n).model_dir) for n in MME_MODELS)]:
            response = server.post("/models", json={"model_name": name, "url": str(model_dir)}, timeout=180)
            assert response.status_code == 200, response.text
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.run_dir, ignore_errors=True)


def invoke(server: ServeProcess, name: str, body: bytes, content_type: str, accept: str = "application/json"):
    response = server.post(f"/models/{name}/invoke", data=body, headers={"Content-Type": content_type, "Accept": accept})
    assert response.status_code == 200, response.text
    if accept == "application/x-npy":
        return np.load(io.BytesIO(response.content), allow_pickle=False)
    return response.json()


@pytest.mark.parametrize("name", MME_MODELS)
def test_dl_model_answers_like_its_framework_next_to_sklearn(mme, artifacts, name):
    expected = artifacts(name).expected
    for rows in (ROWS[:1], ROWS):
        assert_close(invoke(mme, model_name(name), orjson.dumps(rows.tolist()), "application/json"), expected(rows))
        assert_close(invoke(mme, model_name(name), npy(rows), "application/x-npy"), expected(rows))
    assert invoke(mme, "sklearn", b"1,2,3,4\n-3,-3,0,0", "text/csv") in ([1, 0], [0, 1], [1, 1], [0, 0])


def test_each_model_host_holds_only_its_own_framework(mme):
    """Hosts fork from a manager without torch or TensorFlow: the scikit-learn host never maps them."""
    described = {m["modelName"]: mme.get(f"/models/{m['modelName']}").json() for m in mme.get("/models").json()["models"]}
    assert mapped_frameworks(described["sklearn"]["pid"]) == set()
    for name in MME_MODELS:
        info = described[model_name(name)]
        assert info["state"] == "ready"
        assert FRAMEWORK[name] in mapped_frameworks(info["pid"])


def test_unloading_a_dl_model_leaves_the_others_serving(mme, artifacts):
    model_dir = artifacts("torchscript").model_dir
    assert mme.post("/models", json={"model_name": "extra-torch", "url": str(model_dir)}, timeout=180).status_code == 200
    pid = mme.get("/models/extra-torch").json()["pid"]
    assert mme.delete("/models/extra-torch").status_code == 200
    assert mme.post("/models/extra-torch/invoke", data=b"[1,2,3,4]", headers={"Content-Type": "application/json"}).status_code == 404
    assert not Path(f"/proc/{pid}").exists()
    assert mme.get("/ping").status_code == 200
    assert_close(invoke(mme, "torchscript", orjson.dumps(ROWS.tolist()), "application/json"), artifacts("torchscript").expected(ROWS))
