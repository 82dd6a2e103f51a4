"""A model host: the process that holds one model and serves ``POST /invoke`` on its own unix socket.

Forked from the model manager, so the pre-imported frameworks are shared copy-on-write. While it loads
it reports each step to the manager and waits for the answer (disk for an archive, then admission of
the memory estimate), so a load that does not fit is refused before the model is loaded. Then it loads
and warms the model, binds the socket nginx routes ``/models/{name}/invoke`` to, and says "ready".
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, NoReturn

from flask import Flask

from byoc_serve.app import InvokeRoute, ModelSlot
from byoc_serve.archives import (
    ArtifactSource,
    download_path,
    download_s3,
    extract_archive,
    inspect_archive,
    s3_object_size,
)
from byoc_serve.config import Settings
from byoc_serve.errors import BadRequest, InsufficientMemory, ServingError, describe_load_failure
from byoc_serve.flask_app import install_error_handlers
from byoc_serve.memory import OVERCOMMIT_MODE, estimate_bytes, refusals_track_free_memory
from byoc_serve.mme import protocol
from byoc_serve.mme.activity import Activity
from byoc_serve.mme.host_server import HostServer
from byoc_serve.mme.names import live_marker
from byoc_serve.servable import Servable
from model_handlers.base import Context, Handler

log = logging.getLogger("byoc_serve.mme.host")

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class HostSpec:
    name: str
    source: ArtifactSource
    model_dir: Path | None  # None: the archive must be fetched and extracted first
    socket: Path
    admitted: bool = False  # the manager already admitted the memory estimate


class ManagerLink:
    """The host's end of the socketpair to the manager (blocking: the host has nothing else to do)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.stream = sock.makefile("rwb")

    def ask(self, event: str, **fields: Any) -> dict[str, Any]:
        self.tell(event, **fields)
        line = self.stream.readline()
        if not line:  # the manager gave up on this load (or died): nothing left to do
            os._exit(1)
        return protocol.body_of(protocol.decode(line))

    def tell(self, event: str, **fields: Any) -> None:
        self.stream.write(protocol.encode({"event": event, **fields}))
        self.stream.flush()

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


def run_host(
    spec: HostSpec, link_socket: socket.socket, activity: Activity, app: HostApp, settings: Settings, manager_pid: int
) -> NoReturn:
    """The whole life of a host, in the child right after the fork. Never returns: SIGTERM ends it
    with 0 once requests in flight are done, anything else with 1."""
    try:
        _tie_to_manager(manager_pid)
        link = ManagerLink(link_socket)
        try:
            servable = load_model(spec, link, settings)
            app.hold(spec.name, servable, activity)
            server = bind_server(spec.socket, app, settings)
            marker = live_marker(settings.run_dir, spec.name)
            marker.touch()
            os.chmod(marker, 0o644)  # nginx's workers may run as another user
        except BaseException as exc:
            failure = as_load_failure(exc)
            link.tell("error", **protocol.error(failure))
            if failure.status >= 500:
                log.error("model load failed name=%s: %s", spec.name, failure.message, exc_info=exc)
            raise
        # Blocked from here on, in every thread serve starts: SIGTERM waits for serve's sigwait.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        link.tell("ready", handler=servable.handler.name)
        link.close()
        serve(server, activity, settings)
    except BaseException:
        pass
    finally:
        os._exit(1)


