"""Start the real ``serve`` (nginx + gunicorn) on a free loopback port, and tiny real models for it."""

from __future__ import annotations

import functools
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import requests

SERVE = str(Path(sys.executable).with_name("serve"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NOBODY = 65534


@functools.cache
def scratch_root() -> Path:
    """This process's one directory in /tmp for what a test makes outside tmp_path (run dirs, logs).

    World-searchable, so nginx's workers (user nobody) reach the sockets inside; conftest removes it
    when the session passes and keeps it, named in the summary, when a test failed.
    """
    root = Path(tempfile.mkdtemp(prefix="byoc-tests-"))
    root.chmod(0o755)
    return root


def scratch_dir(prefix: str) -> Path:
    """A new directory (mode 0700) under ``scratch_root()``."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_root()))


def wait_for_ping(url: str, timeout: float, alive=lambda: True) -> bool:
    """Poll ``url``/ping (2 s per try, as SageMaker does) until 200, ``timeout`` passes or ``alive()`` is false."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            if requests.get(url + "/ping", timeout=2).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.05)
    return False


def as_nobody(command: list[str]) -> list[str]:
    """``command`` run as the unprivileged user ``nobody`` with no groups.

    When the interpreter lives under a private home (pyenv in /root) that user could not even start
    it: then it may search and read there; every write is still made as nobody.
    """
    interpreter = Path(sys.executable).resolve()
    reachable = all(p.stat().st_mode & stat.S_IXOTH for p in (interpreter, *interpreter.parents))
    setpriv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if not reachable:
        setpriv += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    return [*setpriv, *command]


class ServeProcess:
    """One running ``serve``; its log is captured to a file for assertions (and shown when a test fails)."""

    running: list["ServeProcess"] = []  # started and not yet stopped, for conftest's failure report

    def __init__(self, model_dir: Path | None = None, env: dict[str, str] | None = None, args: tuple[str, ...] = (),
                 command: tuple[str, ...] = (SERVE,)):
        self.command = command
        self.port = free_port()
        self.run_dir = scratch_dir("run-")
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
            "BYOC_RUN_DIR": str(self.run_dir),
            "BYOC_WORKERS": "2",
        }
        if model_dir is not None:
            self.env["BYOC_MODEL_DIR"] = str(model_dir)
        self.env.update(env or {})
        self.args = args
        self.log_path = self.run_dir.with_suffix(".log")
        self.proc: subprocess.Popen | None = None
        self.session = requests.Session()

    def start(self, wait_ready: bool = True, timeout: float = 60) -> "ServeProcess":
        # Append mode: nginx reopens /dev/stdout for its access log, and only O_APPEND keeps both writers intact.
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen([*self.command, *self.args], env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        ServeProcess.running.append(self)
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        if wait_for_ping(self.url, timeout, alive=lambda: self.proc.poll() is None):
            return
        if self.proc.poll() is not None:
            raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.log()}")
        raise TimeoutError(f"serve not ready within {timeout}s:\n{self.log()}")

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return self.session.request(method, self.url + path, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 35) -> int | None:
        """Signal serve and wait; returns its exit code (killed after ``timeout``)."""
        if self.proc is None:
            return None
        if self in ServeProcess.running:
            ServeProcess.running.remove(self)
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.session.close()
        self._log.close()
        return self.proc.returncode

    def child_pids(self) -> list[int]:
        """PIDs of every process under serve (nginx, gunicorn master and workers, model hosts)."""
        import psutil

        return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]

    def assert_healthy(self, good_request: dict) -> None:
        """After any bad request: /ping is still 200 and a good request still gets 200."""
        assert self.get("/ping").status_code == 200
        response = self.post("/invocations", **good_request)
        assert response.status_code == 200, response.text


ENVELOPE = {"error", "code", "type", "model", "request_id"}  # byoc_serve.errors.envelope


