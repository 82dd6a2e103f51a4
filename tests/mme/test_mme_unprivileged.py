"""Multi-model mode works as an ordinary user: manager, hosts and their sockets, the disk cache."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from harness import NOBODY, SERVE, as_nobody, free_port, scratch_dir, wait_for_ping
from mme_support import CSV, sklearn_model, tarball


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_multi_model_serve_runs_as_an_unprivileged_user():
    base = scratch_dir("mme-nobody-")
    os.chmod(base, 0o755)
    model = sklearn_model(base / "model")
    archive = tarball(model, base / "model.tar.gz")
    for path in (model, *model.iterdir(), archive):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    os.mkdir(base / "home")
    os.chown(base, NOBODY, NOBODY)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "SAGEMAKER_BIND_TO_PORT": str(port), "SAGEMAKER_MULTI_MODEL": "true", "BYOC_WORKERS": "1",
           "BYOC_RUN_DIR": str(base / "run"), "BYOC_CACHE_DIR": str(base / "cache"), "HOME": str(base / "home")}
    proc = subprocess.Popen(as_nobody([SERVE]), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_for_ping(url, 60, alive=lambda: proc.poll() is None), proc.stdout.read().decode()
        for name, artifact in (("plain", model), ("packed", archive)):
            response = requests.post(f"{url}/models", json={"model_name": name, "url": str(artifact)}, timeout=60)
            assert response.status_code == 200, response.text
            assert requests.post(f"{url}/models/{name}/invoke", **CSV, timeout=10).status_code == 200
        assert {p.stat().st_uid for p in (base / "run" / "models").iterdir()} == {NOBODY}
        assert requests.delete(f"{url}/models/plain", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(35)
        output = proc.stdout.read().decode()
        shutil.rmtree(base, ignore_errors=True)
    assert code == 0, output
