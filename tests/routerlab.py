"""A real router process in its own namespace, with hosts on TAPs (for tests).

    from tests.routerlab import start_router

The lab's own machinery (forwarder.lab): :meth:`Lab.start_router` writes the
config (:func:`lab_config`, the lab's config writer), runs `forwarder run -c
CONFIG` inside the lab's router namespace -- it opens the TAPs there and moves
their kernel sides into the host namespaces --, waits until it is healthy and
configures the hosts.  CLI calls go to its control socket, which lives in a
per-test temporary directory.  :class:`RunningRouter` adds what tests ask of a
router to the lab's :class:`RouterProcess`.
"""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from forwarder import netns as nn
from forwarder.control import ControlError
from forwarder.lab.process import RouterProcess, forwarder_argv
from forwarder.lab.tomlwrite import to_toml
from forwarder.lab.topology import router_mac
from tests.topology import RouterLab

__all__ = ["RunningRouter", "lab_config", "lab_doc", "poll", "router_mac", "start_router",
           "static_gateways"]


Offload = bool | dict[str, bool] | None


def lab_doc(lab: RouterLab, sock: Path, sysctl: dict[str, int] | None = None,
            routes: Sequence[dict[str, str]] = (), metrics: str | None = None,
            addresses: dict[str, Sequence[str]] | None = None,
            offload: Offload = None) -> dict[str, Any]:
    """The router's config for a lab, as a document (to change before writing it).
    ``offload``: every interface's `offload` key, or some of them by name
    (None: the default, on)."""
    doc = lab.config_doc(sock, sysctl=sysctl or {}, routes=routes, metrics=metrics,
                         addresses=addresses)
    for itf in doc["interface"]:
        value = offload.get(itf["name"]) if isinstance(offload, dict) else offload
        if value is not None:
            itf["offload"] = value
    return doc


def lab_config(lab: RouterLab, sock: Path, sysctl: dict[str, int] | None = None,
               routes: Sequence[dict[str, str]] = (), metrics: str | None = None,
               extra: str = "", addresses: dict[str, Sequence[str]] | None = None,
               offload: Offload = None) -> str:
    """The router's config for a lab; ``extra`` is TOML appended at the end;
    ``addresses`` adds addresses to interfaces by name (after the lab's own)."""
    return to_toml(lab_doc(lab, sock, sysctl, routes, metrics, addresses, offload)) + extra


