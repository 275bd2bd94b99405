"""Signals during a lab run: Ctrl-C, SIGTERM and SIGHUP unwind the stack so that
every context manager cleans up, and nothing cuts that clean-up short.

The handlers act in the process that installed them only.  Helpers forked while
a lab runs (pyroute2 forks to create a namespace, multiprocessing for the load
generator) inherit the handlers and a copy of the stack: a signal there ends
that process instead of running the clean-up a second time from inside it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """SIGTERM / SIGHUP: clean up as for Ctrl-C."""


@contextlib.contextmanager
def cleanup_signals() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt, SIGTERM and SIGHUP :class:`Terminated`,
    in this process; in a forked child they end the child."""
    owner = os.getpid()

    def handler(signum: int, _frame: Any) -> None:
        if os.getpid() != owner:
            os._exit(128 + signum)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)

    old = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """A second Ctrl-C (or a SIGTERM) must not cut the clean-up short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def child_signals() -> None:
    """In a load generator's sender or receiver process: the parent stops it
    (events, then SIGTERM); Ctrl-C on the terminal reaches it too and is left
    to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
