"""Fork-safe models are loaded once, before the workers fork, and shared copy-on-write."""

from __future__ import annotations

import time

import joblib
import numpy as np
import psutil
from sklearn.neighbors import KNeighborsClassifier

MIB = 1024 * 1024


def gunicorn_tree(server) -> tuple[psutil.Process, list[psutil.Process]]:
    master = next(p for p in psutil.Process(server.proc.pid).children() if "byoc_serve.workers" in " ".join(p.cmdline()))
    return master, master.children()


def serve_and_measure(serve_factory, model_dir, n_features: int) -> tuple[int, list[int]]:
    """Total PSS of the gunicorn tree and each worker's private memory, after every worker served."""
    server = serve_factory(model_dir, {"BYOC_WORKERS": "4", "BYOC_THREADS": "1"})
    deadline = time.monotonic() + 20
    while len(gunicorn_tree(server)[1]) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    for _ in range(16):
        response = server.post("/invocations", data=",".join(["0.5"] * n_features), headers={"Content-Type": "text/csv"})
        assert response.status_code == 200, response.text
    master, workers = gunicorn_tree(server)
    assert len(workers) == 4
    total_pss = sum(p.memory_full_info().pss for p in [master, *workers])
    return total_pss, [w.memory_full_info().uss for w in workers]


def test_four_workers_share_one_copy_of_a_large_model(serve_factory, tmp_path):
    rng = np.random.default_rng(0)
    small = rng.random((50, 100))
    large = rng.random((140_000, 100))  # 112 MB of training data kept inside the model
    for name, features in (("small", small), ("large", large)):
        model = KNeighborsClassifier(n_neighbors=3, algorithm="brute").fit(features, (features[:, 0] > 0.5).astype(int))
        (tmp_path / name).mkdir()
        joblib.dump(model, tmp_path / name / "model.joblib")
    model_bytes = large.nbytes
    del model, large

    baseline_pss, _ = serve_and_measure(serve_factory, tmp_path / "small", 100)
    loaded_pss, worker_uss = serve_and_measure(serve_factory, tmp_path / "large", 100)
    # Four private copies would add 4x the model; one shared copy adds about 1x.
    assert loaded_pss - baseline_pss < 1.5 * model_bytes, ((loaded_pss - baseline_pss) // MIB, model_bytes // MIB)
    assert max(worker_uss) < 0.25 * model_bytes, [u // MIB for u in worker_uss]
