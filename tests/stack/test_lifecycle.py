"""Start-up, readiness, timeouts and shutdown of the real serve process tree."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests

from harness import (HUGE_FRAME_PICKLE, ServeProcess, add_code, build_wheel, scratch_dir, sleep_request, slow_model,
                     train_sklearn_classifier)

def test_ping_is_503_with_a_reason_until_loaded_then_200(serve_factory, tmp_path):
    server = serve_factory(slow_model(tmp_path), {"TEST_LOAD_SECONDS": "2"}, wait_ready=False)
    deadline = time.monotonic() + 30
    early = None
    while time.monotonic() < deadline:
        try:
            early = requests.get(server.url + "/ping", timeout=2)
            break
        except requests.ConnectionError:
            time.sleep(0.02)
    assert early is not None and early.status_code == 503
    assert early.json()["type"] == "not_ready" and "starting" in early.json()["error"]
    server.wait_ready(30)
    ready = server.get("/ping")
    assert ready.status_code == 200 and ready.content == b""
    assert "GET /ping" not in server.log()  # ping access lines are off by default


def test_ping_answers_fast_while_every_worker_is_busy(serve_factory, tmp_path):
    server = serve_factory(slow_model(tmp_path), {"BYOC_WORKERS": "2"})
    with ThreadPoolExecutor(4) as pool:
        busy = [pool.submit(sleep_request, server, 1.5) for _ in range(4)]
        time.sleep(0.3)
        latencies = []
        for _ in range(10):
            started = time.perf_counter()
            assert requests.get(server.url + "/ping", timeout=2).status_code == 200
            latencies.append(time.perf_counter() - started)
        assert all(not f.done() for f in busy)  # the workers really were all busy
        assert max(latencies) < 0.2, latencies
        assert all(f.result().status_code == 200 for f in busy)


def test_handler_slower_than_the_timeout_gets_504_json(serve_factory, tmp_path):
    server = serve_factory(slow_model(tmp_path), {"BYOC_TIMEOUT": "1"})
    response = sleep_request(server, 2.5)
    assert response.status_code == 504
    assert response.json()["type"] == "timeout"
    assert server.get("/ping").status_code == 200
    assert sleep_request(server, 0.01).json() == [0.01]


def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path):
    """Four 1 s requests on one-thread workers: at SIGTERM some are running and the rest wait on the
    workers' connections or in their listen backlogs; every one of them is answered."""
    server = ServeProcess(slow_model(tmp_path)).start()
    results: list = []
    clients = [threading.Thread(target=lambda: results.append(sleep_request(server, 1))) for _ in range(4)]
    for client in clients:
        client.start()
    time.sleep(0.5)
    started = time.monotonic()
    code = server.stop(signal.SIGTERM, timeout=35)
    for client in clients:
        client.join(10)
    assert code == 0, server.log()
    assert time.monotonic() - started < 30
    assert [(r.status_code, r.json()) for r in results] == [(200, [1.0])] * 4


