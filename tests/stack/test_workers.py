"""The single-threaded LoopWorker and the bare /invocations route, spoken to on a worker's own socket.

nginx only ever sends one whole request at a time; these tests also send what nginx never does
(pipelined and chunked requests, garbage), because the worker must survive them all the same.
"""

from __future__ import annotations

import ast
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from harness import ServeProcess, add_code, sleep_request, slow_model, train_sklearn_classifier

GOOD = {"data": "1,2,3,4", "headers": {"Content-Type": "text/csv"}}
CSV_REQUEST = (
    b"POST /invocations HTTP/1.1\r\nHost: w\r\nContent-Type: text/csv\r\nAccept: application/json\r\n"
    b"Content-Length: 7\r\n\r\n1,2,3,4"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = ServeProcess(train_sklearn_classifier(tmp_path_factory.mktemp("sk") / "model"), {"BYOC_WORKERS": "1"})
    proc.start()
    yield proc
    proc.stop()


def connect(server: ServeProcess) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(server.run_dir / "workers" / "0.sock"))
    return sock


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """Read ``count`` Content-Length-framed responses off one connection."""
    buffer, responses = b"", []
    deadline = time.monotonic() + 10
    while len(responses) < count and time.monotonic() < deadline:
        if b"\r\n\r\n" in buffer:
            head, rest = buffer.split(b"\r\n\r\n", 1)
            lines = head.decode().split("\r\n")
            headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
            length = int(headers.get("content-length", 0))
            if len(rest) >= length:
                responses.append((int(lines[0].split()[1]), headers, rest[:length]))
                buffer = rest[length:]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
    return responses


def test_the_default_single_model_worker_is_the_loop_worker(server):
    assert "Using worker: byoc_serve.loop_worker.LoopWorker" in server.log()


def test_one_connection_serves_many_requests(server):
    with connect(server) as sock:
        for _ in range(5):
            sock.sendall(CSV_REQUEST)
            [(status, headers, body)] = read_responses(sock, 1)
            assert status == 200 and headers.get("connection", "").lower() != "close"
            assert len(orjson.loads(body)) == 1


def test_pipelined_requests_are_all_answered_in_order(server):
    other = CSV_REQUEST.replace(b"Accept: application/json", b"Accept: text/csv")
    with connect(server) as sock:
        sock.sendall(CSV_REQUEST + other + CSV_REQUEST)
        responses = read_responses(sock, 3)
    assert [status for status, _, _ in responses] == [200, 200, 200]
    assert [headers["content-type"] for _, headers, _ in responses] == ["application/json", "text/csv", "application/json"]


def test_a_chunked_body_is_read_whole(server):
    with connect(server) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: w\r\nContent-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4\r\n1,2,\r\n3\r\n3,4\r\n1\r\n\n\r\n7\r\n5,6,7,8\r\n0\r\n\r\n"
        )
        [(status, _, body)] = read_responses(sock, 1)
    assert status == 200 and len(orjson.loads(body)) == 2


def test_a_chunked_body_over_the_limit_gets_413_json(tmp_path, serve_factory):
    server = serve_factory(train_sklearn_classifier(tmp_path / "model"), {"BYOC_WORKERS": "1", "BYOC_MAX_PAYLOAD_MB": "1"})
    chunk = b"1,2,3,4\n" * 8192  # 64 KiB
    with connect(server) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: w\r\nContent-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(20):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sock.sendall(b"0\r\n\r\n")
        [(status, headers, body)] = read_responses(sock, 1)
    assert status == 413 and headers["content-type"] == "application/json"
    assert orjson.loads(body)["type"] == "payload_too_large"
    server.assert_healthy(GOOD)


def test_a_declared_length_over_the_limit_gets_413_before_the_body_is_sent(server):
    with connect(server) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: w\r\nContent-Type: text/csv\r\nContent-Length: 99999999\r\n\r\n")
        [(status, headers, body)] = read_responses(sock, 1)
        assert sock.recv(1) == b""  # and the worker stops talking on that connection
    assert status == 413 and headers["connection"] == "close"
    assert orjson.loads(body)["type"] == "payload_too_large"
    server.assert_healthy(GOOD)


