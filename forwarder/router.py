"""A running router: its TAPs, its forwarding thread, its tunables, reload.

The control plane's view of one router.  The forwarding path itself lives in
forwarder/dataplane.pyx and runs in a thread of its own without the GIL;
everything here runs with the GIL and talks to it through Dataplane methods.

The dataplane never logs.  A watcher thread here turns what operators must
hear about into log lines: a zone that refused allocations at its limit is
reported like FreeBSD's UMA does, ``[zone: mbuf_cluster] kern.ipc.nmbclusters
limit reached``, at most once per zone every ``zone_warning_interval`` seconds
(300, FreeBSD's interval).

Reload (``forwarder reload`` or SIGHUP) re-reads the config file with the
boot ``-o`` overrides given at start:

* routes become the config's again (connected, local and [[route]]); routes
  added at runtime with ``forwarder route add`` are dropped;
* a tunable is set when the new config's value differs from the previous
  config's, so values changed with ``forwarder sysctl`` survive a reload that
  does not touch them; boot-only tunables cannot change (restart);
* addresses (both families), MTUs and ``ra`` of existing interfaces are
  applied; adding, removing or reordering interfaces, or changing a MAC,
  netns, attach or offload, needs a restart.

Attached ports (``attach = "eth1"``, forwarder/attach.py) are down in the
dataplane until their interface is joined; an :class:`forwarder.attach.Attacher`
thread joins them as they appear and marks them down when they go away.

A config that does not parse or validate changes nothing: the reason is
logged, the failure counted (``stats``: reloads.failed) and returned.

IPv4 routes live in ``routes`` (forwarder.route), IPv6 routes in ``routes6``
(forwarder.route6); both are read by the dataplane lock-free.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

from pyroute2.netlink.exceptions import NetlinkError

from forwarder import attach, cplane, mbufs, netns
from forwarder.admission import EndpointStats
from forwarder.config import OWN_NETNS, Config, Interface, load_config, unusable_gateway
from forwarder.dataplane import MAX_STALL, Dataplane
from forwarder.route import RouteTable
from forwarder.route6 import Route6Table
from forwarder.sysctl import DATAPLANE_TUNABLES, REGISTRY, SysctlError, SysctlTree

log = logging.getLogger("forwarder.router")

# FreeBSD's uma_core.c warninterval: one "limit reached" line per zone per 5 min.
ZONE_WARNING_INTERVAL = 300.0
# How often the watcher thread looks at the zones' failure counters.
WATCH_PERIOD = 0.5


class _QuietTrees(logging.Filter):
    """Silences forwarder.sysctl's change lines in the thread that builds
    throw-away trees from a config being reloaded (they are not changes)."""

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self._local, "on", False)

    def tree(self, config: Config) -> SysctlTree:
        self._local.on = True
        try:
            return config.sysctl_tree()
        finally:
            self._local.on = False


_quiet = _QuietTrees()
logging.getLogger("forwarder.sysctl").addFilter(_quiet)


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


@dataclass
class ReloadStats:
    ok: int = 0
    failed: int = 0
    last_error: str | None = None
    last_time: float | None = None


@dataclass
class Router:
    """Build with Router(config), then start(); stop() undoes everything."""

    config: Config
    sysctl: SysctlTree = field(init=False)
    routes: RouteTable = field(init=False)
    routes6: Route6Table = field(init=False)    # IPv6 routes (the dataplane will read it)
    dp: Dataplane = field(init=False)
    ifindex: dict[str, int] = field(default_factory=dict)
    fds: dict[str, int] = field(default_factory=dict)
    # Routes installed from the config (prefix -> next hop spec) and from the CLI.
    config_routes: dict[str, dict] = field(default_factory=dict)
    runtime_routes: dict[str, dict] = field(default_factory=dict)
    reloads: ReloadStats = field(default_factory=ReloadStats)
    # What the control socket and the metrics endpoint refused and rejected,
    # by endpoint ("control", "metrics"): each server registers its own.
    endpoints: dict[str, EndpointStats] = field(default_factory=dict)
    started_at: float = 0.0
    # Boot overrides (-o name=value), re-applied on every reload.
    overrides: tuple[str, ...] = ()
    # Set the root logger's level from [router] log_level on reload (not with -v).
    manage_log_level: bool = False
    zone_warning_interval: float = ZONE_WARNING_INTERVAL
    _thread: threading.Thread | None = None
    _watcher: threading.Thread | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _stall_thread: threading.Thread | None = None
    _lock: threading.RLock = field(default_factory=threading.RLock)
    attacher: attach.Attacher | None = None
    # Routes copied from the control plane's kernel (forwarder/cplane.py):
    # prefix -> (next-hop spec, origin such as "bgp"); config and runtime
    # routes for the same prefix win, the imported one waits behind them.
    imported: dict[str, tuple[dict, str]] = field(default_factory=dict)
    mirrors: "cplane.Mirrors | None" = None
    importer: "cplane.RouteImporter | None" = None
    _tap_index: dict[str, int] = field(default_factory=dict)
    # the packet sockets of attach_mode "packet" ports (their fds are in fds too)
    _packet: dict[str, netns.PacketSocket] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sysctl = self.config.sysctl_tree()
        self.routes = RouteTable()
        self.routes6 = Route6Table()
        self.dp = Dataplane(self.routes, self.routes6)

    # --- start / stop ---------------------------------------------------------

    def start(self) -> None:
        mbufs.apply_limits(self.sysctl)
        try:
            for itf in self.config.interfaces:
                self._attach(itf)
            self._start_mirrors()
            self.config_routes = self._route_specs(self.config)
            for prefix, nh in self.config_routes.items():
                self._table(prefix).add(prefix, nh)
            for name in DATAPLANE_TUNABLES:
                self.dp.set(name, self.sysctl.get(name))
        except BaseException:
            if self.mirrors is not None:
                self.mirrors.close()
            self._close_taps()
            raise
        self.sysctl.add_hook(self._on_sysctl)
        self._thread = threading.Thread(target=self.dp.run, name="dataplane", daemon=True)
        self._thread.start()
        self.started_at = time.monotonic()
        self._stopping.clear()
        self._watcher = threading.Thread(target=self._watch, name="zone-watcher", daemon=True)
        self._watcher.start()
        self._start_attacher()
        self._start_control_plane()
        log.info("router %s forwarding on %s", self.config.router.name,
                 ", ".join(self.ifindex) or "no interfaces")

    def _start_mirrors(self) -> None:
        """[control_plane]: the ports' mirrors, before the forwarding loop runs."""
        cp = self.config.control_plane
        if cp.netns is None:
            return
        if "/" not in cp.netns and not netns.netns_exists(cp.netns):
            try:
                netns.create_netns(cp.netns)
            except PermissionError as e:
                raise PermissionError(
                    e.errno, f"control plane: creating namespace {cp.netns} needs "
                    "CAP_SYS_ADMIN and a mount under /run/netns (in a container: --cap-add "
                    "SYS_ADMIN, and where AppArmor confines it --security-opt "
                    "apparmor=unconfined); or keep the mirrors in the router's own namespace: "
                    f"netns = \"{OWN_NETNS}\"") from None
            log.info("control plane: created namespace %s", cp.netns)
        self.mirrors = cplane.Mirrors(self.config)
        self.mirrors.create(self.dp, self.ifindex)
        for itf in self.config.interfaces:
            if itf.attach:              # down as its port is, until its interface joins (_joined)
                self._mirror_link(itf.name, False)

    def _start_control_plane(self) -> None:
        """[control_plane]: the route import, once the loop runs."""
        cp = self.config.control_plane
        if cp.netns is None:
            return
        if cp.import_routes:
            self.importer = cplane.RouteImporter(self, self.mirrors)
            self.importer.start()

    def _start_attacher(self) -> None:
        ports = [attach.Port(name=itf.name, link=itf.attach, tap=itf.tap,
                             tap_index=self._tap_index.get(itf.name, 0),
                             fd=self.fds[itf.name], mode=itf.attach_mode)
                 for itf in self.config.interfaces if itf.attach]
        if not ports:
            return
        self.attacher = attach.Attacher(
            ports, timeout=self.config.router.attach_timeout, on_join=self._joined,
            on_loss=self._lost, expected=attach.expected_interfaces(),
            mtus={itf.name: itf.mtu if itf.mtu_configured else None
                  for itf in self.config.interfaces if itf.attach})
        self.attacher.start()

    def _joined(self, port: attach.Port, seen: attach.LinkSeen) -> None:
        """An attached port's interface is joined: its MAC and MTU unless
        configured, then the port is up."""
        itf = self.config.interface(port.name)
        if not itf.mtu_configured and seen.mtu != itf.mtu:
            if itf.tap:
                netns.link_set(itf.tap, mtu=seen.mtu)
            self.dp.set_mtu(self.ifindex[itf.name], seen.mtu)
        mac = mac_bytes(seen.mac) if itf.mac_generated else None
        self.dp.set_link(self.ifindex[itf.name], True, mac)
        self._mirror_link(port.name, True, seen.mac if itf.mac_generated else itf.mac,
                          itf.mtu if itf.mtu_configured else seen.mtu)

    def _lost(self, port: attach.Port) -> None:
        """Its interface went away: port down, its neighbours forgotten (the
        next one on that link may be another host)."""
        self.dp.set_link(self.ifindex[port.name], False)
        self._mirror_link(port.name, False)
        for e in self.dp.arp_entries():
            if e["interface"] == port.name:
                self.dp.arp_delete(e["ip"], port.name)
        for e in self.dp.nd6_entries():
            if e["interface"] == port.name:
                self.dp.nd6_delete(e["ip"], port.name)

    def _mirror_link(self, port: str, up: bool, mac: str | None = None,
                     mtu: int | None = None) -> None:
        """A port's mirror follows its link: the routing daemons see it go down
        (and the kernel drops the routes over it, which the import follows),
        and come back with the MAC and MTU the port took (``mac``, ``mtu``)."""
        if self.mirrors is None:
            return
        try:
            if mac is not None and mtu is not None:
                self.mirrors.follow(port, mac, mtu)
            netns.link_set(port, self.config.control_plane.netns_path, up=up)
        except (OSError, NetlinkError) as e:
            log.warning("mirror %s: could not set it %s: %s", port, "up" if up else "down", e)

    def _attach(self, itf: Interface) -> None:
        if itf.tap is None:     # attached through a packet socket: bound once joined
            self._attach_packet(itf)
            return
        fd = netns.tap_open(itf.tap, extra_flags=netns.IFF_VNET_HDR if itf.offload else 0)
        self.fds[itf.name] = fd
        accepted = self._offloads(itf, fd) if itf.offload else 0
        if itf.attach:          # before it is up: no link-local, no DAD
            self._tap_index[itf.name] = attach.prepare_tap(itf.tap)
        netns.link_set(itf.tap, mtu=itf.mtu, up=True)
        idx = self.dp.add_interface(fd, itf.name, mac_bytes(itf.mac), itf.mtu,
                                    [(str(a.ip), a.network.prefixlen) for a in itf.addresses],
                                    addrs6=[(str(a.ip), a.network.prefixlen)
                                            for a in itf.addresses6], ra=itf.ra,
                                    vnet_hdr=itf.offload, offloads=accepted,
                                    refused=netns.TUN_F_ALL & ~accepted if itf.offload else 0)
        self.ifindex[itf.name] = idx
        if itf.attach:
            self.dp.set_link(idx, False)        # until forwarder.attach joins it
        if itf.netns:
            netns.link_move(itf.name, itf.netns_path)
            netns.link_set(itf.name, itf.netns_path, up=True)
        later = itf.attach and itf.mac_generated      # the attached interface's, once joined
        log.info("interface %s up: %s mtu %s mac %s offloads %s%s", itf.name,
                 ", ".join([*map(str, itf.addresses), *map(str, itf.addresses6)]
                           + ([] if later else [str(itf.link_local)])),
                 itf.mtu if itf.mtu_configured or not itf.attach else f"{itf.mtu} (until attached)",
                 f"of {itf.attach}" if later else itf.mac,
                 ", ".join(netns.tun_flag_names(accepted)) or "off",
                 f" (kernel side in {itf.netns})" if itf.netns else
                 f" (TAP {itf.tap}, attaches to {itf.attach})" if itf.attach else "")

    def _attach_packet(self, itf: Interface) -> None:
        """A port on a packet socket (attach_mode "packet", forwarder/attach.py).
        The socket always carries the virtio-net header: the interface's peer
        hands it super-frames and partial checksums whatever the router asks
        for (a packet socket has no TUNSETOFFLOAD), so the dataplane reads them
        as from an offloading TAP.  On output the kernel does in software what
        the interface's features lack (validate_xmit_skb); ``offload = false``
        hands it none of that: the dataplane checksums and segments itself."""
        ps = netns.packet_open()
        self._packet[itf.name] = ps
        self.fds[itf.name] = ps.fd
        idx = self.dp.add_interface(ps.fd, itf.name, mac_bytes(itf.mac), itf.mtu,
                                    [(str(a.ip), a.network.prefixlen) for a in itf.addresses],
                                    addrs6=[(str(a.ip), a.network.prefixlen)
                                            for a in itf.addresses6], ra=itf.ra,
                                    vnet_hdr=True, offloads=netns.TUN_F_ALL,
                                    hwassist=-1 if itf.offload else 0, ring=ps.ring,
                                    ring_frames=ps.frames, ring_frame_size=ps.frame_size)
        self.ifindex[itf.name] = idx
        self.dp.set_link(idx, False)            # until forwarder.attach binds it
        log.info("interface %s up: %s mtu %s mac %s (packet socket on %s, offloads %s)",
                 itf.name, ", ".join([*map(str, itf.addresses), *map(str, itf.addresses6)]),
                 itf.mtu if itf.mtu_configured else f"{itf.mtu} (until attached)",
                 f"of {itf.attach}" if itf.mac_generated else itf.mac, itf.attach,
                 "on" if itf.offload else "off on output")

    @staticmethod
    def _offloads(itf: Interface, fd: int) -> int:
        """TUNSETOFFLOAD with every offload the dataplane handles; what the
        kernel refuses is logged once and left off (the interface runs
        without it: the kernel side then segments and checksums itself)."""
        accepted = netns.tap_set_offload(fd, netns.TUN_F_ALL)
        refused = netns.TUN_F_ALL & ~accepted
        if refused:
            log.warning("interface %s: the kernel refused offloads %s; running with %s",
                        itf.name, ", ".join(netns.tun_flag_names(refused)),
                        ", ".join(netns.tun_flag_names(accepted)) or "none")
        return accepted

    def stop(self) -> None:
        """Stop forwarding, free every held packet, close the TAPs."""
        self._stopping.set()
        if self.attacher is not None:
            self.attacher.stop()
        if self.importer is not None:
            self.importer.stop()
        if self.dp.resume():
            log.warning("dataplane stall ended by shutdown")
        if self._stall_thread is not None:
            self._stall_thread.join(5)
            self._stall_thread = None
        if self._watcher is not None:
            self._watcher.join(5)
            self._watcher = None
        if self._thread is not None:
            if self.dp.ra_final():
                log.info("router advertisements ended (router lifetime 0 sent)")
            self.dp.stop()
            self._thread.join(10)
            if self._thread.is_alive():
                log.error("dataplane thread did not stop within 10 s")
            self._thread = None
        self.dp.flush()
        self._close_taps()
        if self.mirrors is not None:            # after the loop: it may still write to them
            self.mirrors.close()
        self.sysctl.remove_hook(self._on_sysctl)
        log.info("router %s stopped", self.config.router.name)

    def _close_taps(self) -> None:
        """The ports' fds (after the forwarding thread stopped: it reads the
        packet sockets' rings)."""
        for name, ps in list(self._packet.items()):
            ps.close()
            del self._packet[name]
            self.fds.pop(name, None)
        for name, fd in list(self.fds.items()):
            try:
                os.close(fd)
            except OSError:
                pass
            del self.fds[name]

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- routes ---------------------------------------------------------------

    def _table(self, prefix: str) -> RouteTable | Route6Table:
        """The route table of prefix's family."""
        return self.routes6 if ":" in prefix else self.routes

    def _route_specs(self, config: Config) -> dict[str, dict]:
        """Connected prefixes, our own addresses (/32 and /128, local) and the
        static routes of a config, both families, as next-hop specs.  The
        link-local prefix fe80::/64 is on every link and in no table: the
        dataplane keeps link-local traffic on its link."""
        specs: dict[str, dict] = {}
        for itf in config.interfaces:
            idx = self.ifindex[itf.name]
            for a in (*itf.addresses, *itf.addresses6):
                specs[str(a.network)] = {"type": "forward", "ifindex": idx}
        for itf in config.interfaces:
            for a in (*itf.addresses, *itf.addresses6):
                specs[f"{a.ip}/{a.max_prefixlen}"] = {"type": "local"}
        for r in config.routes:
            specs[str(r.prefix)] = self._nexthop(config, r.type, r.via, r.interface,
                                                 r.via_interface)
        return specs

    def _nexthop(self, config: Config, type_: str, via, interface: str | None,
                 via_interface: str | None = None) -> dict:
        if type_ in ("blackhole", "unreachable", "prohibit"):
            return {"type": type_}
        if via is not None and via_interface is not None:     # an IPv6 link-local gateway
            if via_interface not in self.ifindex:
                raise ValueError(f"no interface {via_interface!r}")
            return {"type": "forward", "via": str(via), "ifindex": self.ifindex[via_interface]}
        if via is not None:
            link = config.link_for(via)
            if link is None:
                raise ValueError(f"gateway {via} is not on any connected prefix")
            itf, net = link
            problem = unusable_gateway(via, net)
            if problem:
                raise ValueError(f"gateway {problem}")
            return {"type": "forward", "via": str(via), "ifindex": self.ifindex[itf.name]}
        if interface not in self.ifindex:
            raise ValueError(f"no interface {interface!r}")
        return {"type": "forward", "ifindex": self.ifindex[interface]}

    def _own_addresses(self) -> set[str]:
        return {str(a.ip) for itf in self.config.interfaces
                for a in (*itf.addresses, *itf.addresses6)}

    def route_add(self, prefix: str, via: str | None = None, interface: str | None = None,
                  type_: str = "unicast") -> dict:
        """Add (or replace) a route at runtime; kept until reload or delete."""
        net = _network(prefix)
        if type_ not in ("unicast", "blackhole", "unreachable", "prohibit"):
            raise ValueError(f"route type {type_!r}: expected unicast, blackhole, "
                             "unreachable or prohibit")
        if type_ == "unicast" and (via is None) == (interface is None):
            raise ValueError("a unicast route needs exactly one of via or interface")
        if net.prefixlen == net.max_prefixlen and str(net.network_address) in self._own_addresses():
            raise ValueError(f"{net} is one of the router's addresses")
        gw: IPv4Address | IPv6Address | None = None
        scope = None
        if via is not None and type_ == "unicast":
            gw, scope = _gateway(via, net)
            if str(gw) in self._own_addresses():
                raise ValueError(f"gateway {gw} is one of the router's own addresses")
        nh = self._nexthop(self.config, type_, gw, interface, scope)
        table = self._table(str(net))
        with self._lock:
            if self._table_full(str(net)):
                raise ValueError(f"route table full: {len(self.routes) + len(self.routes6)} "
                                 f"routes, net.route.max_routes is "
                                 f"{self.sysctl.get('net.route.max_routes')}")
            table.add(str(net), nh)
            self.runtime_routes[str(net)] = nh
            # Overrides a config route: a reload puts the config's back.
            self.config_routes.pop(str(net), None)
        log.info("route add %s %s", net, nh)
        return table.get(str(net))

    def route_delete(self, prefix: str) -> None:
        n = _network(prefix)
        net = str(n)
        table = self._table(net)
        with self._lock:
            if table.get(net) is None:
                raise KeyError(f"no route for {net}")
            if n.prefixlen == n.max_prefixlen and str(n.network_address) in self._own_addresses():
                raise ValueError(f"{net} is one of the router's addresses")
            table.delete(net)
            self.runtime_routes.pop(net, None)
            self.config_routes.pop(net, None)
            if net in self.imported:            # the imported route behind it comes back
                table.add(net, self.imported[net][0])
        log.info("route delete %s", net)

    def route_list(self) -> list[dict]:
        """Every route with its origin: connected, local, static (the config),
        runtime (`forwarder route add`), or the protocol of an imported one."""
        names = {v: k for k, v in self.ifindex.items()}
        static = {str(r.prefix) for r in self.config.routes}
        out = []
        for r in [*self.routes.routes(), *self.routes6.list()]:
            r = dict(r)
            r["interface"] = names.get(r.pop("ifindex"), None)
            r.pop("index", None)
            for path in r.get("paths", ()):         # a multipath route's next hops
                path["interface"] = names.get(path.pop("ifindex"), None)
                path.pop("index", None)
                path.pop("type", None)
            p = r["prefix"]
            if p in self.runtime_routes:
                r["origin"] = "runtime"
            elif p in self.config_routes:
                r["origin"] = ("static" if p in static else
                               "local" if r["type"] == "local" else "connected")
            else:
                r["origin"] = self.imported[p][1] if p in self.imported else "?"
            if p in self.imported and r["origin"] != self.imported[p][1]:
                r["shadows"] = self.imported[p][1]      # an imported route waits behind it
            out.append(r)
        return out

    # --- imported routes (forwarder/cplane.py) ---------------------------------------

    def _table_full(self, prefix: str) -> bool:
        """A new prefix would take the tables past net.route.max_routes (both
        families count); replacing a route that is there never does."""
        return prefix not in self._table(prefix) and \
            len(self.routes) + len(self.routes6) >= self.sysctl.get("net.route.max_routes")

    def _shadowed(self, prefix: str) -> bool:
        return prefix in self.config_routes or prefix in self.runtime_routes

    def import_route(self, prefix: str, nh: dict, origin: str) -> bool:
        """Install (or replace) a route from the control plane's kernel, unless a
        config or runtime route has the prefix.  True when the table changed."""
        with self._lock:
            if self.imported.get(prefix) == (nh, origin):
                return False
            self.imported[prefix] = (nh, origin)
            if self._shadowed(prefix):
                return False
            if self._table_full(prefix):
                log.warning("route import: %s not installed: the table is full "
                            "(net.route.max_routes %d)", prefix,
                            self.sysctl.get("net.route.max_routes"))
                return False
            self._table(prefix).add(prefix, nh)
        return True

    def withdraw_route(self, prefix: str) -> bool:
        """The kernel deleted an imported route; True when the table changed."""
        with self._lock:
            if self.imported.pop(prefix, None) is None or self._shadowed(prefix):
                return False
            table = self._table(prefix)
            if table.get(prefix) is None:
                return False
            table.delete(prefix)
        return True

    def sync_imported(self, want: dict[str, tuple[dict, str]]) -> tuple[int, int]:
        """Make the imported routes ``want`` (a full dump): (installed, removed)."""
        added = removed = 0
        for prefix in [p for p in self.imported if p not in want]:
            removed += self.withdraw_route(prefix)
        for prefix, (nh, origin) in want.items():
            added += self.import_route(prefix, nh, origin)
        return added, removed

    # --- tunables -----------------------------------------------------------------

    def _on_sysctl(self, name: str, old: int, new: int) -> None:
        """A tunable changed at runtime: apply it (may veto with SysctlError)."""
        applies = REGISTRY[name].applies
        if applies == "mbuf":
            mbufs.set_limit(name, new, self.sysctl)
        elif applies == "dataplane":
            self.dp.set(name, new)
        # SysctlTree logs the change once it is committed.

    # --- zone limit warnings (the dataplane must not log) ---------------------------

    def _watch(self) -> None:
        """Every WATCH_PERIOD: a zone whose failure counter moved since the last
        look hit its limit -- say so, at most once per zone_warning_interval;
        an interface whose device went away -- say so once."""
        last_fails: dict[str, int] = {}
        last_warned: dict[str, float] = {}
        lost: set[str] = set()
        while not self._stopping.wait(WATCH_PERIOD):
            try:
                for i in self.dp.stats()["interfaces"]:
                    if i["link"].startswith("lost") and i["name"] not in lost:
                        lost.add(i["name"])
                        log.error("interface %s: device %s; no longer polled, its traffic "
                                  "is dropped (restart to re-create it)", i["name"], i["link"])
                for z in mbufs.zone_stats():
                    name, fails = z["name"], z["fails"]
                    prev = last_fails.get(name, fails)
                    last_fails[name] = fails
                    tunable = mbufs.ZONE_LIMITS.get(name)
                    if tunable is None or fails <= prev:
                        continue
                    now = time.monotonic()
                    if now - last_warned.get(name, -1e18) >= self.zone_warning_interval:
                        last_warned[name] = now
                        log.warning("[zone: %s] %s limit reached", name, tunable)
            except Exception:  # noqa: BLE001 - the watcher must outlive a bad read
                log.exception("zone watcher")

    # --- debug: stall the dataplane ---------------------------------------------------

    def stall(self, seconds: float) -> dict:
        """Debug facility: stop the forwarding loop for ``seconds`` (it makes no
        progress, `forwarder health` fails) without stopping the router."""
        seconds = float(seconds)
        if not 0 < seconds <= MAX_STALL:
            raise ValueError(f"stall of {seconds:g} s: expected 0 < SECONDS <= {MAX_STALL:g}")
        with self._lock:
            if not self.running:
                raise RuntimeError("the dataplane is not running")
            if self._stall_thread is not None and self._stall_thread.is_alive():
                raise RuntimeError("the dataplane is already stalled "
                                   "(forwarder debug resume ends it)")
            self._stall_thread = threading.Thread(target=self._stall, args=(seconds,),
                                                  name="stall", daemon=True)
            self._stall_thread.start()
        deadline = time.monotonic() + 1
        while not self.dp.stalled and self._stall_thread.is_alive() \
                and time.monotonic() < deadline:
            time.sleep(0.001)
        return {"stalled": True, "seconds": seconds}

    def _stall(self, seconds: float) -> None:
        log.warning("dataplane stalled for %g s on request (debug)", seconds)
        t0 = time.monotonic()
        try:
            self.dp.stall(seconds)
        except Exception as e:  # noqa: BLE001
            log.error("stall: %s", e)
            return
        log.warning("dataplane resumed after %.1f s stall", time.monotonic() - t0)

    def resume(self) -> dict:
        was = self.dp.resume()
        if was and self._stall_thread is not None:
            self._stall_thread.join(5)
        return {"resumed": was}

    # --- reload ---------------------------------------------------------------------

    def reload(self, path: str | None = None) -> list[str]:
        """Re-read the config and apply routes, addresses and runtime tunables.
        A config that does not parse or validate changes nothing: the error is
        logged, counted and raised.  Returns what changed."""
        path = path or (str(self.config.path) if self.config.path else None)
        with self._lock:
            try:
                if path is None:
                    raise ValueError("the router was not started from a config file")
                new = load_config(path, self.overrides)
                changes = self._apply(new)
            except Exception as e:  # noqa: BLE001 - every failure is counted and logged
                reason = str(e).replace("\n", "; ") or type(e).__name__
                self.reloads.failed += 1
                self.reloads.last_error = reason
                self.reloads.last_time = time.time()
                log.error("reload of %s failed, running config kept: %s", path, reason)
                raise
            self.reloads.ok += 1
            self.reloads.last_error = None
            self.reloads.last_time = time.time()
        log.info("reload of %s ok: %s", path, "; ".join(changes) or "no changes")
        return changes

    def _apply(self, new: Config) -> list[str]:
        old = self.config
        if [i.name for i in new.interfaces] != [i.name for i in old.interfaces]:
            raise ValueError("interfaces cannot be added, removed or reordered by a reload; restart")
        for a, b in zip(old.interfaces, new.interfaces):
            if (a.netns, a.mac, a.offload, a.attach, a.attach_mode) != \
                    (b.netns, b.mac, b.offload, b.attach, b.attach_mode):
                raise ValueError(f"interface {a.name}: netns, mac, offload, attach and "
                                 f"attach_mode change only with a restart")
        # Validate everything before changing anything.
        specs = self._route_specs(new)
        tree = _quiet.tree(new)
        boot_changed = [n for n, v in tree.all()
                        if not tree.info(n)["runtime"] and v != self.sysctl.get(n)]
        if boot_changed:
            raise ValueError(f"boot-only tunables changed: {', '.join(boot_changed)}; restart")
        # Tunables the config changed (since the previous config) -- values set
        # at runtime with `forwarder sysctl` survive a reload that leaves them be.
        before = _quiet.tree(old).snapshot()
        wanted = {n: v for n, v in tree.all() if v != before[n] and v != self.sysctl.get(n)}
        wanted = _limits_order(wanted, self.sysctl)
        changes: list[str] = []
        # What can still fail goes first: the links' MTUs (netlink), then the
        # tunables (all or nothing; a hook may veto).  When either fails the
        # MTUs already changed are put back, so a refused reload changes
        # nothing.  Addresses and routes below are validated already.
        mtus_set: list[tuple[Interface, int]] = []
        try:
            for a, b in zip(old.interfaces, new.interfaces):
                if a.mtu != b.mtu:
                    try:
                        self._set_mtu(b, b.mtu)
                    except OSError as e:
                        raise ValueError(f"interface {b.name}: mtu {b.mtu}: {e}") from e
                    mtus_set.append((b, a.mtu))
                    changes.append(f"{b.name} mtu {b.mtu}")
            if wanted:
                self.sysctl.set_many(wanted)    # all or nothing (SysctlError)
                changes += [f"{n}={v}" for n, v in wanted.items()]
        except Exception:
            for itf, mtu in reversed(mtus_set):
                try:
                    self._set_mtu(itf, mtu)
                except Exception:               # noqa: BLE001 - reported, the reload fails anyway
                    log.exception("reload: %s: cannot put mtu %d back", itf.name, mtu)
            raise
        for a, b in zip(old.interfaces, new.interfaces):
            if a.addresses != b.addresses:
                self.dp.set_addresses(self.ifindex[b.name],
                                      [(str(x.ip), x.network.prefixlen) for x in b.addresses])
                changes.append(f"{b.name} addresses")
            if a.addresses6 != b.addresses6:
                self.dp.set_addresses6(self.ifindex[b.name],
                                       [(str(x.ip), x.network.prefixlen) for x in b.addresses6])
                changes.append(f"{b.name} IPv6 addresses")
            if a.ra != b.ra:
                self.dp.set_ra(self.ifindex[b.name], b.ra)
                changes.append(f"{b.name} ra {'on' if b.ra else 'off'}")
        current = {r["prefix"] for r in [*self.routes.routes(), *self.routes6.list()]}
        for prefix in sorted(current - set(specs), key=lambda p: -ip_network(p).prefixlen):
            if prefix in self.imported:         # the kernel's route takes the prefix again
                if self.config_routes.get(prefix, self.runtime_routes.get(prefix)) is not None:
                    self._table(prefix).add(prefix, self.imported[prefix][0])
                    changes.append(f"route ~{prefix} ({self.imported[prefix][1]})")
                continue
            self._table(prefix).delete(prefix)
            changes.append(f"route -{prefix}")
        for prefix, nh in specs.items():
            if prefix not in current:
                self._table(prefix).add(prefix, nh)
                changes.append(f"route +{prefix}")
            elif self.config_routes.get(prefix) != nh:
                self._table(prefix).add(prefix, nh)
                changes.append(f"route ~{prefix}")
        self.config_routes = specs
        self.runtime_routes.clear()
        if new.metrics != old.metrics:
            log.warning("reload: [metrics] changes take effect at the next restart")
        if self.manage_log_level and new.router.log_level != old.router.log_level:
            logging.getLogger().setLevel(new.router.log_level.upper())
            changes.append(f"log_level {new.router.log_level}")
        self.config = new
        return changes

    def _set_mtu(self, itf: Interface, mtu: int) -> None:
        """The MTU of a port: the kernel side of its TAP (netlink), then the dataplane."""
        if itf.netns:
            netns.link_set(itf.name, itf.netns_path, mtu=mtu)
        else:
            if itf.tap:
                netns.link_set(itf.tap, mtu=mtu)
            if itf.attach:
                with contextlib.suppress(OSError, LookupError):
                    netns.link_set(itf.attach, mtu=mtu)
        self.dp.set_mtu(self.ifindex[itf.name], mtu)

    # --- health ---------------------------------------------------------------------

    def healthy(self, within: float = 2.0) -> bool:
        return self.running and self.dp.progress_age() <= within and self.ready

    @property
    def ready(self) -> bool:
        """Every attached port joined, or attach_timeout passed."""
        return self.attacher is None or self.attacher.ready

    def attached_ports(self) -> dict[str, attach.Port]:
        """The attached ports by name (their joins and losses)."""
        return {} if self.attacher is None else {p.name: p for p in self.attacher.ports}

    def waiting_for(self) -> str | None:
        """What the router still waits for, as a phrase; None when nothing."""
        if self.attacher is None or not self.attacher.missing:
            return None
        return self.attacher.waiting_text()


