import shutil
from typing import Callable, Iterator

import pytest

from harness import ServeProcess
from mme_support import start_mme


@pytest.fixture(scope="module")
def mme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One multi-model serve shared by a test module (default settings, its own cache directory)."""
    server = start_mme({"BYOC_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))})
    yield server
    server.stop()
    shutil.rmtree(server.run_dir, ignore_errors=True)


@pytest.fixture
def mme_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServeProcess]]:
    """Multi-model serves with their own settings; stopped at teardown."""
    started: list[ServeProcess] = []

    def start(**env: str) -> ServeProcess:
        env.setdefault("BYOC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        server = start_mme(env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
        shutil.rmtree(server.run_dir, ignore_errors=True)
