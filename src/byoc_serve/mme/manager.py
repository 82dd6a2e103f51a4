"""The model manager: ``python -m byoc_serve.mme.manager``, started by ``serve`` in multi-model mode.

One process owns the registry of models. It imports the installed frameworks once and forks a model
host per load, so each host shares those imports copy-on-write and holds little more than its model;
unloading ends the host, which gives its memory back. It runs on a single asyncio thread: every fork
happens from a one-thread process, and registry, admission and disk bookkeeping need no locks.
HTTP workers reach it over ``run_dir/manager.sock`` (see byoc_serve.mme.protocol).

Concurrency: loads of different models run in parallel (each in its own host); a second load of a
name that is loading or loaded gets 409 at once; DELETE of a name still loading gets 404.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import importlib.util
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from byoc_serve.archives import DiskCache, reading_artifact, resolve_url
from byoc_serve.config import Settings, load_settings
from byoc_serve.errors import BadRequest, InsufficientMemory, ModelAlreadyLoaded, ModelFailure, ServingError
from byoc_serve.logs import configure_logging
from byoc_serve.memory import MemoryBudget, Resident, estimate_bytes, plan_admission, process_footprint
from byoc_serve.mme import protocol
from byoc_serve.mme.host import HostApp, HostSpec, rehearse, run_host
from byoc_serve.mme.names import live_marker, socket_path, sockets_dir, validate_model_name
from byoc_serve.mme.registry import ModelRecord, Registry

log = logging.getLogger("byoc_serve.mme.manager")

LOAD_TIMEOUT_S = 360.0  # SageMaker waits this long for a load
SHUTDOWN_GRACE_S = 25.0  # serve drains for 28 s before SIGKILL
EXIT_START_FAILED = 4
# Imported before any fork so every host shares them. torch and TensorFlow are left out on purpose:
# they are large to import (and TensorFlow must not be initialised before a fork); hosts import them.
PRELOAD = {
    "numpy": ("numpy",),
    "joblib": ("joblib",),
    "sklearn": ("sklearn", "sklearn.linear_model", "sklearn.ensemble", "sklearn.tree", "sklearn.preprocessing", "sklearn.pipeline"),
    "xgboost": ("xgboost",),
}


class ModelManager:
    def __init__(self, settings: Settings, budget: MemoryBudget, disk: DiskCache):
        self.settings = settings
        self.budget = budget
        self.disk = disk
        self.registry = Registry()
        self.footprints: dict[str, int] = {}  # artifact identity → measured bytes, for reloads
        self.frameworks_ready: asyncio.Future | None = None  # resolves to the HostApp every host serves
        self.host_app: HostApp | None = None

    # Operations (one per RPC) ------------------------------------------------------------------
    async def dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "load":
            return await self.load(request.get("model_name"), request.get("url"), request.get("target_model"))
        if op == "unload":
            return await self.unload(self._name(request))
        if op == "get":
            return self.registry.ready(self._name(request)).description()
        if op == "list":
            return self.registry.page(request.get("limit"), request.get("next_page_token"))
        raise BadRequest(f"unknown operation {op!r}")

    def _name(self, request: dict[str, Any]) -> str:
        return validate_model_name(request.get("model_name"), self.settings.run_dir)

    async def load(self, name: Any, url: Any, target_model: str | None = None) -> dict[str, Any]:
        """Load ``name`` from ``url`` in a new host; returns only once it is loaded and warmed."""
        name = validate_model_name(name, self.settings.run_dir)
        existing = self.registry.get(name)
        if existing is not None:
            raise ModelAlreadyLoaded(f"model {name} is already {'loaded' if existing.state == 'ready' else existing.state}")
        source = resolve_url(url)
        record = self.registry.add(ModelRecord(name, source, target_model))
        started = time.perf_counter()
        try:
            await asyncio.wait_for(self._load(record), LOAD_TIMEOUT_S)
        except BaseException as exc:
            await self._discard(record)
            failure = _load_failure(exc)
            log.warning(
                "model load failed name=%s status=%d bytes_estimated=%d duration_ms=%.1f url=%s target_model=%s: %s",
                name, failure.status, record.estimated, _ms(started), source.url, target_model, failure.message,
            )
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise failure from None
        # Measuring takes ~10 ms (the kernel walks the host's page tables): do it right after answering.
        asyncio.get_running_loop().call_soon(self._measure, record, _ms(started))
        return record.description()

    def _measure(self, record: ModelRecord, duration_ms: float) -> None:
        """Replace the estimate by what the host really holds; remember it for reloads of the artifact."""
        if record.state != "ready":
            return
        try:
            record.measured = process_footprint(record.pid)
        except Exception:  # it already exited: _reap tells that story
            return
        self.footprints[record.source.identity] = record.measured
        log.info(
            "model loaded name=%s handler=%s pid=%d bytes_estimated=%d bytes_measured=%d duration_ms=%.1f url=%s target_model=%s",
            record.name, record.handler, record.pid, record.estimated, record.measured, duration_ms,
            record.source.url, record.target_model,
        )

    async def unload(self, name: str) -> dict[str, Any]:
        """End the host of ``name``; returns once the process is gone (its memory released)."""
        record = self.registry.ready(name)
        started = time.perf_counter()
        self._stop(record)
        await self._wait_exit(record)
        log.info(
            "model unloaded name=%s pid=%d bytes_estimated=%d bytes_measured=%d duration_ms=%.1f",
            name, record.pid, record.estimated, record.measured, _ms(started),
        )
        return {"modelName": name, "releasedBytes": record.measured}

    def _stop(self, record: ModelRecord) -> None:
        """Take a ready model out of service at once: new invokes get 404 from nginx, and the host
        finishes the requests it has in flight, then exits."""
        record.state = "unloading"
        self._withdraw(record)
        _signal(record, signal.SIGTERM)

    async def _wait_exit(self, record: ModelRecord) -> None:
        assert record.exited is not None
        try:
            await asyncio.wait_for(asyncio.shield(record.exited), self.settings.timeout_s + 5)
        except asyncio.TimeoutError:
            log.warning("model host did not exit after SIGTERM name=%s pid=%d: killing it", record.name, record.pid)
            _signal(record, signal.SIGKILL)
            await record.exited

    # Loading -------------------------------------------------------------------------------------
    async def _load(self, record: ModelRecord) -> None:
        assert self.frameworks_ready is not None
        self.host_app = await self.frameworks_ready
        if record.source.needs_extraction:
            record.disk_key = DiskCache.key(record.name, record.source)
            model_dir = self.disk.lookup(record.disk_key, record.name)
        else:
            model_dir = record.source.path
        if model_dir is not None:
            # Files at hand: admit (or refuse with 507, or evict) before any process exists.
            with reading_artifact(record.source.url):
                estimate = estimate_bytes(model_dir, self.settings)
            await self._admit(record, *estimate)
        self._spawn(record, model_dir)
        assert record.link is not None
        reader, writer = await asyncio.open_unix_connection(sock=record.link)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    raise await self._died_while_loading(record)
                message = protocol.decode(line)
                event = message.get("event")
                if event == "ready":
                    record.handler = message.get("handler")
                    break
                if event == "error":
                    protocol.body_of(message)  # raises the host's error
                writer.write(protocol.encode(protocol.ok(await self._answer(record, message))))
        finally:
            writer.close()
            record.link = None
        record.loaded_at = time.monotonic()
        record.state = "ready"

    async def _answer(self, record: ModelRecord, message: dict[str, Any]) -> dict[str, Any]:
        """The manager's side of one step of a host's load."""
        event = message.get("event")
        if event == "need_disk":
            assert record.disk_key is not None
            return {"dir": str(self.disk.reserve(record.disk_key, int(message["bytes"]), record.name))}
        if event == "extracted":
            assert record.disk_key is not None
            self.disk.complete(record.disk_key, int(message["bytes"]))
            return {}
        if event == "estimate":  # an archive, now extracted
            await self._admit(record, int(message["bytes"]), str(message.get("framework")))
            return {}
        raise ModelFailure(f"model host sent an unknown event {event!r}")

    async def _admit(self, record: ModelRecord, estimate: int, framework: str) -> None:
        """Reserve the model's memory in the budget, evicting idle models first under policy lru.
        A reload counts what the model really took last time instead of the handler's estimate."""
        record.estimated = self.footprints.get(record.source.identity, estimate)
        record.handler = framework
        residents = [
            Resident(r.name, r.bytes, r.last_used(), r.in_flight() > 0) for r in self.registry if r.state == "ready"
        ]
        committed = sum(
            r.bytes for r in self.registry
            if r is not record and (r.state == "unloading" or (r.state == "loading" and r.admitted))
        )
        victims = plan_admission(self.budget, record.estimated, residents, committed, self.settings.cache_policy)
        record.admitted = True
        if victims:
            await self._evict([self.registry.ready(name) for name in victims], record)

    async def _evict(self, victims: list[ModelRecord], admitted: ModelRecord) -> None:
        started = time.perf_counter()
        idle = {victim.name: time.monotonic() - victim.last_used() for victim in victims}
        for victim in victims:  # all stopped before the next await: nothing else can pick them meanwhile
            self._stop(victim)
        await asyncio.gather(*(self._wait_exit(victim) for victim in victims))
        for victim in victims:
            log.info(
                "model evicted name=%s pid=%d bytes_estimated=%d bytes_measured=%d duration_ms=%.1f idle_s=%.1f for=%s",
                victim.name, victim.pid, victim.estimated, victim.measured, _ms(started), idle[victim.name], admitted.name,
            )

    async def _died_while_loading(self, record: ModelRecord) -> ServingError:
        assert record.exited is not None
        code = await record.exited
        if code == -signal.SIGKILL:
            return InsufficientMemory(f"the process loading model {record.name} was killed (out of memory?)")
        return ModelFailure(f"the process loading model {record.name} exited with {code}")

    async def _discard(self, record: ModelRecord) -> None:
        """Undo a load that failed at any step."""
        if record.exited is None:  # never forked
            self.registry.remove(record)
            if record.disk_key is not None:
                self.disk.release(record.disk_key, record.name)
            record.activity.close()
            return
        _signal(record, signal.SIGKILL)
        await asyncio.shield(record.exited)

    # Processes ---------------------------------------------------------------------------------
    def _spawn(self, record: ModelRecord, model_dir: Path | None) -> None:
        assert self.host_app is not None
        if threading.active_count() != 1:
            log.warning("forking with %d threads alive", threading.active_count())
        parent_end, host_end = socket.socketpair()
        spec = HostSpec(record.name, record.source, model_dir, socket_path(self.settings.run_dir, record.name), admitted=record.admitted)
        manager_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            parent_end.close()
            self._close_siblings(record)
            run_host(spec, host_end, record.activity, self.host_app, self.settings, manager_pid)
        host_end.close()
        record.pid, record.link = pid, parent_end
        record.pidfd = os.pidfd_open(pid)
        loop = asyncio.get_running_loop()
        record.exited = loop.create_future()
        loop.add_reader(record.pidfd, self._reap, record)

    def _close_siblings(self, keep: ModelRecord) -> None:
        """In a new host: close what it inherited of other hosts (their links, pidfds, activity pages)."""
        for other in self.registry:
            if other is keep:
                continue
            if other.link is not None:
                other.link.close()
            if other.pidfd >= 0:
                os.close(other.pidfd)
            other.activity.close()

    def _withdraw(self, record: ModelRecord) -> None:
        """Stop nginx routing to the model's host: its marker first, so nginx no longer connects."""
        _unlink(live_marker(self.settings.run_dir, record.name))
        _unlink(socket_path(self.settings.run_dir, record.name))

    def _reap(self, record: ModelRecord) -> None:
        """The host exited (unload, failed load, crash, kill -9): forget it and free what it held."""
        loop = asyncio.get_running_loop()
        loop.remove_reader(record.pidfd)
        os.close(record.pidfd)
        record.pidfd = -1
        _, status = os.waitpid(record.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if record.state != "unloading":
            # A crash leaves its socket file behind; nginx would then answer 502. Make it 404 like unloaded.
            self._withdraw(record)
        self.registry.remove(record)
        if record.disk_key is not None:
            self.disk.release(record.disk_key, record.name)
        record.activity.close()
        if record.state == "ready":
            log.error(
                "model host exited unexpectedly name=%s pid=%d exit=%s bytes_measured=%d: removed from the registry",
                record.name, record.pid, code, record.measured,
            )
        assert record.exited is not None
        record.exited.set_result(code)

    async def shutdown(self) -> None:
        """Stop every host: ready ones drain their requests, loading ones are killed."""
        records = list(self.registry)
        for record in records:
            if record.exited is not None:
                _signal(record, signal.SIGTERM if record.state == "ready" else signal.SIGKILL)
                if record.state == "ready":
                    record.state = "unloading"
        pending = [asyncio.shield(r.exited) for r in records if r.exited is not None]
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=SHUTDOWN_GRACE_S)
        if late:
            for record in records:
                if record.exited is not None and not record.exited.done():
                    _signal(record, signal.SIGKILL)
            await asyncio.wait(late)

    # RPC ---------------------------------------------------------------------------------------
    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = protocol.decode(await reader.readline())
            reply = protocol.ok(await self.dispatch(request))
        except ServingError as exc:
            reply = protocol.error(exc)
        except Exception:
            log.exception("model manager request failed")
            reply = protocol.error(ServingError("internal error in the model manager; see its log"))
        try:
            writer.write(protocol.encode(reply))
            await writer.drain()
        except ConnectionError:
            pass  # the worker gave up waiting; the registry still tells the truth
        finally:
            writer.close()


