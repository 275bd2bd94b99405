"""The router's TOML configuration: parsing, validation, errors with file:line.

The contract (see configs/router.toml for a commented example)::

    [router]            name (required), socket, log_level, attach_timeout, attach_mode
    [sysctl]            FreeBSD tunable names, dotted or quoted keys
    [metrics]           listen = "127.0.0.1:9477"   (optional)
    [control_plane]     netns, import_routes, tables, protocols   (optional; forwarder/cplane.py)
    [[interface]]       name, addresses (IPv4 and/or IPv6), mtu, mac, netns | attach,
                        attach_mode, offload, ra
    [[route]]           prefix (IPv4 or IPv6) + exactly one of via / interface / type

IPv6: an interface's IPv6 addresses are :attr:`Interface.addresses6` (its IPv4
ones stay :attr:`Interface.addresses`); every interface also has a link-local
address, :attr:`Interface.link_local`, derived from its MAC (never configured).
A route's gateway may be link-local when it names its interface,
``via = "fe80::1%tap1"`` (:attr:`Route.via_interface`).

A port is a TAP the router creates, named as the port and moved into ``netns``
if given; or, with ``attach = "eth1"``, joined to an existing interface of the
router's own namespace (the veth a container runtime hands it; see
forwarder/attach.py).  ``attach_mode`` says how (per interface, default from
``[router] attach_mode``, itself default ``"packet"``): ``"packet"`` reads and
writes the interface through a packet socket bound to it, with no device of
the router's; ``"tap"`` joins it with tc to a TAP named ``tap-<name>``
(:attr:`Interface.tap`) so that it never clashes with the interface it
attaches to.  An attached port takes that interface's MAC and MTU unless
``mac`` / ``mtu`` say otherwise.

``[control_plane] netns = "/proc/self/ns/net"`` (:data:`OWN_NETNS`) keeps the
ports' mirrors in the router's own namespace, as a container without
CAP_SYS_ADMIN needs (docs/containers.md); each mirror is named as its port, so
a port's name must then differ from its TAP's and attached interface's names.

:func:`load_config` returns a :class:`Config` or raises :class:`ConfigError`
listing every problem found, each as ``file:line: key: what is wrong``.
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import tomllib
from dataclasses import dataclass, field
from ipaddress import (IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface,
                       IPv6Network)
from pathlib import Path
from typing import Any, Iterable, Mapping

from forwarder import sysctl
from forwarder.dataplane import MAX_ADDRESSES, MTU_MAX, MTU_MIN
from forwarder.tomlpos import Locator

log = logging.getLogger(__name__)

SOCKET_DIR = Path("/run/forwarder")
NETNS_DIR = Path("/var/run/netns")
# [control_plane] netns naming the router's own namespace: the mirrors sit beside
# its TAPs and the interfaces it attaches to (a container with NET_ADMIN only)
OWN_NETNS = "/proc/self/ns/net"
IFNAMSIZ = 16                      # including the terminating NUL
ATTACH_TAP_PREFIX = "tap-"         # the TAP of an attached port: tap-<port name>
ATTACH_TIMEOUT = 300               # seconds to wait for attached interfaces at start
ATTACH_MODES = ("packet", "tap")   # a packet socket on the interface, or a TAP joined by tc
ATTACH_MODE = "packet"
# The largest frame must fit a 16k jumbo cluster (MJUM16BYTES) with its Ethernet header.
MTU_DEFAULT = 1500
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
ROUTE_TYPES = ("blackhole", "unreachable", "prohibit")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$")
LINK_LOCAL = IPv6Network("fe80::/10")     # RFC 4291 2.5.6; interfaces use fe80::/64
MULTICAST6 = IPv6Network("ff00::/8")
IPV4_MAPPED = IPv6Network("::ffff:0:0/96")
SLAAC_PREFIXLEN = 64                      # RFC 4862 5.5.3 with RFC 4291's 64-bit IDs

def netns_file(spec: str | None) -> str | None:
    """A namespace given by name (under /var/run/netns) or path, as a file."""
    if spec is None:
        return None
    return spec if "/" in spec else str(NETNS_DIR / spec)


# --- errors --------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One validation failure: where, which key, and what is allowed."""
    file: str | None
    line: int | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.file is not None else "command line"
        if self.line is not None:
            where += f":{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """The config cannot be used; ``problems`` lists every reason (first one first)."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @property
    def file(self) -> str | None:
        return self.problems[0].file

    @property
    def line(self) -> int | None:
        return self.problems[0].line

    @property
    def key(self) -> str | None:
        return self.problems[0].key


# --- the model -----------------------------------------------------------------


@dataclass(frozen=True)
class RouterConfig:
    name: str
    socket: Path
    log_level: str = "info"
    attach_timeout: int = ATTACH_TIMEOUT   # 0: do not wait for attached interfaces
    attach_mode: str = ATTACH_MODE         # the attached ports' default (ATTACH_MODES)


@dataclass(frozen=True)
class Interface:
    """One [[interface]]: at least one address of either family."""
    name: str
    addresses: tuple[IPv4Interface, ...]
    mtu: int = MTU_DEFAULT
    mac: str = ""                 # the router's MAC on this link, lower case
    mac_generated: bool = False   # True when derived from the names
    netns: str | None = None      # where the TAP's kernel side goes: a name or a path
    offload: bool = True          # virtio-net header: checksum offload and super-frames (TSO/USO)
    addresses6: tuple[IPv6Interface, ...] = ()   # global/ULA ones; never link-local
    ra: bool = False              # send Router Advertisements (needs a /64 in addresses6)
    attach: str | None = None     # an existing interface of the router's namespace to join
    mtu_configured: bool = False  # mtu was given (else an attached port takes the link's)
    attach_mode: str | None = None  # with attach: "packet" or "tap" (ATTACH_MODES)

    @property
    def tap(self) -> str | None:
        """The name of the port's TAP: the port's own, or tap-<name> when attached
        in "tap" mode; None when attached in "packet" mode (there is no TAP)."""
        if self.attach is None:
            return self.name
        if self.attach_mode != "tap":
            return None
        return (ATTACH_TAP_PREFIX + self.name)[:IFNAMSIZ - 1]

    @property
    def networks(self) -> tuple[IPv4Network, ...]:
        return tuple(a.network for a in self.addresses)

    @property
    def networks6(self) -> tuple[IPv6Network, ...]:
        return tuple(a.network for a in self.addresses6)

    @property
    def link_local(self) -> IPv6Interface:
        """fe80::/64 with the modified EUI-64 interface ID of :attr:`mac`
        (RFC 4291 2.5.1 and appendix A)."""
        return link_local_of(self.mac)

    @property
    def netns_path(self) -> str | None:
        """The namespace as a file: names live under /var/run/netns."""
        return netns_file(self.netns)