def raw_exchange(server: ServeProcess, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes no HTTP client would, read the answer to the end (nginx closes after an error)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


def assert_served_up_to_nginxs_limits(server: ServeProcess, method: str, path: str, **request) -> None:
    """A request that gets 200, sent with a long line, many headers or a long header on either side of
    nginx's limits (a line of 8 KiB, 32 KiB of headers), still gets 200 up to them and nginx's JSON
    error past them: never a refusal from the worker behind nginx."""
    headers = request.pop("headers", {})
    pad = ("&" if "?" in path else "?") + "pad="
    variants = [
        *((path + pad + "A" * size, headers) for size in (5000, *range(8150, 8200, 8))),
        *((path, {**headers, **{f"X-Extra-{i}": "v" for i in range(count)}}) for count in (150, 1500, 2500)),
        *((path, {**headers, "X-Big": "v" * size}) for size in range(8170, 8200, 4)),
    ]
    statuses = set()
    for target, variant_headers in variants:
        response = server.request(method, target, headers=variant_headers, **request)
        statuses.add(response.status_code)
        if response.status_code != 200:
            assert response.headers["Content-Type"] == "application/json", response.text
            assert response.json()["type"] in ("bad_request", "uri_too_long")
    assert statuses == {200, 400, 414}  # some within nginx's limits, some past its line and its header limits


# Protocol 4, then a FRAME opcode whose length field claims 1 TiB: unpickling it raises a bare
# MemoryError at once, as a corrupt pickle's garbage length field does.
HUGE_FRAME_PICKLE = b"\x80\x04\x95" + (1 << 40).to_bytes(8, "little") + b"K\x01."


def npy(array) -> bytes:
    """``array`` as an application/x-npy body."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array))
    return buffer.getvalue()


def sparse_npz(layout: str, shape: tuple[int, int], **arrays) -> bytes:
    """A scipy.sparse .npz body written member by member, so its index arrays may say anything."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, format=np.array(layout.encode()), shape=np.array(shape), **arrays)
    return buffer.getvalue()


def train_sklearn_classifier(model_dir: Path, n_features: int = 4, filename: str = "model.joblib") -> Path:
    """A tiny fitted LogisticRegression saved with joblib; returns the model directory."""
    import joblib
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, n_features))
    labels = (features[:, 0] + features[:, 1] > 0).astype(int)
    model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(LogisticRegression().fit(features, labels), model_dir / filename)
    return model_dir


SLOW_SCRIPT = '''
import os
import time


def model_fn(model_dir):
    time.sleep(float(os.environ.get("TEST_LOAD_SECONDS", "0")))
    return "model"


def input_fn(body, content_type):
    return float(body)


def predict_fn(seconds, model):
    time.sleep(seconds)
    return [seconds]
'''


def slow_model(tmp_path: Path) -> Path:
    """User code whose load takes $TEST_LOAD_SECONDS and whose prediction sleeps for the number it is sent."""
    model_dir = tmp_path / "slow"
    (model_dir / "code").mkdir(parents=True)
    (model_dir / "code" / "inference.py").write_text(textwrap.dedent(SLOW_SCRIPT))
    return model_dir


def sleep_request(server: ServeProcess, seconds: float, timeout: float = 30) -> requests.Response:
    return requests.post(server.url + "/invocations", data=str(seconds), headers={"Content-Type": "text/csv"}, timeout=timeout)


def build_wheel(wheel_dir: Path, name: str, version: str, source: str) -> Path:
    """A pure-Python wheel of one module ``name`` (distribution name with '-' for '_'), written by hand."""
    import base64
    import hashlib
    import zipfile

    dist = name.replace("_", "-")
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": source,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: byoc-serve-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    records = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        records.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join(records + [f"{info}/RECORD,,"]) + "\n"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheel = wheel_dir / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


# Toolkit style: the extra package is imported at the top of the script.
NEEDS_A_PACKAGE_SCRIPT = """
import json

import byoc_fixture_dep


def output_fn(prediction, accept):
    return json.dumps({"tag": byoc_fixture_dep.TAG, "prediction": prediction.tolist()})
"""


def model_needing_a_package(model_dir: Path, requirements: str) -> Path:
    """An sklearn model whose inference.py imports byoc_fixture_dep, shipped as a wheel in code/wheels/."""
    train_sklearn_classifier(model_dir)
    build_wheel(model_dir / "code" / "wheels", "byoc_fixture_dep", "1.0", 'TAG = "from-the-wheel"\n')
    (model_dir / "code" / "inference.py").write_text(NEEDS_A_PACKAGE_SCRIPT)
    (model_dir / "code" / "requirements.txt").write_text(requirements)
    return model_dir


def add_code(model_dir: Path, script: str | None = None, **code_files: str) -> Path:
    """``model_dir`` with ``code/inference.py`` (dedented; none if ``script`` is None) and any other
    ``code/`` files given by name (``warmup_json=...`` writes ``code/warmup.json``)."""
    code = model_dir / "code"
    code.mkdir(parents=True, exist_ok=True)
    if script is not None:
        (code / "inference.py").write_text(textwrap.dedent(script))
    for name, text in code_files.items():
        stem, _, suffix = name.rpartition("_")
        (code / f"{stem}.{suffix}").write_text(text)
    return model_dir