def test_serve_exits_non_zero_when_gunicorn_dies_and_its_workers_follow(tmp_path):
    server = ServeProcess(train_sklearn_classifier(tmp_path / "m")).start()
    workers: list[psutil.Process] = []
    try:
        children = psutil.Process(server.proc.pid).children()
        gunicorn = next(p for p in children if "byoc_serve.workers" in " ".join(p.cmdline()))
        nginx = next(p for p in children if p.pid != gunicorn.pid)
        deadline = time.monotonic() + 10  # ready comes with the first worker; the second may still be forking
        while len(workers := gunicorn.children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(workers) == 2
        os.kill(gunicorn.pid, signal.SIGKILL)
        assert server.proc.wait(15) != 0
        assert "gunicorn exited unexpectedly" in server.log()
        assert not nginx.is_running() or nginx.status() == psutil.STATUS_ZOMBIE
        # An orphaned worker notices its new parent at its next heartbeat (1 s) and exits.
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert alive == []
    finally:
        server.stop()
        for worker in workers:
            if worker.is_running():
                worker.kill()


def test_missing_model_is_fatal_and_names_the_phase(tmp_path):
    (tmp_path / "empty").mkdir()
    server = ServeProcess(tmp_path / "empty").start(wait_ready=False)
    try:
        assert server.proc.wait(30) != 0
        assert "FATAL start-up failed in phase=" in server.log()
        # serve's own last FATAL line repeats why, so a short log tail (docker logs, byoc smoke) shows it.
        fatal = [line for line in server.log().splitlines() if "FATAL gunicorn exited unexpectedly" in line]
        assert fatal and "start-up failed in phase=artifacts" in fatal[-1] and "is empty" in fatal[-1], server.log()
    finally:
        server.stop()


def test_corrupt_pickle_is_fatal_in_phase_load_with_a_reason(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.pkl").write_bytes(HUGE_FRAME_PICKLE)
    server = ServeProcess(model).start(wait_ready=False)
    try:
        assert server.proc.wait(30) != 0
        fatal = [line for line in server.log().splitlines() if "FATAL gunicorn exited unexpectedly" in line]
        assert fatal and "phase=load: MemoryError: one allocation was refused" in fatal[-1], server.log()
    finally:
        server.stop()


def test_invalid_setting_is_fatal_and_names_the_variable(tmp_path):
    server = ServeProcess(tmp_path, {"BYOC_TIMEOUT": "soon"}).start(wait_ready=False)
    try:
        assert server.proc.wait(15) == 2
        assert "phase=config" in server.log() and "BYOC_TIMEOUT='soon'" in server.log()
    finally:
        server.stop()


def test_log_level_debug_logs_requests_and_warning_hides_info(serve_factory, tmp_path):
    model_dir = train_sklearn_classifier(tmp_path / "m")
    quiet = serve_factory(model_dir, {"BYOC_LOG_LEVEL": "WARNING", "BYOC_WORKERS": "1"})
    assert quiet.post("/invocations", data="1,2,3,4", headers={"Content-Type": "text/csv"}).status_code == 200
    assert "phase=load ok" not in quiet.log()
    loud = serve_factory(model_dir, {"BYOC_LOG_LEVEL": "DEBUG", "BYOC_LOG_PING": "true", "BYOC_WORKERS": "1"})
    assert loud.get("/ping").status_code == 200
    time.sleep(0.2)
    assert "phase=load ok" in loud.log() and "GET /ping" in loud.log()


def test_unreachable_app_gives_502_as_json_not_html(serve_factory, tmp_path):
    server = serve_factory(train_sklearn_classifier(tmp_path / "m"), {"BYOC_WORKERS": "1"})
    (server.run_dir / "workers" / "0.sock").unlink()  # no upstream connection exists yet: only /ping was asked
    response = server.post("/invocations", data="1,2,3,4", headers={"Content-Type": "text/csv"})
    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["type"] == "bad_gateway"


def test_top_level_serve_program_serves_the_demo_model_and_drains(tmp_path):
    """The checkout's own ``serve`` file (the container entry) is the same program as the console script."""
    top_level = str(Path(__file__).resolve().parents[2] / "serve")
    server = ServeProcess(tmp_path / "absent", {"BYOC_WORKERS": "1"}, args=("serve", "--demo"),
                          command=(sys.executable, top_level)).start()
    try:
        response = server.post("/invocations", data="5.1,3.5,1.4,0.2", headers={"Content-Type": "text/csv"})
        assert response.status_code == 200, response.text
        assert response.json() == [0]  # iris setosa
    finally:
        assert server.stop() == 0
    assert "demo model written to" in server.log()


def test_start_up_phases_are_logged_in_order_ending_with_ready(serve_factory, tmp_path):
    server = serve_factory(train_sklearn_classifier(tmp_path / "m"))
    phases = re.findall(r"byoc_serve\.\w+: phase=([\w-]+) ", server.log())
    assert phases == ["config", "artifacts", "handler", "load", "warm-up", "ready"], server.log()


def test_serve_exits_non_zero_when_nginx_dies(tmp_path):
    server = ServeProcess(train_sklearn_classifier(tmp_path / "m")).start()
    nginx_workers: list[psutil.Process] = []
    try:
        children = psutil.Process(server.proc.pid).children()
        nginx = next(p for p in children if "nginx" in p.name())
        gunicorn = next(p for p in children if "byoc_serve.workers" in " ".join(p.cmdline()))
        nginx_workers = nginx.children()
        os.kill(nginx.pid, signal.SIGKILL)
        assert server.proc.wait(15) != 0
        assert "FATAL nginx exited unexpectedly" in server.log()
        assert not gunicorn.is_running() or gunicorn.status() == psutil.STATUS_ZOMBIE
    finally:
        server.stop()
        for worker in nginx_workers:  # orphaned by the SIGKILL: nginx workers do not follow their master
            if worker.is_running():
                worker.kill()


FAILING_WARMUP_SCRIPT = '''
def predict_fn(data, model):
    if data.tolist() == [[9.0, 9.0, 9.0, 9.0]]:
        raise RuntimeError("the warm-up sample is refused")
    return model.predict(data)
'''


@pytest.mark.parametrize(
    "script, files",
    [
        (FAILING_WARMUP_SCRIPT, {"warmup_json": "[[9, 9, 9, 9]]"}),  # predict_fn raises on the sample
        (None, {"warmup_csv": "1,2\n"}),  # a sample with two features for a model that takes four
    ],
    ids=["predict_fn_raises", "sample_does_not_fit"],
)
def test_failed_warm_up_is_fatal_names_the_phase_and_ping_never_was_200(tmp_path, script, files):
    server = ServeProcess(add_code(train_sklearn_classifier(tmp_path / "m"), script, **files)).start(wait_ready=False)
    try:
        pings = []
        while server.proc.poll() is None:
            try:
                pings.append(requests.get(server.url + "/ping", timeout=2).status_code)
            except requests.ConnectionError:
                time.sleep(0.01)
        assert server.proc.returncode != 0
        assert 503 in pings and 200 not in pings, pings
        log = server.log()
        assert "phase=warm-up FAILED" in log and "FATAL start-up failed in phase=warm-up" in log, log
        assert "phase=ready" not in log
    finally:
        server.stop()


def test_log_level_debug_shows_pip_output_and_error_hides_warnings(serve_factory, tmp_path):
    """code/requirements.txt pins numpy to a version the image lacks (WARNING in every mode) and lists a
    package the image lacks (WARNING in check mode; installed from code/wheels/ in install mode, where
    pip's own output is logged at DEBUG)."""
    model_dir = train_sklearn_classifier(tmp_path / "m")
    build_wheel(model_dir / "code" / "wheels", "byoc_fixture_dep", "1.0", 'TAG = "from-the-wheel"\n')
    (model_dir / "code" / "requirements.txt").write_text("byoc-fixture-dep==1.0\nnumpy<1\n")
    row = {"data": "1,2,3,4", "headers": {"Content-Type": "text/csv"}}

    loud = serve_factory(model_dir, {"BYOC_LOG_LEVEL": "DEBUG", "BYOC_REQUIREMENTS": "install", "BYOC_WORKERS": "1"})
    assert loud.post("/invocations", **row).status_code == 200
    log = loud.log()
    assert re.search(r"DEBUG \[\d+\] byoc_serve\.requirements: pip: Successfully installed byoc-fixture-dep-1\.0", log), log
    assert "[DEBUG] Arbiter booted" in log  # gunicorn follows BYOC_LOG_LEVEL too
    assert re.search(r"WARNING \[\d+\] byoc_serve\.requirements: .*asks for versions other than the image's", log), log

    quiet = serve_factory(model_dir, {"BYOC_LOG_LEVEL": "ERROR", "BYOC_WORKERS": "1"})
    assert quiet.post("/invocations", **row).status_code == 200
    log = quiet.log()
    assert "asks for versions other than the image's" not in log and "lists what the image may lack" not in log, log
    assert not re.search(r" (DEBUG|INFO|WARNING) \[\d+\] ", log), log
    assert "phase=requirements ok" not in log and "[INFO]" not in log


@pytest.mark.skipif(os.geteuid() != 0, reason="nginx drops to user nobody only when serve runs as root")
def test_run_dir_nginx_workers_cannot_reach_is_a_config_error_naming_the_variable(tmp_path):
    private = scratch_dir("private-")  # mode 0700, under a world-searchable root
    server = ServeProcess(train_sklearn_classifier(tmp_path / "m"), {"BYOC_RUN_DIR": str(private / "run")})
    server.start(wait_ready=False)
    try:
        assert server.proc.wait(30) == 2
        fatal = next(line for line in server.log().splitlines() if "FATAL" in line)
        assert "phase=config" in fatal and f"BYOC_RUN_DIR={private / 'run'}" in fatal, server.log()
        assert f"because {private} is not searchable" in fatal
    finally:
        server.stop()
        shutil.rmtree(private)
