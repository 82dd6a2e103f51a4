"""Multi-model endpoint benchmark: load latency, memory per model, memory returned, a Zipf workload
and one hot model's throughput.

Runs the real stack (``serve`` with SAGEMAKER_MULTI_MODEL=true: nginx, gunicorn, the model manager and
one host per model) on a loopback port with small scikit-learn models trained here, and prints one
Markdown table per measurement (the figures docs/benchmarks.md records).

    .venv/bin/python bench/mme.py            # everything (about 2 minutes on 2 cores)
    .venv/bin/python bench/mme.py --only a   # one part: a, b (with c), d or e
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import ServeProcess, scratch_root, train_sklearn_classifier  # noqa: E402

import serving  # noqa: E402  (bench/serving.py: the wrk driver)

MIB = 1024 * 1024
CSV = {"data": "0.5,1.0,-0.3,2.0", "headers": {"Content-Type": "text/csv"}}


def tree_pss(server: ServeProcess) -> int:
    """Sum of PSS over serve and every process under it: the container's memory, each page counted once."""
    total = 0
    root = psutil.Process(server.proc.pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except psutil.NoSuchProcess:
            pass
    return total


def make_models(root: Path, count: int) -> list[Path]:
    first = train_sklearn_classifier(root / "m0")
    dirs = [first]
    for i in range(1, count):  # distinct directories (SageMaker gives each model its own), same small model
        target = root / f"m{i}"
        target.mkdir()
        os.link(first / "model.joblib", target / "model.joblib")
        dirs.append(target)
    return dirs


def start(scratch: Path, env: dict[str, str] | None = None) -> ServeProcess:
    cache = tempfile.mkdtemp(prefix="cache-", dir=scratch)
    server = ServeProcess(
        env={"SAGEMAKER_MULTI_MODEL": "true", "BYOC_LOG_LEVEL": "WARNING", "BYOC_CACHE_DIR": cache, **(env or {})}
    ).start()
    # Loads wait for the manager's framework pre-import; GET /models answers during it, so poll a load.
    deadline = time.monotonic() + 30
    while "frameworks pre-imported" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    return server


def load(server: ServeProcess, name: str, url: Path) -> None:
    response = server.post("/models", json={"model_name": name, "url": str(url)})
    assert response.status_code == 200, response.text


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def part_a(models: list[Path]) -> None:
    """Load + first invoke for 20 fresh models, one after another; and DELETE."""
    server = start(models[0].parent, {"BYOC_LOG_LEVEL": "INFO"})
    try:
        firsts, loads, deletes = [], [], []
        for i, url in enumerate(models[:20]):
            started = time.perf_counter()
            load(server, f"a{i}", url)
            loaded = time.perf_counter()
            response = server.post(f"/models/a{i}/invoke", **CSV)
            assert response.status_code == 200, response.text
            firsts.append((time.perf_counter() - started) * 1000)
            loads.append((loaded - started) * 1000)
        pss_20 = tree_pss(server)
        for i in range(20):
            started = time.perf_counter()
            assert server.delete(f"/models/a{i}").status_code == 200
            deletes.append((time.perf_counter() - started) * 1000)
    finally:
        server.stop()
    print("\n### (a) Load + first invoke, 20 fresh small sklearn models (sequential)\n")
    print("| measurement | median | p90 | max |")
    print("|---|---|---|---|")
    for label, values in (("POST /models (load + warm-up)", loads), ("load + first invoke", firsts), ("DELETE /models/{name}", deletes)):
        print(f"| {label} | {statistics.median(values):.1f} ms | {percentile(values, 0.9):.1f} ms | {max(values):.1f} ms |")
    print(f"\nContainer PSS with these 20 models loaded: {pss_20 / MIB:.0f} MiB")


def part_bc(models: list[Path]) -> None:
    """Memory of 50 loaded models vs their measured footprints; memory after unloading vs before."""
    server = start(models[0].parent)
    try:
        time.sleep(0.5)
        before = tree_pss(server)
        for i, url in enumerate(models[:50]):
            load(server, f"b{i}", url)
        loaded = tree_pss(server)
        footprints = sum(server.get(f"/models/b{i}").json()["memoryBytes"] for i in range(50))
        for i in range(50):
            assert server.delete(f"/models/b{i}").status_code == 200
        time.sleep(0.5)
        after = tree_pss(server)
    finally:
        server.stop()
    print("\n### (b) 50 loaded models: container memory vs the sum of measured footprints\n")
    print("| measurement | MiB |")
    print("|---|---|")
    print(f"| container PSS before loading | {before / MIB:.0f} |")
    print(f"| container PSS with 50 models | {loaded / MIB:.0f} |")
    print(f"| growth | {(loaded - before) / MIB:.0f} |")
    print(f"| sum of the 50 measured footprints (USS per host) | {footprints / MIB:.0f} |")
    print(f"| growth per model | {(loaded - before) / 50 / MIB:.1f} |")
    print("\n### (c) After unloading all 50\n")
    print("| measurement | MiB |")
    print("|---|---|")
    print(f"| container PSS before loading | {before / MIB:.0f} |")
    print(f"| container PSS after unloading all | {after / MIB:.0f} ({(after - before) / before * 100:+.1f} %) |")


def part_d(models: list[Path], seconds: float, clients: int) -> None:
    """Zipf traffic over 200 models with room for 50 (policy lru): an invoke that misses loads the model."""
    count = 200
    probe = start(models[0].parent)
    try:
        load(probe, "probe", models[0])
        footprint = probe.get("/models/probe").json()["memoryBytes"]
    finally:
        probe.stop()
    budget_mb = footprint * 50.5 / MIB  # room for 50 freshly loaded models
    server = start(models[0].parent, {"BYOC_CACHE_POLICY": "lru", "BYOC_MEMORY_BUDGET_MB": f"{budget_mb:.2f}"})
    weights = [1 / (rank + 1) for rank in range(count)]
    stats = {"requests": 0, "hits": 0, "loads": 0, "errors": 0, "retries": 0}
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        session = requests.Session()
        while time.monotonic() < deadline:
            i = rng.choices(range(count), weights)[0]
            response = session.post(f"{server.url}/models/z{i}/invoke", **CSV)
            hit = response.status_code == 200
            loads = retries = 0
            # What SageMaker does on a miss: load, then invoke again. Another client may be loading the
            # same model (409) or an eviction may race the invoke (404): retry a few times.
            for _ in range(5):
                if response.status_code != 404:
                    break
                answer = session.post(f"{server.url}/models", json={"model_name": f"z{i}", "url": str(models[i])})
                loads += answer.status_code == 200
                if answer.status_code == 409:  # another client is loading it: give the load a moment
                    time.sleep(0.02)
                elif answer.status_code != 200:
                    with lock:
                        outcomes[f"load {answer.status_code}"] = outcomes.get(f"load {answer.status_code}", 0) + 1
                    time.sleep(0.01)
                response = session.post(f"{server.url}/models/z{i}/invoke", **CSV)
                retries += 1
            with lock:
                stats["requests"] += 1
                stats["hits"] += hit
                stats["loads"] += loads
                stats["retries"] += max(0, retries - 1)
                stats["errors"] += response.status_code != 200

    try:
        started = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        elapsed = time.monotonic() - started
        loaded_now = len(server.get("/models?limit=1000").json()["models"])
    finally:
        server.stop()
    print(f"\n### (d) Zipf (s=1) over {count} models, budget for 50 ({budget_mb:.0f} MiB), policy lru, {clients} clients, {elapsed:.0f} s\n")
    print("| measurement | value |")
    print("|---|---|")
    print(f"| requests answered | {stats['requests']} ({stats['requests'] / elapsed:.0f} req/s, misses included) |")
    print(f"| hit rate (model already loaded) | {stats['hits'] / max(1, stats['requests']) * 100:.1f} % |")
    print(f"| loads | {stats['loads']} ({stats['loads'] / elapsed * 60:.0f} per minute) |")
    print(f"| requests that did not end in 200 | {stats['errors']} |")
    print(f"| extra load/invoke rounds (a model loading for another client, or evicted in between) | {stats['retries']} |")
    if outcomes:
        print(f"| load answers other than 200/409 | {outcomes} |")
    print(f"| models loaded at the end | {loaded_now} |")


def part_e(models: list[Path], seconds: float, clients: int) -> None:
    """One hot model: requests for it overlap in its host's threads (nginx → unix socket → host)."""
    server = start(models[0].parent)
    try:
        load(server, "hot", models[0])
        host = psutil.Process(server.get("/models/hot").json()["pid"])
        done = [0] * clients
        deadline = time.monotonic() + seconds

        def client(slot: int) -> None:
            with requests.Session() as session:
                while time.monotonic() < deadline:
                    assert session.post(f"{server.url}/models/hot/invoke", **CSV).status_code == 200
                    done[slot] += 1

        cpu_before = sum(host.cpu_times()[:2])
        started = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        elapsed = time.monotonic() - started
        cpu_ms = (sum(host.cpu_times()[:2]) - cpu_before) * 1000 / sum(done)
        # The same through wrk, whose own cost per request is far below a Python client's.
        body = models[0].parent / "hot.csv"
        body.write_text(CSV["data"])
        script = serving.write_post_script(models[0].parent / "hot.lua", body)
        cpu_before = sum(host.cpu_times()[:2])
        by_wrk = serving.parse_wrk(serving.run_wrk(server.port, "/models/hot/invoke", script, clients, int(seconds)), "hot", 1, clients)
        wrk_cpu_ms = (sum(host.cpu_times()[:2]) - cpu_before) * 1000 / max(1, by_wrk.requests)
    finally:
        server.stop()
    print(f"\n### (e) One hot model, {clients} clients, {elapsed:.0f} s each\n")
    print("| client | req/s | p50 ms | p99 ms | host CPU per request | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| Python requests | {sum(done) / elapsed:.0f} | | | {cpu_ms:.2f} ms | 0 |")
    print(f"| wrk | {by_wrk.req_per_s:.0f} | {by_wrk.p50_ms:.2f} | {by_wrk.p99_ms:.2f} | {wrk_cpu_ms:.2f} ms | "
          f"{by_wrk.non_2xx + by_wrk.socket_errors} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["a", "b", "c", "d", "e"], help="run one part (b and c run together)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the Zipf run")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients in the Zipf run")
    args = parser.parse_args()
    try:
        run(args)
    finally:
        shutil.rmtree(scratch_root(), ignore_errors=True)  # every server's run dir and log


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="byoc-bench-mme-") as tmp:
        models = make_models(Path(tmp), 200)
        print(f"cores={psutil.cpu_count()} models: LogisticRegression on 4 features ({(models[0] / 'model.joblib').stat().st_size} B artifact)")
        if args.only in (None, "a"):
            part_a(models)
        if args.only in (None, "b", "c"):
            part_bc(models)
        if args.only in (None, "d"):
            part_d(models, args.seconds, args.clients)
        if args.only in (None, "e"):
            part_e(models, 10.0, args.clients)


if __name__ == "__main__":
    main()
