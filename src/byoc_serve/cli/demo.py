"""`byoc demo`: start the real stack on the bundled demo model, ask it for a prediction, stop it."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from byoc_serve.cli.container import STOP_GRACE_SECONDS, free_port
from byoc_serve.cli.exits import CHECK_FAILED, ENVIRONMENT, OK, CliError
from byoc_serve.cli.output import say

READY_TIMEOUT_S = 120.0
PING_TIMEOUT_S = 2.0
LOG_TAIL_CHARS = 4000

HELP = "run the demo: start `serve --demo`, send a CSV sample, print the prediction, stop"
DESCRIPTION = """\
Start the real stack (nginx + gunicorn + the Flask app, via `serve --demo`) on this machine with
the bundled iris classifier, wait for /ping, POST a two-row CSV to /invocations, print the
prediction, stop the stack with SIGTERM and remove its run directory (unless BYOC_RUN_DIR names
one). --keep leaves it serving until Ctrl-C. No Docker needed.
Exit codes: 0 prediction received, 1 the stack did not become ready or answer, 3 serve not found."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help=HELP, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, help="port to serve on (default: a free port)")
    parser.add_argument("--keep", action="store_true", help="keep serving after the prediction until Ctrl-C")
    parser.add_argument("--verbose", action="store_true", help="show the server's log (else only shown on failure)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import requests

    from byoc_serve.demo import SAMPLE_CSV

    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    command = [_serve_program(), "--demo"]
    env = {**os.environ, "SAGEMAKER_BIND_TO_PORT": str(port)}
    env.pop("BYOC_MODEL_DIR", None)
    own_run_dir = not env.get("BYOC_RUN_DIR")
    if own_run_dir:  # else serve's default, /tmp/byoc-serve-PORT, would stay behind after every demo
        env["BYOC_RUN_DIR"] = tempfile.mkdtemp(prefix="byoc-demo-")
    say(f"demo: starting {' '.join(command)} on {base}")
    log = sys.stderr if args.verbose else tempfile.TemporaryFile()
    stack = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        seconds = _wait_until_ready(stack, base, requests)
        say(f"demo: ready after {seconds:.1f}s; POST {base}/invocations (text/csv):\n{SAMPLE_CSV.rstrip()}")
        answer = requests.post(f"{base}/invocations", data=SAMPLE_CSV, headers={"Content-Type": "text/csv"}, timeout=60)
        if answer.status_code != 200:
            raise CliError(f"/invocations answered HTTP {answer.status_code}: {answer.text[:200]}", CHECK_FAILED)
        print(f"prediction ({answer.headers.get('Content-Type', '')}): {answer.text.strip()}")
        if args.keep:
            say(f"demo: serving on {base} until Ctrl-C\n  curl -X POST {base}/invocations -H 'Content-Type: text/csv' "
                f"--data-binary $'{SAMPLE_CSV.splitlines()[0]}'")
            _wait_for_interrupt(stack)
    except CliError:
        if log is not sys.stderr:
            log.seek(0)
            say("--- serve log ---\n" + log.read().decode(errors="replace")[-LOG_TAIL_CHARS:])
        raise
    finally:
        _stop(stack)
        if log is not sys.stderr:
            log.close()
        if own_run_dir:
            shutil.rmtree(env["BYOC_RUN_DIR"], ignore_errors=True)
    return OK


def _serve_program() -> str:
    """The `serve` console script of this installation (next to this Python), else the one on PATH."""
    here = Path(sys.executable).parent / "serve"
    found = str(here) if here.is_file() and os.access(here, os.X_OK) else shutil.which("serve")
    if found is None:
        raise CliError("`serve` not found: install byoc-serve (pip install '.[sklearn]') in this environment", ENVIRONMENT)
    return found


def _wait_until_ready(stack: subprocess.Popen, base: str, requests) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    last = "no answer yet"
    while time.monotonic() - started < READY_TIMEOUT_S:
        if stack.poll() is not None:
            raise CliError(f"serve exited with code {stack.returncode} before it was ready ", CHECK_FAILED)
        try:
            answer = requests.get(f"{base}/ping", timeout=PING_TIMEOUT_S)
            if answer.status_code == 200:
                return time.monotonic() - started
            last = f"HTTP {answer.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise CliError(f"/ping did not answer 200 within {READY_TIMEOUT_S:.0f}s (last: {last})", CHECK_FAILED)


def _wait_for_interrupt(stack: subprocess.Popen) -> None:
    """Block until Ctrl-C or SIGTERM (or serve exiting on its own)."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        stack.wait()
    except KeyboardInterrupt:
        pass


def _stop(stack: subprocess.Popen) -> None:
    """SIGTERM like SageMaker; SIGKILL the whole session if it has not exited after the grace period."""
    if stack.poll() is not None:
        return
    stack.terminate()
    try:
        code = stack.wait(timeout=STOP_GRACE_SECONDS)
        say(f"demo: stopped (exit code {code})")
    except subprocess.TimeoutExpired:
        os.killpg(stack.pid, signal.SIGKILL)
        stack.wait()
        say(f"demo: serve did not stop within {STOP_GRACE_SECONDS}s; killed")
