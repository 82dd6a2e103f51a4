"""`byoc package`: write a model.tar.gz that SageMaker extracts cleanly and quickly."""

from __future__ import annotations

import argparse
import os
import tarfile
import time
from pathlib import Path
from typing import IO, Callable, Iterator

from byoc_serve.cli import archive
from byoc_serve.cli.exits import CHECK_FAILED, OK, USAGE, CliError
from byoc_serve.cli.output import Progress, human_bytes, say

Entry = tuple[tarfile.TarInfo, Callable[[], IO[bytes]] | None]

HELP = "write a SageMaker model.tar.gz (no links, code under code/, fast compression)"
DESCRIPTION = """\
Package a model directory as model.tar.gz for ModelDataUrl. Symbolic links to files inside the
directory are stored as regular files; links to directories or to anything outside it are refused
(SageMaker cannot extract links). Inference code goes under code/ (--code copies a directory there).
Compression is fast (gzip level 1) because level 9 costs minutes on large weights for little gain.
Given an existing archive instead of a directory, it is checked and rewritten the same way.
Exit codes: 0 written, 1 refused (unsafe content), 2 usage error."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("package", help=HELP, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="model directory (or an existing archive to check and rewrite)")
    parser.add_argument("-o", "--output", type=Path, default=Path("model.tar.gz"), help="archive to write (default: model.tar.gz)")
    parser.add_argument("--code", type=Path, help="directory with inference.py (and requirements.txt) to store under code/")
    parser.add_argument("--level", type=int, default=archive.FAST_GZIP_LEVEL, choices=range(0, 10), metavar="0-9",
                        help=f"gzip level (default {archive.FAST_GZIP_LEVEL})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    source: Path = args.source
    if not source.exists():
        raise CliError(f"{source} does not exist", USAGE)
    if args.code is not None and not args.code.is_dir():
        raise CliError(f"--code {args.code} is not a directory", USAGE)
    output = args.output.resolve()
    started = time.monotonic()
    try:
        if source.is_dir():
            entries = list(directory_entries(source.resolve(), args.code, skip=output))
        elif archive.is_archive(source):
            if args.code is not None:
                raise CliError("--code applies to a directory source, not an archive", USAGE)
            entries = None
        else:
            raise CliError(f"{source} is neither a directory nor a .tar.gz archive", USAGE)
        _warn_about_layout(source, args.code)
        partial = output.with_name(output.name + ".partial")
        with open(partial, "wb") as out:
            if entries is None:
                count, total = _rewrite(source, out, args.level)
            else:
                total = sum(m.size for m, _ in entries)
                progress = Progress(f"packaging {source}", total)
                count = archive.write(out, entries, args.level, progress.advance)
                progress.done(f"{count} entries, {human_bytes(total)}")
        os.replace(partial, output)
    except archive.UnsafeArchive as exc:
        _remove_partial(output)
        raise CliError(f"refused: {exc}", CHECK_FAILED) from None
    elapsed = time.monotonic() - started
    size = output.stat().st_size
    print(f"wrote {output} ({count} entries, {human_bytes(total)} → {human_bytes(size)}, {elapsed:.1f}s, gzip level {args.level})")
    return OK


def directory_entries(root: Path, code: Path | None, skip: Path) -> Iterator[Entry]:
    """Archive entries for a model directory, plus --code under code/, in sorted order."""
    if code is not None and (root / "code").exists():
        raise CliError(f"{root} already has code/; drop --code or remove that directory", USAGE)
    yield from _walk(root, "", skip)
    if code is not None:
        code_root = code.resolve()
        yield _directory_entry("code", code_root)
        yield from _walk(code_root, "code/", skip)


def _walk(root: Path, prefix: str, skip: Path) -> Iterator[Entry]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        for name in list(dirnames):
            path = here / name
            if path.is_symlink():
                raise archive.UnsafeArchive(f"{path}: link to a directory (copy the files in instead)")
            yield _directory_entry(prefix + path.relative_to(root).as_posix(), path)
        for name in sorted(filenames):
            path = here / name
            if path in (skip, skip.with_name(skip.name + ".partial")):
                continue
            target = _link_target(path, root) if path.is_symlink() else path
            yield _file_entry(prefix + path.relative_to(root).as_posix(), target)


def _link_target(link: Path, root: Path) -> Path:
    """A symlink's target if it is a file inside root (stored as a regular file); refuse anything else."""
    target = link.resolve()
    if not target.is_relative_to(root):
        raise archive.UnsafeArchive(f"{link}: link points outside the model directory ({target})")
    if not target.is_file():
        raise archive.UnsafeArchive(f"{link}: link does not point to a file ({target})")
    return target


def _directory_entry(name: str, path: Path) -> Entry:
    member = tarfile.TarInfo(name)
    member.type = tarfile.DIRTYPE
    member.mtime = int(path.stat().st_mtime)
    return member, None


def _file_entry(name: str, path: Path) -> Entry:
    info = path.stat()
    member = tarfile.TarInfo(name)
    member.size = info.st_size
    member.mtime = int(info.st_mtime)
    member.mode = info.st_mode & 0o777
    return member, lambda: open(path, "rb")


def _rewrite(source: Path, out: IO[bytes], level: int) -> tuple[int, int]:
    """Check every member of an existing archive and write it again, normalized and fast-compressed."""
    try:
        with tarfile.open(source, "r:*") as src:
            members = src.getmembers()
            for member in members:
                archive.check_member(member)
            total = sum(m.size for m in members)
            progress = Progress(f"rewriting {source}", total)
            entries = ((m, (lambda m=m: src.extractfile(m)) if m.isfile() else None) for m in members)
            count = archive.write(out, entries, level, progress.advance)
            progress.done(f"{count} entries")
    except (tarfile.TarError, EOFError) as exc:
        raise archive.UnsafeArchive(f"{source.name} is not a readable tar archive: {exc}") from None
    return count, total


def _warn_about_layout(source: Path, code: Path | None) -> None:
    if source.is_dir() and code is None and (source / "inference.py").is_file() and not (source / "code").exists():
        say("warning: inference.py at the top level is not used; SageMaker's convention is code/inference.py "
            "(pass --code DIR or move it)")


def _remove_partial(output: Path) -> None:
    output.with_name(output.name + ".partial").unlink(missing_ok=True)
