"""Render the top-level nginx.conf template with the settings, into the run directory."""

from __future__ import annotations

import re
import socket
from importlib.resources import files
from pathlib import Path

from byoc_serve.config import MIB, Settings

PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
NGINX_TEMP_DIRS = ("body", "proxy", "fastcgi", "uwsgi", "scgi")
# An idle worker loses a tie to the idle worker ranked below it once in PREFERENCE requests. The
# top weight, PREFERENCE ** (RANKED_WORKERS - 1), stays within nginx's 64-bit sums; lower slots tie.
PREFERENCE = 10_000
RANKED_WORKERS = 5


def template_text() -> str:
    return files("byoc_serve").joinpath("nginx.conf").read_text()


def render_nginx_conf(settings: Settings, template: str | None = None) -> str:
    """The nginx config for these settings; every placeholder must be known."""
    access_log = settings.run_dir / "access.log"  # a FIFO that serve relays to stdout
    values = {
        "run_dir": str(settings.run_dir),
        "app_servers": "\n        ".join(worker_servers(settings.run_dir, settings.workers)),
        "listen": str(settings.port),
        "listen_v6": f"listen [::]:{settings.port} reuseport backlog=4096;" if _ipv6_available() else "",
        "max_body_bytes": str(settings.max_payload_bytes),
        "max_body_mb": f"{settings.max_payload_bytes / MIB:g}",
        "timeout_s": str(settings.timeout_s),
        "error_log_level": {"DEBUG": "info", "INFO": "warn", "WARNING": "warn", "ERROR": "error"}[settings.log_level],
        "access_log": f"{access_log} byoc" if settings.log_level == "DEBUG" else f"{access_log} byoc buffer=32k flush=1s",
        "ping_access_log": f"{access_log} byoc" if settings.log_ping else "off",
    }

    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"nginx.conf template uses unknown placeholder {{{{ {key} }}}}")
        return values[key]

    return PLACEHOLDER.sub(substitute, template if template is not None else template_text())


def worker_servers(run_dir: Path, workers: int) -> list[str]:
    """The ``app`` upstream's servers: the lowest idle worker first, then the least busy one.

    Each worker (its own socket, see byoc_serve.workers.listen_for_worker) is listed twice. As a
    primary it takes one request at a time, and the weights decide between idle primaries:
    ``least_conn`` breaks a tie by weighted round-robin, so with equal weights consecutive requests
    at 1 connection would go to alternate workers, each woken on whichever vCPU it slept on. Once
    every primary is busy, the same workers as backups take the rest by ``least_conn``, whose counts
    are the backups' own: with one primary request each, that still spreads the load evenly.

    A primary that fails (a worker still loading or being replaced has no socket, and nginx logs
    each connect() at [crit]) rests for 1 s while the others serve. Backups never rest, so some
    server is always left to try and nginx never answers "no live upstreams".
    """
    top = min(workers, RANKED_WORKERS) - 1
    sockets = [f"unix:{run_dir}/workers/{slot}.sock" for slot in range(workers)]
    primaries = [
        f"server {sock} max_conns=1 weight={PREFERENCE ** max(0, top - slot)} max_fails=1 fail_timeout=1s;"
        for slot, sock in enumerate(sockets)
    ]
    return primaries + [f"server {sock} backup max_fails=0;" for sock in sockets]


def write_nginx_conf(settings: Settings) -> Path:
    """Write the rendered config and the temp directories nginx needs; return the config path."""
    for name in NGINX_TEMP_DIRS:
        (settings.run_dir / "nginx" / name).mkdir(parents=True, exist_ok=True)
    path = settings.run_dir / "nginx.conf"
    path.write_text(render_nginx_conf(settings))
    return path


def _ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False