def _network(prefix: str) -> IPv4Network | IPv6Network:
    """A route's destination, strictly (no host bits), with a message naming it."""
    try:
        if ":" in prefix:
            return IPv6Network(prefix, strict=True)
        return IPv4Network(prefix, strict=True)
    except ValueError as e:
        raise ValueError(f"{prefix!r} is not a prefix like 10.0.0.0/8 or 2001:db8::/32 "
                         f"({e})") from None


def _gateway(via: str, net: IPv4Network | IPv6Network
             ) -> tuple[IPv4Address | IPv6Address, str | None]:
    """A runtime route's gateway, of net's family; an IPv6 link-local one
    names its interface (fe80::1%tap1).  Returns (address, interface or None)."""
    if net.version == 4:
        try:
            return IPv4Address(via), None
        except ValueError:
            raise ValueError(f"gateway {via!r} is not an IPv4 address (the prefix is IPv4)") from None
    addr, _, scope = via.partition("%")
    try:
        gw = IPv6Address(addr)
    except ValueError:
        raise ValueError(f"gateway {via!r} is not an IPv6 address (the prefix is IPv6)") from None
    if gw.is_link_local and not scope:
        raise ValueError(f"a link-local gateway needs its interface, e.g. {gw}%tap1")
    if scope and not gw.is_link_local:
        raise ValueError(f"gateway {via!r}: only a link-local gateway takes %interface")
    return gw, scope or None


def _limits_order(wanted: dict[str, int], tree: SysctlTree) -> dict[str, int]:
    """Order mbuf limit changes so that every intermediate state is valid:
    kern.ipc.nmbufs first when it grows (or becomes unlimited), last when it
    shrinks -- it must cover the cluster limits at each step."""
    name = "kern.ipc.nmbufs"
    if name not in wanted:
        return wanted
    new, cur = wanted[name], tree.get(name)
    rest = {k: v for k, v in wanted.items() if k != name}
    if new == 0 or (cur != 0 and new > cur):
        return {name: new, **rest}
    return {**rest, name: new}
