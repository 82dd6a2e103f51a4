"""A worker's per-request path in one process, for A/B-ing runtime changes without wrk's noise.

A ``LoopWorker`` (``serve``: recv, framing, route, ``Servable.invoke``, response, send) and the
python floor (``bench/python_floor.py``'s ``answer_all``) each answer the same 1-row CSV request,
as nginx sends it, over a socketpair. Each call is timed on its own; before each one the thread
sleeps ``--sleep-us``, giving up its vCPU as a worker does between requests at 1 connection, so the
call runs from the same cold caches (``--sleep-us 0`` times the hot loop). Prints the lowest of the
round medians per call and ours minus the floor. The 1-connection figure of bench/serving.py moves
by ±5 % between runs; this one by about ±2 µs. The send and recv are to the same thread, so the
cross-CPU wake-ups of a live stack (~20 µs of a request) are not in it.

    .venv/bin/python bench/worker_path.py                  # the installed byoc_serve
    PYTHONPATH=TREE/src:TREE .venv/bin/python bench/worker_path.py   # another source tree
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")  # as serve sets them for 2 workers on 2 cores

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import python_floor  # noqa: E402
import byoc_serve  # noqa: E402
from serving import csv_payload, train_model  # noqa: E402

from byoc_serve import http1  # noqa: E402
from byoc_serve.app import ModelSlot, create_app  # noqa: E402
from byoc_serve.config import Settings, load_settings  # noqa: E402
from byoc_serve.loop_worker import Connection, LoopWorker  # noqa: E402
from byoc_serve.servable import Servable  # noqa: E402


def nginx_request(body: bytes) -> bytes:
    """The request as our nginx.conf forwards a client's CSV POST to a worker."""
    head = (
        "POST /invocations HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nX-Request-Id: 0123456789abcdef0123456789abcdef\r\n"
        f"Content-Length: {len(body)}\r\nContent-Type: text/csv\r\nAccept: text/csv\r\n\r\n"
    )
    return head.encode() + body


def bare_worker(settings: Settings, slot: ModelSlot) -> LoopWorker:
    """A LoopWorker without gunicorn's arbiter: only the attributes its request path reads."""
    worker = object.__new__(LoopWorker)
    worker.wsgi = worker.route = create_app(settings, slot)
    worker.max_body = settings.max_payload_bytes
    worker.nr, worker.max_requests, worker.alive = 0, sys.maxsize, True
    return worker


def paths(model_dir: Path) -> dict[str, Callable[[socket.socket], None]]:
    """Each path answers one request waiting on its end of a socketpair."""
    settings = load_settings({"BYOC_MODEL_DIR": str(model_dir), "BYOC_PREDICT_METHOD": "predict_proba"})
    slot = ModelSlot(Servable.load(model_dir, settings))
    worker = bare_worker(settings, slot)
    connections: dict[socket.socket, Connection] = {}

    def ours(sock: socket.socket) -> None:
        conn = connections.setdefault(sock, Connection(sock, http1.RequestReader(settings.max_payload_bytes)))
        worker.serve(conn)

    def floor(sock: socket.socket) -> None:
        python_floor.answer_all(slot.servable, sock, b"")

    return {"ours": ours, "python floor": floor}


def per_call_us(answer: Callable[[socket.socket], None], request: bytes, calls: int, sleep_s: float) -> float:
    """Median µs of ``answer`` over ``calls`` requests, each sent after a sleep of ``sleep_s``."""
    client, server = socket.socketpair()
    times = []
    with client, server:
        for _ in range(calls):
            if sleep_s:
                time.sleep(sleep_s)
            client.sendall(request)
            started = time.perf_counter_ns()
            answer(server)
            times.append(time.perf_counter_ns() - started)
            client.recv(1 << 16)
    return statistics.median(times) / 1000


def check_same_answer(answers: dict[str, Callable[[socket.socket], None]], request: bytes) -> None:
    bodies = set()
    for answer in answers.values():
        client, server = socket.socketpair()
        with client, server:
            client.sendall(request)
            answer(server)
            bodies.add(client.recv(1 << 16).partition(b"\r\n\r\n")[2])
    if len(bodies) != 1:
        raise SystemExit(f"the paths answer differently: {bodies}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sleep-us", type=float, default=100.0, help="sleep before each call (default 100)")
    parser.add_argument("--calls", type=int, default=1500, help="calls per round and path (default 1500)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, the paths in turn (default 5)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="byoc-worker-path-") as work:
        model_dir = Path(work) / "model"
        train_model(model_dir)
        answers = paths(model_dir)
        request = nginx_request(csv_payload(1))
        check_same_answer(answers, request)
        gc.freeze()  # as the gunicorn master does before it forks the workers
        medians: dict[str, list[float]] = {name: [] for name in answers}
        for _ in range(args.rounds):
            for name, answer in answers.items():
                medians[name].append(per_call_us(answer, request, args.calls, args.sleep_us / 1e6))
    best = {name: min(values) for name, values in medians.items()}
    print(f"byoc_serve from {Path(byoc_serve.__file__).parent}; sleep {args.sleep_us:g} µs before each call")
    for name, values in medians.items():
        print(f"  {name:13s} {best[name]:6.1f} µs per request  (round medians {', '.join(f'{v:.1f}' for v in values)})")
    print(f"  ours - floor  {best['ours'] - best['python floor']:+6.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
