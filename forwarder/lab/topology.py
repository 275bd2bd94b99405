"""The lab model: a router namespace, one host per link, and the router's config.

A :class:`Lab` is made of namespaces of a :class:`forwarder.netns.Topology` (names
with a random prefix, ``fw1a2b3c-r``, ``fw1a2b3c-h1``: labs run side by side and
never touch anything else) and one :class:`LabHost` per router interface: the
router's TAP ``tapK`` has its kernel side moved into the host's namespace, where
the host takes the address after the router's and the router as its gateway.

Two ways to make one:

* :func:`make_lab`: N hosts on 10.K.0.0/24 (router .1 with MAC
  02:00:00:00:0K:01, host .2), with ``ipv6=True`` also on 2001:db8:K::/64
  (router ::1, host ::2) -- the tests and the bench use it;
* :func:`lab_from_config`: from a router config such as the shipped lab.toml
  (package data, read with importlib.resources; configs/lab.toml links to it),
  whose ``netns`` names ("h1") are placeholders for fresh namespaces.

A link is dual-stack when the router has an IPv6 address on it: the host takes
the next IPv6 address too (no duplicate address detection, no router
solicitations) and the router as its IPv6 default gateway.  A link needs an
IPv4 address: the lab's ping, traceroute and load run over IPv4 first.

:meth:`Lab.config_doc` is the router config for a lab, written with
:func:`forwarder.lab.tomlwrite.to_toml`; :meth:`Lab.start_router` runs
``forwarder run`` on it in the router namespace, waits until it is healthy and
configures the hosts.  :func:`lab_up` does all of it for a config file and
removes everything afterwards: on exit, on errors, on Ctrl-C and on SIGTERM
(the TAPs die with the router's file descriptors and the namespaces).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from forwarder import netns as nn
from forwarder.config import Config, Route, load_config, parse_config
from forwarder.lab.process import RouterProcess, launch
from forwarder.lab.signals import signals_ignored
from forwarder.lab.tomlwrite import to_toml

LAB_TOML = resources.files("forwarder.lab") / "lab.toml"
ROUTER_MAC = "02:00:00:00:{k:02x}:01"

Report = Callable[[str, str], None]     # (step, text): what lab_up is doing


def router_mac(k: int) -> str:
    """The router's MAC on link ``k`` of a :func:`make_lab` lab."""
    return ROUTER_MAC.format(k=k)


def host_address(router: IPv4Interface | IPv6Interface) -> IPv4Interface | IPv6Interface:
    """The host's address on a link: the one after the router's (before it, if the
    router has the last host address; IPv6 has no broadcast address)."""
    net = router.network
    nxt = router.ip + 1
    if nxt not in net or (router.version == 4 and nxt == net.broadcast_address):
        nxt = router.ip - 1
    if nxt not in net or nxt == net.network_address:
        raise ValueError(f"{router}: no room for a host on this link")
    return type(router)(f"{nxt}/{net.prefixlen}")


@dataclass
class LabHost:
    """One host namespace plugged into the router through TAP ``ifname``."""
    name: str                  # the short name, "h1"
    netns: str                 # its namespace, "fw1a2b3c-h1"
    ifname: str                # its link: the router's TAP (same name on both sides)
    router: IPv4Interface      # the router's address on the link (its gateway)
    address: IPv4Interface     # the host's address
    mtu: int = 1500
    router_mac: str | None = None                  # None: the router derives one
    more_addresses: tuple[IPv4Interface, ...] = ()  # the router's other addresses here
    router6: IPv6Interface | None = None            # the router's IPv6 address: dual-stack
    address6: IPv6Interface | None = None
    more_addresses6: tuple[IPv6Interface, ...] = ()
    ra: bool = False                                # the router advertises on this link
    attach: bool = False                            # a veth handed to the router (attach =)
    bridge: bool = False                            # the TAP stays with the router, bridged
                                                    # with a veth to the host (the old way)

    @property
    def gateway(self) -> IPv4Address:
        return self.router.ip

    @property
    def gateway6(self) -> IPv6Address | None:
        return None if self.router6 is None else self.router6.ip

    def interface_doc(self, extra: Sequence[str] = ()) -> dict[str, Any]:
        """This link as the router's [[interface]]; ``extra``: more router addresses."""
        doc: dict[str, Any] = {
            "name": self.ifname,
            "addresses": [str(a) for a in (self.router, *self.more_addresses)]
            + [str(a) for a in ((self.router6,) if self.router6 else ()) + self.more_addresses6]
            + list(extra),
            "mtu": self.mtu}
        if self.ra:
            doc["ra"] = True
        if self.router_mac is not None:
            doc["mac"] = self.router_mac
        if self.attach:
            doc["attach"] = self.ifname
        elif not self.bridge:
            doc["netns"] = self.netns
        return doc