@dataclass(frozen=True)
class Route:
    """One [[route]]; ``prefix`` and ``via`` are of one family."""
    prefix: IPv4Network | IPv6Network
    via: IPv4Address | IPv6Address | None = None   # without a %scope
    interface: str | None = None
    type: str = "unicast"         # unicast | blackhole | unreachable | prohibit
    via_interface: str | None = None   # the link of a link-local gateway (fe80::1%tap1)


@dataclass(frozen=True)
class Metrics:
    listen: str | None = None

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to bind, or None when metrics are off."""
        return None if self.listen is None else _split_hostport(self.listen)


# rtm_protocol numbers (linux/rtnetlink.h, and the routing daemons' own in
# /etc/iproute2/rt_protos and FRR's rt_protos.d/frr.conf): what [control_plane]
# protocols names.  FRR's staticd installs with 196, which FRR's file calls
# "static" as the kernel's own 4 is called: here it is "frr-static".
RTPROT = {"redirect": 1, "kernel": 2, "boot": 3, "static": 4, "ra": 9, "dhcp": 16,
          "zebra": 11, "bird": 12, "babel": 42, "bgp": 186, "isis": 187, "ospf": 188,
          "rip": 189, "ripng": 190, "nhrp": 191, "eigrp": 192, "ldp": 193, "sharp": 194,
          "pbr": 195, "frr-static": 196, "openfabric": 197}
RTPROT_NAMES = {v: k for k, v in RTPROT.items()}


@dataclass(frozen=True)
class ControlPlane:
    """[control_plane]: the namespace of the ports' mirrors and of the routing
    daemons, whose kernel routes are imported (forwarder/cplane.py)."""
    netns: str | None = None          # None: no control plane
    import_routes: bool = True
    tables: tuple[int, ...] = (254,)  # the kernel's main table
    protocols: tuple[str, ...] = ()   # rtm_protocol names to import; empty: all

    @property
    def netns_path(self) -> str | None:
        return netns_file(self.netns)

    @property
    def in_router_netns(self) -> bool:
        """The mirrors live in the router's own namespace (``netns =
        "/proc/self/ns/net"``): no namespace to create or enter, and the mirror
        names share that namespace with the router's TAPs and attached links."""
        return self.netns == OWN_NETNS


@dataclass(frozen=True)
class Config:
    path: Path | None
    router: RouterConfig
    interfaces: tuple[Interface, ...]
    routes: tuple[Route, ...]
    sysctl: dict[str, int] = field(default_factory=dict)   # values set by the file and -o
    metrics: Metrics = Metrics()
    control_plane: ControlPlane = ControlPlane()

    def interface(self, name: str) -> Interface:
        for itf in self.interfaces:
            if itf.name == name:
                return itf
        raise KeyError(name)

    def connected(self) -> list[tuple[IPv4Interface, Interface]]:
        """Every configured address with the interface it is on."""
        return [(addr, itf) for itf in self.interfaces for addr in itf.addresses]

    def addresses6(self) -> list[tuple[IPv6Interface, Interface]]:
        """Every configured IPv6 address with the interface it is on (the
        link-local ones aside: see :attr:`Interface.link_local`)."""
        return [(addr, itf) for itf in self.interfaces for addr in itf.addresses6]

    @property
    def connected6(self) -> dict[IPv6Network, Interface]:
        """Every connected IPv6 prefix with the interface it is on."""
        return {addr.network: itf for addr, itf in self.addresses6()}

    def link_for(self, address: IPv4Address | IPv6Address
                 ) -> tuple[Interface, IPv4Network | IPv6Network] | None:
        """The interface and connected prefix that hold ``address`` (a gateway).
        A link-local IPv6 address is found by its %scope (fe80::1%tap1)."""
        if isinstance(address, IPv6Address):
            if address in LINK_LOCAL:
                for itf in self.interfaces:
                    if itf.name == address.scope_id:
                        return itf, itf.link_local.network
                return None
            for addr6, itf in self.addresses6():
                if address in addr6.network:
                    return itf, addr6.network
            return None
        for addr, itf in self.connected():
            if address in addr.network:
                return itf, addr.network
        return None

    def sysctl_tree(self, physmem: int | None = None) -> sysctl.SysctlTree:
        """A tree with the defaults overlaid by this config's values."""
        return sysctl.SysctlTree(self.sysctl, physmem=physmem)


# --- helpers -------------------------------------------------------------------


def link_local_of(mac: str) -> IPv6Interface:
    """fe80::/64 with the modified EUI-64 interface ID of ``mac``: the U/L bit
    (0x02 of the first octet) flipped, ff:fe inserted after the third octet."""
    if not _MAC_RE.match(mac):
        raise ValueError(f"{mac!r} is not a MAC address (xx:xx:xx:xx:xx:xx)")
    octets = [int(x, 16) for x in mac.replace("-", ":").split(":")]
    iid = bytes([octets[0] ^ 0x02, *octets[1:3], 0xff, 0xfe, *octets[3:6]])
    return IPv6Interface((int.from_bytes(b"\xfe\x80" + bytes(6) + iid, "big"), 64))