def test_a_client_waiting_for_100_continue_gets_it_then_its_answer(server):
    with connect(server) as sock:
        sock.sendall(CSV_REQUEST[:-7].replace(b"Content-Length", b"Expect: 100-continue\r\nContent-Length"))
        assert sock.recv(64) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"1,2,3,4")
        [(status, _, _)] = read_responses(sock, 1)
    assert status == 200


def test_an_http10_request_is_answered_and_its_connection_closed(server):
    with connect(server) as sock:
        sock.sendall(CSV_REQUEST.replace(b"HTTP/1.1", b"HTTP/1.0"))
        [(status, headers, _)] = read_responses(sock, 1)
        assert sock.recv(1) == b""
    assert status == 200 and headers["connection"] == "close"


def test_garbage_gets_400_and_the_worker_keeps_serving(server):
    with connect(server) as sock:
        sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        [(status, _, _)] = read_responses(sock, 1)
    assert status == 400
    server.assert_healthy(GOOD)
    assert "Worker exiting" not in server.log()


def test_a_client_that_leaves_mid_request_costs_nothing(server):
    with connect(server) as sock:
        sock.sendall(CSV_REQUEST[:-3])
    for _ in range(3):
        server.assert_healthy(GOOD)


@pytest.mark.parametrize(
    "method, path, allow",
    [("GET", "/invocations", "POST"), ("POST", "/execution-parameters", "GET, HEAD, OPTIONS")],
    ids=["invocations", "execution-parameters"],
)
def test_other_methods_get_405_json_naming_the_allowed_ones(server, method, path, allow):
    response = server.request(method, path)
    assert response.status_code == 405
    assert response.headers["Allow"] == allow
    assert response.json()["type"] == "method_not_allowed" and response.json()["error"] == f"{path} accepts {allow} only"
    server.assert_healthy(GOOD)


def test_more_threads_select_gunicorns_gthread_worker(tmp_path, serve_factory):
    server = serve_factory(train_sklearn_classifier(tmp_path / "model"), {"BYOC_WORKERS": "1", "BYOC_THREADS": "3"})
    assert "Using worker: gthread" in server.log()
    server.assert_healthy(GOOD)


def test_requests_go_to_the_idle_worker_not_behind_a_busy_one(tmp_path, serve_factory):
    """With one worker busy for 3 s, quick requests all go to the other one (nginx's least_conn);
    round-robin would queue every second one behind the busy worker."""
    server = serve_factory(slow_model(tmp_path), {"BYOC_WORKERS": "2"})
    deadline = time.monotonic() + 30
    while not all((server.run_dir / "workers" / f"{slot}.sock").exists() for slot in (0, 1)):
        assert time.monotonic() < deadline, "the second worker never started listening"
        time.sleep(0.05)
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(sleep_request, server, 3)
        time.sleep(0.5)
        for _ in range(6):
            started = time.monotonic()
            assert sleep_request(server, 0.01).status_code == 200
            assert time.monotonic() - started < 1.0
        assert not busy.done()
        assert busy.result().status_code == 200


WHO_ANSWERS_SCRIPT = """
import os
import time


def model_fn(model_dir):
    first = os.environ.get("TEST_SLOW_FIRST_LOAD")
    if first:
        try:
            os.close(os.open(first, os.O_CREAT | os.O_EXCL))
            time.sleep(float(os.environ["TEST_LOAD_SECONDS"]))  # only the first worker to load
        except FileExistsError:
            pass
    return "model"


def input_fn(body, content_type):
    return float(body)


def predict_fn(seconds, model):
    time.sleep(seconds)
    return [os.getpid()]
"""


def who_answers(server: ServeProcess, seconds: float = 0.0) -> int:
    response = sleep_request(server, seconds)
    assert response.status_code == 200, response.text
    return response.json()[0]


