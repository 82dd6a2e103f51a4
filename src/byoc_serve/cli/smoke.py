"""`byoc smoke`: start the image like SageMaker would, probe it within the platform's limits, stop it."""

from __future__ import annotations

import argparse
import json
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from byoc_serve.cli import container as serving
from byoc_serve.cli.engine import docker_client, docker_errors
from byoc_serve.cli.exits import CHECK_FAILED, OK, USAGE, CliError
from byoc_serve.cli.output import print_table, say
from byoc_serve.cli.staging import container_path, model_directory, multi_model_directories

if TYPE_CHECKING:
    import requests
    from docker.models.containers import Container

# Platform limits (SageMaker hosting contract).
PING_TIMEOUT_S = 2.0
STARTUP_WINDOW_S = 480  # the default health-check window: 8 minutes to a consistent 200
INVOKE_LIMIT_S = 60.0
MME_LOAD_LIMIT_S = 360.0  # SageMaker waits up to 360 s for a model to download and load
MAX_RESPONSE_BYTES = 6 * 1024 * 1024
STEADY_PINGS = 5

CONTENT_TYPES = {".csv": "text/csv", ".json": "application/json", ".jsonl": "application/jsonlines",
                 ".npy": "application/x-npy", ".npz": "application/x-npz", ".txt": "text/plain"}
SAMPLE_FILES = ("warmup.csv", "warmup.json", "warmup.npy", "sample.csv", "sample.json")

HELP = "start an image with a model, check ping/invocations (or MME load/invoke/unload), stop it"
DESCRIPTION = """\
Run IMAGE with MODEL mounted the way SageMaker does (`serve`, /opt/ml/model read-only, host
network), then check it against the platform's rules: /ping answers 200 within the start-up window
(each ping times out after 2 s), stays fast, /invocations answers within 60 s with a body under
6 MiB, and SIGTERM stops the container with exit code 0 within 30 s. With --multi-model, MODEL is a
directory of model directories or archives, and the checks are the MME API: list, load, duplicate
load (409), invoke, unload, invoke after unload (404).
The payload is --payload FILE, else the model's code/warmup.csv|json|npy.
Prints a pass/fail table. Exit codes: 0 all checks passed, 1 a check failed (named), 2 usage error,
3 Docker problem."""


@dataclass
class Check:
    name: str
    passed: bool
    seconds: float
    detail: str