def generate_mac(ifname: str, router: str = "") -> str:
    """A stable, locally administered unicast MAC derived from the names."""
    digest = hashlib.sha256(f"{router}/{ifname}".encode()).digest()
    octets = [(digest[0] & 0xFC) | 0x02] + list(digest[1:6])
    return ":".join(f"{o:02x}" for o in octets)


def _split_hostport(text: str) -> tuple[str, int]:
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
    if not m:
        raise ValueError(f"{text!r}: expected HOST:PORT (e.g. 127.0.0.1:9477)")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 1 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} out of range (1..65535)")
    return host, port


def _type_name(value: object) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string",
            list: "array", dict: "table"}.get(type(value), type(value).__name__)


def _flatten(table: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"kern": {"ipc": {"nmbclusters": 0}}}`` -> ``[("kern.ipc.nmbclusters", 0)]``."""
    out: list[tuple[str, Any]] = []
    for key, value in table.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.extend(_flatten(value, name))
        else:
            out.append((name, value))
    return out


def _path_text(path: tuple[str | int, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


# --- the validator -------------------------------------------------------------


class _Reader:
    """Validates a parsed document, collecting problems with their lines."""

    def __init__(self, doc: dict[str, Any], text: str, file: str | None) -> None:
        self.doc = doc
        self.file = file
        self.shown = file if file is not None else "<config>"
        self.locator = Locator(text)
        self.problems: list[Problem] = []
        self.overridden: dict[str, str] = {}     # tunable -> the -o text that set it

    # reporting
    def error(self, path: tuple[str | int, ...], message: str, *,
              line: int | None = None, key: str | None = None) -> None:
        if line is None:
            line = self.locator.line_of(path)
        self.problems.append(Problem(self.shown, line, key or _path_text(path), message))

    def unknown_keys(self, table: Mapping[str, Any], allowed: Iterable[str],
                     path: tuple[str | int, ...]) -> None:
        allowed = tuple(allowed)
        for key in table:
            if key not in allowed:
                self.error(path + (key,), f"unknown key (allowed: {', '.join(allowed)})")

    def table(self, path: tuple[str, ...]) -> dict[str, Any] | None:
        value = self.doc.get(path[0])
        if value is None:
            return None
        if not isinstance(value, dict):
            self.error(path, f"must be a table [{path[0]}], not {_type_name(value)}")
            return None
        return value

    def array_of_tables(self, name: str) -> list[dict[str, Any]]:
        value = self.doc.get(name, [])
        if isinstance(value, dict):
            self.error((name,), f"must be an array of tables: write [[{name}]], not [{name}]")
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.error((name,), f"must be an array of tables ([[{name}]])")
            return []
        return value

    def string(self, table: Mapping[str, Any], key: str, path: tuple[str | int, ...], *,
               required: bool = False) -> str | None:
        if key not in table:
            if required:
                self.error(path, f"missing required key '{key}'", key=_path_text(path + (key,)))
            return None
        value = table[key]
        if not isinstance(value, str):
            self.error(path + (key,), f"must be a string, not {_type_name(value)}")
            return None
        return value

    def boolean(self, table: Mapping[str, Any], key: str, path: tuple[str | int, ...],
                default: bool) -> bool:
        if key not in table:
            return default
        value = table[key]
        if not isinstance(value, bool):
            self.error(path + (key,), f"must be a boolean (true or false), not {_type_name(value)}")
            return default
        return value

    def choice(self, table: Mapping[str, Any], key: str, path: tuple[str | int, ...],
               allowed: tuple[str, ...], default: str) -> str:
        value = self.string(table, key, path)
        if value is None:
            return default
        if value not in allowed:
            self.error(path + (key,), f"{value!r} is not one of "
                       f"{', '.join(repr(a) for a in allowed)}")
            return default
        return value

    def integer(self, table: Mapping[str, Any], key: str, path: tuple[str | int, ...],
                lo: int, hi: int, default: int) -> int:
        if key not in table:
            return default
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path + (key,), f"must be an integer ({lo}..{hi}), not {_type_name(value)}")
            return default
        if not lo <= value <= hi:
            self.error(path + (key,), f"{value} out of range ({lo}..{hi})")
            return default
        return value

    # sections
    def read(self, overrides: list[str]) -> Config | None:
        self.unknown_keys(self.doc, ("router", "sysctl", "metrics", "interface", "route",
                                     "control_plane"), ())
        values = self.read_sysctl()
        self.apply_overrides(values, overrides)
        router = self.read_router()
        metrics = self.read_metrics()
        control_plane = self.read_control_plane()
        interfaces = self.read_interfaces(router.name if router else "",
                                          router.attach_mode if router else ATTACH_MODE)
        routes = self.read_routes(interfaces)
        if control_plane.in_router_netns:
            self.check_mirror_names(interfaces)
        self.check_limits(values, interfaces, routes)
        if self.problems or router is None:
            return None
        return Config(path=Path(self.file) if self.file else None, router=router,
                      interfaces=tuple(interfaces), routes=tuple(routes),
                      sysctl=values, metrics=metrics, control_plane=control_plane)

    def read_router(self) -> RouterConfig | None:
        path = ("router",)
        table = self.table(path)
        if table is None:
            if "router" not in self.doc:
                self.error(path, "missing required table [router] with name = \"...\"", line=1)
            return None
        self.unknown_keys(table, ("name", "socket", "log_level", "attach_timeout",
                                  "attach_mode"), path)
        name = self.string(table, "name", path, required=True)
        if name is not None and not _NAME_RE.match(name):
            self.error(path + ("name",),
                       f"{name!r} is not a valid router name "
                       "(letters, digits, '_', '.', '-'; at most 64; no leading punctuation)")
            name = None
        socket = self.string(table, "socket", path)
        if socket is not None and not socket.startswith("/"):
            self.error(path + ("socket",), f"{socket!r} must be an absolute path")
            socket = None
        level = self.string(table, "log_level", path) or "info"
        if level.lower() not in LOG_LEVELS:
            self.error(path + ("log_level",),
                       f"{level!r} is not a log level ({', '.join(LOG_LEVELS)})")
            level = "info"
        attach_timeout = self.integer(table, "attach_timeout", path, 0, 86400, ATTACH_TIMEOUT)
        attach_mode = self.choice(table, "attach_mode", path, ATTACH_MODES, ATTACH_MODE)
        if name is None:
            return None
        return RouterConfig(name=name,
                            socket=Path(socket) if socket else SOCKET_DIR / f"{name}.sock",
                            log_level=level.lower(), attach_timeout=attach_timeout,
                            attach_mode=attach_mode)

    def read_metrics(self) -> Metrics:
        path = ("metrics",)
        table = self.table(path)
        if table is None:
            return Metrics()
        self.unknown_keys(table, ("listen",), path)
        listen = self.string(table, "listen", path)
        if listen is not None:
            try:
                _split_hostport(listen)
            except ValueError as e:
                self.error(path + ("listen",), str(e))
                listen = None
        return Metrics(listen=listen)

    def read_control_plane(self) -> ControlPlane:
        path = ("control_plane",)
        table = self.table(path)
        if table is None:
            return ControlPlane()
        self.unknown_keys(table, ("netns", "import_routes", "tables", "protocols"), path)
        netns = self.string(table, "netns", path, required=True)
        if netns is not None:
            netns = self.check_netns(netns, path + ("netns",))
        import_routes = self.boolean(table, "import_routes", path, True)
        tables: list[int] = []
        raw = table.get("tables", [254])
        if not isinstance(raw, list) or not raw:
            self.error(path + ("tables",), "a list of kernel table numbers (e.g. [254], the "
                       "main table)")
        else:
            for k, t in enumerate(raw):
                if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t < 2**32 or t == 255:
                    self.error(path + ("tables", k), f"{t!r}: a kernel table number 1..2^32-1, "
                               "not 255 (the local table: the kernel's own addresses)")
                else:
                    tables.append(t)
        protocols: list[str] = []
        raw = table.get("protocols", [])
        if not isinstance(raw, list):
            self.error(path + ("protocols",), "a list of route protocol names (e.g. [\"bgp\", "
                       "\"ospf\"]; empty: all)")
        else:
            for k, p in enumerate(raw):
                if p not in RTPROT:
                    self.error(path + ("protocols", k), f"{p!r} is not a route protocol "
                               f"({', '.join(sorted(RTPROT))})")
                else:
                    protocols.append(p)
        return ControlPlane(netns=netns, import_routes=import_routes, tables=tuple(tables),
                            protocols=tuple(protocols))

    def read_sysctl(self) -> dict[str, int]:
        table = self.table(("sysctl",))
        values: dict[str, int] = {}
        if table is None:
            return values
        seen: set[str] = set()
        for name, raw in _flatten(table):
            line = self.locator.line_of_flat(("sysctl",), name)
            key = f"sysctl.{name}"
            if name in seen:
                # tomllib keeps both `a.b = 1` and `"a.b" = 2`: the later one is the duplicate
                line = self._second_spelling_line(name) or line
                self.error(("sysctl",), "set twice (dotted and quoted spellings of one name)",
                           line=line, key=key)
                continue
            seen.add(name)
            try:
                tunable = sysctl.lookup(name)
                if isinstance(raw, (list, float)) or (
                        isinstance(raw, bool) and tunable.type is not bool):
                    raise sysctl.SysctlError(
                        f"must be {'an integer' if tunable.type is int else 'a boolean'} "
                        f"({tunable.allowed()}), not {_type_name(raw)}")
                values[name] = tunable.parse(raw)
            except sysctl.SysctlError as e:
                self.error(("sysctl",), _strip_name(str(e), name), line=line, key=key)
        return values

    def _second_spelling_line(self, name: str) -> int | None:
        lines = sorted(line for path, line in self.locator.lines.items()
                       if path[:1] == ("sysctl",) and len(path) > 1
                       and ".".join(str(p) for p in path[1:]) == name)
        return lines[-1] if lines else None

    def apply_overrides(self, values: dict[str, int], overrides: list[str]) -> None:
        for text in overrides:
            try:
                name, raw = sysctl.parse_assignment(text)
                values[name] = sysctl.lookup(name).parse(raw)
                self.overridden[name] = text
                log.debug("override %s = %s", name, raw)
            except sysctl.SysctlError as e:
                name = text.partition("=")[0].strip()
                self.problems.append(Problem(None, None, f"-o {text}", _strip_name(str(e), name)))

    def read_interfaces(self, router_name: str,
                        attach_mode: str = ATTACH_MODE) -> list[Interface]:
        interfaces: list[Interface] = []
        seen_names: dict[str, int] = {}
        seen_macs: dict[str, int] = {}
        connected: list[tuple[IPv4Network, IPv4Interface, int]] = []
        connected6: list[tuple[IPv6Network, IPv6Interface, int]] = []
        for i, table in enumerate(self.array_of_tables("interface")):
            path: tuple[str | int, ...] = ("interface", i)
            self.unknown_keys(table, ("name", "addresses", "mtu", "mac", "netns", "attach",
                                      "attach_mode", "offload", "ra"), path)
            name = self.string(table, "name", path, required=True)
            if name is not None:
                if not 1 <= len(name) < IFNAMSIZ:
                    self.error(path + ("name",),
                               f"{name!r} is {len(name)} characters; interface names "
                               f"have 1..{IFNAMSIZ - 1}")
                elif "/" in name or any(c.isspace() for c in name) or name in (".", ".."):
                    self.error(path + ("name",), f"{name!r}: no '/', whitespace, '.' or '..'")
                elif name in seen_names:
                    self.error(path + ("name",), f"duplicate interface name {name!r} "
                                                 f"(also interface[{seen_names[name]}])")
                else:
                    seen_names[name] = i
            before = len(self.problems)
            addresses, addresses6 = self.read_addresses(table, path, connected, connected6)
            ra = self.boolean(table, "ra", path, False)
            if ra and len(self.problems) == before:   # not when an address was refused
                self.check_ra(addresses6, path + ("ra",))
            mtu = self.integer(table, "mtu", path, MTU_MIN, MTU_MAX, MTU_DEFAULT)
            mac = self.string(table, "mac", path)
            generated = False
            if mac is not None:
                mac = self.check_mac(mac, path + ("mac",))
            if mac is None:
                mac, generated = generate_mac(name or str(i), router_name), True
            if mac in seen_macs and not generated:
                self.error(path + ("mac",),
                           f"{mac} is also the MAC of interface[{seen_macs[mac]}]")
            seen_macs.setdefault(mac, i)
            netns = self.string(table, "netns", path)
            if netns is not None:
                netns = self.check_netns(netns, path + ("netns",))
            attach = self.string(table, "attach", path)
            if attach is not None:
                attach = self.check_attach(attach, netns, path)
            mode = self.choice(table, "attach_mode", path, ATTACH_MODES, attach_mode)
            if "attach_mode" in table and "attach" not in table:
                self.error(path + ("attach_mode",), "attach_mode is for attached ports "
                           "(attach = \"eth1\"); this port is a TAP of its own")
            offload = self.boolean(table, "offload", path, True)
            interfaces.append(Interface(name=name or "", addresses=tuple(addresses), mtu=mtu,
                                        mac=mac, mac_generated=generated, netns=netns,
                                        offload=offload, addresses6=tuple(addresses6), ra=ra,
                                        attach=attach, mtu_configured="mtu" in table,
                                        attach_mode=mode if attach else None))
        self.check_link_names(interfaces)
        return interfaces

    def check_attach(self, attach: str, netns: str | None,
                     path: tuple[str | int, ...]) -> str | None:
        """``attach`` names an interface of the router's own namespace."""
        if not 1 <= len(attach) < IFNAMSIZ or "/" in attach or attach in (".", "..") \
                or any(c.isspace() for c in attach):
            self.error(path + ("attach",), f"{attach!r} is not an interface name (1.."
                       f"{IFNAMSIZ - 1} characters, no '/' or whitespace)")
            return None
        if netns is not None:
            self.error(path + ("attach",), "attach and netns exclude each other: an attached "
                       "port joins an interface of the router's own namespace, a netns port "
                       "moves its TAP into another one")
            return None
        return attach

    def check_link_names(self, interfaces: list[Interface]) -> None:
        """The TAPs the router creates in its namespace and the interfaces it
        attaches to have distinct names (an attach target twice is an error too)."""
        owner: dict[str, str] = {}
        for i, itf in enumerate(interfaces):
            if not itf.name:
                continue
            names = ([(itf.tap, "the TAP of")] if itf.tap else []) + (
                [(itf.attach, "attached by")] if itf.attach else [])
            for link, what in names:
                if link in owner:
                    self.error(("interface", i, "attach" if what == "attached by" else "name"),
                               f"{link!r} is {what} interface[{i}] and also {owner[link]}")
                else:
                    owner[link] = f"{what} interface[{i}]"

    def check_mirror_names(self, interfaces: list[Interface]) -> None:
        """With the mirrors in the router's own namespace, a mirror (named as
        its port) must not take the name of a TAP of the router's or of an
        interface a port attaches to: name the port apart (``name = "port1"``,
        ``attach = "eth1"``)."""
        taken = {itf.tap: f"the TAP of interface[{i}]" for i, itf in enumerate(interfaces)
                 if itf.attach and itf.tap}
        taken.update({itf.attach: f"attached by interface[{i}]"
                      for i, itf in enumerate(interfaces) if itf.attach})
        for i, itf in enumerate(interfaces):
            if itf.name in taken:
                self.error(("interface", i, "name"),
                           f"{itf.name!r} is {taken[itf.name]}, and with [control_plane] "
                           f"netns = {OWN_NETNS!r} the port's mirror takes its name in that "
                           "same namespace: give the port another name (e.g. name = "
                           f"\"port{i + 1}\", attach = \"{itf.attach or 'eth1'}\")")

    def read_addresses(self, table: Mapping[str, Any], path: tuple[str | int, ...],
                       connected: list[tuple[IPv4Network, IPv4Interface, int]],
                       connected6: list[tuple[IPv6Network, IPv6Interface, int]],
                       ) -> tuple[list[IPv4Interface], list[IPv6Interface]]:
        """An interface's addresses, IPv4 and IPv6 apart; ``connected`` and
        ``connected6`` collect every interface's prefixes (they must be disjoint)."""
        if "addresses" not in table:
            self.error(path, "missing required key 'addresses' "
                             "(a list like [\"10.1.0.1/24\"])", key=_path_text(path + ("addresses",)))
            return [], []
        raw = table["addresses"]
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            self.error(path + ("addresses",),
                       "must be a non-empty list of IPv4 or IPv6 addresses with prefix length "
                       "(e.g. [\"10.1.0.1/24\", \"2001:db8:1::1/64\"])")
            return [], []
        n6 = sum(1 for text in raw if _looks_ipv6(text))
        n4 = len(raw) - n6
        if n4 > MAX_ADDRESSES:
            self.error(path + ("addresses",),
                       f"{n4} addresses: an interface holds at most {MAX_ADDRESSES}" if not n6
                       else f"{n4} IPv4 addresses: an interface holds at most {MAX_ADDRESSES} "
                            "of each family")
            return [], []
        if n6 > MAX_ADDRESSES:
            self.error(path + ("addresses",),
                       f"{n6} IPv6 addresses: an interface holds at most {MAX_ADDRESSES} "
                       "of each family")
            return [], []
        out: list[IPv4Interface] = []
        out6: list[IPv6Interface] = []
        for j, text in enumerate(raw):
            apath = path + ("addresses", j)
            if _looks_ipv6(text):
                addr6 = self.parse_address6(text, apath)
                if addr6 is not None and self.disjoint(addr6, connected6, apath):
                    connected6.append((addr6.network, addr6, int(path[1])))
                    out6.append(addr6)
                continue
            addr = self.parse_address(text, apath)
            if addr is not None and self.disjoint(addr, connected, apath):
                connected.append((addr.network, addr, int(path[1])))
                out.append(addr)
        return out, out6

    def disjoint(self, addr: IPv4Interface | IPv6Interface,
                 connected: list[tuple[Any, Any, int]], path: tuple[str | int, ...]) -> bool:
        """``addr``'s prefix overlaps none of ``connected`` (else say which)."""
        for net, other, k in connected:
            if addr.network.overlaps(net):
                self.error(path, f"{addr} overlaps {other} on interface[{k}] "
                                 "(connected prefixes must be disjoint)")
                return False
        return True

    def parse_address(self, text: object, path: tuple[str | int, ...]) -> IPv4Interface | None:
        if not isinstance(text, str) or "/" not in text:
            self.error(path, f"{text!r}: expected an IPv4 address with prefix length "
                             "(e.g. \"10.1.0.1/24\")")
            return None
        try:
            addr = IPv4Interface(text)
        except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError) as e:
            self.error(path, f"{text!r} is not an IPv4 address/prefix ({e})")
            return None
        ip, net = addr.ip, addr.network
        if ip.is_multicast or ip.is_loopback or ip.is_unspecified or ip.is_reserved \
                or ip == IPv4Address("255.255.255.255"):
            self.error(path, f"{text}: not a unicast host address")
            return None
        if net.prefixlen < 31 and ip in (net.network_address, net.broadcast_address):
            kind = "network" if ip == net.network_address else "broadcast"
            self.error(path, f"{text} is the {kind} address of {net}; use a host address")
            return None
        return addr

    def parse_address6(self, text: str, path: tuple[str | int, ...]) -> IPv6Interface | None:
        """An IPv6 interface address: global or unique local unicast, /1../128,
        not the subnet-router anycast address of its prefix."""
        if "/" not in text:
            self.error(path, f"{text!r}: expected an IPv6 address with prefix length "
                             "(e.g. \"2001:db8:1::1/64\")")
            return None
        if "%" in text:
            self.error(path, f"{text!r}: an interface address takes no %zone "
                             "(e.g. \"2001:db8:1::1/64\")")
            return None
        try:
            addr = IPv6Interface(text)
        except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError) as e:
            self.error(path, f"{text!r} is not an IPv6 address/prefix ({e}; prefix length "
                             "1..128)")
            return None
        ip, net = addr.ip, addr.network
        if net.prefixlen == 0:
            self.error(path, f"{text}: prefix length 0; an interface prefix has length 1..128")
            return None
        kind = ("the unspecified address" if ip.is_unspecified else
                "the loopback address" if ip.is_loopback else
                "multicast (ff00::/8)" if ip in MULTICAST6 else
                "IPv4-mapped (::ffff:0:0/96); write the IPv4 address as such"
                if ip in IPV4_MAPPED else None)
        if kind:
            self.error(path, f"{text}: not a unicast host address: {kind}")
            return None
        if ip in LINK_LOCAL:
            self.error(path, f"{text}: link-local addresses (fe80::/10) are not configured: "
                             "every interface has one, derived from its MAC (modified EUI-64)")
            return None
        if net.prefixlen < 127 and ip == net.network_address:
            self.error(path, f"{text} is the subnet-router anycast address of {net} "
                             "(RFC 4291 2.6.1: the all-zero host part is reserved for the "
                             "routers on that link); use a host address")
            return None
        return addr

    def check_ra(self, addresses6: list[IPv6Interface], path: tuple[str | int, ...]) -> None:
        """Router Advertisements announce a prefix hosts autoconfigure in (SLAAC):
        the link needs an IPv6 prefix of length 64."""
        if any(a.network.prefixlen == SLAAC_PREFIXLEN for a in addresses6):
            return
        has = (f"it has {', '.join(map(str, addresses6))}" if addresses6
               else "it has no IPv6 address")
        self.error(path, f"ra = true needs an IPv6 prefix of length {SLAAC_PREFIXLEN} on this "
                         f"interface (SLAAC forms addresses only in a /{SLAAC_PREFIXLEN}); "
                         f"{has}")

    def check_mac(self, mac: str, path: tuple[str | int, ...]) -> str | None:
        if not _MAC_RE.match(mac):
            self.error(path, f"{mac!r} is not a MAC address (xx:xx:xx:xx:xx:xx)")
            return None
        mac = mac.lower().replace("-", ":")
        first = int(mac[:2], 16)
        if first & 1 or mac == "00:00:00:00:00:00":
            self.error(path, f"{mac} is not a unicast address (the low bit of the first octet "
                             "must be 0, and not all zero)")
            return None
        return mac

    def check_netns(self, netns: str, path: tuple[str | int, ...]) -> str | None:
        if "/" in netns:
            if not netns.startswith("/"):
                self.error(path, f"{netns!r}: a namespace path must be absolute "
                                 "(e.g. /proc/PID/ns/net)")
                return None
        elif not netns or netns in (".", "..") or any(c.isspace() for c in netns):
            self.error(path, f"{netns!r}: a namespace name (under /var/run/netns) "
                             "or an absolute path such as /proc/PID/ns/net")
            return None
        return netns

    def read_routes(self, interfaces: list[Interface]) -> list[Route]:
        routes: list[Route] = []
        seen: dict[IPv4Network | IPv6Network, int] = {}
        names = {itf.name for itf in interfaces}
        v6_only = {itf.name for itf in interfaces if not itf.addresses}
        own = {a.ip for itf in interfaces for a in itf.addresses}
        connected: dict[IPv4Network | IPv6Network, str] = {
            a.network: itf.name for itf in interfaces for a in (*itf.addresses, *itf.addresses6)}
        for i, table in enumerate(self.array_of_tables("route")):
            path: tuple[str | int, ...] = ("route", i)
            self.unknown_keys(table, ("prefix", "via", "interface", "type"), path)
            prefix = self.read_prefix(table, path)
            targets = [k for k in ("via", "interface", "type") if k in table]
            if len(targets) != 1:
                found = f"has {', '.join(targets)}" if targets else "has none"
                self.error(path, f"exactly one of via, interface, type is required ({found})",
                           key=_path_text(path))
                continue
            target = targets[0]
            value = self.string(table, target, path)
            if value is None:
                continue
            route: Route | None = None
            if target == "via" and (_looks_ipv6(value) or isinstance(prefix, IPv6Network)):
                route = self.read_via6(value, prefix, path + ("via",), interfaces)
            elif target == "via":
                route = self.read_via(value, prefix, path + ("via",), own,
                                      [n for n in connected if isinstance(n, IPv4Network)])
            elif target == "interface":
                if value not in names:
                    known = ", ".join(sorted(names)) or "none configured"
                    self.error(path + ("interface",),
                               f"{value!r} is not a configured interface ({known})")
                elif isinstance(prefix, IPv4Network) and value in v6_only:
                    self.error(path + ("interface",),
                               f"{value!r} has no IPv4 address: an IPv4 route out of it "
                               "could not ask ARP for its neighbours")
                elif prefix is not None:
                    route = Route(prefix=prefix, interface=value)
            elif value not in ROUTE_TYPES:
                self.error(path + ("type",),
                           f"{value!r} is not a route type ({', '.join(ROUTE_TYPES)})")
            elif prefix is not None:
                route = Route(prefix=prefix, type=value)
            if route is None or prefix is None:
                continue
            if prefix in seen:
                self.error(path + ("prefix",), f"{prefix} is also route[{seen[prefix]}]")
                continue
            if prefix in connected:
                self.error(path + ("prefix",),
                           f"{prefix} is the connected prefix of {connected[prefix]}")
                continue
            seen[prefix] = i
            routes.append(route)
        return routes

    def read_prefix(self, table: Mapping[str, Any], path: tuple[str | int, ...]
                    ) -> IPv4Network | IPv6Network | None:
        text = self.string(table, "prefix", path, required=True)
        if text is None:
            return None
        if text == "default":
            return IPv4Network("0.0.0.0/0")
        if _looks_ipv6(text):
            return self.read_prefix6(text, path + ("prefix",))
        try:
            return IPv4Network(text)
        except ValueError as e:
            hint = ""
            try:
                hint = f"; did you mean {IPv4Network(text, strict=False)}?"
            except ValueError:
                pass
            reason = "host bits set" if "host bits" in str(e) else str(e)
            self.error(path + ("prefix",), f"{text!r}: {reason} (a network like 10.3.0.0/16 "
                                           f"or \"default\"){hint}")
            return None

    def read_prefix6(self, text: str, path: tuple[str | int, ...]) -> IPv6Network | None:
        """An IPv6 route destination: a network, host bits clear ("::/0": default)."""
        example = '(a network like 2001:db8:50::/48 or "::/0")'
        if "%" in text:
            self.error(path, f"{text!r}: a prefix takes no %zone {example}")
            return None
        try:
            net = IPv6Network(text)
        except ValueError as e:
            hint = ""
            try:
                hint = f"; did you mean {IPv6Network(text, strict=False)}?"
            except ValueError:
                pass
            reason = "host bits set" if "host bits" in str(e) else str(e)
            self.error(path, f"{text!r}: {reason} {example}{hint}")
            return None
        for scope, what in ((LINK_LOCAL, "link-local"), (MULTICAST6, "multicast")):
            if net.subnet_of(scope):
                self.error(path, f"{net} is {what} ({scope}): such destinations are "
                                 "never routed")
                return None
        return net

    def read_via(self, text: str, prefix: IPv4Network | None, path: tuple[str | int, ...],
                 own: set[IPv4Address], nets: list[IPv4Network]) -> Route | None:
        try:
            via = IPv4Address(text)
        except ValueError:
            self.error(path, f"{text!r} is not an IPv4 address")
            return None
        if via in own:
            self.error(path, f"{via} is one of the router's own addresses")
            return None
        match = [n for n in nets if via in n]
        if not match:
            self.error(path, f"{via} is not on any connected prefix")
            return None
        problem = unusable_gateway(via, match[0])
        if problem:
            self.error(path, problem)
            return None
        return None if prefix is None else Route(prefix=prefix, via=via)

    def read_via6(self, text: str, prefix: IPv4Network | IPv6Network | None,
                  path: tuple[str | int, ...], interfaces: list[Interface]) -> Route | None:
        """An IPv6 gateway: on a connected IPv6 prefix, or link-local with its
        interface (``fe80::1%tap1``).  ``prefix`` None: it was refused already."""
        try:
            scoped = ipaddress.ip_address(text)
        except ValueError:
            if isinstance(prefix, IPv4Network):
                self.error(path, f"{text!r} is not an IPv4 address")
            else:
                self.error(path, f"{text!r} is not an IPv6 address (e.g. \"2001:db8:2::2\", "
                                 "or \"fe80::1%tap1\" for a link-local gateway)")
            return None
        if isinstance(scoped, IPv4Address):
            self.error(path, f"{scoped}: an IPv6 prefix needs an IPv6 gateway")
            return None
        if isinstance(prefix, IPv4Network):
            self.error(path, f"{scoped}: an IPv4 prefix needs an IPv4 gateway")
            return None
        scope = scoped.scope_id
        via = IPv6Address(scoped.packed)            # the address without its %scope
        kind = ("the unspecified address" if via.is_unspecified else
                "the loopback address" if via.is_loopback else
                "multicast" if via in MULTICAST6 else
                "IPv4-mapped" if via in IPV4_MAPPED else None)
        if kind:
            self.error(path, f"{scoped} is {kind}: a gateway is a neighbour's unicast address")
            return None
        names = [itf.name for itf in interfaces]
        if via in LINK_LOCAL:
            if scope is None:
                self.error(path, f"{via}: a link-local gateway needs its interface, "
                                 f"e.g. fe80::1%tap1 (interfaces: "
                                 f"{', '.join(names) or 'none configured'})")
                return None
            itf = next((i for i in interfaces if i.name == scope), None)
            if itf is None:
                known = ", ".join(sorted(names)) or "none configured"
                self.error(path, f"{text!r}: {scope!r} is not a configured interface ({known})")
                return None
            if via == itf.link_local.ip:
                self.error(path, f"{via} is one of the router's own addresses "
                                 f"(the link-local address of {scope})")
                return None
            return None if prefix is None else Route(prefix=prefix, via=via, via_interface=scope)
        if scope is not None:
            self.error(path, f"{text!r}: only a link-local gateway names its interface; "
                             f"write {via} (found on its connected prefix)")
            return None
        if any(via == a.ip for itf in interfaces for a in itf.addresses6):
            self.error(path, f"{via} is one of the router's own addresses")
            return None
        match = [a.network for itf in interfaces for a in itf.addresses6 if via in a.network]
        if not match:
            self.error(path, f"{via} is not on any connected prefix")
            return None
        problem = unusable_gateway(via, match[0])
        if problem:
            self.error(path, problem)
            return None
        return None if prefix is None else Route(prefix=prefix, via=via)

    def check_limits(self, values: Mapping[str, int], interfaces: list[Interface],
                     routes: list[Route]) -> None:
        max_if = values.get("net.link.max_interfaces",
                            sysctl.REGISTRY["net.link.max_interfaces"].default_value())
        if len(interfaces) > max_if:
            self.error(("interface", max_if),
                       f"{len(interfaces)} interfaces exceed net.link.max_interfaces ({max_if})",
                       key="interface")
        max_routes = values.get("net.route.max_routes",
                                sysctl.REGISTRY["net.route.max_routes"].default_value())
        if len(routes) > max_routes:
            self.error(("route", max_routes),
                       f"{len(routes)} routes exceed net.route.max_routes ({max_routes})",
                       key="route")
        self.check_mbuf_limits(values)

    def check_mbuf_limits(self, values: Mapping[str, int]) -> None:
        """Every cluster needs an mbuf: a kern.ipc.nmbufs set here (file or -o)
        covers the cluster limits in effect (FreeBSD's rule), or the router
        would refuse the set only once it applies it.  Left at its default,
        nmbufs is raised to cover them (as tunable_mbinit() does)."""
        name = "kern.ipc.nmbufs"
        if name not in values:
            return
        effective = {n: values[n] if n in values else sysctl.REGISTRY[n].default_value()
                     for n in sysctl.MBUF_LIMITS}
        try:
            sysctl.check_mbuf_limits(effective)
        except sysctl.SysctlError as e:
            message = _strip_name(str(e), name) + "; raise it, or set it to 0 (unlimited)"
            if name in self.overridden:
                self.problems.append(Problem(None, None, f"-o {self.overridden[name]}", message))
            else:
                self.error(("sysctl",), message, key=f"sysctl.{name}",
                           line=self.locator.line_of_flat(("sysctl",), name))


