"""Memory: each model once per container, unloads give it back, admission is truthful (507 before loading),
and the lru policy evicts idle models in order, never a busy one."""

from __future__ import annotations

import threading
import time

from mme_support import CSV, MIB, assert_healthy, http_workers, load, sklearn_model, tree, tree_pss, user_code_model, wait_for

BALLAST_MB = 40  # per model in the budget tests: measured ~49 MiB per host, estimated 80 MiB (2 × artifact)


def tree_rss(server) -> int:
    return sum(p.memory_info().rss for p in tree(server))


def test_load_that_does_not_fit_gets_507_before_anything_is_loaded(mme_factory, tmp_path):
    server = mme_factory(BYOC_MEMORY_BUDGET_MB="48")
    load(server, "small", sklearn_model(tmp_path / "small"))
    big = sklearn_model(tmp_path / "big", ballast_mb=32)  # estimate 2 × 32 MiB > 48 MiB
    processes, pss = set(server.child_pids()), tree_pss(server)
    response = server.post("/models", json={"model_name": "big", "url": str(big)})
    assert response.status_code == 507, response.text
    body = response.json()
    assert body["type"] == "insufficient_memory" and body["model"] == "big" and "MiB" in body["error"]
    # Refused on the estimate alone: no process was started, the model was never read.
    assert set(server.child_pids()) == processes
    assert "model=big" not in server.log().replace("name=big", "")
    assert tree_pss(server) - pss < 8 * MIB
    assert server.get("/models/big").status_code == 404
    assert_healthy(server, "small")


def test_delete_gives_the_memory_back(mme_factory, tmp_path):
    server = mme_factory()
    # One load/unload cycle first, so one-time allocations in the workers and the manager are done.
    load(server, "warm", sklearn_model(tmp_path / "warm"))
    assert server.delete("/models/warm").status_code == 200
    time.sleep(0.3)
    before_pss, before_rss = tree_pss(server), tree_rss(server)
    load(server, "heavy", sklearn_model(tmp_path / "heavy", ballast_mb=64))
    assert server.post("/models/heavy/invoke", **CSV).status_code == 200
    loaded_pss = tree_pss(server)
    assert loaded_pss - before_pss > 56 * MIB
    started = time.perf_counter()
    assert server.delete("/models/heavy").status_code == 200
    delete_seconds = time.perf_counter() - started
    after_pss, after_rss = tree_pss(server), tree_rss(server)
    assert abs(after_pss - before_pss) < 6 * MIB, ((after_pss - before_pss) / MIB)
    assert abs(after_rss - before_rss) < 6 * MIB, ((after_rss - before_rss) / MIB)
    assert delete_seconds < 2.0


