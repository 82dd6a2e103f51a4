"""The memory budget for loaded models and the admission decision: does a model fit, and which idle
models (policy ``lru``) must go first. Pure bookkeeping; the model manager acts on the answer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import psutil

from byoc_serve.config import MIB, Settings
from byoc_serve.errors import InsufficientMemory
from model_handlers.base import Handler

CGROUP_ROOT = Path("/sys/fs/cgroup")
OVERCOMMIT_MODE = Path("/proc/sys/vm/overcommit_memory")
STRICT_OVERCOMMIT = "2"


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes the loaded models may use together, and where that number came from (for the log)."""

    total: int
    source: str

    @classmethod
    def detect(cls, settings: Settings, cgroup_root: Path = CGROUP_ROOT) -> "MemoryBudget":
        """BYOC_MEMORY_BUDGET_MB if set, else the container's memory limit minus BYOC_MEMORY_RESERVE_MB."""
        if settings.memory_budget_bytes is not None:
            return cls(settings.memory_budget_bytes, "BYOC_MEMORY_BUDGET_MB")
        limit, source = container_memory_limit(cgroup_root)
        return cls(max(0, limit - settings.memory_reserve_bytes), f"{source} minus BYOC_MEMORY_RESERVE_MB")

    def describe(self) -> str:
        return f"{self.total / MIB:.0f} MiB ({self.source})"


def container_memory_limit(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> tuple[int, str]:
    """The tightest memory limit on this process: cgroup v2 ``memory.max``, else v1
    ``memory.limit_in_bytes`` (at our cgroup or any ancestor visible here), else host memory."""
    host = psutil.virtual_memory().total
    v2, v1 = _own_cgroup_paths(proc_cgroup)
    limits = [(value, "cgroup v2 memory.max") for value in _limits(cgroup_root, v2, "memory.max")]
    if not limits:
        limits = [(value, "cgroup v1 memory.limit_in_bytes") for value in _limits(cgroup_root / "memory", v1, "memory.limit_in_bytes")]
    limits = [item for item in limits if item[0] < host]
    return min(limits) if limits else (host, "host memory")


def _own_cgroup_paths(proc_cgroup: Path) -> tuple[str, str]:
    """This process's cgroup path in the v2 hierarchy and in the v1 memory hierarchy ("/" if unknown)."""
    v2 = v1 = "/"
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return v2, v1
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _limits(mount: Path, own: str, filename: str) -> Iterable[int]:
    """Numeric limits in ``filename`` from our cgroup directory up to the mount root (whichever exist:
    inside a container only the root of the mount is usually visible)."""
    directory = mount / own.strip("/")
    candidates = [directory, *directory.parents]
    for candidate in candidates:
        if candidate != mount and mount not in candidate.parents:
            continue
        try:
            raw = (candidate / filename).read_text().strip()
        except OSError:
            continue
        if raw.isdigit():
            yield int(raw)


def estimate_bytes(model_dir: Path, settings: Settings) -> tuple[int, str]:
    """Admission estimate before anything is loaded: artifact bytes × the framework handler's factor.

    Sniffs framework handlers only: user ``code/inference.py`` is not imported here (importing it may
    itself take memory), and its handler uses the framework's factor anyway.
    """
    from byoc_serve.selection import framework_installed, handler_classes

    classes = handler_classes()
    chosen = Handler()
    if settings.handler in classes:
        chosen = classes[settings.handler]()
    else:
        for cls in classes.values():
            if framework_installed(cls) and (candidate := cls()).can_load(model_dir):
                chosen = candidate
                break
    return chosen.estimate_bytes(model_dir), chosen.name


def process_footprint(pid: int) -> int:
    """Memory only this process holds (USS): what ending it gives back. Pages shared copy-on-write with
    the pre-imported parent are not counted, so each model's own bytes are counted exactly once."""
    return psutil.Process(pid).memory_full_info().uss


@dataclass(frozen=True)
class Resident:
    """A loaded model as admission sees it."""

    name: str
    bytes: int
    last_used: float
    busy: bool


def plan_admission(budget: MemoryBudget, need: int, residents: list[Resident], committed: int, policy: str) -> list[str]:
    """Names of the models to evict so ``need`` more bytes fit; raises InsufficientMemory (507) if it cannot.

    ``committed`` is memory held by models that cannot be evicted now (loading or unloading).
    Policy ``sagemaker`` never evicts: SageMaker answers a 507 by unloading models itself.
    Policy ``lru`` evicts idle models, least recently used first, and never one with requests in flight.
    """
    used = committed + sum(r.bytes for r in residents)
    free = budget.total - used
    if need <= free:
        return []
    shortfall = (
        f"needs {_mib(need)} but only {_mib(max(free, 0))} of the {budget.describe()} budget is free "
        f"({len(residents)} models loaded)"
    )
    if need > budget.total:
        raise InsufficientMemory(f"{shortfall}; it is larger than the whole budget")
    if policy != "lru":
        raise InsufficientMemory(f"{shortfall}; unload a model and retry")
    victims: list[str] = []
    for resident in sorted((r for r in residents if not r.busy), key=lambda r: r.last_used):
        victims.append(resident.name)
        free += resident.bytes
        if need <= free:
            return victims
    busy = sum(1 for r in residents if r.busy)
    raise InsufficientMemory(f"{shortfall}; evicting every idle model would not make room ({busy} busy)")


def refusals_track_free_memory(mode_file: Path = OVERCOMMIT_MODE) -> bool:
    """Whether the kernel refuses an allocation because memory is in use (strict overcommit, mode 2).

    Otherwise (Linux's default heuristic, and "always") an allocation is refused only when it alone is
    larger than the machine could ever give, and memory running out kills the process instead.
    """
    try:
        return mode_file.read_text().strip() == STRICT_OVERCOMMIT
    except OSError:
        return False


def _mib(value: int) -> str:
    return f"{value / MIB:.1f} MiB"
