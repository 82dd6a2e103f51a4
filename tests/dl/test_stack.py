"""Deep-learning models on the real stack (nginx + gunicorn via ``serve``), single-model mode."""

from __future__ import annotations

import io
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson
import pytest

import dl_models
from dl_support import assert_close, mapped_frameworks, npy
from harness import ServeProcess, train_sklearn_classifier

ROWS = dl_models.ROWS
STACK_MODELS = [
    "torchscript",
    "torch_export",
    "torch_state_dict",
    "saved_model",
    "saved_model_versioned",
    "keras",
    "onnx_skl2onnx",
]
SINGLE_OUTPUT = {"torchscript", "torch_export", "torch_state_dict", "keras"}
UNDECLARED_SHAPES = {"torchscript", "torch_state_dict"}  # TorchScript and an eager module from model_fn
def gunicorn_processes(server: ServeProcess) -> tuple[int, list[int]]:
    """The gunicorn master's PID and its workers' PIDs."""
    import psutil

    master = next(p for p in psutil.Process(server.proc.pid).children() if "byoc_serve.workers" in " ".join(p.cmdline()))
    return master.pid, [w.pid for w in master.children()]


def _pids(log: str, pattern: str) -> set[int]:
    """PIDs of the processes that logged a line matching ``pattern``."""
    return {int(pid) for pid in re.findall(r"\[(\d+)\] " + pattern, log)}


def post(server: ServeProcess, body: bytes, content_type: str, accept: str = "application/json"):
    response = server.post("/invocations", data=body, headers={"Content-Type": content_type, "Accept": accept})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith(accept)
    if accept == "application/x-npy":
        return np.load(io.BytesIO(response.content), allow_pickle=False)
    return orjson.loads(response.content)


@pytest.fixture(scope="module", params=STACK_MODELS)
def served(request, artifacts):
    artifact = artifacts(request.param)
    server = ServeProcess(artifact.model_dir, env={"BYOC_WORKERS": "2"}).start(timeout=120)
    yield request.param, artifact, server
    server.stop()
    shutil.rmtree(server.run_dir, ignore_errors=True)


def test_served_model_answers_like_its_framework(served):
    name, artifact, server = served
    for rows in (ROWS[:1], ROWS):
        assert_close(post(server, orjson.dumps(rows.tolist()), "application/json"), artifact.expected(rows))
        assert_close(post(server, npy(rows), "application/x-npy"), artifact.expected(rows))
        if name in SINGLE_OUTPUT:
            answer = post(server, npy(rows), "application/x-npy", accept="application/x-npy")
            assert answer.shape == (len(rows), 3)
            assert_close(answer, artifact.expected(rows))


def test_model_is_loaded_after_fork_in_every_worker(served):
    """fork_safe=False: each worker loads the model itself (and logs its device and threads), the master never does."""
    name, _, server = served
    framework = "torch" if name.startswith("torch") else "onnxruntime" if name.startswith("onnx") else "tensorflow"
    deadline = time.monotonic() + 60  # /ping turns 200 once the first worker is ready; the other may not even be forked yet
    while len(loaded_by := _pids(server.log(), "byoc_serve.servable: phase=load ok")) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    master, workers = gunicorn_processes(server)
    log = server.log()
    configured_by = _pids(log, r"byoc_serve.devices: \S+ device=cpu intra_op_threads=1 inter_op_threads=1")
    assert len(workers) == 2 and loaded_by == set(workers)
    assert all(framework in mapped_frameworks(pid) for pid in workers)
    assert configured_by == set(workers)  # user code too: its framework's prepare() runs before model_fn
    if name != "torch_state_dict":  # inference.py is imported in the master (handler selection) and imports torch
        assert framework not in mapped_frameworks(master)


def test_concurrent_requests_all_get_their_own_answer(served):
    _, artifact, server = served
    bodies = [ROWS[i % 3 : i % 3 + 1] * (1 + i / 10) for i in range(24)]

    def call(rows):
        return post(server, orjson.dumps(rows.tolist()), "application/json"), artifact.expected(rows)

    with ThreadPoolExecutor(8) as pool:
        for answer, expected in pool.map(call, bodies):
            assert_close(answer, expected)


