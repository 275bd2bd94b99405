"""A `forwarder run` process in a lab namespace: started, healthy, stopped.

Which forwarder runs
--------------------
The router a lab starts runs the very forwarder package that the lab itself was
imported from, whatever the current directory is.  ``python -m forwarder.cli``
would not: ``-m`` puts the current directory first on sys.path, so from the root
of a source checkout the checkout's uncompiled ``forwarder/`` and
``allocator_pyx/`` shadow an installed package (``ImportError: cannot import name
'mbuf' from 'allocator_pyx'``).  Hence :func:`forwarder_argv`: the same
interpreter with ``-P`` (the current directory stays off sys.path) and ``-c``
code that adds the directory this package lives in, unless sys.path already has
it.  For a regular install that directory is site-packages, already there, so
the installed package runs; for an editable install or a plain source tree it is
the tree (what the editable finder maps to anyway); for a copy of the tree, such
as the one scripts/mutation_check.py tests, it is that copy.  The console script
next to sys.executable would miss the last two.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import forwarder
from forwarder.control import Client, ControlError

_BOOT = """\
import os, sys
root = sys.argv.pop(1)
if not any(os.path.realpath(p) == root for p in sys.path):
    sys.path.insert(0, root)
from forwarder.cli import main
sys.exit(main())
"""


def package_root() -> str:
    """The directory holding the forwarder package that is running."""
    return os.path.realpath(Path(forwarder.__file__).parent.parent)


def forwarder_argv(*args: str) -> list[str]:
    """argv running ``forwarder ARGS`` on this interpreter and this forwarder package."""
    return [sys.executable, "-P", "-c", _BOOT, package_root(), *args]


@dataclass
class RouterProcess:
    """A router started by :func:`launch`; its config, log and control socket."""
    proc: subprocess.Popen
    socket: Path
    config: Path
    log: Path
    netns: str
    lab: Any = field(default=None, repr=False)      # the topology.Lab it routes for

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, command: str, **kw: Any) -> Any:
        """One control-socket request (forwarder.control)."""
        return Client(self.socket).call(command, **kw)

    def wait_healthy(self, timeout: float, healthy: bool = True) -> None:
        """Until the control socket says healthy (or, ``healthy=False``, answers
        at all); RuntimeError (the log attached) when the router exits first or
        the time is up, which stops it."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the router exited ({self.proc.returncode}):\n"
                                   + self.log.read_text(errors="replace"))
            if self.socket.exists():
                try:
                    if Client(self.socket, timeout=2).call("health")["healthy"] or not healthy:
                        return
                except (ControlError, OSError):
                    pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the router was not healthy after {timeout:.0f} s:\n"
                                   + self.log.read_text(errors="replace"))
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> tuple[int, str]:
        """SIGTERM; the router prints its final netstat -m and exits 0.
        Returns the exit status and the log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        try:
            out = self.log.read_text(errors="replace")
        except OSError:
            out = ""
        return self.proc.returncode, out


R = TypeVar("R", bound=RouterProcess)
Popen = Callable[..., subprocess.Popen]


def launch(popen: Popen, netns: str, config: Path, socket: Path, *, argv: Sequence[str] = (),
           timeout: float = 30.0, kind: type[R] = RouterProcess,  # type: ignore[assignment]
           wait: bool = True, **fields: Any) -> R:
    """``forwarder run -c CONFIG ARGV`` in ``netns`` through ``popen(netns, argv, **kw)``
    (a Topology's, which stops it on close); the log goes beside the config.
    Returns once the router is healthy (with ``wait=False``: once its control
    socket answers, healthy or not -- it waits for interfaces to attach)."""
    log = config.with_suffix(".log")
    with open(log, "w") as out:
        proc = popen(netns, forwarder_argv("run", "-c", str(config), *argv),
                     stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    router = kind(proc=proc, socket=socket, config=config, log=log, netns=netns, **fields)
    router.wait_healthy(timeout, healthy=wait)
    return router
