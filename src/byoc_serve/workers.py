"""The gunicorn master: loads fork-safe models before forking, then runs the workers.

Run by ``serve`` as ``python -m byoc_serve.workers``. With one thread per worker (the single-model
default) each worker is a ``LoopWorker``: one thread polls nginx's kept-alive connections and serves
each request inline. With ``BYOC_THREADS`` > 1 (the MME default) workers are gunicorn's gthread.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication

from byoc_serve import http1, readiness, requirements
from byoc_serve.app import ModelSlot, WSGIApp, create_app
from byoc_serve.config import Settings, load_settings
from byoc_serve.errors import ServingError, describe_load_failure
from byoc_serve.logs import configure_logging
from byoc_serve.servable import Servable, choose_handler
from model_handlers.base import Handler

log = logging.getLogger("byoc_serve.workers")

EXIT_LOAD_FAILED = 4


class ServingApplication(BaseApplication):
    """gunicorn configured from Settings, serving an app built (and maybe loaded) in the master."""

    def __init__(self, settings: Settings, app: WSGIApp, on_worker_start: Any = None):
        self.settings = settings
        self.app = app
        self.on_worker_start = on_worker_start
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options = {
            # gunicorn insists on a listener of its own; workers accept on their own sockets instead.
            "bind": [f"unix:{s.run_dir / 'gunicorn.sock'}"],
            "workers": s.workers,
            "worker_class": "gthread" if s.threads > 1 else "byoc_serve.loop_worker.LoopWorker",
            "threads": s.threads,
            # The per-request limit is nginx's proxy_read_timeout (the same BYOC_TIMEOUT). A LoopWorker
            # heartbeats between requests, so one still busy 30 s after nginx answered 504 is replaced;
            # gthread heartbeats from its polling thread, so this only catches a wedged worker.
            "timeout": s.timeout_s + 30,
            "graceful_timeout": 25,
            "keepalive": 75,
            "backlog": 2048,
            # nginx, the only client, refuses a line over 8 KiB or 32 KiB of headers with its JSON error;
            # gunicorn's defaults (a 4094-byte request line, 100 headers of 8190 bytes) refused what it
            # forwards with an HTML page. So: no limit on the line, gunicorn's most headers, and a header as
            # long as a LoopWorker's whole head (0 would mean 8190 for a header, not unlimited).
            "limit_request_line": 0,
            "limit_request_fields": 32768,
            "limit_request_field_size": http1.MAX_HEAD_BYTES,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": s.log_level.lower(),
            "control_socket_disable": True,
            "umask": 0o007 if _nginx_shares_our_user() else 0,
            "pre_fork": self._pre_fork,
            "post_worker_init": self._post_worker_init,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> WSGIApp:
        return self.app

    def _pre_fork(self, server: Any, worker: Any) -> None:
        """Give the new worker the lowest free slot; a replaced worker takes over its predecessor's."""
        taken = {getattr(w, "slot", None) for w in server.WORKERS.values()}
        worker.slot = min(set(range(self.settings.workers)) - taken)

    def _post_worker_init(self, worker: Any) -> None:
        # gunicorn's gthread worker answers a head its parser refuses (a control byte in a header value,
        # a raw byte over 0x7F in the query: nginx forwards both) with util.write_error's HTML page.
        gunicorn_util.write_error = write_json_error
        if self.on_worker_start is not None:
            self.on_worker_start()
        # Listen only once the model is loaded, so nginx never queues a request on a worker still loading;
        # the first worker listening makes the container ready.
        worker.sockets = [listen_for_worker(self.settings.run_dir, worker.slot, self.cfg.backlog)]
        if not readiness.is_ready(self.settings.run_dir):
            readiness.mark_ready(self.settings.run_dir)
            log.info("phase=ready workers=%d threads=%d", self.settings.workers, self.settings.threads)


def write_json_error(sock: socket.socket, status: int, reason: str, message: str) -> None:
    """gunicorn's error page for a request it cannot read, as the JSON envelope."""
    error = ServingError(message, status=status, kind=reason.lower().replace(" ", "_"))
    gunicorn_util.write_nonblock(sock, http1.refusal_bytes(error))


def worker_socket(run_dir: Path, slot: int) -> Path:
    return run_dir / "workers" / f"{slot}.sock"


def listen_for_worker(run_dir: Path, slot: int, backlog: int) -> socket.socket:
    """A unix socket of this worker's own.

    With one shared socket, nginx's kept-alive upstream connections stick to whichever worker
    accepted them first (measured: one worker doing 72 % of the work at 8 connections); one socket
    per worker lets nginx choose the worker for each request and still keep connections alive.
    """
    path = worker_socket(run_dir, slot)
    path.parent.mkdir(exist_ok=True)
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o777 if os.geteuid() == 0 else 0o770)  # as root, nginx workers run as another user
    listener.listen(backlog)
    listener.setblocking(False)
    return listener


def _nginx_shares_our_user() -> bool:
    """As root, nginx workers run as another user and need a world-accessible socket."""
    return os.geteuid() != 0


def build_single_model(settings: Settings) -> ServingApplication:
    """Fork-safe handlers load here, before the fork (memory shared copy-on-write); others in each worker."""
    slot = ModelSlot()
    app = create_app(settings, slot)
    readiness.report_starting(settings.run_dir, "requirements" if requirements.find(settings.model_dir) else "handler")
    handler = choose_handler(settings.model_dir, settings)
    if handler.fork_safe:
        readiness.report_starting(settings.run_dir, "load", handler.name)
        slot.servable = load_off_the_main_thread(settings, handler)
        # Keep the model's pages out of later collections, so forked workers share them. No collect()
        # first: 50 ms of start-up on this heap, and it frees holes into pages the workers share.
        gc.freeze()
        return ServingApplication(settings, app)

    def load_in_worker() -> None:
        readiness.report_starting(settings.run_dir, "load", f"{handler.name}, in each worker after fork")
        slot.servable = Servable.load(settings.model_dir, settings, handler=handler)

    return ServingApplication(settings, app, on_worker_start=load_in_worker)


def load_off_the_main_thread(settings: Settings, handler: Handler) -> Servable:
    """Load and warm up in a helper thread, so the master's main thread never owns an OpenMP pool.

    GNU OpenMP (xgboost, some sklearn estimators) binds its thread pool to the thread that first used
    it; a forked worker inherits that binding without the pool's threads, and a prediction on the
    worker's main thread then waits for them forever (seen with xgboost and one worker).
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="byoc-load") as pool:
        return pool.submit(Servable.load, settings.model_dir, settings, handler=handler).result()


def main() -> None:
    settings = load_settings()
    configure_logging(settings)
    try:
        if settings.multi_model:
            from byoc_serve.mme import build_multi_model

            application = build_multi_model(settings)
        else:
            application = build_single_model(settings)
    except Exception as exc:
        phase = getattr(exc, "phase", "load")
        reason = f"start-up failed in phase={phase}: {describe_load_failure(exc)}"
        log.critical("FATAL %s", reason, exc_info=True)
        readiness.mark_not_ready(settings.run_dir, reason)
        sys.exit(EXIT_LOAD_FAILED)
    application.run()


if __name__ == "__main__":
    main()
