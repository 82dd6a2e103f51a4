"""The small wire protocol of the multi-model mode: one JSON object per line over unix sockets.

HTTP workers → manager (``run_dir/manager.sock``): ``{"op": "load"|"list"|"get"|"unload", ...}``,
answered by ``{"status": 200, "body": {...}}`` or ``{"status": 4xx/5xx, "type": kind, "error": message}``.
Model host ↔ manager (a socketpair made before the fork): the host reports ``{"event": ...}`` while it
loads and the manager answers each event the same way.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import orjson

from byoc_serve.errors import NotReady, ServingError

CONNECT_WAIT_S = 10.0  # the manager binds its socket within a second of start-up
REPLY_TIMEOUT_S = 420.0  # longer than a load may take (SageMaker allows 360 s)


def encode(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message) + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    return orjson.loads(line)


def ok(body: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"status": 200, "body": body or {}}


def error(exc: ServingError) -> dict[str, Any]:
    return {"status": exc.status, "type": exc.kind, "error": exc.message}


def body_of(reply: dict[str, Any]) -> dict[str, Any]:
    """The body of a 200 reply; any other reply is raised again as the ServingError it was."""
    if reply.get("status") == 200:
        return reply.get("body") or {}
    raise ServingError(str(reply.get("error")), status=int(reply.get("status", 500)), kind=str(reply.get("type", "internal_error")))


def manager_socket(run_dir: Path) -> Path:
    return Path(run_dir) / "manager.sock"


def call_manager(run_dir: Path, op: str, **arguments: Any) -> dict[str, Any]:
    """One request to the model manager from an HTTP worker; returns the reply body or raises."""
    path = str(manager_socket(run_dir))
    deadline = time.monotonic() + CONNECT_WAIT_S
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        while True:
            try:
                sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise NotReady("the model manager is not running") from None
                time.sleep(0.05)
        sock.settimeout(REPLY_TIMEOUT_S)
        sock.sendall(encode({"op": op, **arguments}))
        with sock.makefile("rb") as stream:
            line = stream.readline()
    if not line:
        raise ServingError("the model manager closed the connection without an answer", status=500)
    return body_of(decode(line))
