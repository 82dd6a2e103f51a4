"""A model's ``code/requirements.txt`` at start: checked against what the image has, installed only
with ``BYOC_REQUIREMENTS=install``.

The SageMaker toolkit pip-installs the file at every start; a baked image (``byoc build
--requirements``) starts faster and the same way every time, so by default the runtime only checks
and names what is missing. An install goes into a directory of its own under the run directory,
keyed by the file's content, and is appended to ``sys.path``: the image's own packages always win,
so a model's file can add packages but never swap numpy under a process that already imported it.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from byoc_serve.config import Settings
from byoc_serve.errors import BadRequest

log = logging.getLogger("byoc_serve.requirements")

FILE = Path("code") / "requirements.txt"
WHEELS = Path("code") / "wheels"  # shipped in the artifact: installs offline, from these files only
INSTALL_TIMEOUT_S = 300
# Options that change where pip looks; carried into an install. Others (--hash) stay on their line.
INDEX_OPTIONS = ("-i", "--index-url", "--extra-index-url", "-f", "--find-links", "--trusted-host", "--pre",
                 "--prefer-binary", "--only-binary", "--no-binary")
PATH_OPTIONS = ("-f", "--find-links")


class RequirementsError(BadRequest):
    """The artifact's requirements could not be installed; the message ends with pip's last words."""

    kind = "requirements_failed"


@dataclass
class Requirements:
    """A requirements file sorted by what the running interpreter already has."""

    path: Path
    missing: list[str] = field(default_factory=list)  # lines whose package is not installed
    conflicts: list[str] = field(default_factory=list)  # installed, at a version the line excludes
    unchecked: list[str] = field(default_factory=list)  # URLs, VCS and paths: only pip can tell
    options: list[str] = field(default_factory=list)  # index and find-links options

    @property
    def to_install(self) -> list[str]:
        return self.missing + self.unchecked


def find(model_dir: Path) -> Path | None:
    path = Path(model_dir) / FILE
    return path if path.is_file() else None


def read(path: Path) -> Requirements:
    """Sort every line of ``path`` (and of the files it includes with ``-r``)."""
    found = Requirements(path)
    _sort_lines(path, found, seen=set())
    return found


def _sort_lines(path: Path, found: Requirements, seen: set[Path]) -> None:
    path = path.resolve()
    if path in seen:
        return
    seen.add(path)
    if not path.is_file():
        found.unchecked.append(f"-r {path}")  # pip names it, if an install is asked for
        return
    for line in _logical_lines(path.read_text(errors="replace")):
        option, _, value = line.partition(" ") if line.startswith("-") else ("", "", "")
        option, _, joined = option.partition("=")
        value = (joined or value).strip()
        if option in ("-r", "--requirement"):
            _sort_lines(path.parent / value, found, seen)
        elif option in ("-c", "--constraint"):
            continue  # constraints pin versions of what is installed; nothing to install by themselves
        elif option in INDEX_OPTIONS:
            if option in PATH_OPTIONS and "://" not in value:
                value = str(path.parent / value)
            found.options += [option, value] if value else [option]
        elif option in ("-e", "--editable") or line.startswith((".", "/")) or "://" in line.split(" --")[0]:
            found.unchecked.append(_absolute(line, path.parent))
        else:
            _sort_requirement(line, found)


def _sort_requirement(line: str, found: Requirements) -> None:
    from packaging.requirements import Requirement

    try:
        requirement = Requirement(line.split(" --")[0])
        if requirement.marker is not None and not requirement.marker.evaluate():
            return
    except Exception:  # not PEP 508, or a marker this interpreter cannot evaluate: pip decides
        found.unchecked.append(line)
        return
    try:
        installed = version(requirement.name)
    except PackageNotFoundError:
        found.missing.append(line)
        return
    if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
        found.conflicts.append(f"{line} (the image has {installed})")


def _logical_lines(text: str) -> list[str]:
    """Lines without comments and blank lines, with backslash continuations joined."""
    lines, current = [], ""
    for raw in text.splitlines():
        raw = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if raw.endswith("\\"):
            current += raw[:-1] + " "
            continue
        line = " ".join((current + raw).split())
        current = ""
        if line:
            lines.append(line)
    return lines


def _absolute(line: str, base: Path) -> str:
    """A local path in an editable or path line, made absolute so pip finds it from anywhere."""
    words = line.split()
    target = 1 if words[0] in ("-e", "--editable") else 0
    if len(words) > target and words[target].startswith((".", "/")) and "://" not in words[target]:
        words[target] = str(base / words[target])
    return " ".join(words)


def prepare(model_dir: Path, settings: Settings) -> dict[str, object]:
    """Check (or install) ``code/requirements.txt`` per ``settings.requirements``; what happened, for the log."""
    path = find(model_dir)
    assert path is not None
    found = read(path)
    info: dict[str, object] = {"mode": settings.requirements, "file": FILE}
    if found.conflicts:
        log.warning("%s asks for versions other than the image's, which are kept: %s", FILE, "; ".join(found.conflicts))
    if not found.to_install:
        info["missing"] = 0
        return info
    if settings.requirements == "check":
        log.warning(
            "%s lists what the image may lack (not installed: %s; only pip can check: %s). Bake it into the "
            "image (byoc build --requirements) or set BYOC_REQUIREMENTS=install to pip-install it at start",
            FILE, ", ".join(found.missing) or "none", ", ".join(found.unchecked) or "none",
        )
        info["missing"] = ", ".join(found.to_install)
        return info
    target, cached = install(found, Path(model_dir), settings.run_dir / "requirements")
    if str(target) not in sys.path:
        sys.path.append(str(target))
    importlib.invalidate_caches()
    info.update(installed=len(found.to_install), into=target, cached=cached)
    return info


def install(found: Requirements, model_dir: Path, root: Path) -> tuple[Path, bool]:
    """pip-install what is missing into ``root/<digest>`` unless an earlier start already did."""
    wheels = model_dir / WHEELS
    lines = found.options + found.to_install
    source = ["--no-index", "--find-links", str(wheels)] if wheels.is_dir() else []
    digest = hashlib.sha256("\n".join(lines + source).encode()).hexdigest()[:16]
    target = root / digest
    if target.is_dir():
        return target, True
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=root))
    try:
        listed = staging / "requirements.txt"
        listed.write_text("\n".join(lines) + "\n")
        command = [sys.executable, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
                   "--no-warn-script-location", "--target", str(staging / "site"), *source, "-r", str(listed)]
        log.info("installing %s: %s", FILE, " ".join(command))
        _run_pip(command)
        try:
            os.rename(staging / "site", target)
        except OSError:
            if not target.is_dir():  # not another process that finished the same install first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, False


def _run_pip(command: list[str]) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RequirementsError(f"pip did not install {FILE} within {INSTALL_TIMEOUT_S} s") from None
    for line in done.stdout.splitlines():
        log.debug("pip: %s", line)
    if done.returncode != 0:
        tail = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()][-3:]
        raise RequirementsError(f"pip could not install {FILE} (exit {done.returncode}): {' | '.join(tail)}")


def advice(model_dir: Path, settings: Settings) -> str | None:
    """What to tell a user whose code failed to import while its requirements file lists missing packages."""
    path = find(model_dir)
    if path is None or settings.requirements != "check" or not read(path).to_install:
        return None
    return (f"{FILE} lists packages the image lacks: bake them into the image (byoc build --requirements) "
            "or set BYOC_REQUIREMENTS=install")