def _tie_to_manager(manager_pid: int) -> None:
    """Die with the manager; leave SIGINT (a terminal's Ctrl-C) to it and drop its asyncio wake-up fd."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != manager_pid:  # it died before prctl took effect
        os._exit(1)


def load_model(spec: HostSpec, link: ManagerLink, settings: Settings) -> Servable:
    """Fetch (if needed), get the memory estimate admitted, then load and warm the model."""
    model_dir = spec.model_dir or fetch_artifact(spec.source, link)
    if not spec.admitted:
        estimate, framework = estimate_bytes(model_dir, settings)
        link.ask("estimate", bytes=estimate, framework=framework)
    servable = Servable.load(model_dir, settings, name=spec.name)
    gc.collect()
    gc.freeze()  # later collections skip the model's objects instead of touching their pages
    return servable


def fetch_artifact(source: ArtifactSource, link: ManagerLink, s3_client: Any = None) -> Path:
    """Download (s3) and extract the archive into the disk cache, asking the manager for room first."""
    downloaded = 0
    archive = source.path
    if source.kind == "s3":
        downloaded = s3_object_size(source.url, s3_client)
        archive = download_path(Path(link.ask("need_disk", bytes=downloaded)["dir"]))
        download_s3(source.url, archive, s3_client)
    assert archive is not None
    needed = inspect_archive(archive)
    copy = Path(link.ask("need_disk", bytes=downloaded + needed)["dir"])
    written = extract_archive(archive, copy)
    if source.kind == "s3":
        archive.unlink()
    link.ask("extracted", bytes=written)
    return copy


def as_load_failure(exc: BaseException, overcommit_mode: Path = OVERCOMMIT_MODE) -> ServingError:
    """The status a failed load answers with: the artifact's fault is a 400, lack of memory a 507.

    A ``MemoryError`` is the artifact's fault unless the kernel refuses allocations for lack of free
    memory: otherwise one allocation asked for more than the machine has, which a corrupt pickle does
    when a length field is garbage, and unloading other models would not help.
    """
    if isinstance(exc, ServingError):
        return exc
    phase = getattr(exc, "phase", "load")
    if isinstance(exc, MemoryError) and refusals_track_free_memory(overcommit_mode):
        return InsufficientMemory("the model ran out of memory while loading")
    return BadRequest(f"the model could not be loaded (phase {phase}): {describe_load_failure(exc)}", kind="unusable_artifact")


class CountedBody:
    """Keeps a request counted as in flight until its response has been sent."""

    def __init__(self, body: Iterable[bytes], activity: Activity):
        self.body = body
        self.activity = activity

    def __iter__(self):
        return iter(self.body)

    def close(self) -> None:
        try:
            if hasattr(self.body, "close"):
                self.body.close()
        finally:
            self.activity.end()


class HostApp:
    """The WSGI app every host serves ``POST /invoke`` with. Built once, in the manager before any fork
    (werkzeug compiles a route in ~10 ms); a host only tells it which model it holds."""

    def __init__(self, settings: Settings):
        self.slot = ModelSlot()
        self.activity: Activity | None = None
        app = Flask("byoc_serve.host", static_folder=None)
        install_error_handlers(app)
        self.route = InvokeRoute("/invoke", self.slot, app, settings.max_payload_bytes)

    def hold(self, name: str, servable: Servable, activity: Activity) -> None:
        activity.attach()
        self.slot.name, self.slot.servable, self.activity = name, servable, activity

    def __call__(self, environ: dict, start_response: Any) -> Iterable[bytes]:
        activity = self.activity
        assert activity is not None
        activity.begin()
        try:
            return CountedBody(self.route(environ, start_response), activity)
        except BaseException:
            activity.end()
            raise


def bind_server(path: Path, app: HostApp, settings: Settings) -> HostServer:
    """The model's socket, served by BYOC_THREADS threads: requests for one model overlap in one process."""
    return HostServer(path, app, settings.threads, settings.max_payload_bytes, settings.timeout_s)


def serve(server: HostServer, activity: Activity, settings: Settings) -> NoReturn:
    """Serve until SIGTERM (blocked by the caller); then let requests in flight finish (the manager
    already removed the socket file, so no new ones arrive) and exit at once, without tearing down the
    heap object by object.

    sigwait, not a handler and ``signal.pause()``: a SIGTERM handled just before pause() was entered
    left the host asleep until the manager's SIGKILL 65 s later (1 in ~3,000 starts under load).
    """
    server.start()
    signal.sigwait({signal.SIGTERM})
    deadline = time.monotonic() + settings.timeout_s
    while activity.in_flight() > 0 and time.monotonic() < deadline:
        time.sleep(0.002)
    os._exit(0)


class _EchoHandler(Handler):
    name = "rehearsal"

    def predict(self, model: Any, data: Any, context: Context) -> Any:
        return data


def rehearse(app: HostApp, settings: Settings) -> None:
    """Serve one request the way a host does, in the manager before any fork.

    Lazy imports, regex and resolver caches and first-call allocations then live in the manager and are
    shared by every host, instead of costing each host its own copy (measured here: ~1.5 MiB and, on a
    busy machine, ~40 ms less per model load).
    """
    with tempfile.TemporaryDirectory(prefix="byoc-rehearsal-") as tmp:
        context = Context(model_dir=Path(tmp), settings=settings, model_name="rehearsal")
        app.hold("rehearsal", Servable(_EchoHandler(), None, context), Activity())
        server = bind_server(Path(tmp) / "rehearsal.sock", app, settings)
        client, handler_end = socket.socketpair()
        with client, handler_end:
            body = b"1,2,3,4"
            client.sendall(
                b"POST /invoke HTTP/1.1\r\nHost: rehearsal\r\nContent-Type: text/csv\r\nAccept: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            server.handle(handler_end)  # in this thread: the manager forks with no other threads
            status = client.recv(64).split(b" ", 2)[1]
        server.close()
        if status != b"200":
            log.warning("host rehearsal answered %s", status.decode())
    _warm_sklearn()


def _warm_sklearn() -> None:
    """One fit and predict: sklearn's and BLAS's first-call set-up, done once for all hosts."""
    try:
        import numpy as np
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        return
    features = np.linspace(0, 1, 40).reshape(10, 4)
    LogisticRegression().fit(features, np.arange(10) % 2).predict(features)