def route_doc(route: Route) -> dict[str, str]:
    """A parsed route as the [[route]] it came from."""
    doc = {"prefix": str(route.prefix)}
    if route.via is not None:
        doc["via"] = str(route.via) + (f"%{route.via_interface}" if route.via_interface else "")
    elif route.interface is not None:
        doc["interface"] = route.interface
    else:
        doc["type"] = route.type
    return doc


@dataclass
class Lab:
    """A router namespace and its hosts; :attr:`router` once it runs."""
    topo: nn.Topology
    router_ns: str
    hosts: list[LabHost] = field(default_factory=list)
    name: str = "r1"                                   # the router's [router] name
    log_level: str = "info"
    sysctl: dict[str, int] = field(default_factory=dict)
    routes: list[dict[str, str]] = field(default_factory=list)
    metrics: str | None = None                         # [metrics] listen
    router: RouterProcess | None = None
    attach_delay: float = 2.0                          # seconds before the veths are handed over
    attach_mode: str | None = None                     # [router] attach_mode (None: the default)
    control_plane: str | None = None                   # [control_plane] netns (made by topo)

    def host(self, name: str) -> LabHost:
        """A host by its short name or its namespace."""
        for h in self.hosts:
            if name in (h.name, h.netns):
                return h
        raise KeyError(name)

    @property
    def namespaces(self) -> list[str]:
        return list(self.topo.namespaces)

    @property
    def socket(self) -> Path:
        """The running router's control socket."""
        if self.router is None:
            raise RuntimeError("the lab's router is not running")
        return self.router.socket

    # --- the router's config ---------------------------------------------------------

    def config_doc(self, socket: Path, *, sysctl: Mapping[str, int] | None = None,
                   routes: Sequence[Mapping[str, str]] | None = None,
                   metrics: str | None = None,
                   addresses: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
        """The router's config as a document (see :func:`to_toml`): the lab's own
        tunables, routes and metrics unless given; ``addresses`` adds router
        addresses to interfaces by name."""
        sysctl = self.sysctl if sysctl is None else sysctl
        routes = self.routes if routes is None else routes
        metrics = self.metrics if metrics is None else metrics
        doc: dict[str, Any] = {"router": {"name": self.name, "socket": str(socket),
                                          "log_level": self.log_level}}
        if self.attach_mode:
            doc["router"]["attach_mode"] = self.attach_mode
        if sysctl:
            doc["sysctl"] = dict(sysctl)
        if metrics:
            doc["metrics"] = {"listen": metrics}
        if self.control_plane:
            doc["control_plane"] = {"netns": self.control_plane}
        doc["interface"] = [h.interface_doc((addresses or {}).get(h.ifname, ()))
                            for h in self.hosts]
        if routes:
            doc["route"] = [dict(r) for r in routes]
        return doc

    def config_text(self, socket: Path, **kw: Any) -> str:
        return to_toml(self.config_doc(socket, **kw))

    # --- running it ---------------------------------------------------------------------

    def popen_router(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen:
        """Start a process in the router namespace; stopped when the topology closes."""
        return self.topo.popen(self.router_ns, argv, **kw)

    def start_router(self, workdir: Path, config_text: str | None = None, *,
                     header: str = "", argv: Sequence[str] = (), timeout: float = 30.0,
                     kind: type[RouterProcess] = RouterProcess) -> RouterProcess:
        """``forwarder run`` on ``config_text`` (default: :meth:`config_doc`, with
        ``header`` as a comment) in the router namespace, config, log and control
        socket in ``workdir``; once it is healthy the hosts are configured.
        ``argv`` goes to `forwarder run` (``-o NAME=VALUE``)."""
        workdir.mkdir(parents=True, exist_ok=True)
        sock = workdir / f"{self.name}.sock"
        cfg = workdir / "router.toml"
        cfg.write_text(to_toml(self.config_doc(sock), header) if config_text is None
                       else config_text)
        attached = [h for h in self.hosts if h.attach]
        self.router = launch(self.topo.popen, self.router_ns, cfg, sock, argv=argv,
                             timeout=timeout, kind=kind, lab=self, wait=not attached)
        if attached:
            time.sleep(self.attach_delay)
            for h in attached:
                self.hand_over(h)
            self.router.wait_healthy(timeout)
        for h in self.hosts:
            if h.bridge:
                self.bridge(h)
        self.configure_hosts()
        return self.router

    def bridge(self, h: LabHost) -> None:
        """The way before attach: the router's TAP, left in its namespace, and a
        veth to the host, both ports of a Linux bridge there (one more kernel hop
        each way, and the bridge's own learning and flooding)."""
        peer, br = f"{h.ifname[:11]}-v", f"{h.ifname[:11]}-br"
        nn.add_veth(peer, self.router_ns, h.ifname, h.netns)
        with nn.iproute(self.router_ns) as ipr:
            ipr.link("add", ifname=br, kind="bridge")
            bidx = ipr.link_lookup(ifname=br)[0]
            for port in (h.ifname, peer):
                idx = ipr.link_lookup(ifname=port)[0]
                ipr.link("set", index=idx, master=bidx, mtu=h.mtu)
                ipr.link("set", index=idx, state="up")
            ipr.link("set", index=bidx, state="up")

    def hand_over(self, h: LabHost) -> None:
        """What a container runtime does for an attached link: a veth pair made
        beside the host, one end moved into the router's namespace under the
        link's name (the host keeps the other end, also named so)."""
        nn.add_veth(h.ifname, h.netns, f"{h.ifname[:12]}-r", h.netns)
        nn.link_move(f"{h.ifname[:12]}-r", self.router_ns, h.netns, rename=h.ifname)

    def configure_hosts(self, timeout: float = 10.0) -> None:
        """Once the router moved each TAP into its host: address, up, default route."""
        for h in self.hosts:
            self.configure_host(h, timeout)

    def configure_host(self, h: LabHost, timeout: float = 10.0) -> None:
        """One host's end of its link: address(es), up, default route(s)."""
        nn.wait_link(h.ifname, h.netns, timeout)
        nn.configure_host(h.ifname, h.netns, [h.address, *filter(None, [h.address6])],
                          gateway=h.gateway, gateway6=h.gateway6, mtu=h.mtu)

    def open_taps(self) -> dict[str, nn.Tap]:
        """Play the router from Python: open the TAPs here and plug in the hosts."""
        return {h.name: self.topo.tap(h.ifname, self.router_ns, host_ns=h.netns,
                                      host_addresses=[str(h.address)],
                                      gateway=str(h.gateway), mtu=h.mtu)
                for h in self.hosts}

    # --- the hosts' tools --------------------------------------------------------------

    def run(self, host: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """A tool in host ``host``'s namespace, its output captured."""
        return nn.run_in_netns(self.host(host).netns, argv, **kw)

    def ping(self, host: str, dst: object, *, count: int = 1, wait: float = 1.0,
             extra: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
        return self.run(host, ["ping", "-n", "-c", str(count), "-W", str(wait), *extra,
                               str(dst)], timeout=count * wait + 10)


def make_lab(topo: nn.Topology, n_hosts: int = 3, mtus: Sequence[int] = (),
             name: str = "r1", ipv6: bool = False, attach: Sequence[int] = (),
             bridge: Sequence[int] = ()) -> Lab:
    """Router and hosts h1..hN on 10.K.0.0/24, and on 2001:db8:K::/64 with
    ``ipv6`` (no TAP yet: the router opens them).  Links whose number is in
    ``attach`` are veths handed to the router (``ethK``, the veth's MAC); in
    ``bridge``, TAPs left in the router's namespace and bridged with a veth."""
    lab = Lab(topo=topo, router_ns=topo.netns("r"), name=name)
    for k in range(1, n_hosts + 1):
        router = IPv4Interface(f"10.{k}.0.1/24")
        router6 = IPv6Interface(f"2001:db8:{k:x}::1/64") if ipv6 else None
        lab.hosts.append(LabHost(name=f"h{k}", netns=topo.netns(f"h{k}"),
                                 ifname=f"eth{k}" if k in attach else f"tap{k}",
                                 router=router, address=host_address(router),
                                 mtu=mtus[k - 1] if k - 1 < len(mtus) else 1500,
                                 router_mac=None if k in attach else router_mac(k),
                                 router6=router6,
                                 address6=host_address(router6) if router6 else None,
                                 attach=k in attach, bridge=k in bridge))
    return lab


def load_lab_config(explicit: str | os.PathLike | None = None) -> Config:
    """A lab's router config: the file ``explicit``, else the shipped lab.toml."""
    if explicit:
        return load_config(explicit)
    return parse_config(LAB_TOML.read_text(encoding="utf-8"), str(LAB_TOML))


def lab_from_config(topo: nn.Topology, config: Config, attach: bool = False) -> Lab:
    """The lab of a router config: each [[interface]] is a link to one host, whose
    ``netns`` name becomes a namespace of ``topo``.  With ``attach`` the links are
    wired as a container runtime wires them: veths eth1, eth2, ... handed to the
    router's namespace a little after it started (:meth:`Lab.hand_over`)."""
    where = config.path or "the lab config"
    if not config.interfaces:
        raise ValueError(f"{where}: no [[interface]]: no hosts for a lab")
    for itf in config.interfaces:
        if not itf.netns or "/" in itf.netns:
            raise ValueError(f"{where}: interface {itf.name}: a lab's interfaces name their "
                             'host (netns = "h1")')
        if not itf.addresses:
            raise ValueError(f"{where}: interface {itf.name}: a lab's link needs an IPv4 "
                             "address (its hosts are reached over IPv4 first)")
    lab = Lab(topo=topo, router_ns=topo.netns("r"), name=config.router.name,
              log_level=config.router.log_level, sysctl=dict(config.sysctl),
              routes=[route_doc(r) for r in config.routes], metrics=config.metrics.listen)
    made: dict[str, str] = {}
    for k, itf in enumerate(config.interfaces, 1):
        if itf.netns not in made:
            made[itf.netns] = topo.netns(itf.netns)
        router, *more = itf.addresses
        router6, *more6 = itf.addresses6 or (None,)
        lab.hosts.append(LabHost(name=itf.netns, netns=made[itf.netns],
                                 ifname=f"eth{k}" if attach else itf.name, attach=attach,
                                 router=router, address=host_address(router), mtu=itf.mtu,
                                 router_mac=None if itf.mac_generated or attach else itf.mac,
                                 more_addresses=tuple(more), router6=router6,
                                 address6=host_address(router6) if router6 else None,
                                 more_addresses6=tuple(more6), ra=itf.ra))
    return lab


@contextlib.contextmanager
def lab_up(config: str | os.PathLike | None = None, *, report: Report | None = None,
           timeout: float = 30.0, attach: bool = False,
           control_plane: bool = False) -> Iterator[Lab]:
    """Build the lab of ``config`` (default: lab.toml) and run its router; remove
    everything afterwards.  ``report(step, text)`` hears of each step; with
    ``attach`` the links are veths handed to the running router; with
    ``control_plane`` the router mirrors its ports into a namespace of the lab
    (``<prefix>cp``) and imports its routes."""
    report = report or (lambda _step, _text: None)
    cfg = load_lab_config(config)
    with nn.Topology() as topo:
        workdir = Path(tempfile.mkdtemp(prefix=f"{topo.prefix}lab-"))
        lab: Lab | None = None
        try:
            lab = lab_from_config(topo, cfg, attach=attach)
            if control_plane:
                lab.control_plane = topo.netns("cp")
            report("namespaces", f"{lab.router_ns} (router), "
                   + ", ".join(h.netns for h in lab.hosts)
                   + (f", {lab.control_plane} (its control plane)" if lab.control_plane else ""))
            t = time.monotonic()
            router = lab.start_router(workdir, header=f"generated by `forwarder lab` from "
                                      f"{cfg.path}", timeout=timeout)
            report("router", f"\"{lab.name}\" pid {router.pid}, healthy after "
                   f"{time.monotonic() - t:.1f} s"
                   + (f" (its veths handed over {lab.attach_delay:g} s after it started)"
                      if attach else "") + "; "
                   + ", ".join(f"{h.name} {h.address}"
                               + (f" {h.address6}" if h.address6 else "") + f" via {h.ifname}"
                               + (f" (mtu {h.mtu})" if h.mtu != 1500 else "") for h in lab.hosts))
            yield lab
        finally:
            tear_down(lab, topo, workdir,
                      lambda code, out: report("cleanup", f"router exited {code}:\n{out[-3000:]}"))


def tear_down(lab: Lab | None, topo: nn.Topology, workdir: Path,
              on_exit: Callable[[int, str], None]) -> None:
    """Remove a lab, signals held off: the router first, so that it can say
    goodbye (netns removal kills it anyway; ``on_exit(code, log)`` hears of
    an exit status not 0), then the namespaces and ``workdir``."""
    with signals_ignored():
        if lab is not None and lab.router is not None:
            with contextlib.suppress(Exception):
                code, out = lab.router.stop()
                if code != 0:
                    on_exit(code, out)
        topo.close()
        shutil.rmtree(workdir, ignore_errors=True)