class SmokeFailed(Exception):
    """A check failed in a way that makes the remaining checks meaningless."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("smoke", help=HELP, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="image to test, e.g. byoc-serve:cpu")
    parser.add_argument("model", type=Path, help="model directory or model.tar.gz (with --multi-model: a directory of them)")
    parser.add_argument("--payload", type=Path, help="request body to send (default: the model's code/warmup.* file)")
    parser.add_argument("--content-type", help="Content-Type of the payload (default: from its file extension)")
    parser.add_argument("--accept", help="Accept header to send")
    parser.add_argument("--multi-model", action="store_true", help="test the multi-model (MME) API")
    parser.add_argument("--port", type=int, help="port to serve on (default: a free port, passed as SAGEMAKER_BIND_TO_PORT)")
    parser.add_argument("--startup-timeout", type=float, default=STARTUP_WINDOW_S,
                        help=f"seconds until /ping must answer 200 (default {STARTUP_WINDOW_S}, SageMaker's window)")
    parser.add_argument("--user", help="run the container as this user (e.g. 1000); SageMaker itself runs as root")
    parser.add_argument("--env", action="append", metavar="KEY=VALUE", help="extra environment variable (repeatable)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    env = serving.parse_env(args.env)
    if not args.model.exists():
        raise CliError(f"{args.model} does not exist", USAGE)
    with ExitStack() as stack:
        if args.multi_model:
            models = stack.enter_context(multi_model_directories(args.model))
            spec = serving.ServingSpec(args.image, models=models, env=env, user=args.user)
            sample_dir = next(iter(models.values()))
        else:
            model_dir = stack.enter_context(model_directory(args.model))
            spec = serving.ServingSpec(args.image, model_dir=model_dir, env=env, user=args.user)
            sample_dir = model_dir
        body, content_type = load_payload(args.payload, args.content_type, sample_dir)
        if args.user and args.user not in ("0", "root"):
            _warn_if_unreadable([spec.model_dir] if spec.model_dir else list(spec.models.values()))
        spec.port = args.port or serving.free_port()
        client = docker_client()
        probe = Probe(spec, body, content_type, args.accept, args.startup_timeout)
        with docker_errors("smoke"):
            checks = probe.run(client)
    print_table(["check", "result", "seconds", "detail"],
                [(c.name, "PASS" if c.passed else "FAIL", f"{c.seconds:.2f}", c.detail) for c in checks])
    failed = [c for c in checks if not c.passed]
    if failed:
        if probe.logs:
            say(f"--- last container log lines ---\n{probe.logs.rstrip()}\n---")
        raise CliError(f"FAILED check {failed[0].name!r}: {failed[0].detail}", CHECK_FAILED)
    print(f"smoke: all {len(checks)} checks passed for {args.image}")
    return OK


def _warn_if_unreadable(directories: list[Path]) -> None:
    """A container user other than the owner can only read world-readable model files."""
    for directory in directories:
        if directory.stat().st_mode & 0o005 != 0o005:
            say(f"warning: {directory} is not world-readable; the container user may not read it (chmod -R a+rX)")


def load_payload(payload: Path | None, content_type: str | None, model_dir: Path) -> tuple[bytes, str]:
    """The request body and its Content-Type: --payload, else a sample the model ships in code/."""
    if payload is None:
        for name in SAMPLE_FILES:
            if (model_dir / "code" / name).is_file():
                payload = model_dir / "code" / name
                break
        else:
            raise CliError("no payload: pass --payload FILE, or ship code/warmup.csv (or .json/.npy) with the model", USAGE)
    if not payload.is_file():
        raise CliError(f"--payload {payload} is not a file", USAGE)
    content_type = content_type or CONTENT_TYPES.get(payload.suffix.lower())
    if content_type is None:
        raise CliError(f"cannot tell the Content-Type of {payload.name}; pass --content-type", USAGE)
    return payload.read_bytes(), content_type


class Probe:
    """Runs the checks against one container and collects them in order."""

    def __init__(self, spec: serving.ServingSpec, body: bytes, content_type: str, accept: str | None,
                 startup_timeout: float):
        import requests

        self.spec = spec
        self.body = body
        self.headers = {"Content-Type": content_type, **({"Accept": accept} if accept else {})}
        self.startup_timeout = startup_timeout
        self.base = f"http://127.0.0.1:{spec.port}"
        self.http = requests.Session()
        self.checks: list[Check] = []
        self.logs = ""
        self.last_error = ""

    def run(self, client) -> list[Check]:  # type: ignore[no-untyped-def]
        say(f"smoke: starting {self.spec.image} on port {self.spec.port} "
            f"({'multi-model' if self.spec.multi_model else 'single-model'})")
        box = serving.start(client, self.spec)
        try:
            try:
                self.wait_for_ping(box)
                self.steady_ping()
                if self.spec.multi_model:
                    self.multi_model_api()
                else:
                    self.invocations()
            except SmokeFailed:
                pass
            self.graceful_stop(box)
            self.logs = serving.log_tail(box)
        finally:
            serving.remove(box)
        return self.checks

    def record(self, name: str, passed: bool, seconds: float, detail: str, fatal: bool = True) -> None:
        self.checks.append(Check(name, passed, seconds, detail))
        say(f"smoke: {'PASS' if passed else 'FAIL'} {name} ({seconds:.2f}s) {detail}")
        if not passed and fatal:
            raise SmokeFailed(name)

    def wait_for_ping(self, box: "Container") -> None:
        """Ping like SageMaker: 2 s per attempt until the first 200 or the start-up window closes."""
        import requests

        started = time.monotonic()
        last = "no answer yet"
        while time.monotonic() - started < self.startup_timeout:
            code = serving.exit_code(box)
            if code is not None:
                self.record("ping", False, time.monotonic() - started,
                            f"container exited with code {code} before /ping returned 200 (last: {last})")
            try:
                answer = self.http.get(self.base + "/ping", timeout=PING_TIMEOUT_S)
                if answer.status_code == 200:
                    self.record("ping", True, time.monotonic() - started,
                                f"200 within the {self.startup_timeout:.0f}s start-up window")
                    return
                last = f"HTTP {answer.status_code} {answer.text[:120].strip()}"
            except requests.Timeout:
                last = f"no answer within {PING_TIMEOUT_S:.0f}s"
            except requests.ConnectionError:
                last = "connection refused"
            time.sleep(0.25)
        self.record("ping", False, time.monotonic() - started,
                    f"no 200 within the {self.startup_timeout:.0f}s start-up window (last: {last})")

    def steady_ping(self) -> None:
        worst = 0.0
        for _ in range(STEADY_PINGS):
            answer, seconds = self.timed(lambda: self.http.get(self.base + "/ping", timeout=PING_TIMEOUT_S))
            worst = max(worst, seconds)
            if answer is None or answer.status_code != 200:
                self.record("ping-steady", False, seconds, f"ping after ready: {self.describe(answer)}")
        self.record("ping-steady", worst < PING_TIMEOUT_S, worst,
                    f"{STEADY_PINGS} pings, slowest {worst * 1000:.0f} ms (limit {PING_TIMEOUT_S:.0f}s)")

    def invocations(self) -> None:
        answer, seconds = self.timed(lambda: self.http.post(
            self.base + "/invocations", data=self.body, headers=self.headers, timeout=INVOKE_LIMIT_S + 5))
        self.check_prediction("invocations", answer, seconds)

    def multi_model_api(self) -> None:
        names = list(self.spec.models)
        listing, seconds = self.timed(lambda: self.http.get(self.base + "/models", timeout=10))
        self.record("mme-list-empty", _listed(listing) == [], seconds, f"GET /models: {self.describe(listing)}")
        for name in names:
            self.load(name)
        answer, seconds = self.timed(lambda: self.load_request(names[0]))
        self.record("mme-load-duplicate", answer is not None and answer.status_code == 409, seconds,
                    f"loading {names[0]} again: {self.describe(answer)} (want 409)")
        listing, seconds = self.timed(lambda: self.http.get(self.base + "/models", timeout=10))
        self.record("mme-list", sorted(_listed(listing) or []) == sorted(names), seconds,
                    f"GET /models lists {_listed(listing)} (want {sorted(names)})")
        for name in names:
            answer, seconds = self.timed(lambda: self.http.post(
                f"{self.base}/models/{name}/invoke", data=self.body, timeout=INVOKE_LIMIT_S + 5,
                headers={**self.headers, "X-Amzn-SageMaker-Target-Model": f"{name}.tar.gz"}))
            self.check_prediction(f"mme-invoke {name}", answer, seconds)
        for name in names:
            answer, seconds = self.timed(lambda: self.http.delete(f"{self.base}/models/{name}", timeout=MME_LOAD_LIMIT_S))
            self.record(f"mme-unload {name}", answer is not None and answer.status_code == 200, seconds,
                        f"DELETE /models/{name}: {self.describe(answer)}")
        answer, seconds = self.timed(lambda: self.http.post(
            f"{self.base}/models/{names[0]}/invoke", data=self.body, headers=self.headers, timeout=10))
        self.record("mme-invoke-unloaded", answer is not None and answer.status_code == 404, seconds,
                    f"invoking unloaded {names[0]}: {self.describe(answer)} (want 404)")

    def load(self, name: str) -> None:
        answer, seconds = self.timed(lambda: self.load_request(name))
        ok = answer is not None and answer.status_code == 200 and seconds < MME_LOAD_LIMIT_S
        self.record(f"mme-load {name}", ok, seconds, f"POST /models: {self.describe(answer)} (limit {MME_LOAD_LIMIT_S:.0f}s)")

    def load_request(self, name: str) -> "requests.Response":
        return self.http.post(self.base + "/models", json={"model_name": name, "url": container_path(name)},
                              timeout=MME_LOAD_LIMIT_S)

    def check_prediction(self, name: str, answer: "requests.Response | None", seconds: float) -> None:
        if answer is None or answer.status_code != 200:
            self.record(name, False, seconds, self.describe(answer))
        problem = _answer_problem(answer)
        if seconds >= INVOKE_LIMIT_S:
            problem = f"took {seconds:.1f}s, over the {INVOKE_LIMIT_S:.0f}s limit"
        self.record(name, problem is None, seconds, problem or self.describe(answer))

    def graceful_stop(self, box: "Container") -> None:
        if serving.exit_code(box) is not None:
            return
        code, seconds = serving.stop(box)
        self.record("sigterm", code == 0 and seconds < serving.STOP_GRACE_SECONDS, seconds,
                    f"exit code {code} after SIGTERM (want 0 within {serving.STOP_GRACE_SECONDS}s)", fatal=False)

    def timed(self, call: Callable[[], "requests.Response"]) -> tuple["requests.Response | None", float]:
        """(response or None on a network error, seconds); network errors are kept for the detail."""
        import requests

        started = time.monotonic()
        try:
            answer: requests.Response | None = call()
        except requests.RequestException as exc:
            answer = None
            self.last_error = f"{type(exc).__name__}: {exc}"
        return answer, time.monotonic() - started

    def describe(self, answer: "requests.Response | None") -> str:
        """One line about an answer for the table: status, type and the start of the body."""
        if answer is None:
            return f"no answer ({self.last_error})"
        text = answer.text.strip().replace("\n", " ")
        return f"HTTP {answer.status_code} {answer.headers.get('Content-Type', '')} {text[:100]}".strip()


def _answer_problem(answer: "requests.Response") -> str | None:
    """Why a 200 answer is not a usable prediction, or None."""
    if not answer.content:
        return "empty body"
    if len(answer.content) > MAX_RESPONSE_BYTES:
        return f"body of {len(answer.content)} bytes exceeds the 6 MiB response limit"
    content_type = answer.headers.get("Content-Type", "")
    if not content_type:
        return "no Content-Type header"
    if "json" in content_type and "jsonlines" not in content_type:
        try:
            json.loads(answer.content)
        except ValueError:
            return f"Content-Type {content_type} but the body is not JSON"
    return None


def _listed(answer: "requests.Response | None") -> list[str] | None:
    """Model names from a GET /models answer, or None if it is not the SageMaker list shape."""
    if answer is None or answer.status_code != 200:
        return None
    try:
        return [entry["modelName"] for entry in answer.json()["models"]]
    except (ValueError, KeyError, TypeError):
        return None