def unusable_gateway(via: IPv4Address | IPv6Address, net: IPv4Network | IPv6Network
                     ) -> str | None:
    """Why ``via`` cannot be a neighbour on the connected prefix ``net``, or
    None: no host owns a network or broadcast address (except on /31, /32),
    nor an IPv6 subnet-router anycast address (except on /127, /128)."""
    if isinstance(net, IPv6Network):
        if net.prefixlen < 127 and via == net.network_address:
            return f"{via} is the subnet-router anycast address of {net} (RFC 4291 2.6.1)"
        return None
    if net.prefixlen < 31 and via in (net.network_address, net.broadcast_address):
        return f"{via} is the network or broadcast address of {net}"
    return None


def _looks_ipv6(text: object) -> bool:
    """Text meant as IPv6 (it has a colon): checked, and reported, as IPv6."""
    return isinstance(text, str) and ":" in text


def _strip_name(message: str, name: str) -> str:
    """SysctlError messages start with the name, which the Problem already shows."""
    return message[len(name) + 2:] if message.startswith(name + ": ") else message


_SYNTAX_POS = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_SYNTAX_EOF = re.compile(r"\s*\(at end of document\)\s*$")


def parse_config(text: str, file: str | None = None, overrides: Iterable[str] = ()) -> Config:
    """Validate config text; ``file`` names it in errors."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message, line = str(e), None
        m = _SYNTAX_POS.search(message)
        if m:
            line = int(m.group(1))
            message = message[:m.start()] + f" (column {m.group(2)})"
        elif _SYNTAX_EOF.search(message):
            line = text.count("\n") + 1
            message = _SYNTAX_EOF.sub(" (at end of document)", message)
        raise ConfigError([Problem(file if file is not None else "<config>", line, None,
                                   f"TOML syntax error: {message}")]) from None
    reader = _Reader(doc, text, file)
    config = reader.read(list(overrides))
    if reader.problems or config is None:
        # file order; command-line problems last
        problems = sorted(reader.problems, key=lambda p: (p.file is None, p.line or 0))
        raise ConfigError(problems)
    return config


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Read and validate a config file; ``overrides`` are ``name=value`` tunables (-o)."""
    file = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError([Problem(file, None, None, f"cannot read: {e.strerror or e}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError([Problem(file, line, None, "not valid UTF-8")]) from None
    return parse_config(text, file, overrides)
