"""``serve``: the container entry. Starts nginx and the gunicorn master, forwards SIGTERM, and exits
(non-zero) as soon as either child dies, so the platform replaces a broken container."""

from __future__ import annotations

import argparse
import logging
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from byoc_serve import readiness
from byoc_serve.config import ConfigError, Settings, cpu_count, load_settings
from byoc_serve.logs import configure_logging
from byoc_serve.nginx_conf import write_nginx_conf

log = logging.getLogger("byoc_serve.serve")

DRAIN_SECONDS = 28  # SageMaker sends SIGKILL 30 s after SIGTERM
EXIT_CONFIG = 2
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="serve", description="Serve a model with the SageMaker hosting contract.")
    # SageMaker runs `docker run IMAGE serve`, so with ENTRYPOINT ["serve"] the word arrives again as an argument.
    parser.add_argument("command", nargs="?", choices=["serve"], help=argparse.SUPPRESS)
    parser.add_argument("--demo", action="store_true", help="serve the bundled demo model if no model directory exists")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        log.critical("FATAL start-up failed in phase=config: %s", exc)
        sys.exit(EXIT_CONFIG)
    configure_logging(settings)
    env = dict(os.environ)
    if args.demo and not settings.multi_model and not settings.model_dir.is_dir():
        from byoc_serve.demo import build_demo_model

        demo_dir = build_demo_model(settings.run_dir / "demo-model")
        env["BYOC_MODEL_DIR"] = str(demo_dir)
        settings = load_settings(env)
        log.info("demo model written to %s", demo_dir)
    sys.exit(Supervisor(settings, env).run())


class Supervisor:
    """Owns nginx and the gunicorn master: starts, watches, drains and reaps them."""

    def __init__(self, settings: Settings, env: dict[str, str]):
        self.settings = settings
        self.env = env
        self.children: dict[int, tuple[str, subprocess.Popen]] = {}
        self.stopping = False

    def run(self) -> int:
        s = self.settings
        log.info(
            "phase=config ok port=%d mode=%s cores=%d workers=%d threads=%d intra_op_threads=%d timeout=%ds max_payload=%dB",
            s.port, "multi-model" if s.multi_model else "single-model", cpu_count(), s.workers, s.threads,
            s.intra_op_threads, s.timeout_s, s.max_payload_bytes,
        )
        log.info("settings %s", s.describe())
        try:
            self.prepare_run_dir()
        except ConfigError as exc:
            log.critical("FATAL start-up failed in phase=config: %s", exc)
            return EXIT_CONFIG
        conf = write_nginx_conf(s)
        self.access_log = open_access_log_pipe(s.run_dir)
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        if s.multi_model:
            self.start("model-manager", [sys.executable, "-m", "byoc_serve.mme.manager"], self.child_env())
        self.start("gunicorn", [sys.executable, "-m", "byoc_serve.workers"], self.child_env())
        self.start("nginx", [s.nginx_bin, "-c", str(conf), "-e", "stderr"], self.env)
        return self.watch()

    def prepare_run_dir(self) -> None:
        run_dir = self.settings.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(run_dir, 0o755)
        closed = closed_ancestor(run_dir) if os.geteuid() == 0 else None
        if closed is not None:
            raise ConfigError(
                f"BYOC_RUN_DIR={run_dir}: nginx's workers (user nobody, as serve runs as root) cannot reach it "
                f"because {closed} is not searchable by others; use a directory under {Path(tempfile.gettempdir())} "
                f"or chmod o+x {closed}"
            )
        for stale in ("status", "models", "workers", "gunicorn.sock"):
            path = run_dir / stale
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        readiness.report_starting(run_dir, "config")

    def child_env(self) -> dict[str, str]:
        """Framework thread pools sized to each worker's share of the cores (unless the user set them)."""
        env = dict(self.env)
        for name in THREAD_VARIABLES:
            env.setdefault(name, str(self.settings.intra_op_threads))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, name: str, command: list[str], env: dict[str, str]) -> None:
        proc = subprocess.Popen(command, env=env)
        self.children[proc.pid] = (name, proc)
        log.info("started %s pid=%d", name, proc.pid)

    def on_signal(self, signum: int, frame: object) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("received %s: draining (at most %d s)", signal.Signals(signum).name, DRAIN_SECONDS)
        readiness.mark_not_ready(self.settings.run_dir, "shutting down")
        self.stop_children()

    def stop_children(self) -> None:
        for name, proc in self.children.values():
            if proc.returncode is None:
                # nginx: SIGQUIT is its graceful stop; gunicorn: SIGTERM finishes in-flight requests.
                proc.send_signal(signal.SIGQUIT if name == "nginx" else signal.SIGTERM)

    def watch(self) -> int:
        """Wait for the children; the first unexpected exit stops everything with a non-zero code."""
        exit_code = 0
        deadline: float | None = None
        while self.children:
            if self.stopping and deadline is None:
                deadline = time.monotonic() + DRAIN_SECONDS
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                if deadline is not None and time.monotonic() > deadline:
                    self.kill_remaining()
                self.relay_access_log(0.05)
                continue
            if pid not in self.children:
                continue
            name, proc = self.children.pop(pid)
            proc.returncode = os.waitstatus_to_exitcode(status)
            if self.stopping:
                log.info("%s stopped (exit %s)", name, proc.returncode)
                continue
            # The last line of a failed container's log should say why: the status the child left behind.
            log.critical(
                "FATAL %s exited unexpectedly with %s (%s); stopping the container",
                name, proc.returncode, readiness.last_status(self.settings.run_dir) or "no status recorded",
            )
            exit_code = proc.returncode if proc.returncode and proc.returncode > 0 else 1
            self.stopping = True
            readiness.mark_not_ready(self.settings.run_dir, f"{name} exited")
            self.stop_children()
        self.relay_access_log(0)
        log.info("serve exiting with %d", exit_code)
        return exit_code

    def relay_access_log(self, wait_s: float) -> None:
        """Copy what nginx wrote to the access-log pipe to our stdout, waiting at most ``wait_s``."""
        readable, _, _ = select.select([self.access_log], [], [], wait_s)
        if readable:
            try:
                data = os.read(self.access_log, 1 << 16)
            except BlockingIOError:
                return
            sys.stdout.buffer.write(data)
            sys.stdout.flush()

    def kill_remaining(self) -> None:
        for name, proc in self.children.values():
            if proc.returncode is None:
                log.warning("%s did not stop within %d s: killing it", name, DRAIN_SECONDS)
                proc.kill()


def closed_ancestor(path: Path) -> Path | None:
    """The first directory above ``path`` that others cannot search (nginx's workers read the run directory)."""
    for parent in reversed(path.resolve().parents):
        if not parent.stat().st_mode & stat.S_IXOTH:
            return parent
    return None


def open_access_log_pipe(run_dir: Path) -> int:
    """A FIFO for nginx's access log, read by serve and copied to its stdout.

    nginx reopens log paths, and reopening /dev/stdout fails for an unprivileged user when stdout is a
    pipe owned by someone else (docker run --user, CI runners). Opened read-write so nginx's open never blocks.
    """
    path = run_dir / "access.log"
    if path.exists():
        path.unlink()
    os.mkfifo(path, 0o600)
    return os.open(path, os.O_RDWR | os.O_NONBLOCK)


if __name__ == "__main__":
    main()
