"""A running router: its TAPs, its forwarding thread, its tunables, reload.

The control plane's view of one router.  The forwarding path itself lives in
forwarder/dataplane.pyx and runs in a thread of its own without the GIL;
everything here runs with the GIL and talks to it through Dataplane methods.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from forwarder import mbufs, netns
from forwarder.config import Config, ConfigError, Interface, load_config
from forwarder.dataplane import Dataplane
from forwarder.route import RouteTable
from forwarder.sysctl import SysctlError, SysctlTree

log = logging.getLogger("forwarder.router")

# Tunables the dataplane applies, by sysctl name.
DATAPLANE_TUNABLES = {
    "net.inet.ip.forwarding": "forwarding",
    "net.inet.ip.ttl": "ttl",
    "net.inet.icmp.icmplim": "icmplim",
    "net.link.ether.inet.max_age": "arp_max_age",
    "net.link.ether.inet.maxhold": "arp_maxhold",
    "net.link.ether.inet.maxtries": "arp_max_tries",
}


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
    dp: Dataplane = field(init=False)
    ifindex: dict[str, int] = field(default_factory=dict)
    fds: dict[str, int] = field(default_factory=dict)
    # Routes installed from the config (prefix -> next hop spec) and from the CLI.
    config_routes: dict[str, dict] = field(default_factory=dict)
    runtime_routes: dict[str, dict] = field(default_factory=dict)
    reloads: ReloadStats = field(default_factory=ReloadStats)
    started_at: float = 0.0
    _thread: threading.Thread | None = None
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self.sysctl = self.config.sysctl_tree()
        self.routes = RouteTable()
        self.dp = Dataplane(self.routes)

    # --- start / stop ---------------------------------------------------------

    def start(self) -> None:
        mbufs.apply_limits(self.sysctl)
        try:
            for itf in self.config.interfaces:
                self._attach(itf)
            self.config_routes = self._route_specs(self.config)
            for prefix, nh in self.config_routes.items():
                self.routes.add(prefix, nh)
            for name, attr in DATAPLANE_TUNABLES.items():
                self.dp.set(attr, self.sysctl.get(name))
        except BaseException:
            self._close_taps()
            raise
        self.sysctl.add_hook(self._on_sysctl)
        self._thread = threading.Thread(target=self.dp.run, name="dataplane", daemon=True)
        self._thread.start()
        self.started_at = time.monotonic()
        log.info("router %s forwarding on %s", self.config.router.name,
                 ", ".join(self.ifindex) or "no interfaces")

    def _attach(self, itf: Interface) -> None:
        fd = netns.tap_open(itf.name)
        self.fds[itf.name] = fd
        netns.link_set(itf.name, mtu=itf.mtu, up=True)
        idx = self.dp.add_interface(fd, itf.name, mac_bytes(itf.mac), itf.mtu,
                                    [(str(a.ip), a.network.prefixlen) for a in itf.addresses])
        self.ifindex[itf.name] = idx
        if itf.netns:
            netns.link_move(itf.name, itf.netns_path)
            netns.link_set(itf.name, itf.netns_path, up=True)
        log.info("interface %s up: %s mtu %d mac %s%s", itf.name,
                 ", ".join(map(str, itf.addresses)), itf.mtu, itf.mac,
                 f" (kernel side in {itf.netns})" if itf.netns else "")

    def stop(self) -> None:
        """Stop forwarding, free every held packet, close the TAPs."""
        if self._thread is not None:
            self.dp.stop()
            self._thread.join(10)
            if self._thread.is_alive():
                log.error("dataplane thread did not stop within 10 s")
            self._thread = None
        self.dp.flush()
        self._close_taps()
        self.sysctl.remove_hook(self._on_sysctl)
        log.info("router %s stopped", self.config.router.name)

    def _close_taps(self) -> None:
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

    def _route_specs(self, config: Config) -> dict[str, dict]:
        """Connected prefixes, our own addresses (/32, local) and the static
        routes of a config, as RouteTable next-hop specs."""
        specs: dict[str, dict] = {}
        for itf in config.interfaces:
            idx = self.ifindex[itf.name]
            for a in itf.addresses:
                specs[str(a.network)] = {"type": "forward", "ifindex": idx}
        for itf in config.interfaces:
            for a in itf.addresses:
                specs[f"{a.ip}/32"] = {"type": "local"}
        for r in config.routes:
            specs[str(r.prefix)] = self._nexthop(config, r.type, r.via, r.interface)
        return specs

    def _nexthop(self, config: Config, type_: str, via, interface: str | None) -> dict:
        if type_ in ("blackhole", "unreachable", "prohibit"):
            return {"type": type_}
        if via is not None:
            itf = config.interface_for(via)
            if itf is None:
                raise ValueError(f"gateway {via} is not on any connected prefix")
            return {"type": "forward", "via": str(via), "ifindex": self.ifindex[itf.name]}
        if interface not in self.ifindex:
            raise ValueError(f"no interface {interface!r}")
        return {"type": "forward", "ifindex": self.ifindex[interface]}

    def route_add(self, prefix: str, via: str | None = None, interface: str | None = None,
                  type_: str = "unicast") -> dict:
        """Add (or replace) a route at runtime; kept until reload or delete."""
        from ipaddress import IPv4Address
        net = IPv4Network(prefix, strict=True)
        if type_ == "unicast" and (via is None) == (interface is None):
            raise ValueError("a unicast route needs exactly one of via or interface")
        nh = self._nexthop(self.config, type_, IPv4Address(via) if via else None, interface)
        with self._lock:
            self.routes.add(str(net), nh)
            self.runtime_routes[str(net)] = nh
        log.info("route add %s %s", net, nh)
        return self.routes.get(str(net))

    def route_delete(self, prefix: str) -> None:
        net = str(IPv4Network(prefix, strict=True))
        with self._lock:
            if self.routes.get(net) is None:
                raise KeyError(f"no route for {net}")
            own = {f"{a.ip}/32" for itf in self.config.interfaces for a in itf.addresses}
            if net in own:
                raise ValueError(f"{net} is one of the router's addresses")
            self.routes.delete(net)
            self.runtime_routes.pop(net, None)
            self.config_routes.pop(net, None)
        log.info("route delete %s", net)

    def route_list(self) -> list[dict]:
        names = {v: k for k, v in self.ifindex.items()}
        out = []
        for r in self.routes.routes():
            r = dict(r)
            r["interface"] = names.get(r.pop("ifindex"), None)
            r.pop("index", None)
            out.append(r)
        return out

    # --- tunables -----------------------------------------------------------------

    def _on_sysctl(self, name: str, old: int, new: int) -> None:
        """A tunable changed at runtime: apply it (may veto with SysctlError)."""
        if name in mbufs.LIMIT_SYSCTLS:
            mbufs.set_limit(name, new, self.sysctl)
        elif name in DATAPLANE_TUNABLES:
            self.dp.set(DATAPLANE_TUNABLES[name], new)
        log.info("sysctl %s: %s -> %s", name, old, new)

    # --- reload ---------------------------------------------------------------------

    def reload(self, path: str | None = None) -> list[str]:
        """Re-read the config and apply routes, addresses and runtime tunables.
        A config that does not parse or validate changes nothing (ConfigError).
        Returns what changed."""
        path = path or (str(self.config.path) if self.config.path else None)
        if path is None:
            raise ConfigError([])
        try:
            new = load_config(path)
            changes = self._apply(new)
        except (ConfigError, ValueError, SysctlError) as e:
            self.reloads.failed += 1
            self.reloads.last_error = str(e)
            self.reloads.last_time = time.time()
            log.error("reload of %s failed, running config kept: %s", path, e)
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
            if a.netns != b.netns or a.mac != b.mac:
                raise ValueError(f"interface {a.name}: netns and mac change only with a restart")
        # Validate everything before changing anything.
        specs = self._route_specs(new)
        tree = new.sysctl_tree()
        boot_changed = [n for n, v in tree.all()
                        if not tree.info(n)["runtime"] and v != self.sysctl.get(n)]
        if boot_changed:
            raise ValueError(f"boot-only tunables changed: {', '.join(boot_changed)}; restart")
        wanted = {n: v for n, v in tree.all() if v != self.sysctl.get(n)}
        changes: list[str] = []
        with self._lock:
            if wanted:
                self.sysctl.set_many(wanted)
                changes += [f"{n}={v}" for n, v in wanted.items()]
            for a, b in zip(old.interfaces, new.interfaces):
                if a.addresses != b.addresses:
                    self.dp.set_addresses(self.ifindex[b.name],
                                          [(str(x.ip), x.network.prefixlen) for x in b.addresses])
                    changes.append(f"{b.name} addresses")
                if a.mtu != b.mtu:
                    netns.link_set(b.name, b.netns_path, mtu=b.mtu) if b.netns else \
                        netns.link_set(b.name, mtu=b.mtu)
                    self.dp.set_mtu(self.ifindex[b.name], b.mtu)
                    changes.append(f"{b.name} mtu {b.mtu}")
            current = {r["prefix"] for r in self.routes.routes()}
            for prefix in sorted(current - set(specs), key=lambda p: -IPv4Network(p).prefixlen):
                self.routes.delete(prefix)
                changes.append(f"route -{prefix}")
            for prefix, nh in specs.items():
                if self.config_routes.get(prefix) != nh or prefix not in current:
                    self.routes.add(prefix, nh)
                    if prefix not in self.config_routes:
                        changes.append(f"route +{prefix}")
            self.config_routes = specs
            self.runtime_routes.clear()
            self.config = new
        return changes

    # --- health ---------------------------------------------------------------------

    def healthy(self, within: float = 2.0) -> bool:
        return self.running and self.dp.progress_age() <= within
