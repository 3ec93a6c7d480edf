"""Ctrl-C (SIGINT) and SIGTERM: stop cleanly, then say what was saved and how to continue.

The command line (:func:`tttgraph.command.run_parsed`) runs every command under :func:`raising`:
either signal raises :class:`Interrupted` (a ``KeyboardInterrupt``) wherever the program is, the
command line catches it, prints one line and exits with ``128 + signal number`` (130 for SIGINT,
143 for SIGTERM), the status a shell reports for a process the signal ended.

A loop that can stop between two of its steps wraps them in :func:`deferred` instead: the first
signal only sets :attr:`StopRequest.signum`, the loop finishes its step, saves and raises
:class:`Interrupted` itself; a second signal raises at once (for a step that takes too long).
Signals ignored when the process started (``nohup``, a background job) stay ignored.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived (``signum`` says which); a ``KeyboardInterrupt`` so that code that
    already handles Ctrl-C handles SIGTERM the same way."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal_name(signum))
        self.signum = int(signum)


def signal_name(signum: int) -> str:
    """``SIGINT``, ``SIGTERM``, ... (the number for a signal Python has no name for)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_status(signum: int) -> int:
    """The exit status of a process that stops because of ``signum`` (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


@contextmanager
def _handlers(handler: Callable) -> Iterator[None]:
    """Install ``handler`` for SIGINT and SIGTERM, restoring the previous handlers afterwards."""
    # signal.signal works in the main thread only; elsewhere (a library call from a worker thread)
    # the signals keep whatever the main thread set up.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in SIGNALS:
        current = signal.getsignal(signum)
        if current is signal.SIG_IGN:
            continue  # the user (nohup, a background job) asked for this signal to be ignored
        previous[signum] = current
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, signal.SIG_DFL if old is None else old)  # None: set outside Python


@contextmanager
def raising() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` where the program is."""

    def handler(signum, _frame):
        raise Interrupted(signum)

    with _handlers(handler):
        yield


@dataclass
class StopRequest:
    """Set by :func:`deferred`: ``signum`` of the first signal received, None while none came."""

    signum: int | None = None


@contextmanager
def deferred() -> Iterator[StopRequest]:
    """Within the block, the first SIGINT or SIGTERM only sets the yielded request's ``signum``
    (the loop stops at its next safe point); a second one raises :class:`Interrupted` at once."""
    request = StopRequest()

    def handler(signum, _frame):
        if request.signum is not None:
            raise Interrupted(signum)
        request.signum = int(signum)

    with _handlers(handler):
        yield request
