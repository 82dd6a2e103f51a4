"""The registry of models the manager knows about (loading, ready, unloading) and ``GET /models`` pages."""

from __future__ import annotations

import asyncio
import base64
import binascii
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from byoc_serve.archives import ArtifactSource
from byoc_serve.errors import BadRequest, ModelNotLoaded
from byoc_serve.mme.activity import Activity
from byoc_serve.mme.names import NAME_PATTERN

DEFAULT_PAGE = 100
MAX_PAGE = 1000


@dataclass(eq=False)
class ModelRecord:
    """One model and the process that holds it. States: loading → ready → unloading; the record
    leaves the registry when its process has exited (whatever the reason)."""

    name: str
    source: ArtifactSource
    target_model: str | None = None
    state: str = "loading"
    pid: int = 0
    pidfd: int = -1
    handler: str | None = None
    estimated: int = 0
    measured: int = 0
    admitted: bool = False
    loaded_at: float = 0.0
    disk_key: str | None = None
    activity: Activity = field(default_factory=Activity)
    link: socket.socket | None = None  # the manager's end of the socketpair, while loading
    exited: asyncio.Future | None = None

    @property
    def bytes(self) -> int:
        """What admission counts for this model: measured once loaded, estimated before."""
        return self.measured or self.estimated

    def last_used(self) -> float:
        return max(self.loaded_at, self.activity.last_used())

    def in_flight(self) -> int:
        return self.activity.in_flight()

    def summary(self) -> dict[str, Any]:
        return {"modelName": self.name, "modelUrl": self.source.url}

    def description(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "state": self.state,
            "handler": self.handler,
            "pid": self.pid,
            "memoryBytes": self.measured or None,
            "estimatedBytes": self.estimated,
            "inFlight": self.in_flight() if self.state == "ready" else 0,
            "idleSeconds": round(time.monotonic() - self.last_used(), 3) if self.state == "ready" else None,
            "targetModel": self.target_model,
        }


class Registry:
    def __init__(self) -> None:
        self.records: dict[str, ModelRecord] = {}

    def __iter__(self) -> Iterator[ModelRecord]:
        return iter(list(self.records.values()))

    def get(self, name: str) -> ModelRecord | None:
        return self.records.get(name)

    def add(self, record: ModelRecord) -> ModelRecord:
        assert record.name not in self.records
        self.records[record.name] = record
        return record

    def remove(self, record: ModelRecord) -> None:
        if self.records.get(record.name) is record:
            del self.records[record.name]

    def ready(self, name: str) -> ModelRecord:
        """The loaded model called ``name``, or 404."""
        record = self.records.get(name)
        if record is None or record.state != "ready":
            detail = f" (it is {record.state})" if record is not None else ""
            raise ModelNotLoaded(f"model {name} is not loaded{detail}")
        return record

    def page(self, limit: str | int | None, token: str | None) -> dict[str, Any]:
        """One page of loaded models in name order. The token is the last name of the previous page,
        so loads and unloads between calls never repeat or skip a model that stayed loaded."""
        size = _page_size(limit)
        names = sorted(name for name, record in self.records.items() if record.state == "ready")
        if token:
            after = _decode_token(token)
            names = [name for name in names if name > after]
        page = {"models": [self.records[name].summary() for name in names[:size]]}
        if len(names) > size:
            page["nextPageToken"] = _token(names[size - 1])
        return page


def _page_size(limit: str | int | None) -> int:
    if limit is None or limit == "":
        return DEFAULT_PAGE
    try:
        size = int(limit)
    except (TypeError, ValueError):
        raise BadRequest(f"limit={limit!r} is not an integer") from None
    if not 1 <= size <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}")
    return size


def _token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _decode_token(token: str) -> str:
    """The model name in a token this server issued; 400 for any other string, even one that decodes
    (base64 skips what is not in its alphabet: "!!!!" was the empty name, so the first page)."""
    try:
        name = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        name = ""
    if NAME_PATTERN.fullmatch(name) is None or _token(name) != token:
        raise BadRequest(f"next_page_token={token!r} is not a token this server issued")
    return name
