"""Deep-learning serving benchmark (issue 4): PyTorch and TensorFlow models served vs called in-process.

For a TorchScript MLP, a torch.export MLP, a Keras MLP and a SavedModel MLP (64 features → 256 → 256 → 10)
it measures, in one run:

- framework: the bare framework call on a ready tensor (torch module / keras predict_on_batch / signature),
- pipeline: byoc_serve's in-process decode → predict → encode (``Servable.invoke``) on a JSON body,
- served: sequential POST /invocations latency through the real ``serve`` (nginx + gunicorn, 2 workers),
- throughput: wrk req/s at 4 connections (when wrk is installed),

for 1-row and 64-row JSON bodies, and prints median latencies and the served ÷ in-process ratios.
Thread settings match the served workers (intra-op threads = cores ÷ workers).

``--memory`` instead measures each handler's memory factor (RSS growth over artifact size after load and
one prediction, each in a fresh process with the framework already imported and initialised).

    .venv/bin/python bench/dl.py [--quick] [--json FILE]
    .venv/bin/python bench/dl.py --memory
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FEATURES, HIDDEN, CLASSES = 64, 256, 10
WORKERS = 2
SERVE = str(Path(sys.executable).with_name("serve"))


# --- models ---------------------------------------------------------------------------------------


def torch_mlp(hidden: int = HIDDEN):
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, CLASSES), torch.nn.Softmax(dim=-1),
    ).eval()


def keras_mlp(hidden: int = HIDDEN):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((FEATURES,), name="x")
    x = keras.layers.Dense(hidden, activation="relu")(inputs)
    x = keras.layers.Dense(hidden, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(x))


def build(kind: str, model_dir: Path, hidden: int = HIDDEN) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    if kind == "torchscript":
        import torch

        torch.jit.save(torch.jit.script(torch_mlp(hidden)), str(model_dir / "model.pt"))
    elif kind == "torch_export":
        import torch

        program = torch.export.export(
            torch_mlp(hidden), (torch.zeros(2, FEATURES),), dynamic_shapes=({0: torch.export.Dim("batch")},)
        )
        torch.export.save(program, str(model_dir / "model.pt2"))
    elif kind == "keras":
        keras_mlp(hidden).save(model_dir / "model.keras")
    elif kind == "saved_model":
        keras_mlp(hidden).export(str(model_dir / "1"), verbose=False)
    elif kind == "onnx":
        import torch

        torch.onnx.export(torch_mlp(hidden), (torch.zeros(1, FEATURES),), str(model_dir / "model.onnx"),
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    else:
        raise ValueError(kind)


def pin_tensorflow_threads() -> None:
    """Give this process the served workers' TF thread pools before building a model starts the TF runtime."""
    import tensorflow as tf

    threads = max(1, (os.cpu_count() or 1) // WORKERS)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def framework_call(kind: str, model_dir: Path, rows: np.ndarray) -> Callable[[], Any]:
    """The bare framework call on a ready input, with the served workers' thread settings."""
    threads = max(1, (os.cpu_count() or 1) // WORKERS)
    if kind.startswith("torch"):
        import torch

        torch.set_num_threads(threads)
        module = torch.jit.load(str(model_dir / "model.pt")) if kind == "torchscript" else torch.export.load(str(model_dir / "model.pt2")).module()
        tensor = torch.from_numpy(rows)

        def call() -> Any:
            with torch.inference_mode():
                return module(tensor)

        return call
    import tensorflow as tf

    if kind == "keras":
        import keras

        model = keras.models.load_model(model_dir / "model.keras", compile=False)
        return lambda: model.predict_on_batch(rows)
    signature = tf.saved_model.load(str(model_dir / "1")).signatures["serving_default"]
    tensor = tf.constant(rows)
    return lambda: signature(x=tensor)


# --- measuring ------------------------------------------------------------------------------------


def median_ms(call: Callable[[], Any], budget_s: float, max_calls: int = 5000) -> float:
    for _ in range(5):
        call()
    times = []
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline and len(times) < max_calls:
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A real ``serve`` on a free loopback port, stopped by PID."""

    def __init__(self, model_dir: Path, work: Path):
        self.port = free_port()
        self.log = (work / f"serve-{self.port}.log").open("wb")
        env = {**os.environ, "SAGEMAKER_BIND_TO_PORT": str(self.port), "BYOC_MODEL_DIR": str(model_dir),
               "BYOC_RUN_DIR": str(work / f"run-{self.port}"), "BYOC_WORKERS": str(WORKERS), "BYOC_LOG_LEVEL": "WARNING"}
        self.proc = subprocess.Popen([SERVE], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.status("GET", "/ping") == 200:
                break
            time.sleep(0.1)
        else:
            self.stop()
            raise TimeoutError(f"serve did not become ready:\n{self.log_tail()}")
        self.wait_all_workers()

    def wait_all_workers(self) -> None:
        # /ping is 200 once one worker loaded; give the others the same chance before measuring.
        for _ in range(WORKERS * 4):
            self.status("POST", "/invocations", b"[" + b"0," * (FEATURES - 1) + b"0]", {"Content-Type": "application/json"})
        time.sleep(3)

    def status(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> int | None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            conn.request(method, path, body=body, headers=headers or {})
            status = conn.getresponse().status
            conn.close()
            return status
        except OSError:
            return None

    def log_tail(self) -> str:
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-20:])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def served_call(port: int, body: bytes) -> Callable[[], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}

    def call() -> Any:
        conn.request("POST", "/invocations", body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
        return data

    return call


def wrk_rps(port: int, body: bytes, work: Path, duration_s: int) -> float | None:
    if shutil.which("wrk") is None:
        return None
    body_file = work / f"body-{len(body)}.json"
    body_file.write_bytes(body)
    script = work / f"post-{len(body)}.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'local f = io.open("{body_file}", "rb")\nwrk.body = f:read("*a")\nf:close()\n'
    )
    out = subprocess.run(["wrk", "-t2", "-c4", f"-d{duration_s}s", "-s", str(script), f"http://127.0.0.1:{port}/invocations"],
                         capture_output=True, text=True, timeout=duration_s + 30).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return float(out.split("Requests/sec:")[1].split()[0])


def bench_kind(kind: str, work: Path, budget_s: float, wrk_s: int) -> list[dict]:
    from byoc_serve.config import Settings
    from byoc_serve.servable import Invocation, Servable

    model_dir = work / kind
    build(kind, model_dir)
    settings = Settings(workers=WORKERS, intra_op_threads=max(1, (os.cpu_count() or 1) // WORKERS))
    servable = Servable.load(model_dir, settings)
    rows_out = []
    server = Served(model_dir, work)
    try:
        for n in (1, 64):
            rows = np.random.default_rng(n).random((n, FEATURES), dtype=np.float32)
            body = json.dumps(rows.tolist()).encode()
            request = Invocation(body, "application/json", "application/json")
            result = {
                "model": kind,
                "rows": n,
                "framework_ms": median_ms(framework_call(kind, model_dir, rows), budget_s),
                "pipeline_ms": median_ms(lambda: servable.invoke(request), budget_s),
                "served_ms": median_ms(served_call(server.port, body), budget_s),
                "served_rps_c4": wrk_rps(server.port, body, work, wrk_s),
            }
            result["served_over_pipeline"] = result["served_ms"] / result["pipeline_ms"]
            result["served_over_framework"] = result["served_ms"] / result["framework_ms"]
            rows_out.append(result)
            print_row(result)
    finally:
        server.stop()
    return rows_out


def print_row(r: dict) -> None:
    rps = f"{r['served_rps_c4']:8.0f}" if r["served_rps_c4"] is not None else "       -"
    print(f"{r['model']:<13} {r['rows']:>4} {r['framework_ms']:>10.3f} {r['pipeline_ms']:>11.3f} {r['served_ms']:>9.3f} "
          f"{r['served_over_pipeline']:>8.2f}x {r['served_over_framework']:>8.2f}x {rps}", flush=True)


# --- memory factor --------------------------------------------------------------------------------

MEMORY_PROBE = r"""
import os, sys, json, gc
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np, psutil
from pathlib import Path
from byoc_serve.config import Settings
from model_handlers.base import Context, artifact_bytes
kind, model_dir, warm_dir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
from byoc_serve.selection import select_handler
settings = Settings(workers=2, intra_op_threads=1)
rows = np.zeros((1, %d), np.float32)
# Initialise the framework with a tiny model of the same kind, so only the model's own memory is counted.
warm = select_handler(warm_dir, settings)
warm.predict(warm.load(warm_dir, Context(warm_dir, settings)), rows, Context(warm_dir, settings))
gc.collect()
def peak():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
before = psutil.Process().memory_info().rss
peak_before = peak()
handler = select_handler(model_dir, settings)
model = handler.load(model_dir, Context(model_dir, settings))
handler.predict(model, rows, Context(model_dir, settings))
gc.collect()
grown = psutil.Process().memory_info().rss - before
peak_grown = peak() - peak_before
size = artifact_bytes(model_dir)
print(json.dumps({"kind": kind, "handler": handler.name, "artifact_mb": size / 2**20, "rss_growth_mb": grown / 2**20,
                  "peak_growth_mb": peak_grown / 2**20, "factor": grown / size, "peak_factor": peak_grown / size}))
""" % FEATURES


def measure_memory(work: Path) -> list[dict]:
    results = []
    print(f"{'artifact':<13} {'handler':<11} {'size MB':>8} {'RSS +MB':>8} {'peak +MB':>8} {'factor':>7} {'peak':>6}")
    for kind, hidden in [(k, h) for h in (1024, 2048) for k in ("torchscript", "torch_export", "keras", "saved_model", "onnx")]:
        big, tiny = work / f"{kind}-{hidden}", work / f"{kind}-8"
        build(kind, big, hidden=hidden)
        if not tiny.exists():
            build(kind, tiny, hidden=8)
        out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, kind, str(big), str(tiny)],
                             capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['kind']:<13} {r['handler']:<11} {r['artifact_mb']:>8.1f} {r['rss_growth_mb']:>8.1f} "
              f"{r['peak_growth_mb']:>8.1f} {r['factor']:>7.2f} {r['peak_factor']:>6.2f}", flush=True)
        results.append(r)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter measurements (a smoke run)")
    parser.add_argument("--memory", action="store_true", help="measure the handlers' memory factors instead")
    parser.add_argument("--models", default="torchscript,torch_export,keras,saved_model")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-dl-"))
    work.chmod(0o755)  # nginx workers (another user when run as root) must reach the run dir inside it
    try:
        if args.memory:
            results = measure_memory(work)
        else:
            budget, wrk_s = (1.0, 3) if args.quick else (4.0, 10)
            pin_tensorflow_threads()
            print(f"cores={os.cpu_count()} workers={WORKERS} MLP {FEATURES}->{HIDDEN}->{HIDDEN}->{CLASSES}, JSON bodies; median ms")
            print(f"{'model':<13} {'rows':>4} {'framework':>10} {'in-process':>11} {'served':>9} {'÷in-proc':>9} {'÷framework':>9} {'req/s c4':>8}")
            results = [r for kind in args.models.split(",") for r in bench_kind(kind, work, budget, wrk_s)]
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