def poll(predicate: Callable[[], Any], timeout: float = 3.0, what: str = "condition",
         interval: float = 0.02) -> Any:
    """predicate() until it returns something true; AssertionError after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true within {timeout} s")
        time.sleep(interval)


class RunningRouter(RouterProcess):
    """The lab's router process (call, stop; ``lab``) with the CLI and test helpers."""

    def cli(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        cmd = forwarder_argv(argv[0], "--socket", str(self.socket), *argv[1:])
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and cp.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {cp.returncode}: {cp.stderr}")
        return cp

    def cli_json(self, *argv: str) -> object:
        return json.loads(self.cli(*argv, "--json").stdout)

    def log_text(self) -> str:
        return self.log.read_text()

    def wait_log(self, pattern: str, timeout: float = 5.0, since: int = 0) -> re.Match:
        """The first match of ``pattern`` in the router's log after offset ``since``."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log_text()[since:], re.M)
            if m is not None:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"no /{pattern}/ in the router log within {timeout} s:\n"
                                     + self.log_text()[since:][-3000:])
            time.sleep(0.05)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0,
                 what: str = "condition") -> Any:
        """Poll ``predicate`` until it returns something true (bounded)."""
        return poll(predicate, timeout, what, 0.05)

    def sighup(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    def stats(self) -> dict:
        return self.cli_json("stats")  # type: ignore[return-value]

    def interface(self, name: str) -> dict:
        """One port's row of ``stats``."""
        return next(i for i in self.stats()["interfaces"] if i["name"] == name)

    def zones(self) -> dict[str, dict]:
        return {z["name"]: z for z in self.cli_json("vmstat", "-z")}  # type: ignore[union-attr]

    def zones_used(self) -> dict[str, int]:
        return {name: z["used"] for name, z in self.zones().items()}

    @contextmanager
    def zones_kept(self, timeout: float = 10) -> Iterator[None]:
        """Every mbuf and cluster taken inside is given back (within timeout
        after it: packets in flight, held for a neighbour, land first)."""
        before = self.zones_used()
        yield
        self.wait_for(lambda: self.zones_used() == before, timeout,
                      what=f"zones back at {before} (now {self.zones_used()})")

    def sysctl(self, assignment: str) -> str:
        return self.cli("sysctl", assignment).stdout

    def snapshot(self) -> tuple:
        """Routes, tunables and interface MTUs: what a refused reload leaves as it was."""
        return (self.call("route.list"), self.call("sysctl.list"),
                [(i["name"], i["mtu"]) for i in self.stats()["interfaces"]])

    def wait_icmp_handled(self, before: dict, n: int, timeout: float) -> dict:
        """The ICMP counters (``stats()["icmp"]``) once ``n`` errors more than
        in ``before`` were sent or rate-limited (read in-process, every 50 ms)."""
        def handled() -> dict | None:
            now = self.call("stats")["icmp"]
            done = (now["errors_sent"] - before["errors_sent"]
                    + now["ratelimited"] - before["ratelimited"])
            return now if done >= n else None
        return self.wait_for(handled, timeout, what=f"{n} ICMP errors sent or limited")

    def forget_arp(self, *ips: str, incomplete: bool = False) -> None:
        """Delete the ARP entries for ``ips`` (on every interface), or with
        ``incomplete`` every unresolved one, and the packets they hold.  An
        entry gone meanwhile (aged, given up) is no error."""
        if incomplete:
            targets = [(e["ip"], e["interface"]) for e in self.call("arp.list")
                       if e["state"] == "incomplete"]
        else:
            targets = [(ip, None) for ip in ips]
        for ip, interface in targets:
            try:
                self.call("arp.del", ip=ip, interface=interface)
            except ControlError:
                pass

    @contextmanager
    def tunables(self, settings: dict[str, int],
                 restore: dict[str, int] | None = None) -> Iterator[None]:
        """Set sysctls for the body of a with; put the old values (or those
        in ``restore``) back after it, also when it fails."""
        changed = self.call("sysctl.set", assignments=settings)
        old = {name: was for name, was, _new in changed}
        old.update(restore or {})
        try:
            yield
        finally:
            self.call("sysctl.set", assignments=old)


def start_router(lab: RouterLab, workdir: Path, *, sysctl: dict[str, int] | None = None,
                 routes: Sequence[dict[str, str]] = (), metrics: str | None = None,
                 extra_config: str = "", extra_argv: Sequence[str] = (),
                 addresses: dict[str, Sequence[str]] | None = None,
                 offload: Offload = None, timeout: float = 20,
                 control_plane: str | None = None,
                 protocols: Sequence[str] = ()) -> RunningRouter:
    """Run a router for ``lab`` (config and log in ``workdir``) and wait until
    it is healthy; then configure the hosts.  ``extra_config`` is appended
    to the generated config; ``extra_argv`` goes to `forwarder run` (``-o``);
    ``addresses`` adds router addresses to interfaces by name;
    ``control_plane`` is its [control_plane] netns, importing ``protocols``."""
    if control_plane is not None:
        extra_config += f'\n[control_plane]\nnetns = "{control_plane}"\n' + (
            f"protocols = {json.dumps(list(protocols))}\n" if protocols else "")
    text = lab_config(lab, workdir / f"{lab.name}.sock", sysctl, routes, metrics, extra_config,
                      addresses, offload)
    router = lab.start_router(workdir, text, argv=extra_argv, timeout=timeout, kind=RunningRouter)
    assert isinstance(router, RunningRouter)
    return router


# --- the control plane's kernel routes (tests of forwarder/cplane.py) ---------------

NUD_PERMANENT = 0x80


def static_gateways(lab: RouterLab) -> None:
    """Each host knows the router's MAC for good: no ARP probe of theirs
    (Linux confirms a neighbour it used a few seconds later) reaches the
    router while a test counts the frames on its links."""
    for h in lab.hosts:
        with nn.iproute(h.netns) as ipr:
            ipr.neigh("replace", dst=str(h.gateway), lladdr=h.router_mac,
                      ifindex=ipr.link_lookup(ifname=h.ifname)[0], state=NUD_PERMANENT)


def kroute(cp: str, op: str, dst: str, **kw) -> None:
    """A route in the control plane's kernel, as a routing daemon installs it."""
    with nn.iproute(cp) as ipr:
        family = socket.AF_INET6 if ":" in dst else socket.AF_INET
        if "oif" in kw:
            kw["oif"] = ipr.link_lookup(ifname=kw["oif"])[0]
        ipr.route(op, dst=dst, family=family, **kw)


def routes(r: RunningRouter) -> dict[str, dict]:
    return {x["prefix"]: x for x in r.call("route.list")}


def wait_route(r: RunningRouter, prefix: str, present: bool = True, timeout: float = 3.0) -> dict:
    r.wait_for(lambda: (prefix in routes(r)) == present, timeout,
               what=f"{prefix} {'in' if present else 'gone from'} the dataplane")
    return routes(r).get(prefix, {})
