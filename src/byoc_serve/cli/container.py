"""A serving container started the way SageMaker starts one: `serve`, /opt/ml mounts, its env vars."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from byoc_serve.cli.exits import USAGE, CliError
from byoc_serve.cli.staging import SINGLE_MODEL_DIR, container_path

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

SAGEMAKER_PORT = 8080
STOP_GRACE_SECONDS = 30  # SageMaker sends SIGKILL 30 s after SIGTERM


@dataclass
class ServingSpec:
    """What to run: the image, the model mounts, the port and any extra environment."""

    image: str
    port: int = SAGEMAKER_PORT
    model_dir: Path | None = None
    models: dict[str, Path] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None

    @property
    def multi_model(self) -> bool:
        return self.model_dir is None

    def environment(self) -> dict[str, str]:
        """SageMaker's variables for this mode; SAGEMAKER_BIND_TO_PORT only off the default port."""
        env: dict[str, str] = {}
        if self.port != SAGEMAKER_PORT:
            env["SAGEMAKER_BIND_TO_PORT"] = str(self.port)
        if self.multi_model:
            env["SAGEMAKER_MULTI_MODEL"] = "true"
        env.update(self.env)
        return env

    def volumes(self) -> dict[str, dict[str, str]]:
        """Read-only bind mounts, as SageMaker gives the container read-only model directories."""
        if self.model_dir is not None:
            return {str(self.model_dir): {"bind": SINGLE_MODEL_DIR, "mode": "ro"}}
        return {str(path): {"bind": container_path(name), "mode": "ro"} for name, path in self.models.items()}


def start(client: "docker.DockerClient", spec: ServingSpec, name: str | None = None) -> "Container":
    """Start `serve` detached on the host network (the only network on CI machines)."""
    return client.containers.run(
        spec.image,
        command=["serve"],
        environment=spec.environment(),
        volumes=spec.volumes(),
        network_mode="host",
        user=spec.user,
        name=name,
        labels={"byoc-serve.cli": "serving"},
        detach=True,
    )


def stop(container: "Container", grace: int = STOP_GRACE_SECONDS) -> tuple[int, float]:
    """SIGTERM, SIGKILL after `grace` seconds (what SageMaker does); returns (exit code, seconds)."""
    started = time.monotonic()
    container.stop(timeout=grace)
    status = container.wait(timeout=grace + 30)
    return int(status.get("StatusCode", -1)), time.monotonic() - started


def remove(container: "Container") -> None:
    """Best-effort removal; a container that is already gone is fine."""
    import docker

    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass


def exit_code(container: "Container") -> int | None:
    """The container's exit code if it has stopped, else None."""
    container.reload()
    if container.status in ("exited", "dead"):
        return int(container.attrs["State"]["ExitCode"])
    return None


def log_tail(container: "Container", lines: int = 40) -> str:
    return container.logs(tail=lines).decode(errors="replace")


def free_port() -> int:
    """A TCP port nothing listens on right now (loopback)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def parse_env(pairs: list[str] | None) -> dict[str, str]:
    """K=V arguments (repeatable --env) as a dict; a missing '=' is a usage error."""
    env: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--env {pair!r}: expected KEY=VALUE", USAGE)
        env[key] = value
    return env
