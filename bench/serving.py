"""Single-model serving benchmark (issue 2): our stack vs an example-style reference vs an nginx floor.

Trains a small scikit-learn classifier, starts servers on free loopback ports — our `serve` (and
the same with one worker), the reference stack in ``bench/reference_stack`` (the AWS
scikit_bring_your_own example's shape), and the floors: nginx returning a constant, nginx proxying to
one, a bare Python process (see bench/README.md) — and drives each with wrk at several concurrencies
with a 1-row and a 100-row CSV body. In the same run it measures the in-process cost of decode + predict + encode
for both stacks and our process start -> first ``/ping`` 200. Prints a table and the ratios the issue
sets targets for; ``--json FILE`` dumps every figure. Everything started here is stopped by PID.

    .venv/bin/python bench/serving.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import pickle
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
OUR_SERVE = VENV_BIN / "serve"
REFERENCE_SERVE = HERE / "reference_stack" / "serve"
N_FEATURES = 10
PAYLOAD_ROWS = (1, 100)
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 40.0
ONE_CPU = 0  # where the one-CPU segment pins wrk and every server process
OUR_AND_REFERENCE = ("ours", "ours-1-worker", "reference")  # the stacks that serve /ping and need a warm-up
LATENCY_ONLY = ("python-floor", "ours-1-worker")  # measured at 1 connection only
ROUND_STACKS = ("ours", "ours-1-worker", "nginx-constant", "python-floor")  # in the 1-connection rounds


@dataclass(frozen=True)
class Plan:
    """How long and how often to measure."""

    concurrencies: tuple[int, ...] = (1, 8, 32)
    duration_s: int = 5
    warmup_s: int = 1
    startup_repeats: int = 5
    inprocess_budget_s: float = 1.0
    latency_rounds: int = 7
    round_s: int = 2


QUICK = Plan(
    concurrencies=(1, 8, 32), duration_s=2, warmup_s=1, startup_repeats=2, inprocess_budget_s=0.3, latency_rounds=3
)


# --- the model and the payloads -------------------------------------------------------------------


def train_model(model_dir: Path) -> object:
    """A small logistic regression on synthetic data, saved as model.joblib (ours) and model.pkl (reference)."""
    import joblib
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    x, y = make_classification(n_samples=2000, n_features=N_FEATURES, n_informative=6, random_state=0)
    model = LogisticRegression(max_iter=500).fit(x, y)
    model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, model_dir / "model.joblib")
    with open(model_dir / "model.pkl", "wb") as out:
        pickle.dump(model, out)
    return model


def csv_payload(rows: int) -> bytes:
    """``rows`` lines of ten comma-separated floats, as a client would send them."""
    values = np.random.default_rng(rows).normal(size=(rows, N_FEATURES))
    return "".join(",".join(f"{v:.6f}" for v in row) + "\n" for row in values).encode()


# --- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """One server process tree started in its own session, so its group can be stopped as a whole."""

    name: str
    port: int
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    root_role: str = "supervisor"  # what the started process is called in the CPU figures
    companions: list["Server"] = field(default_factory=list)  # started before it, stopped after it
    started_at: float = 0.0
    started_wall: float = 0.0

    def start(self) -> None:
        for companion in self.companions:
            companion.start()
        log = open(self.log_path, "ab")
        self.started_at = time.perf_counter()
        self.started_wall = time.time()
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def wait_ping(self, path: str = "/ping", timeout_s: float = START_TIMEOUT_S) -> float:
        """Poll ``path`` until it answers 200; return seconds since start."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}\n{self.log_tail()}")
            if http_status("GET", self.port, path) == 200:
                return time.perf_counter() - self.started_at
            time.sleep(0.005)
        raise RuntimeError(f"{self.name} did not answer {path} 200 within {timeout_s} s\n{self.log_tail()}")

    def processes(self) -> list[psutil.Process]:
        """The live processes of this server's process group and of its companions'."""
        return [proc for companion in self.companions for proc in companion.processes()] + self.group()

    def group(self) -> list[psutil.Process]:
        """The live (non-zombie) processes of this server's own process group."""
        if self.proc is None:
            return []
        found = []
        for proc in psutil.process_iter(["pid", "status"]):
            try:
                if os.getpgid(proc.pid) == self.proc.pid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (ProcessLookupError, psutil.Error):
                continue
        return found

    def stop(self) -> None:
        """SIGTERM the server, wait for its whole group to go, SIGKILL the group after the deadline."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            self.proc.poll()
            if not self.group():
                break
            time.sleep(0.05)
        else:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=5)
        self.proc = None
        for companion in self.companions:
            companion.stop()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def http_status(method: str, port: int, path: str, body: bytes | None = None, headers: dict | None = None) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        conn.close()


def our_server(
    work: Path, model_dir: Path, name: str = "ours", serve: Path = OUR_SERVE, workers: int | None = None
) -> Server:
    port = free_port()
    run_dir = work / f"run-{name}-{port}"
    env = dict(
        os.environ,
        BYOC_MODEL_DIR=str(model_dir),
        SAGEMAKER_BIND_TO_PORT=str(port),
        BYOC_RUN_DIR=str(run_dir),
        BYOC_PREDICT_METHOD="predict_proba",
    )
    if workers is not None:
        env["BYOC_WORKERS"] = str(workers)
    return Server(name, port, [str(serve)], env, work / f"{name}-{port}.log")


def reference_server(work: Path, model_dir: Path) -> Server:
    port = free_port()
    env = dict(
        os.environ,
        REFERENCE_PORT=str(port),
        REFERENCE_RUN_DIR=str(work / f"run-reference-{port}"),
        REFERENCE_MODEL_DIR=str(model_dir),
        REFERENCE_PREDICT_METHOD="predict_proba",
        PYTHONUNBUFFERED="1",
    )
    return Server("reference", port, [sys.executable, str(REFERENCE_SERVE)], env, work / f"reference-{port}.log")


# One nginx worker, nothing logged; {servers} is the part that differs between the two floors.
NGINX_FLOOR_CONF = """\
worker_processes 1;
daemon off;
pid {run}/nginx.pid;
error_log {run}/error.log;
events {{}}
http {{
  access_log off;
  client_body_temp_path {run}/client_body;
  proxy_temp_path {run}/proxy;
  fastcgi_temp_path {run}/fastcgi;
  uwsgi_temp_path {run}/uwsgi;
  scgi_temp_path {run}/scgi;
{servers}
}}
"""

CONSTANT_LOCATION = """\
    location / {{
      default_type text/csv;
      return 200 "0.25,0.75\\n";
    }}"""

NGINX_CONSTANT_SERVERS = """\
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 6m;
%s
  }}""" % CONSTANT_LOCATION

NGINX_BACKEND_SERVERS = """\
  server {{
    listen unix:{run}/constant.sock;
%s
  }}""" % CONSTANT_LOCATION

NGINX_PROXY_SERVERS = """\
  upstream constant {{
    server unix:{backend}/constant.sock;
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 6m;
    location / {{
      proxy_pass http://constant;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}"""


def nginx_constant_server(work: Path) -> Server:
    """The floor: one nginx worker answering every request with a constant 200 (the body is not read)."""
    return _nginx_server(work, "nginx-constant", NGINX_CONSTANT_SERVERS)


def nginx_proxy_server(work: Path) -> Server:
    """The floor with our proxy hop: nginx proxies over a kept-alive unix socket to a constant answered
    by a second nginx process, i.e. what any app in its own process behind nginx costs at the least."""
    backend = _nginx_server(work, "nginx-backend", NGINX_BACKEND_SERVERS)
    proxy = _nginx_server(work, "nginx-proxy", NGINX_PROXY_SERVERS, backend=_nginx_run_dir(work, "nginx-backend"))
    proxy.companions.append(backend)
    return proxy


PYTHON_FLOOR_SERVERS = """\
  upstream python {{
    server unix:{run}/python.sock;
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 6m;
    location / {{
      proxy_pass http://python;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}"""


def python_floor_server(work: Path, model_dir: Path) -> Server:
    """The floor for any Python app behind nginx: bench/python_floor.py, one process running our
    in-process pipeline on a Content-Length-framed unix socket, nothing else."""
    server = _nginx_server(work, "python-floor", PYTHON_FLOOR_SERVERS)
    sock = work / "run-python-floor" / "python.sock"
    server.argv = [sys.executable, str(HERE / "python_floor.py"), str(sock), str(model_dir), "--", *server.argv]
    server.env.update({name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")})  # as serve sets for 2 workers on 2 cores
    server.root_role = "python floor"
    return server


def startup_floor_server(work: Path, model_dir: Path, python: Path) -> Server:
    """bench/startup_floor.py under ``python``: start, load the model, predict once, answer."""
    port = free_port()
    argv = [str(python), str(HERE / "startup_floor.py"), str(port), str(model_dir / "model.joblib")]
    env = dict(os.environ, **{name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    return Server("startup-floor", port, argv, env, work / f"startup-floor-{port}.log", root_role="startup floor")


def _nginx_run_dir(work: Path, name: str) -> Path:
    return work / f"run-{name}"


def _nginx_server(work: Path, name: str, servers: str, **fields: Path) -> Server:
    port = free_port()
    run = _nginx_run_dir(work, name)
    run.mkdir(parents=True, exist_ok=True)
    conf = run / "nginx.conf"
    conf.write_text(NGINX_FLOOR_CONF.format(run=run, port=port, servers=servers.format(run=run, port=port, **fields)))
    argv = [shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf), "-e", str(run / "error.log")]
    return Server(name, port, argv, dict(os.environ), work / f"{name}.log")


# --- wrk ------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """One wrk run against one stack."""

    stack: str
    rows: int
    connections: int
    requests: int
    duration_s: float
    req_per_s: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)
    busiest_worker_share: float | None = None  # of all gunicorn-worker CPU; 1/workers when balanced
    one_cpu: bool = False  # wrk and every process of the stack pinned to ONE_CPU
    round: int | None = None  # which of the short 1-connection rounds, or None for the main runs


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"unrecognised wrk duration {text!r}")
    return round(float(match.group(1)) * _UNITS_MS[match.group(2)], 4)


def parse_wrk(output: str, stack: str, rows: int, connections: int) -> LoadResult:
    """Read req/s, the latency distribution and the error counts from ``wrk --latency`` output."""
    percentiles = {int(p): _ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", output, re.M)}
    done = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m),", output, re.M)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if not (done and rate and len(percentiles) == 4):
        raise ValueError(f"could not parse wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return LoadResult(
        stack=stack,
        rows=rows,
        connections=connections,
        requests=int(done.group(1)),
        duration_s=_ms(done.group(2) + done.group(3)) / 1e3,
        req_per_s=float(rate.group(1)),
        p50_ms=percentiles[50],
        p75_ms=percentiles[75],
        p90_ms=percentiles[90],
        p99_ms=percentiles[99],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in socket_errors.groups()) if socket_errors else 0,
    )


def write_post_script(path: Path, body_file: Path) -> Path:
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "text/csv"\n'
        'wrk.headers["Accept"] = "text/csv"\n'
        f'local f = assert(io.open("{body_file}", "rb"))\n'
        "wrk.body = f:read(\"*a\")\n"
        "f:close()\n"
    )
    return path


def run_wrk(port: int, path: str, script: Path, connections: int, duration_s: int, cpus: set[int] | None = None) -> str:
    threads = min(connections, 2)
    argv = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--timeout", "5s",
        "--latency", "-s", str(script), f"http://127.0.0.1:{port}{path}",
    ]
    pin_wrk = None if cpus is None else functools.partial(os.sched_setaffinity, 0, cpus)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 30, check=True, preexec_fn=pin_wrk)
    return done.stdout


def pin(server: Server, cpus: set[int]) -> None:
    """Restrict every process of ``server`` (its group and its companions') to ``cpus``."""
    for proc in server.processes():
        try:
            proc.cpu_affinity(sorted(cpus))
        except psutil.Error:
            continue


def cpu_seconds(server: Server) -> dict[tuple[str, int], float]:
    """CPU seconds (user + system) used so far by each process of a server, keyed by (role, pid)."""
    totals: dict[tuple[str, int], float] = {}
    for proc in server.processes():
        try:
            times = proc.cpu_times()
            totals[(_role(proc, server), proc.pid)] = times.user + times.system
        except psutil.Error:
            continue
    return totals


def _role(proc: psutil.Process, server: Server) -> str:
    if proc.name() == "nginx":
        return "nginx"
    if proc.pid == server.proc.pid:
        return server.root_role
    return "gunicorn master" if proc.ppid() == server.proc.pid else "gunicorn worker"


def measure_load(
    server: Server, path: str, script: Path, rows: int, connections: int, plan: Plan, cpus: set[int] | None = None
) -> LoadResult:
    """A warm-up run, then a measured run; CPU used per request by each process role is recorded.
    With ``cpus``, wrk runs on those CPUs (pin the server's processes to them first)."""
    run_wrk(server.port, path, script, connections, plan.warmup_s, cpus)
    before = cpu_seconds(server)
    wrk_before = resource_children_cpu()
    output = run_wrk(server.port, path, script, connections, plan.duration_s, cpus)
    result = parse_wrk(output, server.name, rows, connections)
    result.one_cpu = cpus is not None
    after = cpu_seconds(server)
    wrk_cpu = resource_children_cpu() - wrk_before
    if result.requests:
        used = {key: seconds - before.get(key, 0.0) for key, seconds in after.items()}
        per_role: dict[str, float] = {}
        for (role, _pid), seconds in used.items():
            per_role[role] = per_role.get(role, 0.0) + seconds
        per_role["wrk"] = wrk_cpu
        result.cpu_ms_per_request = {role: round(sec * 1e3 / result.requests, 4) for role, sec in per_role.items()}
        workers = [sec for (role, _pid), sec in used.items() if role == "gunicorn worker"]
        if workers and sum(workers) > 0:
            result.busiest_worker_share = round(max(workers) / sum(workers), 2)
    return result


def resource_children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- in-process cost ------------------------------------------------------------------------------


@dataclass
class InProcessCost:
    """Per-call cost (ms) of the in-process part of one request.

    Timed in five rounds; ``median_ms`` is the lowest round median, so a burst of load from other
    processes during one round does not pass for the cost of the code.
    """

    stack: str
    rows: int
    how: str
    median_ms: float
    round_medians_ms: list[float]
    parts_ms: dict[str, float] = field(default_factory=dict)


ROUNDS = 5


def typical_ms(fn: Callable[[], object], budget_s: float) -> tuple[float, list[float]]:
    """The lowest of ``ROUNDS`` per-round median call times (ms), and all the round medians."""
    for _ in range(20):
        fn()
    medians = []
    for _ in range(ROUNDS):
        times = []
        deadline = time.perf_counter() + budget_s / ROUNDS
        while len(times) < 20 or (time.perf_counter() < deadline and len(times) < 20000):
            start = time.perf_counter_ns()
            fn()
            times.append((time.perf_counter_ns() - start) / 1e6)
        medians.append(round(statistics.median(times), 4))
    return min(medians), medians


def reference_inprocess(model: object, body: bytes, rows: int, budget_s: float) -> InProcessCost:
    """pandas read_csv + predict_proba + DataFrame.to_csv, exactly as the reference predictor does."""
    import io

    import pandas as pd

    def decode():
        return pd.read_csv(io.StringIO(body.decode("utf-8")), header=None)

    def encode(pred):
        out = io.StringIO()
        pd.DataFrame(pred).to_csv(out, header=False, index=False)
        return out.getvalue()

    frame = decode()
    pred = model.predict_proba(frame)
    parts = {
        "decode": typical_ms(decode, budget_s / 4)[0],
        "predict": typical_ms(lambda: model.predict_proba(frame), budget_s / 4)[0],
        "encode": typical_ms(lambda: encode(pred), budget_s / 4)[0],
    }
    whole, rounds = typical_ms(lambda: encode(model.predict_proba(decode())), budget_s)
    return InProcessCost("reference", rows, "pandas.read_csv + predict_proba + DataFrame.to_csv", whole, rounds, parts)


def ours_inprocess(model_dir: Path, model: object, body: bytes, rows: int, budget_s: float) -> InProcessCost:
    """Servable.invoke, the whole in-process pipeline a worker runs; parts timed with codecs + the model."""
    from byoc_serve import codecs
    from byoc_serve.config import load_settings
    from byoc_serve.servable import Invocation, Servable

    decode = lambda: codecs.decode(body, "text/csv")  # noqa: E731
    data = decode()
    pred = model.predict_proba(data)
    parts = {
        "decode": typical_ms(decode, budget_s / 4)[0],
        "predict": typical_ms(lambda: model.predict_proba(data), budget_s / 4)[0],
        "encode": typical_ms(lambda: codecs.encode(pred, "text/csv"), budget_s / 4)[0],
    }
    settings = load_settings({"BYOC_MODEL_DIR": str(model_dir), "BYOC_PREDICT_METHOD": "predict_proba"})
    servable = Servable.load(model_dir, settings)
    request = Invocation(body, "text/csv", accept="text/csv")
    whole, rounds = typical_ms(lambda: servable.invoke(request), budget_s)
    return InProcessCost("ours", rows, "Servable.invoke (negotiate + decode + predict_proba + encode)", whole, rounds, parts)


# --- start-up -------------------------------------------------------------------------------------


@dataclass
class Startup:
    """Process start -> first /ping 200, and when each logged start-up phase ended (ours only)."""

    stack: str
    seconds: list[float]
    phase_done_at_s: dict[str, float] = field(default_factory=dict)  # medians over the repeats


_PHASE_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?\bphase=([\w-]+)", re.M)


def phase_offsets(server: Server) -> dict[str, float]:
    """Seconds from process start to the first ``phase=NAME`` line of the server's log."""
    offsets: dict[str, float] = {}
    for stamp, name in _PHASE_LINE.findall(server.log_path.read_text(errors="replace")):
        at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        offsets.setdefault(name, round(at - server.started_wall, 3))
    return offsets


def measure_startup(work: Path, model_dir: Path, makers: dict[str, Callable[[Path, Path], Server]], repeats: int) -> list[Startup]:
    """``repeats`` fresh starts of each stack (alternating), timed from process start to the first /ping 200."""
    seconds: dict[str, list[float]] = {name: [] for name in makers}
    phases: dict[str, list[dict[str, float]]] = {name: [] for name in makers}
    for _ in range(repeats):
        for name, make in makers.items():
            server = make(work, model_dir)
            server.start()
            try:
                seconds[name].append(round(server.wait_ping(), 4))
            finally:
                server.stop()
            phases[name].append(phase_offsets(server))
    results = []
    for name in makers:
        common = [phase for phase in phases[name][0] if all(phase in p for p in phases[name])]
        medians = {phase: round(statistics.median(p[phase] for p in phases[name]), 3) for phase in common}
        results.append(Startup(name, seconds[name], medians))
    return results


# --- the report -----------------------------------------------------------------------------------


def ratios(loads: list[LoadResult], costs: list[InProcessCost], startup: list[Startup]) -> dict:
    """The figures the issue sets targets for, from results measured in this run."""
    def load(stack: str, rows: int, c: int, one_cpu: bool = False, in_round: int | None = None) -> LoadResult | None:
        key = (stack, rows, c, one_cpu, in_round)
        return next((r for r in loads if (r.stack, r.rows, r.connections, r.one_cpu, r.round) == key), None)

    def cost(stack: str, rows: int) -> InProcessCost | None:
        return next((x for x in costs if (x.stack, x.rows) == (stack, rows)), None)

    out: dict = {}
    for rows in PAYLOAD_ROWS:
        ours8, ref8 = load("ours", rows, 8), load("reference", rows, 8)
        ours1, ref1, floor1 = load("ours", rows, 1), load("reference", rows, 1), load("nginx-constant", rows, 1)
        ours_cost, ref_cost = cost("ours", rows), cost("reference", rows)
        entry: dict = {}
        if ours8 and ref8 and ref8.req_per_s and ref8.p99_ms:
            entry["ours_over_reference_req_per_s_c8"] = round(ours8.req_per_s / ref8.req_per_s, 2)
            entry["ours_over_reference_p99_c8"] = round(ours8.p99_ms / ref8.p99_ms, 3)
        if ours1 and floor1 and ours_cost:
            bound = floor1.p50_ms + ours_cost.median_ms
            entry["ours_p50_c1_ms"] = ours1.p50_ms
            entry["floor_plus_inprocess_ms"] = round(bound, 4)
            entry["ours_p50_c1_over_floor_plus_inprocess"] = round(ours1.p50_ms / bound, 2)
            entry["ours_p50_c1_over_inprocess"] = round(ours1.p50_ms / ours_cost.median_ms, 1)
        proxy1 = load("nginx-proxy", rows, 1)
        if ours1 and proxy1 and ours_cost:
            # Not a target: the same ratio against the floor with nginx's proxy hop in it.
            bound = proxy1.p50_ms + ours_cost.median_ms
            entry["proxy_floor_plus_inprocess_ms"] = round(bound, 4)
            entry["ours_p50_c1_over_proxy_floor_plus_inprocess"] = round(ours1.p50_ms / bound, 2)
        python1 = load("python-floor", rows, 1)
        if ours1 and python1 and floor1 and ours_cost and not (python1.non_2xx or python1.socket_errors):
            # Not targets: what the least Python app behind nginx reaches, and what we add to it.
            entry["python_floor_p50_c1_over_floor_plus_inprocess"] = round(python1.p50_ms / (floor1.p50_ms + ours_cost.median_ms), 2)
            entry["ours_p50_c1_over_python_floor"] = round(ours1.p50_ms / python1.p50_ms, 2)
        single1 = load("ours-1-worker", rows, 1)
        if ours1 and single1 and floor1 and ours_cost:
            # Not a target: nginx sends consecutive requests to alternate idle workers, often on the other CPU.
            entry["one_worker_p50_c1_over_floor_plus_inprocess"] = round(single1.p50_ms / (floor1.p50_ms + ours_cost.median_ms), 2)
            entry["ours_p50_c1_over_one_worker"] = round(ours1.p50_ms / single1.p50_ms, 2)
        if ref1 and ref_cost:
            entry["reference_p50_c1_over_inprocess"] = round(ref1.p50_ms / ref_cost.median_ms, 1)
        ours_one, floor_one = load("ours", rows, 1, one_cpu=True), load("nginx-constant", rows, 1, one_cpu=True)
        if ours_one and floor_one and ours_cost:
            # Not a target: the ratio with no wake-up crossing between CPUs, for ours and the python floor.
            bound = floor_one.p50_ms + ours_cost.median_ms
            entry["one_cpu_ours_p50_c1_over_floor_plus_inprocess"] = round(ours_one.p50_ms / bound, 2)
            python_one = load("python-floor", rows, 1, one_cpu=True)
            if python_one:
                entry["one_cpu_python_floor_p50_c1_over_floor_plus_inprocess"] = round(python_one.p50_ms / bound, 2)
        rounds = sorted({r.round for r in loads if r.round is not None and r.rows == rows})
        if rounds and ours_cost:
            # The target ratio per round, each from stacks measured seconds apart; the median is the steadier figure.
            def per_round(stack: str) -> list[float]:
                figures = []
                for k in rounds:
                    served, floor = load(stack, rows, 1, in_round=k), load("nginx-constant", rows, 1, in_round=k)
                    if served and floor and not (served.non_2xx or served.socket_errors):
                        figures.append(round(served.p50_ms / (floor.p50_ms + ours_cost.median_ms), 2))
                return figures

            for stack, name in (("ours", "ours"), ("ours-1-worker", "one_worker"), ("python-floor", "python_floor")):
                figures = per_round(stack)
                if figures:
                    entry[f"{name}_p50_c1_over_floor_plus_inprocess_median_of_rounds"] = round(statistics.median(figures), 2)
                    entry[f"{name}_p50_c1_over_floor_plus_inprocess_rounds"] = figures
        out[f"{rows}-row"] = entry
    for start in startup:
        out[f"{start.stack}_start_to_ping_median_s"] = round(statistics.median(start.seconds), 3)
    if "ours_start_to_ping_median_s" in out and "startup-floor_start_to_ping_median_s" in out:
        # Not a target: what our start-up adds to the least a Python process serving this model does.
        out["ours_start_over_startup_floor"] = round(
            out["ours_start_to_ping_median_s"] / out["startup-floor_start_to_ping_median_s"], 2
        )
    return out


TARGETS = {
    "ours_over_reference_req_per_s_c8": (">=", 3.0),
    "ours_over_reference_p99_c8": ("<=", 0.5),
    "ours_p50_c1_over_floor_plus_inprocess": ("<=", 1.5),
    "ours_p50_c1_over_floor_plus_inprocess_median_of_rounds": ("<=", 1.5),
}


def print_load(result: LoadResult) -> None:
    where = " one CPU" if result.one_cpu else "" if result.round is None else f" round {result.round}"
    print(
        f"  {result.stack:<15} {result.rows:>3}-row c={result.connections:<3}{where} {result.req_per_s:>9.0f} req/s "
        f"p50 {result.p50_ms:.2f} ms p99 {result.p99_ms:.2f} ms",
        flush=True,
    )


def print_report(loads: list[LoadResult], costs: list[InProcessCost], summary: dict) -> None:
    print()
    print(
        f"{'stack':<15} {'payload':>8} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
        f"{'busiest':>7}  cpu ms/request by process"
    )
    for r in loads:
        cpu = ", ".join(f"{k} {v:.3f}" for k, v in sorted(r.cpu_ms_per_request.items()) if v >= 0.001)
        share = "" if r.busiest_worker_share is None else f"{r.busiest_worker_share:.2f}"
        print(
            f"{r.stack:<15} {f'{r.rows}-row':>8} {r.connections:>5} {r.req_per_s:>9.0f} {r.p50_ms:>8.2f} "
            f"{r.p99_ms:>8.2f} {r.non_2xx + r.socket_errors:>6} {share:>7}  {cpu}" + ("  (one CPU)" if r.one_cpu else "")
            + ("" if r.round is None else f"  (round {r.round})")
        )
    print()
    print(f"in-process cost (ms per call: lowest of {ROUNDS} round medians; the round medians; parts)")
    for c in costs:
        parts = ", ".join(f"{k} {v:.4f}" for k, v in c.parts_ms.items())
        print(f"  {c.stack:<10} {f'{c.rows}-row':>8}  {c.median_ms:.4f}  {c.round_medians_ms}  [{parts}]  via {c.how}")
    print()
    print("ratios (measured in this run)")
    for key, value in summary.items():
        if isinstance(value, dict):
            for name, figure in value.items():
                verdict = ""
                if name in TARGETS and key == "1-row":
                    op, bound = TARGETS[name]
                    met = figure >= bound if op == ">=" else figure <= bound
                    verdict = f"   target {op} {bound}: {'met' if met else 'MISSED'}"
                print(f"  {key:<7} {name:<56} {figure}{verdict}")
        else:
            verdict = f"   target <= 1.0: {'met' if value <= 1.0 else 'MISSED'}" if key == "ours_start_to_ping_median_s" else ""
            print(f"  {key:<50} {value}{verdict}")


# --- main -----------------------------------------------------------------------------------------


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0],
    }


