"""One process per model: isolation, crashes, concurrent loads and unloads racing invokes."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil

from mme_support import CSV, assert_healthy, http_workers, load, sklearn_model, slow_loading, user_code_model, wait_for


def test_each_model_is_held_by_its_own_process_outside_the_http_workers(mme, tmp_path):
    load(mme, "own-a", sklearn_model(tmp_path / "a"))
    load(mme, "own-b", sklearn_model(tmp_path / "b"))
    pids = {mme.get(f"/models/{name}").json()["pid"] for name in ("own-a", "own-b")}
    assert len(pids) == 2
    assert pids.isdisjoint(p.pid for p in http_workers(mme))
    assert pids <= set(mme.child_pids())


def test_kill_9_of_one_model_leaves_the_others_serving_and_it_can_be_reloaded(mme, tmp_path):
    victim, survivor = sklearn_model(tmp_path / "victim"), sklearn_model(tmp_path / "survivor")
    load(mme, "victim", victim)
    load(mme, "survivor", survivor)
    os.kill(mme.get("/models/victim").json()["pid"], signal.SIGKILL)
    # The next invoke of the dead model is a clear 404 (SageMaker then reloads it), never a hang or a 5xx.
    response = mme.post("/models/victim/invoke", **CSV, timeout=10)
    assert response.status_code == 404 and response.json()["type"] == "model_not_loaded"
    assert mme.post("/models/survivor/invoke", **CSV).status_code == 200
    wait_for(lambda: mme.get("/models/victim").status_code == 404)
    assert "victim" not in [m["modelName"] for m in mme.get("/models").json()["models"]]
    assert "model host exited unexpectedly name=victim" in mme.log()
    load(mme, "victim", victim)
    assert mme.post("/models/victim/invoke", **CSV).status_code == 200
    assert mme.get("/ping").status_code == 200


def test_eight_concurrent_loads_of_one_name_give_one_200_and_seven_409(mme, tmp_path):
    model = slow_loading(user_code_model(tmp_path / "model", "once"), 0.5)
    barrier = threading.Barrier(8)

    def post(_: int) -> int:
        barrier.wait()
        return mme.post("/models", json={"model_name": "contended", "url": str(model)}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(post, range(8)))
    assert statuses == [200] + [409] * 7
    assert mme.post("/models/contended/invoke", **CSV).json()[0] == "once"
    assert_healthy(mme, "contended")
    hosts = [p for p in psutil.Process(mme.proc.pid).children(recursive=True) if p.pid == mme.get("/models/contended").json()["pid"]]
    assert len(hosts) == 1


def test_loads_of_different_models_run_in_parallel(mme, tmp_path):
    models = [slow_loading(user_code_model(tmp_path / f"m{i}", f"p{i}"), 1.0) for i in range(4)]
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda i: mme.post("/models", json={"model_name": f"par-{i}", "url": str(models[i])}).status_code, range(4)))
    elapsed = time.monotonic() - started
    assert statuses == [200] * 4
    assert elapsed < 3.0, f"4 loads of 1 s each took {elapsed:.1f} s: they ran one after another"


def test_invoke_racing_unload_gets_a_result_or_404_never_an_error_or_a_hang(mme, tmp_path):
    load(mme, "racing", user_code_model(tmp_path / "model", "r"))
    slow = {**CSV, "headers": {**CSV["headers"], "X-Amzn-SageMaker-Custom-Attributes": "sleep=0.2"}}
    statuses: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def invoke_until_stopped() -> None:
        import requests

        with requests.Session() as session:
            while not stop.is_set():
                status = session.post(f"{mme.url}/models/racing/invoke", **slow, timeout=10).status_code
                with lock:
                    statuses.append(status)

    threads = [threading.Thread(target=invoke_until_stopped) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    unload = mme.delete("/models/racing", timeout=10)
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join(timeout=15)
    assert not any(thread.is_alive() for thread in threads)
    assert unload.status_code == 200
    assert set(statuses) <= {200, 404}, statuses
    assert 200 in statuses and 404 in statuses
    load(mme, "racing", tmp_path / "model")  # the name is free again once the unload answered
    assert_healthy(mme, "racing")


def test_killing_the_manager_takes_every_model_host_down_with_it(mme_factory, tmp_path):
    server = mme_factory()
    load(server, "orphan", sklearn_model(tmp_path / "model"))
    host = psutil.Process(server.get("/models/orphan").json()["pid"])
    manager = host.parent()
    assert "byoc_serve.mme.manager" in " ".join(manager.cmdline())
    manager.kill()
    host.wait(timeout=10)  # PR_SET_PDEATHSIG: no orphan keeps a model in memory
    assert server.proc.wait(timeout=40) != 0  # serve stops the container when a child dies


def test_nginx_errors_on_invoke_keep_the_json_envelope(mme_factory, tmp_path):
    server = mme_factory(BYOC_TIMEOUT="1", BYOC_MAX_PAYLOAD_MB="1")
    load(server, "limits", user_code_model(tmp_path / "model", "l"))
    too_large = server.post("/models/limits/invoke", data="1,2,3,4\n" * 200_000, headers={"Content-Type": "text/csv"})
    assert too_large.status_code == 413 and too_large.json()["type"] == "payload_too_large"
    slow = {**CSV, "headers": {**CSV["headers"], "X-Amzn-SageMaker-Custom-Attributes": "sleep=2"}}
    timed_out = server.post("/models/limits/invoke", **slow)
    assert timed_out.status_code == 504 and timed_out.json()["type"] == "timeout"
    unroutable = server.post(f"/models/{'n' * 200}/invoke", **CSV)  # too long for a socket path: never loadable
    assert unroutable.status_code == 404 and unroutable.json()["type"] == "model_not_loaded"
    wait_for(lambda: server.get("/models/limits").json()["inFlight"] == 0, timeout=5)  # the timed-out request ends
    assert_healthy(server, "limits")
