"""SageMaker model archives: write them the way the platform extracts them, and read them safely.

SageMaker extracts model.tar.gz into /opt/ml/model; an archive with links or paths that climb out
of that directory fails there ("Failed to extract model data archive") or is a security hole.
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path
from typing import IO, Callable, Iterable

from byoc_serve.archives import ARCHIVE_SUFFIXES, SAFE_EXTRACT, UnsafeArchive, check_member

__all__ = ["ARCHIVE_SUFFIXES", "UnsafeArchive", "check_member", "extract", "is_archive", "write"]

FAST_GZIP_LEVEL = 1  # the SDK's level 9 costs minutes on large weights for a few percent of size


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES)


def extract(archive: Path, dest: Path) -> Path:
    """Extract a model archive into dest after checking every member; everything ends up world-readable
    so containers started with an unprivileged --user can read it."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                check_member(member)
            for member in members:
                tar.extract(member, dest, **SAFE_EXTRACT)
    except (tarfile.TarError, EOFError) as exc:
        raise UnsafeArchive(f"{archive.name} is not a readable tar archive: {exc}") from None
    make_readable(dest)
    return dest


def make_readable(root: Path) -> None:
    """chmod a+rX below root (directories searchable, files readable)."""
    os.chmod(root, os.stat(root).st_mode | 0o755)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            os.chmod(path, os.stat(path).st_mode | 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            os.chmod(path, os.stat(path).st_mode | 0o444)


def normalized(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """Root-owned, world-readable entries: the same archive extracts the same way for every user."""
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    executable = member.isdir() or member.mode & stat.S_IXUSR
    member.mode = 0o755 if executable else 0o644
    return member


def write(
    out: IO[bytes],
    entries: Iterable[tuple[tarfile.TarInfo, Callable[[], IO[bytes]] | None]],
    level: int = FAST_GZIP_LEVEL,
    on_bytes: Callable[[int], None] | None = None,
) -> int:
    """Write entries (header, opener of the contents or None for directories) as a gzip tarball.

    Returns the number of entries written.
    """
    count = 0
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=level, format=tarfile.PAX_FORMAT) as tar:
        for member, opener in entries:
            check_member(member)
            if opener is None:
                tar.addfile(normalized(member))
            else:
                with opener() as contents:
                    tar.addfile(normalized(member), _Counting(contents, on_bytes) if on_bytes else contents)
            count += 1
    return count


class _Counting:
    """A file wrapper that reports how many bytes were read (drives the progress bar)."""

    def __init__(self, raw: IO[bytes], on_bytes: Callable[[int], None]):
        self.raw = raw
        self.on_bytes = on_bytes

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.on_bytes(len(data))
        return data