def wait_for_worker_sockets(server: ServeProcess, workers: int) -> None:
    deadline = time.monotonic() + 30
    while not all((server.run_dir / "workers" / f"{slot}.sock").exists() for slot in range(workers)):
        assert time.monotonic() < deadline, "not every worker started listening"
        time.sleep(0.05)


def test_one_request_at_a_time_stays_on_one_worker_and_more_spread_evenly(tmp_path, serve_factory):
    """At 1 connection nginx sends every request to the same idle worker; with least_conn's round-robin
    tie-break consecutive requests alternated between workers (and vCPUs). 4 requests at once on 2
    workers are 2 each."""
    server = serve_factory(add_code(tmp_path / "m", WHO_ANSWERS_SCRIPT), {"BYOC_WORKERS": "2"})
    wait_for_worker_sockets(server, 2)
    assert len({who_answers(server) for _ in range(40)}) == 1
    with ThreadPoolExecutor(4) as pool:
        pids = list(pool.map(lambda _: who_answers(server, 1.0), range(4)))
    assert sorted(pids.count(pid) for pid in set(pids)) == [2, 2], pids
    server.assert_healthy({"data": "0", "headers": {"Content-Type": "text/csv"}})


def test_a_worker_still_loading_costs_nginx_one_failed_connect_a_second(tmp_path, serve_factory):
    """While one of two workers loads its model, nginx tries its missing socket at most once a second
    (a [crit] line each time), instead of for every other request."""
    env = {"BYOC_WORKERS": "2", "TEST_SLOW_FIRST_LOAD": str(tmp_path / "first"), "TEST_LOAD_SECONDS": "6"}
    server = serve_factory(add_code(tmp_path / "m", WHO_ANSWERS_SCRIPT), env)
    started, answered = time.monotonic(), 0
    while answered < 300 and time.monotonic() - started < 3:
        who_answers(server)
        answered += 1
    elapsed = time.monotonic() - started
    assert not (server.run_dir / "workers" / "0.sock").exists() or not (server.run_dir / "workers" / "1.sock").exists()
    failed_connects = len(re.findall(r"\[crit\].*connect\(\) to unix:\S+/workers/\d\.sock failed", server.log()))
    assert answered >= 20
    assert failed_connects <= elapsed + 1, f"{failed_connects} failed connects in {elapsed:.1f} s and {answered} requests"


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
THREADS_SCRIPT = f'''
import os


def model_fn(model_dir):
    return "no model"


def predict_fn(data, model):
    return [os.environ.get(name) for name in {THREAD_VARIABLES!r}]
'''


@pytest.mark.parametrize(
    "workers, user_set",
    [(2, {}), (1, {"OMP_NUM_THREADS": "3"})],  # on 2 cores: 1 thread per worker; 2, but the user's OMP value stays
    ids=["two_workers", "one_worker_user_omp"],
)
def test_start_up_log_shows_workers_and_threads_and_the_thread_variables_reach_the_workers(tmp_path, workers, user_set):
    from byoc_serve.config import cpu_count

    cores = cpu_count()
    intra = max(1, cores // workers)  # README: BYOC_INTRA_OP_THREADS defaults to cores ÷ workers
    server = ServeProcess(add_code(tmp_path / "m", THREADS_SCRIPT), {"BYOC_WORKERS": str(workers), **user_set})
    for name in THREAD_VARIABLES:
        if name not in user_set:
            server.env.pop(name, None)  # only what serve sets, whatever this test runner's own environment says
    try:
        server.start()
        log = server.log()
        assert re.search(rf"phase=config ok .* cores={cores} workers={workers} threads=1 intra_op_threads={intra} ", log), log
        settings = ast.literal_eval(re.search(r"byoc_serve\.serve: settings (\{.*\})", log).group(1))
        assert settings["workers"] == workers and settings["intra_op_threads"] == intra
        assert settings["model_dir"] == str(tmp_path / "m") and settings["threads"] == 1
        response = server.post("/invocations", **GOOD)
        assert response.status_code == 200, response.text
        assert response.json() == [user_set.get(name, str(intra)) for name in THREAD_VARIABLES]
    finally:
        server.stop()
