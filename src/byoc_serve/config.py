"""The one settings object: every environment variable the runtime reads is read here, once."""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, TypeVar

T = TypeVar("T")

MIB = 1024 * 1024
PREDICT_METHODS = ("predict", "predict_proba", "decision_function")
CACHE_POLICIES = ("sagemaker", "lru")
DEVICES = ("auto", "cpu", "cuda")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
BATCH_STRATEGIES = ("SINGLE_RECORD", "MULTI_RECORD")
REQUIREMENTS_MODES = ("check", "install", "ignore")
TF_RESPONSES = ("plain", "tfserving")


class ConfigError(ValueError):
    """A setting is invalid; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """Typed, validated settings for one container start."""

    port: int = 8080
    safe_port_range: str | None = None
    model_dir: Path = Path("/opt/ml/model")
    run_dir: Path = Path(tempfile.gettempdir()) / "byoc-serve-8080"
    multi_model: bool = False
    handler: str | None = None
    program: str = "inference.py"
    requirements: str = "check"
    predict_method: str | None = None
    default_accept: str = "application/json"
    timeout_s: int = 60
    max_payload_bytes: int = 6 * MIB
    workers: int = 2
    threads: int = 1
    intra_op_threads: int = 1
    batch: bool = False
    batch_strategy: str = "MULTI_RECORD"
    max_concurrent_transforms: int = 2
    log_level: str = "INFO"
    log_format: str = "text"
    log_ping: bool = False
    device: str = "auto"
    tf_signature: str = "serving_default"
    tf_response: str = "plain"
    memory_budget_bytes: int | None = None
    memory_reserve_bytes: int = 256 * MIB
    cache_policy: str = "sagemaker"
    cache_dir: Path = Path(tempfile.gettempdir()) / "byoc-serve-cache-8080"
    disk_budget_bytes: int | None = None
    nginx_bin: str = "nginx"

    def describe(self) -> dict:
        """The settings as plain values for the start-up log (nothing here is secret)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items() }

    @property
    def max_payload_mb(self) -> int:
        return max(1, self.max_payload_bytes // MIB)


def _parse(env: Mapping[str, str], name: str, convert: Callable[[str], T], default: T) -> T:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return convert(raw.strip())
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{name}={raw!r} is invalid: {exc}") from None


def _bool(raw: str) -> bool:
    low = raw.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 < value < 65536:
        raise ValueError("must be a TCP port between 1 and 65535")
    return value


def _choice(options: tuple[str, ...], upper: bool = False) -> Callable[[str], str]:
    def convert(raw: str) -> str:
        value = raw.upper() if upper else raw.lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return convert


def _megabytes(raw: str) -> int:
    value = float(raw)
    if value <= 0:
        raise ValueError("must be a positive number of MiB")
    return int(value * MIB)


def cpu_count() -> int:
    """CPUs this process may use (affinity and cgroup quota aware)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    quota = Path("/sys/fs/cgroup/cpu.max")
    if quota.exists():
        limit, _, period = quota.read_text().partition(" ")
        if limit != "max":
            cpus = min(cpus, max(1, int(int(limit) / int(period))))
    return max(1, cpus)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise ConfigError naming the first bad variable."""
    env = os.environ if env is None else env
    port = _parse(env, "SAGEMAKER_BIND_TO_PORT", _port, 8080)
    batch = _parse(env, "SAGEMAKER_BATCH", _bool, False)
    cores = cpu_count()
    # Timeout: ours first, then the SageMaker toolkit's seconds variable, then its legacy one.
    timeout = _parse(env, "SAGEMAKER_MODEL_SERVER_TIMEOUT", _positive_int, 60)
    timeout = _parse(env, "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS", _positive_int, timeout)
    timeout = _parse(env, "BYOC_TIMEOUT", _positive_int, timeout)
    payload = _parse(env, "SAGEMAKER_MAX_PAYLOAD_IN_MB", _megabytes, 6 * MIB)
    payload = _parse(env, "BYOC_MAX_PAYLOAD_MB", _megabytes, payload)
    multi_model = _parse(env, "SAGEMAKER_MULTI_MODEL", _bool, False)
    workers = _parse(env, "SAGEMAKER_MODEL_SERVER_WORKERS", _positive_int, cores)
    workers = _parse(env, "BYOC_WORKERS", _positive_int, workers)
    # Each worker gets an equal share of the cores for framework threads (OMP/BLAS/torch).
    intra = _parse(env, "BYOC_INTRA_OP_THREADS", _positive_int, max(1, cores // workers))
    safe_range = env.get("SAGEMAKER_SAFE_PORT_RANGE") or None
    if safe_range is not None:
        _parse(env, "SAGEMAKER_SAFE_PORT_RANGE", _port_range, None)
    settings = Settings(
        port=port,
        safe_port_range=safe_range,
        model_dir=Path(env.get("BYOC_MODEL_DIR") or "/opt/ml/model"),
        run_dir=Path(env.get("BYOC_RUN_DIR") or Path(tempfile.gettempdir()) / f"byoc-serve-{port}"),
        multi_model=multi_model,
        handler=(env.get("BYOC_HANDLER") or None),
        program=env.get("SAGEMAKER_PROGRAM") or "inference.py",
        requirements=_parse(env, "BYOC_REQUIREMENTS", _choice(REQUIREMENTS_MODES), "check"),
        predict_method=_parse(env, "BYOC_PREDICT_METHOD", _choice(PREDICT_METHODS), None),
        default_accept=_parse(env, "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", _encodable, "application/json"),
        timeout_s=timeout,
        max_payload_bytes=payload,
        workers=workers,
        # One thread per worker serves small requests fastest; MME's load calls block for seconds.
        threads=_parse(env, "BYOC_THREADS", _positive_int, 4 if multi_model else 1),
        intra_op_threads=intra,
        batch=batch,
        batch_strategy=_parse(env, "SAGEMAKER_BATCH_STRATEGY", _choice(BATCH_STRATEGIES, upper=True), "MULTI_RECORD"),
        max_concurrent_transforms=_parse(env, "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", _positive_int, workers),
        log_level=_parse(env, "BYOC_LOG_LEVEL", _choice(LOG_LEVELS, upper=True), "INFO"),
        log_format=_parse(env, "BYOC_LOG_FORMAT", _choice(LOG_FORMATS), "text"),
        log_ping=_parse(env, "BYOC_LOG_PING", _bool, False),
        device=_parse(env, "BYOC_DEVICE", _choice(DEVICES), "auto"),
        tf_signature=env.get("BYOC_TF_SIGNATURE") or "serving_default",
        tf_response=_parse(env, "BYOC_TF_RESPONSE", _choice(TF_RESPONSES), "plain"),
        memory_budget_bytes=_parse(env, "BYOC_MEMORY_BUDGET_MB", _megabytes, None),
        memory_reserve_bytes=_parse(env, "BYOC_MEMORY_RESERVE_MB", _megabytes, 256 * MIB),
        cache_policy=_parse(env, "BYOC_CACHE_POLICY", _choice(CACHE_POLICIES), "sagemaker"),
        cache_dir=Path(env.get("BYOC_CACHE_DIR") or Path(tempfile.gettempdir()) / f"byoc-serve-cache-{port}"),
        disk_budget_bytes=_parse(env, "BYOC_DISK_BUDGET_MB", _megabytes, None),
        nginx_bin=env.get("BYOC_NGINX") or "nginx",
    )
    return settings


def _encodable(raw: str) -> str:
    from byoc_serve import codecs  # numpy: only when the variable is set, so serve starts fast

    media = codecs.parse_media_type(raw)
    if media not in codecs.ENCODABLE:
        raise ValueError(f"must be one of {', '.join(codecs.ENCODABLE)}")
    return media


def _port_range(raw: str) -> tuple[int, int]:
    low, sep, high = raw.partition("-")
    if not sep:
        raise ValueError("expected LOW-HIGH")
    lo, hi = _port(low), _port(high)
    if lo > hi:
        raise ValueError("LOW must not exceed HIGH")
    return lo, hi
