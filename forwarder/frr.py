"""FRR's daemons next to the router: ``forwarder run --frr``.

The container image's ``frr`` stage (Dockerfile, docs/containers.md) runs the
router and FRR in one container.  FRR's own init script (frrinit.sh) is made
for a host: it daemonizes watchfrr, which daemonizes every daemon, so each
ends up a child of the container's PID 1 (the router), which would have to
reap it, and frrinit.sh's ``stop`` waits two minutes for a daemon that is a
zombie.  Here the router starts the daemons itself, as its own children in
the foreground:

* which ones: FRR's ``/etc/frr/daemons`` (``bgpd=yes``, ``bgpd_options="..."``,
  as frrinit.sh reads it); zebra and staticd always run, in FRR's order;
* where: the control plane's namespace (``[control_plane] netns``); with
  ``"/proc/self/ns/net"`` that is the router's own and nothing is entered,
  otherwise each daemon is started under nsenter(1);
* how: as user frr, logging to the router's stdout (``--log stdout``: the
  container's log), sockets and pid files in ``/var/run/frr`` (vtysh finds
  them there, from any namespace: they are files); once every daemon's vty
  socket is there, ``vtysh -b`` applies the integrated ``/etc/frr/frr.conf``,
  as frrinit.sh does;
* supervision: :meth:`Frr.poll`, called from the router's main loop, starts a
  daemon that exited again (after 1 s, doubling up to 30 s while it keeps
  failing) and applies its part of frr.conf again (``vtysh -b -d NAME``);
* stop: SIGTERM to every daemon, zebra last (it then removes the routes it
  installed), each waited for, SIGKILL after 5 s.

FRR asks for CAP_SYS_ADMIN at start, wherever it runs (its privilege code
wants cap_sys_admin for namespace VRFs, and exits when it cannot have it:
FRRouting/frr#8681): without it in the effective set :meth:`Frr.check` says
so before anything starts.  The router itself needs only CAP_NET_ADMIN.
"""
from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from forwarder import netns
from forwarder.config import Config

log = logging.getLogger("forwarder.frr")

FRR_LIB = Path("/usr/lib/frr")            # the daemons (Debian's frr package)
FRR_ETC = Path("/etc/frr")                # daemons, frr.conf, vtysh.conf
FRR_RUN = Path("/var/run/frr")            # vty sockets, zserv.api, pid files (compiled in)
VTYSH = "/usr/bin/vtysh"
FRR_USER = "frr"
# frrcommon.sh's order: zebra first; zebra and staticd always run
DAEMONS = ("zebra", "bgpd", "ripd", "ripngd", "ospfd", "ospf6d", "isisd", "babeld", "pimd",
           "pim6d", "ldpd", "nhrpd", "eigrpd", "sharpd", "pbrd", "staticd", "bfdd", "fabricd",
           "vrrpd", "pathd")
ALWAYS = ("zebra", "staticd")
CAP_SYS_ADMIN = 21
START_TIMEOUT = 15.0                      # seconds for the vty sockets to appear
STOP_TIMEOUT = 5.0                        # seconds per daemon before SIGKILL
BACKOFF_MAX = 30.0


class FrrError(RuntimeError):
    """FRR cannot be started here."""


def read_daemons(path: Path) -> dict[str, str]:
    """The shell assignments of FRR's daemons file (``bgpd=yes``,
    ``bgpd_options="  -A 127.0.0.1"``), quotes removed; comments skipped."""
    values: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            words = shlex.split(line, comments=True)
        except ValueError as e:
            raise FrrError(f"{path}:{n}: {e}") from None
        if len(words) == 1 and "=" in words[0]:
            name, _, value = words[0].partition("=")
            values[name] = value
    return values


def enabled(values: dict[str, str]) -> list[str]:
    """The daemons to run, in FRR's order."""
    return [d for d in DAEMONS
            if d in ALWAYS or values.get(d, "no") not in ("", "no", "0")]


def has_capability(cap: int, status: Path = Path("/proc/self/status")) -> bool:
    for line in status.read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> cap & 1)
    return False


@dataclass
class Daemon:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    restart_at: float | None = None       # when to start it again after it exited
    backoff: float = 1.0
    configured: bool = False              # its part of frr.conf applied
    started_at: float = 0.0