def warm(server: Server, path: str, scripts: dict[int, Path]) -> None:
    """Bring every worker past its first-request cost (lazy model load, first pandas call)."""
    for script in scripts.values():
        run_wrk(server.port, path, script, 8, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (2 s each, 2 start-up repeats)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--startup-serve", type=Path, default=OUR_SERVE,
                        help="our `serve` for the start-up timing, e.g. from a venv with only the sklearn extra "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    for serve in {OUR_SERVE, args.startup_serve}:
        if not serve.exists():
            parser.error(f"{serve} not found: install the project into that venv first")

    work = Path(tempfile.mkdtemp(prefix="byoc-bench-"))
    work.chmod(0o755)  # nginx workers started as root run as an unprivileged user and must reach the sockets
    model_dir = work / "model"
    model = train_model(model_dir)
    bodies = {rows: csv_payload(rows) for rows in PAYLOAD_ROWS}
    scripts = {}
    for rows, body in bodies.items():
        (work / f"body-{rows}.csv").write_bytes(body)
        scripts[rows] = write_post_script(work / f"post-{rows}.lua", work / f"body-{rows}.csv")
    info = machine()
    info["startup_serve"] = str(args.startup_serve)
    print(f"work dir {work}; {info['cpus']} CPUs, load average {info['load_average_at_start']}")

    costs = []
    for rows, body in bodies.items():
        costs.append(ours_inprocess(model_dir, model, body, rows, plan.inprocess_budget_s))
        costs.append(reference_inprocess(model, body, rows, plan.inprocess_budget_s))

    ours_lean = functools.partial(our_server, serve=args.startup_serve)
    # The floor runs on the interpreter of the `serve` being timed: the same packages to import.
    floor = functools.partial(startup_floor_server, python=args.startup_serve.with_name("python"))
    makers = {"ours": ours_lean, "reference": reference_server, "startup-floor": floor}
    startup = measure_startup(work, model_dir, makers, plan.startup_repeats)
    for start in startup:
        phases = ", ".join(f"{name} +{at:.2f}" for name, at in start.phase_done_at_s.items())
        print(f"{start.stack}: process start -> /ping 200: {start.seconds} s" + (f" (phases done at s: {phases})" if phases else ""))

    servers = {
        "ours": our_server(work, model_dir),
        # Not a target: the same stack with one worker, so 1 connection never alternates between workers.
        "ours-1-worker": our_server(work, model_dir, name="ours-1-worker", workers=1),
        "reference": reference_server(work, model_dir),
        "nginx-constant": nginx_constant_server(work),
        "nginx-proxy": nginx_proxy_server(work),
        "python-floor": python_floor_server(work, model_dir),
    }
    loads: list[LoadResult] = []
    try:
        for server in servers.values():
            server.start()
        for name, server in servers.items():
            server.wait_ping("/ping" if name in OUR_AND_REFERENCE else "/")
        for name, server in servers.items():
            if name in OUR_AND_REFERENCE:
                warm(server, "/invocations", scripts)
        # Interleave the stacks per configuration so machine noise hits them alike.
        for rows in PAYLOAD_ROWS:
            for connections in plan.concurrencies:
                for name, server in servers.items():
                    if name in LATENCY_ONLY and connections != 1:
                        continue  # one process or one worker: compared for latency, not throughput
                    loads.append(measure_load(server, "/invocations", scripts[rows], rows, connections, plan))
                    print_load(loads[-1])
        # 1 row at 1 connection again, in short rounds through the stacks in turn: one run per stack
        # differed by up to 7 % between two stacks doing the same work (run 21, ours and ours-1-worker).
        round_plan = replace(plan, duration_s=plan.round_s)
        for k in range(plan.latency_rounds):
            for name in ROUND_STACKS:
                result = measure_load(servers[name], "/invocations", scripts[1], 1, 1, round_plan)
                result.round = k
                loads.append(result)
                print_load(result)
        # Last, as it leaves the servers pinned: 1 connection with wrk and every server on one CPU, so
        # no request waits for a sleeping CPU to be woken (what the run above pays on every hop).
        for name, server in servers.items():
            if name == "ours-1-worker":
                continue  # on one CPU, alternating workers cost no wake-up across CPUs
            pin(server, {ONE_CPU})
            loads.append(measure_load(server, "/invocations", scripts[1], 1, 1, plan, cpus={ONE_CPU}))
            print_load(loads[-1])
    finally:
        for server in servers.values():
            server.stop()

    summary = ratios(loads, costs, startup)
    print_report(loads, costs, summary)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "plan": asdict(plan),
                    "load": [asdict(r) for r in loads],
                    "in_process": [asdict(c) for c in costs],
                    "startup": [asdict(x) for x in startup],
                    "ratios": summary,
                },
                indent=2,
            )
        )
        print(f"figures written to {args.json}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