def _load_failure(exc: BaseException) -> ServingError:
    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, asyncio.TimeoutError):
        return ModelFailure(f"the model did not finish loading within {LOAD_TIMEOUT_S:.0f} s")
    if isinstance(exc, asyncio.CancelledError):
        return ModelFailure("the load was cancelled (shutting down)")
    log.error("unexpected error while loading", exc_info=exc)
    return ModelFailure(f"{type(exc).__name__} while loading the model; see the manager log")


def _signal(record: ModelRecord, signum: int) -> None:
    try:
        signal.pidfd_send_signal(record.pidfd, signum)
    except (ProcessLookupError, OSError):
        pass  # already exited


def _unlink(path: os.PathLike) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def import_frameworks(settings: Settings) -> tuple[list[str], HostApp]:
    """Import the installed frameworks and the serving code hosts run, so forks share them; build and
    rehearse the app every host will serve."""
    imported = []
    for framework, modules in PRELOAD.items():
        if importlib.util.find_spec(framework) is None:
            continue
        try:
            for module in modules:
                importlib.import_module(module)
            imported.append(framework)
        except Exception as exc:  # a broken framework only costs its hosts a private import
            log.warning("could not pre-import %s: %s: %s", framework, type(exc).__name__, exc)
    from byoc_serve.selection import handler_classes

    handler_classes()  # imports the handler modules
    app = HostApp(settings)
    rehearse(app, settings)
    return imported, app


