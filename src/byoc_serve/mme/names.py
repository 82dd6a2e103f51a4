"""Model names: validated before they touch a path, and where each loaded model's socket lives."""

from __future__ import annotations

import re
from pathlib import Path

from byoc_serve.errors import BadRequest

# The same pattern nginx.conf routes /models/{name}/invoke with: a name it cannot route is refused
# at load time rather than loaded and never reachable.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL


def sockets_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "models"


def socket_path(run_dir: Path, name: str) -> Path:
    """The unix socket nginx proxies ``/models/{name}/invoke`` to."""
    return sockets_dir(run_dir) / f"{name}.sock"


def live_marker(run_dir: Path, name: str) -> Path:
    """Exists while the model's socket serves: nginx checks it before connecting, since a connect() to a
    missing socket is an nginx [crit] line (and nginx cannot test a socket file itself)."""
    return sockets_dir(run_dir) / f"{name}.live"


def max_name_length(run_dir: Path) -> int:
    """Longest name whose socket path fits a unix socket address (depends on BYOC_RUN_DIR)."""
    return min(255, SOCKET_PATH_MAX - len(str(socket_path(run_dir, ""))))


def validate_model_name(name: object, run_dir: Path) -> str:
    """Return ``name`` if it is safe and routable; otherwise 400 with the reason."""
    if not isinstance(name, str) or name == "":
        raise BadRequest('"model_name" must be a non-empty string')
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise BadRequest("model name contains control characters")
    if "/" in name or "\\" in name or ".." in name:
        raise BadRequest(f"model name {name!r} must not contain '/', '\\\\' or '..'")
    if NAME_PATTERN.fullmatch(name) is None:
        raise BadRequest(f"model name {name!r} must match {NAME_PATTERN.pattern}")
    limit = max_name_length(run_dir)
    if len(name) > limit:
        raise BadRequest(f"model name is {len(name)} characters; at most {limit} fit a socket path under BYOC_RUN_DIR={run_dir}")
    return name
