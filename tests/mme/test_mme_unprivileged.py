"""Multi-model mode works as an ordinary user: manager, hosts and their sockets, the disk cache."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from harness import SERVE, free_port
from mme_support import CSV, sklearn_model, tarball

NOBODY = 65534


def reachable_by_others(path: Path) -> bool:
    """Can a user with no groups execute ``path`` (every parent directory searchable by others)?"""
    path = path.resolve()
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_multi_model_serve_runs_as_an_unprivileged_user():
    base = Path(tempfile.mkdtemp(prefix="byoc-mme-nobody-"))
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
    setpriv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if not reachable_by_others(Path(sys.executable)):
        # The interpreter lives under a private home (pyenv in /root): let the user search and read
        # there. Writes (run directory, sockets, cache) are still checked as the unprivileged user.
        setpriv += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    proc = subprocess.Popen([*setpriv, SERVE], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
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
