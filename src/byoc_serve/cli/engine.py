"""The Docker engine connection and the translation of its failures into CLI errors."""

from __future__ import annotations

import platform
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from byoc_serve.cli.exits import ENVIRONMENT, CliError

if TYPE_CHECKING:
    import docker

ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def docker_client() -> "docker.DockerClient":
    """A client for the engine named by DOCKER_HOST (or the default socket), checked with a ping."""
    import docker

    try:
        client = docker.from_env(timeout=900)  # pushes of large layers can take minutes per call
        client.ping()
    except docker.errors.DockerException as exc:
        raise CliError(
            f"cannot reach the Docker engine ({exc}); start it (CI: .ci/docker-engine.sh) or set DOCKER_HOST",
            ENVIRONMENT,
        ) from None
    return client


@contextmanager
def docker_errors(action: str) -> Iterator[None]:
    """Turn docker SDK and connection errors raised inside the block into one-line CliErrors."""
    import docker
    import requests

    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise CliError(f"{action}: image not found ({exc.explanation or exc}); build it first with `byoc build`") from None
    except docker.errors.APIError as exc:
        raise CliError(f"{action}: the Docker engine said: {exc.explanation or exc}") from None
    except (docker.errors.DockerException, requests.exceptions.ConnectionError) as exc:
        raise CliError(f"{action}: {exc}") from None


def host_platform() -> str:
    """This machine's platform in Docker's spelling, e.g. linux/amd64."""
    machine = platform.machine().lower()
    return f"linux/{ARCHITECTURES.get(machine, machine)}"


def image_platform(attrs: dict) -> str:
    """An image's platform from `docker image inspect` attributes, e.g. linux/arm64."""
    arch = ARCHITECTURES.get(attrs.get("Architecture", ""), attrs.get("Architecture", "unknown"))
    return f"{attrs.get('Os', 'linux')}/{arch}"
