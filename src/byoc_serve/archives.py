"""Where a model's files come from, and the disk they may take.

A ``url`` is a directory (SageMaker's case: used in place, never copied, never written to), a
``model.tar.gz`` (checked member by member, then extracted into the cache directory), or an ``s3://``
URI of a ``model.tar.gz`` (downloaded into the cache directory first; standalone use). Extracted copies
live in a ``DiskCache`` with a byte budget; copies of unloaded models are deleted least recently used
first when space is needed.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import tarfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from byoc_serve.config import MIB
from byoc_serve.errors import BadRequest, ServingError

log = logging.getLogger("byoc_serve.archives")

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
BLOCK = 4096  # extracted files take whole filesystem blocks
COPY_NAME = re.compile(r"^[0-9a-f]{20}$")
S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(?P<key>.+)$")
CHUNK = 1024 * 1024
# The disk budget reserves room before writing, but the disk may be shared or the budget set too high.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class ArtifactNotFound(ServingError):
    status, kind = 404, "artifact_not_found"


class UnsafeArchive(BadRequest):
    kind = "unsafe_archive"


class InsufficientDisk(ServingError):
    status, kind = 507, "insufficient_disk"


@dataclass(frozen=True)
class ArtifactSource:
    """A validated ``url``: its kind, local path (directory/archive) and an identity for caches."""

    url: str
    kind: str  # "directory" | "archive" | "s3"
    path: Path | None
    identity: str  # changes when the artifact does (for remembered footprints and extracted copies)

    @property
    def needs_extraction(self) -> bool:
        return self.kind != "directory"


def resolve_url(url: str) -> ArtifactSource:
    """Classify ``url``; 400 if it is not a usable kind of artifact, 404 if it does not exist."""
    if not isinstance(url, str) or not url:
        raise BadRequest('"url" must be a non-empty string')
    if url.startswith("s3://"):
        if S3_URI.match(url) is None:
            raise BadRequest(f"{url!r} is not an s3://bucket/key URI")
        if not url.endswith(ARCHIVE_SUFFIXES):
            raise BadRequest(f"{url}: an s3:// url must name a model.tar.gz object")
        return ArtifactSource(url, "s3", None, url)
    if any(ord(c) < 32 for c in url):
        raise BadRequest("url contains control characters")
    path = Path(url)
    if not path.is_absolute():
        raise BadRequest(f"url {url!r} must be an absolute path or an s3:// URI")
    with reading_artifact(url):
        if path.is_dir():
            return ArtifactSource(url, "directory", path, str(path.resolve()))
        if path.is_file():
            if not path.name.endswith(ARCHIVE_SUFFIXES):
                raise BadRequest(f"{url} is a file but not a model.tar.gz archive (or a directory)")
            stat = path.stat()
            return ArtifactSource(url, "archive", path, f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    raise ArtifactNotFound(f"no model artifact at {url}")


@contextmanager
def reading_artifact(url: str) -> Iterator[None]:
    """Answer what the filesystem refuses about ``url`` or a file under it (permissions, a name too
    long) as the url's fault: 404 if nothing is there, else 400 naming the path and the reason."""
    try:
        yield
    except OSError as exc:
        path = str(exc.filename or url)
        where = path if path == url else f"{path} (in {url})"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise ArtifactNotFound(f"no model artifact at {where}") from None
        raise BadRequest(f"cannot read {where}: {exc.strerror or exc}", kind="unusable_artifact") from None


