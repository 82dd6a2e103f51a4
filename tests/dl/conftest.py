"""Tiny deep-learning artifacts, built once per test session, for the handler, stack and multi-model tests."""

from __future__ import annotations

from typing import Callable

import pytest

from dl_support import BUILDERS, Artifact


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Callable[[str], Artifact]:
    """``artifacts(name)`` builds the named model once per session and returns it."""
    built: dict[str, Artifact] = {}
    root = tmp_path_factory.mktemp("dl")

    def get(name: str) -> Artifact:
        if name not in built:
            builder, shape = BUILDERS[name]
            reference = builder(root / name)
            built[name] = Artifact(root / name, lambda rows, r=reference, s=shape: s(r(rows)))
        return built[name]

    return get
