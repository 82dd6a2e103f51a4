"""Render the top-level nginx.conf template with the settings, into the run directory."""

from __future__ import annotations

import re
import socket
from importlib.resources import files
from pathlib import Path

from byoc_serve.config import MIB, Settings

PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
NGINX_TEMP_DIRS = ("body", "proxy", "fastcgi", "uwsgi", "scgi")


def template_text() -> str:
    return files("byoc_serve").joinpath("nginx.conf").read_text()


def render_nginx_conf(settings: Settings, template: str | None = None) -> str:
    """The nginx config for these settings; every placeholder must be known."""
    access_log = settings.run_dir / "access.log"  # a FIFO that serve relays to stdout
    values = {
        "run_dir": str(settings.run_dir),
        # One upstream server per gunicorn worker (see byoc_serve.workers.listen_for_worker); a worker
        # that is restarting has no socket, and nginx moves on to the next.
        "app_servers": "\n        ".join(
            f"server unix:{settings.run_dir}/workers/{slot}.sock max_fails=0;" for slot in range(settings.workers)
        ),
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