def test_wrong_input_shape_is_a_json_error_and_the_server_stays_healthy(served):
    """400 where the signature says what fits. TorchScript and eager modules declare nothing: which of
    the two workers answers decides (see the next test)."""
    name, _, server = served
    response = server.post("/invocations", data=b"[[1, 2]]", headers={"Content-Type": "application/json"})
    assert response.status_code in ((400, 500) if name in UNDECLARED_SHAPES else (400,))
    assert response.json()["code"] == response.status_code
    server.assert_healthy({"data": orjson.dumps(ROWS.tolist()), "headers": {"Content-Type": "application/json"}})


@pytest.mark.parametrize("name", sorted(UNDECLARED_SHAPES))
def test_a_module_without_declared_shapes_answers_400_for_a_shape_unlike_those_it_answered(artifacts, name):
    artifact = artifacts(name)
    server = ServeProcess(artifact.model_dir, env={"BYOC_WORKERS": "1"}).start(timeout=120)
    bad = {"data": b"[[1, 2]]", "headers": {"Content-Type": "application/json"}}
    try:
        assert server.post("/invocations", **bad).status_code == 500  # nothing answered yet: whose fault is unknown
        assert_close(post(server, orjson.dumps(ROWS.tolist()), "application/json"), artifact.expected(ROWS))
        response = server.post("/invocations", **bad)
        assert response.status_code == 400 and response.json()["code"] == 400, response.text
        assert "answered inputs of shape (batch, 4); got (batch, 2)" in response.json()["error"]
        server.assert_healthy({"data": orjson.dumps(ROWS.tolist()), "headers": {"Content-Type": "application/json"}})
    finally:
        server.stop()
        shutil.rmtree(server.run_dir, ignore_errors=True)


def test_an_input_tensorflow_rejects_is_a_400_json_error_and_the_server_stays_healthy(tmp_path):
    dl_models.tf_rejecting_models(tmp_path)
    server = ServeProcess(tmp_path / "saved_model", {"BYOC_WORKERS": "1"}).start()
    try:
        response = server.post("/invocations", data=b"[[1, 50]]", headers={"Content-Type": "application/json"})
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "TensorFlow rejected the input: indices[0,1] = 50 is not in [0, 10)"
        server.assert_healthy({"data": b"[[1, 9]]", "headers": {"Content-Type": "application/json"}})
    finally:
        server.stop()
        shutil.rmtree(server.run_dir, ignore_errors=True)


def test_tfserving_response_setting_reaches_the_workers(artifacts):
    server = ServeProcess(artifacts("saved_model").model_dir, {"BYOC_WORKERS": "1", "BYOC_TF_RESPONSE": "tfserving"}).start()
    try:
        response = server.post("/invocations", data=orjson.dumps({"instances": ROWS[:2].tolist()}), headers={"Content-Type": "application/json"})
        assert response.status_code == 200, response.text
        assert [sorted(row) for row in response.json()["predictions"]] == [["label", "scores"]] * 2
    finally:
        server.stop()
        shutil.rmtree(server.run_dir, ignore_errors=True)


def test_sklearn_server_never_imports_a_deep_learning_framework(tmp_path, artifacts):
    model_dir = train_sklearn_classifier(tmp_path / "model")
    server = ServeProcess(model_dir).start()
    try:
        response = server.post("/invocations", data=b"1,2,3,4", headers={"Content-Type": "text/csv"})
        assert response.status_code == 200
        pids = [server.proc.pid, *server.child_pids()]
        assert len(pids) >= 4  # serve, nginx, gunicorn master, workers
        assert {pid: mapped_frameworks(pid) for pid in pids} == {pid: set() for pid in pids}
    finally:
        server.stop()
        shutil.rmtree(server.run_dir, ignore_errors=True)
