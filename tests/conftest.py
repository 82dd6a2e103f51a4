import shutil
from pathlib import Path
from typing import Callable, Iterator

import pytest

from harness import ServeProcess, scratch_root


@pytest.fixture
def serve_factory() -> Iterator[Callable[..., ServeProcess]]:
    """Start real ``serve`` processes; every one is stopped (and its run dir removed) at teardown."""
    started: list[ServeProcess] = []

    def start(model_dir: Path | None = None, env: dict | None = None, wait_ready: bool = True, **kwargs) -> ServeProcess:
        server = ServeProcess(model_dir, env, **kwargs)
        started.append(server)
        return server.start(wait_ready=wait_ready)

    yield start
    for server in started:
        server.stop()
        shutil.rmtree(server.run_dir, ignore_errors=True)
        server.log_path.unlink(missing_ok=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus == 0:
        shutil.rmtree(scratch_root(), ignore_errors=True)
    elif not any(scratch_root().iterdir()):
        scratch_root().rmdir()


def pytest_terminal_summary(terminalreporter, exitstatus: int) -> None:  # type: ignore[no-untyped-def]
    if exitstatus != 0 and scratch_root().exists():
        terminalreporter.write_line(f"run dirs and serve logs kept in {scratch_root()}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if shutil.which("nginx") is None:
        raise pytest.UsageError("nginx is not installed: run the README's test command (bash .ci/setup.sh first)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failed test's report ends with the log tail of every server still running: a module's shared
    server outlives the test, and its log is the only record of what the stack did."""
    report = yield
    if report.failed:
        for server in ServeProcess.running:
            report.sections.append((f"serve log (tail) {server.url}", server.log_tail()))
    return report