def inspect_archive(path: Path) -> int:
    """Check every member is safe to extract and return the disk bytes extraction needs.

    Rejected with 400: absolute names, ``..`` components, links pointing outside the archive,
    devices and FIFOs. Nothing is written.
    """
    total = 0
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                check_member(member)
                total += -(-member.size // BLOCK) * BLOCK + BLOCK
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BadRequest(f"{path.name} is not a readable tar archive: {exc}") from None
    return total


def check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    if name.startswith("/") or ".." in name.split("/"):
        raise UnsafeArchive(f"archive member {name!r} would be written outside the model directory")
    if member.isdev() or member.isfifo():
        raise UnsafeArchive(f"archive member {name!r} is a device or FIFO")
    if member.issym() or member.islnk():
        # SageMaker's own extraction of model.tar.gz fails on links, so an archive that works here would
        # fail there; links are refused outright (which also rules out links leaving the directory).
        raise UnsafeArchive(f"archive member {name!r} is a link to {member.linkname!r}; SageMaker cannot extract links")


# The "data" filter is a second guard (drops set-uid bits, odd permissions, foreign owners). Pythons
# before 3.11.4 (Debian 12's 3.11.2) lack it: extracting without attributes gives the same result.
SAFE_EXTRACT = {"filter": "data"} if hasattr(tarfile, "data_filter") else {"set_attrs": False}


def extract_archive(path: Path, destination: Path) -> int:
    """Extract a checked archive into ``destination`` (created); returns the bytes written."""
    _remove(destination)  # a stale partial copy from a load that was killed
    destination.mkdir(parents=True)
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                check_member(member)  # the archive may have changed since inspect_archive
                tar.extract(member, destination, **SAFE_EXTRACT)
    except (tarfile.TarError, EOFError) as exc:
        raise BadRequest(f"{path.name} could not be extracted: {exc}") from None
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise InsufficientDisk(f"{destination.parent} filled up while {path.name} was extracted: {exc.strerror}") from None
        raise
    return directory_bytes(destination)


def directory_bytes(directory: Path) -> int:
    return sum(-(-p.stat().st_size // BLOCK) * BLOCK for p in directory.rglob("*") if p.is_file() and not p.is_symlink())


def s3_object_size(uri: str, client: Any = None) -> int:
    """Size of the s3:// object (HEAD); 404 if it does not exist, 400 if it cannot be read."""
    bucket, key = _split_s3(uri)
    try:
        return int(_s3(client).head_object(Bucket=bucket, Key=key)["ContentLength"])
    except Exception as exc:  # botocore's errors are only importable where boto3 is installed
        raise _s3_error(uri, exc) from None


def download_s3(uri: str, destination: Path, client: Any = None) -> int:
    """Stream the s3:// object into ``destination``; returns its size."""
    bucket, key = _split_s3(uri)
    try:
        body = _s3(client).get_object(Bucket=bucket, Key=key)["Body"]
        written = 0
        with destination.open("wb") as out:
            for chunk in iter(lambda: body.read(CHUNK), b""):
                out.write(chunk)
                written += len(chunk)
        return written
    except ServingError:
        raise
    except Exception as exc:
        destination.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            raise InsufficientDisk(f"{destination.parent} filled up while {uri} was downloaded: {exc.strerror}") from None
        raise _s3_error(uri, exc) from None


def _split_s3(uri: str) -> tuple[str, str]:
    match = S3_URI.match(uri)
    if match is None:
        raise BadRequest(f"{uri!r} is not an s3://bucket/key URI")
    return match["bucket"], match["key"]


def _s3(client: Any) -> Any:
    if client is not None:
        return client
    try:
        import boto3
    except ImportError:
        raise BadRequest("s3:// urls need boto3: pip install 'byoc-serve[s3]'") from None
    return boto3.client("s3")


def _s3_error(uri: str, exc: Exception) -> ServingError:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
        return ArtifactNotFound(f"no object at {uri}")
    return BadRequest(f"cannot read {uri}: {type(exc).__name__}: {exc}")


@dataclass
class CachedCopy:
    """One extracted artifact in the cache directory."""

    directory: Path
    bytes: int
    users: set[str] = field(default_factory=set)
    complete: bool = False
    last_used: float = field(default_factory=time.monotonic)


class DiskCache:
    """Extracted copies under ``root`` within ``budget`` bytes (None: only free space limits them).

    Keys combine the model name and the artifact's identity, so a reload of the same model reuses its
    copy and two models never share a directory that one of them is still writing.
    """

    def __init__(self, root: Path, budget: int | None):
        self.root = Path(root)
        self.budget = budget
        self.copies: dict[str, CachedCopy] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = (self.root / ".lock").open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"BYOC_CACHE_DIR={self.root} is in use by another running serve; give each its own") from None
        for leftover in self.root.iterdir():  # copies from a previous run are not tracked: drop them
            if COPY_NAME.match(leftover.name.split(".")[0]):
                _remove(leftover)

    @staticmethod
    def key(name: str, source: ArtifactSource) -> str:
        return hashlib.sha256(f"{name}\0{source.identity}".encode()).hexdigest()[:20]

    def lookup(self, key: str, user: str) -> Path | None:
        """The complete copy for ``key`` (now in use by ``user``), if there is one."""
        copy = self.copies.get(key)
        if copy is None or not copy.complete:
            return None
        copy.users.add(user)
        copy.last_used = time.monotonic()
        return copy.directory

    def reserve(self, key: str, nbytes: int, user: str) -> Path:
        """Make room for ``nbytes`` under ``key`` (deleting unused copies, LRU first); 507 if impossible.

        Called again for the same key to grow a reservation (download, then extraction).
        """
        copy = self.copies.get(key)
        held = copy.bytes if copy is not None else 0
        extra = max(0, nbytes - held)
        while not self._fits(extra):
            victim = self._least_recently_used_unused(exclude=key)
            if victim is None:
                raise self._shortfall(nbytes, extra)
            self.evict(victim)
        if copy is None:
            copy = self.copies[key] = CachedCopy(self.root / key, 0)
        copy.bytes = max(copy.bytes, nbytes)
        copy.users.add(user)
        copy.last_used = time.monotonic()
        return copy.directory

    def complete(self, key: str, nbytes: int) -> None:
        copy = self.copies[key]
        copy.complete, copy.bytes = True, nbytes

    def release(self, key: str, user: str) -> None:
        """``user`` no longer needs the copy; an incomplete copy (failed load) is deleted at once."""
        copy = self.copies.get(key)
        if copy is None:
            return
        copy.users.discard(user)
        copy.last_used = time.monotonic()
        if not copy.complete and not copy.users:
            self.evict(key)

    def evict(self, key: str) -> None:
        copy = self.copies.pop(key)
        started = time.perf_counter()
        _remove(copy.directory)
        _remove(download_path(copy.directory))
        log.info(
            "extracted copy deleted dir=%s bytes=%d duration_ms=%.1f",
            copy.directory, copy.bytes, (time.perf_counter() - started) * 1000,
        )

    def used_bytes(self) -> int:
        return sum(copy.bytes for copy in self.copies.values())

    def _fits(self, extra: int) -> bool:
        if self.budget is not None and self.used_bytes() + extra > self.budget:
            return False
        return extra <= shutil.disk_usage(self.root).free

    def _least_recently_used_unused(self, exclude: str) -> str | None:
        unused = [(c.last_used, k) for k, c in self.copies.items() if not c.users and c.complete and k != exclude]
        return min(unused)[1] if unused else None

    def _shortfall(self, nbytes: int, extra: int) -> InsufficientDisk:
        free = shutil.disk_usage(self.root).free
        budget = "none" if self.budget is None else f"{self.budget / MIB:.1f} MiB with {self.used_bytes() / MIB:.1f} MiB in use"
        return InsufficientDisk(
            f"not enough disk in {self.root}: {extra} more bytes needed ({nbytes} in all) "
            f"for the extracted model; {free} bytes free, BYOC_DISK_BUDGET_MB budget {budget}, "
            "and no extracted copy of an unloaded model is left to delete"
        )


def download_path(copy_directory: Path) -> Path:
    """Where an s3 archive is downloaded before extraction (next to, never inside, its copy)."""
    return copy_directory.with_name(copy_directory.name + ".download")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