class Frr:
    """FRR's daemons in the control plane's namespace, children of the router."""

    def __init__(self, config: Config, etc: Path = FRR_ETC, run_dir: Path = FRR_RUN,
                 lib: Path = FRR_LIB) -> None:
        cp = config.control_plane
        if cp.netns is None:
            raise FrrError("--frr needs a [control_plane] table (the mirrors FRR runs on)")
        self.netns = None if cp.in_router_netns else cp.netns_path
        self.where = "the router's own namespace" if self.netns is None else cp.netns
        self.etc, self.run_dir, self.lib = etc, run_dir, lib
        self.daemons: list[Daemon] = []

    def check(self) -> None:
        """Everything FRR needs, before the router starts: the capability, the
        binaries, its user, /etc/frr/daemons."""
        if not has_capability(CAP_SYS_ADMIN):
            raise FrrError("FRR's daemons need CAP_SYS_ADMIN: they ask for it at start and exit "
                           "without it (docker run --cap-add SYS_ADMIN; compose cap_add: "
                           "[NET_ADMIN, SYS_ADMIN])")
        try:
            pwd.getpwnam(FRR_USER)
        except KeyError:
            raise FrrError(f"no user {FRR_USER!r}: is Debian's frr package installed?") from None
        daemons_file = self.etc / "daemons"
        if not daemons_file.is_file():
            raise FrrError(f"{daemons_file}: no such file (FRR's list of daemons to run)")
        values = read_daemons(daemons_file)
        self.daemons = []
        for name in enabled(values):
            binary = self.lib / name
            if not binary.exists():
                raise FrrError(f"{binary}: no such file ({name}={values.get(name)} in "
                               f"{daemons_file})")
            argv = [str(binary), "-u", FRR_USER, "-g", FRR_USER, "--log", "stdout",
                    *shlex.split(values.get(f"{name}_options", ""))]
            self.daemons.append(Daemon(name, argv))
        if not Path(VTYSH).exists():
            raise FrrError(f"{VTYSH}: no such file (FRR's shell applies frr.conf)")

    # --- start / stop ----------------------------------------------------------------

    def start(self) -> None:
        """Start every daemon, wait for their vty sockets, apply frr.conf."""
        if not self.daemons:
            self.check()
        user = pwd.getpwnam(FRR_USER)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.run_dir, user.pw_uid, grp.getgrnam(FRR_USER).gr_gid)
        os.chmod(self.run_dir, 0o755)
        for d in self.daemons:
            self._spawn(d)
        deadline = time.monotonic() + START_TIMEOUT
        for d in self.daemons:
            while not self._vty(d).exists():
                if d.proc is not None and d.proc.poll() is not None:
                    raise FrrError(f"FRR {d.name} exited at start (status {d.proc.returncode})")
                if time.monotonic() > deadline:
                    raise FrrError(f"FRR {d.name}: no {self._vty(d)} after {START_TIMEOUT:.0f} s")
                time.sleep(0.05)
        self._apply()
        for d in self.daemons:
            d.configured = True
        log.info("FRR %s running in %s", ", ".join(d.name for d in self.daemons), self.where)

    def stop(self) -> None:
        """SIGTERM to each daemon, zebra last; each waited for (SIGKILL after
        STOP_TIMEOUT)."""
        ordered = [d for d in reversed(self.daemons) if d.name != "zebra"] + \
                  [d for d in self.daemons if d.name == "zebra"]
        for group in (ordered[:-1], ordered[-1:]):
            for d in group:
                if d.proc is not None and d.proc.poll() is None:
                    d.proc.send_signal(signal.SIGTERM)
            for d in group:
                if d.proc is None:
                    continue
                try:
                    d.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    log.warning("FRR %s: no exit %.0f s after SIGTERM; killing it", d.name,
                                STOP_TIMEOUT)
                    d.proc.kill()
                    d.proc.wait()
        if self.daemons:
            log.info("FRR stopped")

    # --- supervision -----------------------------------------------------------------

    def poll(self) -> None:
        """From the router's main loop: a daemon that exited is started again
        (with a growing delay while it keeps failing), and its part of frr.conf
        applied once its vty socket is back."""
        now = time.monotonic()
        for d in self.daemons:
            if d.proc is None:
                if d.restart_at is not None and now >= d.restart_at:
                    d.restart_at = None
                    self._spawn(d)
                continue
            code = d.proc.poll()
            if code is not None:
                if now - d.started_at > 2 * BACKOFF_MAX:
                    d.backoff = 1.0                # it had run a while: not a crash loop
                log.error("FRR %s exited (status %s); starting it again in %.0f s", d.name,
                          code, d.backoff)
                d.proc, d.configured = None, False
                d.restart_at = now + d.backoff
                d.backoff = min(2 * d.backoff, BACKOFF_MAX)
            elif not d.configured and self._vty(d).exists():
                self._apply(d.name)
                d.configured = True
                log.info("FRR %s started again; its frr.conf part applied", d.name)

    # --- helpers ---------------------------------------------------------------------

    def _vty(self, d: Daemon) -> Path:
        return self.run_dir / f"{d.name}.vty"

    def _argv(self, argv: Sequence[str]) -> list[str]:
        return list(argv) if self.netns is None else netns.ns_argv(self.netns, argv)

    def _spawn(self, d: Daemon) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._vty(d).unlink()              # a stale socket is no sign of life
        d.proc = subprocess.Popen(self._argv(d.argv), stdin=subprocess.DEVNULL,
                                  start_new_session=True)
        d.started_at = time.monotonic()
        log.debug("FRR %s started (pid %d): %s", d.name, d.proc.pid, " ".join(d.argv))

    def _apply(self, daemon: str | None = None) -> None:
        """``vtysh -b``: the integrated frr.conf to every daemon (or one)."""
        if not (self.etc / "frr.conf").is_file():
            log.warning("FRR: no %s; the daemons run unconfigured", self.etc / "frr.conf")
            return
        argv = [VTYSH, "-b"] + (["-d", daemon] if daemon else [])
        cp = subprocess.run(self._argv(argv), capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
        if cp.returncode != 0:
            log.warning("FRR: vtysh -b exited %d: %s", cp.returncode,
                        (cp.stdout + cp.stderr).strip()[-2000:])
