"""serve works as an ordinary user, writing only under its run directory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from harness import NOBODY, SERVE, as_nobody, free_port, scratch_dir, train_sklearn_classifier, wait_for_ping


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_serve_runs_as_an_unprivileged_user():
    base = scratch_dir("nobody-")
    os.chmod(base, 0o755)
    model_dir = train_sklearn_classifier(base / "model")
    for path in (model_dir, *model_dir.iterdir()):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    run_dir = base / "run"  # does not exist yet: serve creates it as the unprivileged user
    os.mkdir(base / "home")
    os.chown(base, NOBODY, NOBODY)
    port = free_port()
    env = {**os.environ, "SAGEMAKER_BIND_TO_PORT": str(port), "BYOC_MODEL_DIR": str(model_dir),
           "BYOC_RUN_DIR": str(run_dir), "BYOC_WORKERS": "1", "HOME": str(base / "home")}
    proc = subprocess.Popen(as_nobody([SERVE]), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ready = wait_for_ping(f"http://127.0.0.1:{port}", 60, alive=lambda: proc.poll() is None)
        assert ready, proc.stdout.read().decode() if proc.poll() is not None else "not ready"
        response = requests.post(f"http://127.0.0.1:{port}/invocations", data="1,2,3,4", headers={"Content-Type": "text/csv"}, timeout=10)
        assert response.status_code == 200, response.text
        owners = {p.stat().st_uid for p in run_dir.rglob("*")}
        assert owners == {NOBODY}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(35) == 0
        shutil.rmtree(base, ignore_errors=True)
