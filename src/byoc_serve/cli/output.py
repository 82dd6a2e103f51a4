"""Terminal output: progress on long work (stderr) and result tables (stdout)."""

from __future__ import annotations

import sys
import time
from typing import Sequence


def say(message: str) -> None:
    """A progress line: stderr, so stdout stays clean for results."""
    print(message, file=sys.stderr, flush=True)


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


class Progress:
    """A byte-count progress bar: redrawn in place on a terminal, a line per quarter otherwise."""

    def __init__(self, label: str, total: int = 0):
        self.label = label
        self.total = total
        self.current = 0
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()
        self._last_quarter = -1
        self._last_draw = 0.0

    def update(self, current: int, total: int | None = None) -> None:
        self.current = current
        if total is not None:
            self.total = total
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw >= 0.1:
                self._last_draw = now
                sys.stderr.write("\r" + self._line())
                sys.stderr.flush()
        elif self.total:
            quarter = min(4, 4 * self.current // self.total)
            if quarter != self._last_quarter:
                self._last_quarter = quarter
                say(self._line())

    def advance(self, count: int) -> None:
        self.update(self.current + count)

    def done(self, summary: str = "") -> None:
        elapsed = time.monotonic() - self.started
        end = f"{self.label}: {summary or human_bytes(self.current)} in {elapsed:.1f}s"
        if self.tty:
            sys.stderr.write("\r\033[K")
        say(end)

    def _line(self) -> str:
        if not self.total:
            return f"{self.label}: {human_bytes(self.current)}"
        fraction = min(1.0, self.current / self.total)
        bar = "#" * int(fraction * 30)
        return f"{self.label} [{bar:<30}] {fraction:4.0%} {human_bytes(self.current)}/{human_bytes(self.total)}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], max_cell: int = 120) -> None:
    """Print rows as left-aligned columns under the headers (long cells are cut at max_cell)."""
    cells = [[_cut(str(c), max_cell) for c in headers]] + [[_cut(str(c), max_cell) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))
    sys.stdout.flush()


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
