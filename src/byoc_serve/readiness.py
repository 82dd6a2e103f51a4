"""The readiness flag nginx answers /ping from: ``status/ready`` exists only once serving works."""

from __future__ import annotations

import os
from pathlib import Path

import orjson


def status_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "status"


def report_starting(run_dir: Path, phase: str, detail: str = "") -> None:
    """Say why /ping is not 200 yet; nginx serves this file with status 503."""
    _write_status(run_dir, f"starting: {phase}" + (f" ({detail})" if detail else ""))


def mark_ready(run_dir: Path) -> None:
    _write(status_dir(run_dir) / "ready", b"")


def mark_not_ready(run_dir: Path, reason: str) -> None:
    """Withdraw readiness (shutdown, failure) before anything stops answering; /ping then gives ``reason``."""
    _write_status(run_dir, reason)
    try:
        (status_dir(run_dir) / "ready").unlink()
    except FileNotFoundError:
        pass


def last_status(run_dir: Path) -> str | None:
    """What /ping last said while not ready (e.g. the phase a start-up failed in), if anything."""
    try:
        return orjson.loads((status_dir(run_dir) / "ping.json").read_bytes())["error"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_ready(run_dir: Path) -> bool:
    return (status_dir(run_dir) / "ready").exists()


def _write_status(run_dir: Path, message: str) -> None:
    body = {"error": message, "code": 503, "type": "not_ready", "model": None, "request_id": None}
    _write(status_dir(run_dir) / "ping.json", orjson.dumps(body))


def _write(path: Path, data: bytes) -> None:
    """Atomic replace, readable by nginx workers that may run as another user."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