def test_four_http_workers_and_ten_models_hold_each_model_once(mme_factory, tmp_path):
    server = mme_factory(BYOC_WORKERS="4")
    wait_for(lambda: len(http_workers(server)) == 4, timeout=20)
    ballast = 16 * MIB
    names = [f"once-{i}" for i in range(10)]
    models = [sklearn_model(tmp_path / name, ballast_mb=16, seed=i) for i, name in enumerate(names)]
    before = tree_pss(server)
    for name, model in zip(names, models):
        load(server, name, model)
    for name in names * 2:
        assert server.post(f"/models/{name}/invoke", **CSV).status_code == 200
    for _ in range(20):  # every worker has served management requests by now
        assert server.get("/models").status_code == 200
    hosts = {server.get(f"/models/{name}").json()["pid"] for name in names}
    private = {p.pid: p.memory_full_info().uss for p in tree(server)}
    assert len(hosts) == 10 and all(private[h] >= ballast for h in hosts), {h: private[h] // MIB for h in hosts}
    workers = [w.pid for w in http_workers(server)]
    assert len(workers) == 4 and all(private[w] < ballast / 2 for w in workers), {w: private[w] // MIB for w in workers}
    # Ten models' worth once (plus ~10 MiB of host per model), not once per worker: 4 copies would add 640 MiB.
    growth = tree_pss(server) - before
    assert 10 * ballast < growth < 10 * (ballast + 14 * MIB), growth // MIB


def test_sagemaker_policy_never_evicts_and_answers_507(mme_factory, tmp_path):
    server = mme_factory(BYOC_MEMORY_BUDGET_MB="150")
    for name in ("keep-a", "keep-b"):
        load(server, name, sklearn_model(tmp_path / name, ballast_mb=BALLAST_MB))
    response = server.post("/models", json={"model_name": "third", "url": str(sklearn_model(tmp_path / "third", ballast_mb=BALLAST_MB))})
    assert response.status_code == 507
    assert sorted(m["modelName"] for m in server.get("/models").json()["models"]) == ["keep-a", "keep-b"]
    assert_healthy(server, "keep-a")
    # SageMaker's answer to a 507: DELETE a model and load again.
    assert server.delete("/models/keep-a").status_code == 200
    load(server, "third", tmp_path / "third")
    assert_healthy(server, "third")


def test_lru_evicts_the_least_recently_used_idle_model_and_never_a_busy_one(mme_factory, tmp_path):
    server = mme_factory(BYOC_MEMORY_BUDGET_MB="150", BYOC_CACHE_POLICY="lru")
    models = {name: user_code_model(tmp_path / name, name, ballast_mb=BALLAST_MB) for name in "abcde"}
    load(server, "a", models["a"])
    load(server, "b", models["b"])
    assert server.post("/models/a/invoke", **CSV).status_code == 200  # a is now more recent than b
    load(server, "c", models["c"])  # room for two: b, the least recently used, goes
    assert loaded(server) == ["a", "c"]
    assert "model evicted name=b" in server.log()

    # a is now the least recently used, but busy: c (idle) goes instead, and a's request completes.
    assert server.post("/models/c/invoke", **CSV).status_code == 200
    slow = slow_request(server, "a", seconds=3)
    wait_for(lambda: server.get("/models/a").json()["inFlight"] == 1)
    load(server, "d", models["d"])
    assert loaded(server) == ["a", "d"]
    slow.join(timeout=15)
    assert slow.status == 200

    # Everything busy: nothing can be evicted, so the load is refused and nothing was touched.
    busy = [slow_request(server, name, seconds=3) for name in ("a", "d")]
    wait_for(lambda: all(server.get(f"/models/{n}").json()["inFlight"] == 1 for n in ("a", "d")))
    response = server.post("/models", json={"model_name": "e", "url": str(models["e"])})
    assert response.status_code == 507 and "busy" in response.json()["error"]
    for request in busy:
        request.join(timeout=15)
        assert request.status == 200
    assert loaded(server) == ["a", "d"]
    assert_healthy(server, "d")


def test_lru_refuses_a_model_larger_than_the_whole_budget_without_evicting(mme_factory, tmp_path):
    server = mme_factory(BYOC_MEMORY_BUDGET_MB="150", BYOC_CACHE_POLICY="lru")
    load(server, "resident", sklearn_model(tmp_path / "resident"))
    huge = sklearn_model(tmp_path / "huge", ballast_mb=100)  # estimate 200 MiB
    response = server.post("/models", json={"model_name": "huge", "url": str(huge)})
    assert response.status_code == 507 and "larger than the whole budget" in response.json()["error"]
    assert loaded(server) == ["resident"]
    assert_healthy(server, "resident")


def loaded(server) -> list[str]:
    return sorted(m["modelName"] for m in server.get("/models").json()["models"])


class slow_request(threading.Thread):
    """An invoke that keeps the model busy for ``seconds``."""

    def __init__(self, server, name: str, seconds: float):
        super().__init__(daemon=True)
        self.server, self.model, self.seconds, self.status = server, name, seconds, None
        self.start()

    def run(self) -> None:
        import requests

        headers = {**CSV["headers"], "X-Amzn-SageMaker-Custom-Attributes": f"sleep={self.seconds}"}
        self.status = requests.post(f"{self.server.url}/models/{self.model}/invoke", data=CSV["data"], headers=headers, timeout=30).status_code
