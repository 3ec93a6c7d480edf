"""Progress display: a tqdm bar on a terminal, plain periodic lines anywhere else.

tqdm redraws its bar with carriage returns; a log file, CI output or ``2> log.txt`` keeps every
redraw on one ever-growing line. :func:`progress_bar` is the one place that chooses: a tqdm bar when
the stream (stderr by default) is a terminal, else a :class:`LineProgress` that prints plain lines:
at every tenth of the total (but not within :data:`LINE_GAP_S` seconds of the previous line), at
least every :data:`LINE_EVERY_S` seconds, and a last one when done. A task of a few seconds thus
leaves one line. Every progress display of tttgraph goes through it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

LINE_EVERY_S = 30.0  # a slow run still shows it is alive in a log
LINE_GAP_S = 5.0  # a fast one does not fill the log with its 10% marks
LINE_FRACTIONS = 10  # a line at every 10% of the total


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes, closed streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _clock(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class LineProgress:
    """The subset of tqdm's interface tttgraph uses, printing plain lines to ``file``.

    ``leave=False`` (a transient bar that tqdm erases when done) prints only the time-based lines:
    a short step leaves no trace in the log, a long one still reports.
    """

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, initial: int = 0,
                 desc: str = "", unit: str = "it", leave: bool = True, file: TextIO | None = None,
                 every_s: float = LINE_EVERY_S):
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable, self.total, self.n, self.initial = iterable, total, initial, initial
        self.desc, self.unit, self.leave, self.file, self.every_s = desc, unit, leave, file, every_s
        self.postfix = ""
        self.start = self.last_time = time.monotonic()
        self.last_n = initial
        self.closed = False

    def _fraction_bucket(self, n: int) -> int:
        return n * LINE_FRACTIONS // self.total if self.total else 0

    def line(self) -> str:
        """The progress line as printed now."""
        elapsed = time.monotonic() - self.start
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        percent = f" ({100 * self.n // self.total}%)" if self.total else ""
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        units = self.unit if self.unit.endswith("s") else self.unit + "s"
        postfix = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {count} {units}{percent}, {_clock(elapsed)} elapsed, {rate:.2f} {units}/s{postfix}"

    def _emit(self) -> None:
        print(self.line(), file=self.file if self.file is not None else sys.stderr, flush=True)
        self.last_time, self.last_n = time.monotonic(), self.n

    def update(self, n: int = 1) -> None:
        before = self.n
        self.n += n
        since = time.monotonic() - self.last_time
        crossed = self.leave and self._fraction_bucket(self.n) > self._fraction_bucket(before)
        if (crossed and since >= LINE_GAP_S) or since >= self.every_s:
            self._emit()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.leave and self.n != self.last_n:
            self._emit()

    def __iter__(self) -> Iterator:
        for item in self.iterable:  # type: ignore[union-attr]
            yield item
            self.update(1)
        self.close()  # only when the loop ran to its end: an abandoned loop prints no last line (abandon)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def abandon(bar) -> None:
    """Close ``bar`` after an error or interrupt: a tqdm bar ends its line (the message that follows
    starts on a new one), a :class:`LineProgress` prints no last line (the message says where it stopped)."""
    if isinstance(bar, LineProgress):
        bar.closed = True
    else:
        bar.close()


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, initial: int = 0, desc: str = "",
                 unit: str = "it", disable: bool = False, leave: bool = True, file: TextIO | None = None):
    """A progress display over ``iterable`` or up to ``total``: tqdm on a terminal, else plain lines.

    Returns an object with tqdm's ``update``, ``set_postfix``, ``set_postfix_str``, ``close``,
    iteration and ``with``; ``disable`` shows nothing. ``file`` defaults to stderr (read at call time,
    so a redirected ``sys.stderr`` is honoured).
    """
    from tqdm.auto import tqdm

    stream = file if file is not None else sys.stderr
    if disable or is_terminal(stream):
        return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, disable=disable, leave=leave,
                    file=stream)
    return LineProgress(iterable, total=total, initial=initial, desc=desc, unit=unit, leave=leave, file=stream)
