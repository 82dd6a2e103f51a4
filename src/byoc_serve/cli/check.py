"""`byoc check`: run the runtime's start-up phases on a model here and name the first that fails."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from byoc_serve.cli import container as serving
from byoc_serve.cli.exits import CHECK_FAILED, OK, USAGE, CliError
from byoc_serve.cli.output import print_table, say
from byoc_serve.cli.smoke import load_payload
from byoc_serve.cli.staging import SINGLE_MODEL_DIR, model_directory

PAYLOAD_MOUNT = "/tmp/byoc-check-payload"

HELP = "run the start-up phases (config, artifacts, handler, load, warm-up) locally; name the first failure"
DESCRIPTION = """\
Load MODEL (a directory or model.tar.gz) exactly as `serve` does at start-up - read the settings,
check and extract the artifacts, pick the handler (or code/inference.py), load, warm up - and, with
--payload, run one prediction. Prints each phase with its time; the first failure is named with
its reason. This is what a failed SageMaker health check usually hides.
By default it runs in this Python environment (the frameworks must be installed); with --image it
runs `byoc check` inside that image instead, with the model mounted at /opt/ml/model.
Exit codes: 0 every phase passed, 1 a phase failed (named), 2 usage error, 3 Docker problem."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("check", help=HELP, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="model directory or model.tar.gz")
    parser.add_argument("--payload", type=Path, help="also run one prediction on this request body")
    parser.add_argument("--content-type", help="Content-Type of the payload (default: from its file extension)")
    parser.add_argument("--image", help="run the check inside this image instead of here")
    parser.add_argument("--env", action="append", metavar="KEY=VALUE", help="extra setting, e.g. BYOC_HANDLER=sklearn (repeatable)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.model.exists():
        raise CliError(f"{args.model} does not exist", USAGE)
    if args.payload is not None and not args.payload.is_file():
        raise CliError(f"--payload {args.payload} is not a file", USAGE)
    env = serving.parse_env(args.env)
    if args.image:
        return _check_in_image(args, env)
    rows: list[tuple[str, str, str, str]] = []
    failure = None
    with ExitStack() as stack:
        try:
            started = time.monotonic()
            model_dir = stack.enter_context(model_directory(args.model))
            if model_dir != args.model.resolve():
                rows.append(("extract", "ok", f"{time.monotonic() - started:.2f}", f"{args.model} → {model_dir}"))
            failure = _start_up(model_dir, env, args, rows)
        except CliError as exc:
            if exc.code != CHECK_FAILED:
                raise
            failure = ("extract", str(exc))
            rows.append(("extract", "FAILED", "-", str(exc)))
    print_table(["phase", "result", "seconds", "detail"], rows)
    if failure is not None:
        raise CliError(f"FAILED in phase {failure[0]!r}: {failure[1]}", CHECK_FAILED)
    print(f"check: {args.model} passed every start-up phase")
    return OK


def _start_up(model_dir: Path, env: dict[str, str], args: argparse.Namespace,
              rows: list[tuple[str, str, str, str]]) -> tuple[str, str] | None:
    """Run config → handler → load → warm-up (→ invoke); append a row per phase; return the failure."""
    from byoc_serve.config import ConfigError, load_settings
    from byoc_serve.servable import Invocation, Servable

    started = time.monotonic()
    try:
        settings = load_settings({**os.environ, **env, "BYOC_MODEL_DIR": str(model_dir)})
    except ConfigError as exc:
        rows.append(("config", "FAILED", f"{time.monotonic() - started:.2f}", str(exc)))
        return "config", str(exc)
    rows.append(("config", "ok", f"{time.monotonic() - started:.2f}", ""))
    phases = _PhaseRecorder(rows)
    try:
        with phases:
            servable = Servable.load(model_dir, settings)
    except Exception as exc:  # noqa: BLE001 - whatever the model raises is the finding
        phase = getattr(exc, "phase", "load")
        reason = f"{type(exc).__name__}: {exc}"
        rows.append((phase, "FAILED", "-", reason))
        return phase, reason
    if args.payload is None:
        return None
    body, content_type = load_payload(args.payload, args.content_type, model_dir)
    started = time.monotonic()
    try:
        result = servable.invoke(Invocation(body, content_type))
    except Exception as exc:  # noqa: BLE001
        reason = f"{type(exc).__name__}: {exc}"
        rows.append(("invoke", "FAILED", f"{time.monotonic() - started:.2f}", reason))
        return "invoke", reason
    preview = result.body[:80].decode(errors="replace").replace("\n", " ")
    rows.append(("invoke", "ok", f"{time.monotonic() - started:.2f}", f"{result.content_type} {preview}"))
    return None


class _PhaseRecorder(logging.Handler):
    """Collects the runtime's `phase=NAME ok` start-up log records as table rows while active."""

    def __init__(self, rows: list[tuple[str, str, str, str]]):
        super().__init__(logging.INFO)
        self.rows = rows
        self.logger = logging.getLogger("byoc_serve.servable")

    def __enter__(self) -> None:
        self.previous_level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.previous_level)

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        if str(record.msg).startswith("phase=%s ok") and len(args) >= 2:
            detail = str(args[2]) if len(args) > 2 else ""
            self.rows.append((str(args[0]), "ok", f"{float(args[1]) / 1000:.2f}", detail))


def _check_in_image(args: argparse.Namespace, env: dict[str, str]) -> int:
    """`byoc check` inside the image, with the model and payload mounted read-only."""
    from byoc_serve.cli.engine import docker_client, docker_errors

    client = docker_client()
    command = ["check", SINGLE_MODEL_DIR]
    with ExitStack() as stack:
        volumes = {str(stack.enter_context(model_directory(args.model))): {"bind": SINGLE_MODEL_DIR, "mode": "ro"}}
        if args.payload is not None:
            volumes[str(args.payload.resolve())] = {"bind": f"{PAYLOAD_MOUNT}/{args.payload.name}", "mode": "ro"}
            command += ["--payload", f"{PAYLOAD_MOUNT}/{args.payload.name}"]
            if args.content_type:
                command += ["--content-type", args.content_type]
        say(f"check: running byoc check in {args.image}")
        with docker_errors("check"):
            box = client.containers.run(args.image, command=command, entrypoint=["byoc"], environment=env,
                                        volumes=volumes, network_mode="host", detach=True)
            try:
                for chunk in box.logs(stream=True, follow=True):
                    sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                code = int(box.wait().get("StatusCode", -1))
            finally:
                serving.remove(box)
    return code