async def preimport_in_thread(settings: Settings) -> HostApp:
    """Import while the RPC socket already answers (list/get work from start-up); the thread is
    joined before the first fork, so forks still happen from a single-threaded process."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()

    def run() -> None:
        try:
            result = import_frameworks(settings)
        except BaseException as exc:
            loop.call_soon_threadsafe(done.set_exception, exc)
        else:
            loop.call_soon_threadsafe(done.set_result, result)

    started = time.perf_counter()
    thread = threading.Thread(target=run, name="preimport", daemon=True)
    thread.start()
    try:
        imported, app = await done
    finally:
        thread.join()
    gc.collect()
    gc.freeze()  # keep the imported objects' pages untouched by collections in the hosts
    log.info("frameworks pre-imported %s duration_ms=%.1f", imported, _ms(started))
    return app


async def run_manager(settings: Settings) -> None:
    budget = MemoryBudget.detect(settings)
    disk = DiskCache(settings.cache_dir, settings.disk_budget_bytes)
    manager = ModelManager(settings, budget, disk)
    sockets_dir(settings.run_dir).mkdir(parents=True, exist_ok=True)
    os.chmod(sockets_dir(settings.run_dir), 0o755)
    path = protocol.manager_socket(settings.run_dir)
    _unlink(path)
    server = await asyncio.start_unix_server(manager.handle_connection, path=str(path))
    os.chmod(path, 0o600)  # only our own HTTP workers talk to the manager
    manager.frameworks_ready = asyncio.ensure_future(preimport_in_thread(settings))
    log.info(
        "model manager listening socket=%s memory_budget=%s policy=%s cache_dir=%s disk_budget=%s",
        path, budget.describe(), settings.cache_policy, settings.cache_dir,
        "none" if settings.disk_budget_bytes is None else f"{settings.disk_budget_bytes} bytes",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("model manager stopping %d models", len(manager.registry.records))
    server.close()
    await manager.shutdown()
    _unlink(path)


def main() -> None:
    settings = load_settings()
    configure_logging(settings)
    try:
        asyncio.run(run_manager(settings))
    except (OSError, RuntimeError) as exc:  # e.g. the run or cache directory is unusable
        log.critical("FATAL the model manager could not start: %s: %s", type(exc).__name__, exc)
        sys.exit(EXIT_START_FAILED)


if __name__ == "__main__":
    main()
