"""The tunable registry and the sysctl tree of the forwarder.

Every tunable has a FreeBSD-style name, a type (int or bool), a range, a
default, a one-line description, a flag telling whether it may change
while the router runs or only at boot, and what applies it (``applies``):
the mbuf zones, the dataplane (``Dataplane.set``, which also takes its
initial values from here), or the router at boot.  Adding a tunable is one
entry here plus, for the dataplane, one branch of ``Dataplane.set``.  Ranges
that the dataplane bounds (interfaces) come from the dataplane itself.  Boot values come from the config's
``[sysctl]`` table and ``-o name=value``; runtime values from the control
socket (``forwarder sysctl NAME=VALUE``).

:class:`SysctlTree` holds the current values.  The dataplane registers hooks
on it; a hook runs before a new value is committed and may raise
:class:`SysctlError` to veto the change, in which case nothing changes.

Output helpers format like sysctl(8)::

    kern.ipc.nmbclusters: 0
    kern.ipc.nmbclusters: 0 -> 65536
"""
from __future__ import annotations

import difflib
import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Mapping

from forwarder.dataplane import ARP_MAX_ENTRIES, MAX_INTERFACES

log = logging.getLogger(__name__)

# mbuf(9) sizes, as FreeBSD defines them.
MSIZE = 256
MCLBYTES = 2048
MJUMPAGESIZE = 4096
MJUM9BYTES = 9216
MJUM16BYTES = 16384

INT_MAX = 2**31 - 1

# The tunables that apply="mbuf" (the registry checks the two agree).
MBUF_LIMITS = (
    "kern.ipc.nmbclusters",
    "kern.ipc.nmbufs",
    "kern.ipc.nmbjumbop",
    "kern.ipc.nmbjumbo9",
    "kern.ipc.nmbjumbo16",
)
# The cluster limits whose sum kern.ipc.nmbufs must cover (FreeBSD's rule).
CLUSTER_LIMITS = MBUF_LIMITS[:1] + MBUF_LIMITS[2:]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SysctlError(ValueError):
    """A tunable name or value was refused; the message says why."""


Default = int | Callable[[int], int]
"""A fixed default, or a function of the physical memory size in bytes."""

Applier = Literal["mbuf", "dataplane", "boot", "server"]
"""What applies a value: the mbuf zone limits (forwarder.mbufs), the
dataplane (Dataplane.set), the router when it starts (boot only), or the
control socket and the metrics endpoint, which read it for each connection
(forwarder.admission)."""


@dataclass(frozen=True)
class Tunable:
    name: str
    type: type            # int or bool
    min: int
    max: int
    default: Default
    description: str
    runtime: bool         # False: boot-only (config / -o), read-only afterwards
    applies: Applier

    def default_value(self, physmem: int | None = None) -> int:
        if callable(self.default):
            return self.default(physical_memory() if physmem is None else physmem)
        return int(self.default)

    @property
    def kind(self) -> str:
        return "bool" if self.type is bool else "int"

    def allowed(self) -> str:
        """What values are accepted, for error messages."""
        if self.type is bool:
            return "0 or 1"
        return f"{self.min}..{self.max}"

    def parse(self, value: object) -> int:
        """Convert a string, int or bool to the stored int, checking type and range."""
        if self.type is bool:
            if isinstance(value, bool):
                return int(value)
            if isinstance(value, int) and value in (0, 1):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return 1 if value.strip().lower() in _TRUE else 0
            raise SysctlError(f"{self.name}: invalid value {value!r} (boolean: 0 or 1)")
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise SysctlError(f"{self.name}: invalid value {value!r} (integer {self.allowed()})")
        if isinstance(value, str):
            try:
                number = int(value.strip().replace("_", ""), 0)
            except ValueError:
                raise SysctlError(
                    f"{self.name}: invalid value {value!r} (integer {self.allowed()})") from None
        else:
            number = value
        if not self.min <= number <= self.max:
            raise SysctlError(f"{self.name}: {number} out of range ({self.allowed()})")
        return number


# --- defaults derived from memory ---------------------------------------------------

def physical_memory() -> int:
    """Bytes of memory available to us: physical memory, or a smaller cgroup v2 limit."""
    physmem = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            text = f.read().strip()
        if text.isdigit():
            physmem = min(physmem, int(text))
    except OSError:
        pass
    return physmem


def mbuf_default_limits(physmem_bytes: int) -> dict[str, int]:
    """FreeBSD's tunable_mbinit(): limits sized from physical memory.

    maxmbufmem = physmem / 2; clusters and page-size jumbos get a quarter of it,
    9k and 16k jumbos a sixth; nmbufs covers at least the sum of the clusters.
    """
    maxmbufmem = physmem_bytes // 2
    limits = {
        "kern.ipc.nmbclusters": maxmbufmem // MCLBYTES // 4,
        "kern.ipc.nmbjumbop": maxmbufmem // MJUMPAGESIZE // 4,
        "kern.ipc.nmbjumbo9": maxmbufmem // MJUM9BYTES // 6,
        "kern.ipc.nmbjumbo16": maxmbufmem // MJUM16BYTES // 6,
    }
    limits["kern.ipc.nmbufs"] = max(maxmbufmem // MSIZE // 5, sum(limits.values()))
    return {name: min(value, INT_MAX) for name, value in limits.items()}


def _mbuf_default(name: str) -> Callable[[int], int]:
    def default(physmem: int) -> int:
        return mbuf_default_limits(physmem)[name]
    default.__name__ = f"default_{name.rsplit('.', 1)[1]}"
    return default


# --- the registry ------------------------------------------------------------------

TUNABLES: tuple[Tunable, ...] = (
    Tunable("kern.ipc.nmbclusters", int, 0, INT_MAX, _mbuf_default("kern.ipc.nmbclusters"),
            "Maximum number of mbuf clusters allowed (0 = unlimited)", True, "mbuf"),
    Tunable("kern.ipc.nmbufs", int, 0, INT_MAX, _mbuf_default("kern.ipc.nmbufs"),
            "Maximum number of mbufs allowed (0 = unlimited)", True, "mbuf"),
    Tunable("kern.ipc.nmbjumbop", int, 0, INT_MAX, _mbuf_default("kern.ipc.nmbjumbop"),
            "Maximum number of mbuf page size jumbo clusters allowed (0 = unlimited)", True, "mbuf"),
    Tunable("kern.ipc.nmbjumbo9", int, 0, INT_MAX, _mbuf_default("kern.ipc.nmbjumbo9"),
            "Maximum number of mbuf 9k jumbo clusters allowed (0 = unlimited)", True, "mbuf"),
    Tunable("kern.ipc.nmbjumbo16", int, 0, INT_MAX, _mbuf_default("kern.ipc.nmbjumbo16"),
            "Maximum number of mbuf 16k jumbo clusters allowed (0 = unlimited)", True, "mbuf"),
    Tunable("net.inet.ip.forwarding", bool, 0, 1, 1,
            "Enable IP forwarding between interfaces", True, "dataplane"),
    Tunable("net.inet.ip.ttl", int, 1, 255, 64,
            "TTL of IP packets the router originates (ICMP replies and errors)", True, "dataplane"),
    Tunable("net.inet.icmp.icmplim", int, 0, 100000, 200,
            "Maximum number of ICMP errors sent per second (0 = no limit)", True, "dataplane"),
    Tunable("net.inet6.ip6.forwarding", bool, 0, 1, 1,
            "Forward IPv6 packets between interfaces", True, "dataplane"),
    Tunable("net.inet6.ip6.hlim", int, 1, 255, 64,
            "Hop limit of IPv6 packets the router originates", True, "dataplane"),
    Tunable("net.inet6.icmp6.errppslimit", int, 0, 100000, 100,
            "Maximum number of ICMPv6 errors sent per second (0 = no limit)", True, "dataplane"),
    # The IPv6 neighbour cache (netinet6/nd6.pxi), FreeBSD's names and defaults
    # (RFC 4861 10's constants).  FreeBSD keeps BaseReachableTime per interface
    # (nd_ifinfo.basereachable, `ndp -i`), with no sysctl: this one is named
    # after that field and, like it, counts milliseconds.
    Tunable("net.inet6.icmp6.nd6_basereachable", int, 1000, 3600000, 30000,
            "BaseReachableTime in ms: a confirmed IPv6 neighbour is REACHABLE for "
            "0.5 to 1.5 times this", True, "dataplane"),
    Tunable("net.inet6.icmp6.nd6_delay", int, 1, 3600, 5,
            "Seconds a STALE IPv6 neighbour in use waits in DELAY before it is probed",
            True, "dataplane"),
    Tunable("net.inet6.icmp6.nd6_umaxtries", int, 1, 100, 3,
            "Unicast Neighbor Solicitations (1 s apart) a neighbour in PROBE gets before "
            "it is freed", True, "dataplane"),
    Tunable("net.inet6.icmp6.nd6_mmaxtries", int, 1, 100, 3,
            "Multicast Neighbor Solicitations for an unresolved neighbour before its queued "
            "packets get address unreachable", True, "dataplane"),
    Tunable("net.inet6.icmp6.nd6_gctimer", int, 1, 86400 * 365, 86400,
            "Seconds a STALE IPv6 neighbour is kept unused before it is freed", True,
            "dataplane"),
    # The ARP table (netinet/if_ether.pxi): FreeBSD's names where FreeBSD has
    # the tunable (max_age, maxhold, maxtries); the neighbour unreachability
    # detection FreeBSD's ARP lacks takes Linux's defaults for ARP (arp_tbl:
    # base_reachable_time_ms, delay_first_probe_time, ucast_probes) under the
    # names of their nd6_* twins.
    Tunable("net.link.ether.inet.max_age", int, 1, 86400 * 365, 1200,
            "Seconds a STALE ARP entry is kept unused before it is freed", True, "dataplane"),
    Tunable("net.link.ether.inet.maxhold", int, 1, 10000, 16,
            "Packets held per neighbour while its ARP resolution is pending", True, "dataplane"),
    Tunable("net.link.ether.inet.maxtries", int, 1, 100, 3,
            "Broadcast ARP requests (1 s apart) for an unresolved neighbour before its queued "
            "packets get host unreachable", True, "dataplane"),
    Tunable("net.link.ether.inet.max_per_if", int, 1, ARP_MAX_ENTRIES, 1024,
            "ARP entries one interface may hold, so one link cannot fill the table", True,
            "dataplane"),
    Tunable("net.link.ether.inet.max_incomplete", int, 1, ARP_MAX_ENTRIES, 256,
            "Unresolved (INCOMPLETE) entries one interface may hold, ARP and IPv6 each, so a "
            "flood of packets to unused addresses cannot take the room of neighbours in use",
            True, "dataplane"),
    Tunable("net.link.ether.inet.basereachable", int, 1000, 3600000, 30000,
            "BaseReachableTime of ARP in ms: a confirmed neighbour is REACHABLE for 0.5 to "
            "1.5 times this", True, "dataplane"),
    Tunable("net.link.ether.inet.delay", int, 1, 3600, 5,
            "Seconds a STALE ARP neighbour in use waits in DELAY before it is probed",
            True, "dataplane"),
    Tunable("net.link.ether.inet.umaxtries", int, 1, 100, 3,
            "Unicast ARP requests (1 s apart) a neighbour in PROBE gets before it is freed",
            True, "dataplane"),
    Tunable("net.link.ether.inet.request_ppslimit", int, 0, 100000, 100,
            "Broadcast ARP requests sent per second per interface (0 = no limit)", True,
            "dataplane"),
    Tunable("net.inet6.icmp6.nd6_ns_ppslimit", int, 0, 100000, 100,
            "Multicast Neighbor Solicitations sent per second per interface (0 = no limit)",
            True, "dataplane"),
    # The control socket and the Prometheus endpoint (forwarder/admission.py).
    Tunable("net.forwarder.control.max_clients", int, 1, 4096, 64,
            "Clients the control socket serves at once; more are refused and counted",
            True, "server"),
    Tunable("net.forwarder.control.request_timeout", int, 1, 3600, 10,
            "Seconds a control request line may take from its first byte (the first "
            "request: from the connection) to its newline", True, "server"),
    Tunable("net.forwarder.control.idle_timeout", int, 1, 86400, 60,
            "Seconds a control connection may wait between requests before it is closed",
            True, "server"),
    Tunable("net.forwarder.metrics.max_clients", int, 1, 4096, 64,
            "Clients the Prometheus endpoint serves at once; more get 503 and are counted",
            True, "server"),
    Tunable("net.forwarder.metrics.request_timeout", int, 1, 3600, 10,
            "Seconds a scrape's request line and headers may take to arrive (408 after)",
            True, "server"),
    Tunable("net.route.max_routes", int, 1, 1 << 24, 1 << 20,
            "Maximum number of routes in the routing table (boot only)", False, "boot"),
    Tunable("net.link.max_interfaces", int, 1, MAX_INTERFACES, MAX_INTERFACES,
            "Maximum number of interfaces (boot only)", False, "boot"),
)

REGISTRY: dict[str, Tunable] = {t.name: t for t in TUNABLES}
DATAPLANE_TUNABLES: tuple[str, ...] = tuple(t.name for t in TUNABLES if t.applies == "dataplane")
assert {t.name for t in TUNABLES if t.applies == "mbuf"} == set(MBUF_LIMITS)


def lookup(name: str, registry: Mapping[str, Tunable] = REGISTRY) -> Tunable:
    """The tunable called ``name``, or SysctlError naming the closest known names."""
    try:
        return registry[name]
    except KeyError:
        pass
    close = difflib.get_close_matches(name, list(registry), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise SysctlError(f"unknown oid '{name}'{hint}")


def parse_assignment(text: str) -> tuple[str, str]:
    """Split ``name=value`` (as given to ``-o`` or ``forwarder sysctl``)."""
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise SysctlError(f"'{text}': expected name=value")
    return name, value


# --- output like sysctl(8) ---------------------------------------------------------

def format_get(name: str, value: int) -> str:
    return f"{name}: {value}"


def format_set(name: str, old: int, new: int) -> str:
    return f"{name}: {old} -> {new}"


def format_describe(tunable: Tunable) -> str:
    return f"{tunable.name}: {tunable.description}"


# --- the tree ----------------------------------------------------------------------

Hook = Callable[[str, int, int], None]
"""hook(name, old, new): called before ``new`` is committed; raise SysctlError to veto."""


class SysctlTree:
    """Current values of every tunable, with validation and change hooks.

    Thread safe: sets are serialised, gets read a dict entry.
    """

    def __init__(self, values: Mapping[str, object] | None = None, *,
                 physmem: int | None = None,
                 registry: Mapping[str, Tunable] = REGISTRY) -> None:
        self._registry = dict(registry)
        mem = physical_memory() if physmem is None else physmem
        self._values: dict[str, int] = {
            name: t.default_value(mem) for name, t in self._registry.items()}
        self._defaults = dict(self._values)
        self._hooks: list[tuple[Hook, frozenset[str] | None]] = []
        self._lock = threading.RLock()
        if values:
            self.load(values)

    # reading
    def tunable(self, name: str) -> Tunable:
        return lookup(name, self._registry)

    def get(self, name: str) -> int:
        self.tunable(name)
        return self._values[name]

    def __getitem__(self, name: str) -> int:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._registry

    def default(self, name: str) -> int:
        self.tunable(name)
        return self._defaults[name]

    def describe(self, name: str) -> str:
        return self.tunable(name).description

    def all(self, prefix: str = "") -> list[tuple[str, int]]:
        """(name, value) of every tunable under ``prefix`` (``kern.ipc`` matches its children)."""
        return [(n, self._values[n]) for n in sorted(self._registry)
                if not prefix or n == prefix or n.startswith(prefix.rstrip(".") + ".")]

    def info(self, name: str) -> dict[str, object]:
        """A JSON-able record of one tunable, for the control socket."""
        t = self.tunable(name)
        return {"name": t.name, "type": t.kind, "min": t.min, "max": t.max,
                "default": self._defaults[name], "value": self._values[name],
                "runtime": t.runtime, "description": t.description}

    def snapshot(self) -> dict[str, int]:
        return dict(self._values)

    # hooks
    def add_hook(self, hook: Hook, names: str | Iterable[str] | None = None) -> None:
        """Call ``hook(name, old, new)`` before a change of ``names`` (all when None)."""
        if isinstance(names, str):
            names = (names,)
        selected = None
        if names is not None:
            selected = frozenset(names)
            for n in selected:
                self.tunable(n)
        with self._lock:
            self._hooks.append((hook, selected))

    def remove_hook(self, hook: Hook) -> None:
        with self._lock:
            self._hooks = [(h, n) for h, n in self._hooks if h is not hook]

    def _run_hooks(self, name: str, old: int, new: int) -> None:
        done: list[Hook] = []
        for hook, names in list(self._hooks):
            if names is not None and name not in names:
                continue
            try:
                hook(name, old, new)
            except SysctlError:
                # Undo what the hooks before the veto applied, best effort.
                for prev in reversed(done):
                    try:
                        prev(name, new, old)
                    except Exception:  # noqa: BLE001 - rollback must go on
                        log.exception("sysctl %s: rollback hook failed", name)
                raise
            done.append(hook)

    # writing
    def set(self, name: str, value: object, *, boot: bool = False) -> tuple[int, int]:
        """Parse, validate and apply one value; return (old, new).

        ``boot=False`` is a runtime change: boot-only tunables are refused.
        A hook's SysctlError vetoes the change and propagates; nothing changes.
        """
        t = self.tunable(name)
        if not boot and not t.runtime:
            raise SysctlError(
                f"{name}: read-only at runtime (boot-only; set it in [sysctl] or with -o)")
        new = t.parse(value)
        with self._lock:
            old = self._values[name]
            if new != old:
                self._run_hooks(name, old, new)
                self._values[name] = new
        if new != old:
            log.info("sysctl %s: %d -> %d", name, old, new)
        return old, new

    def set_many(self, assignments: Mapping[str, object], *,
                 boot: bool = False) -> list[tuple[str, int, int]]:
        """Set several values, all or nothing: on an error the earlier ones are undone."""
        changed: list[tuple[str, int, int]] = []
        with self._lock:
            try:
                for name, value in assignments.items():
                    old, new = self.set(name, value, boot=boot)
                    changed.append((name, old, new))
            except SysctlError:
                for name, old, new in reversed(changed):
                    if old != new:
                        try:
                            self._run_hooks(name, new, old)
                        except SysctlError:
                            log.exception("sysctl %s: could not restore %d", name, old)
                        self._values[name] = old
                        log.info("sysctl %s: %d -> %d (rolled back)", name, new, old)
                raise
        return changed

    def load(self, values: Mapping[str, object]) -> list[tuple[str, int, int]]:
        """Boot values (config [sysctl] and -o): boot-only tunables accepted.

        As FreeBSD's tunable_mbinit(), a kern.ipc.nmbufs left at its default is
        raised to cover the cluster limits that were set.
        """
        changed = self.set_many(values, boot=True)
        if "kern.ipc.nmbufs" not in values and set(MBUF_LIMITS) <= set(self._registry):
            nmbufs = self._values["kern.ipc.nmbufs"]
            total = sum(self._values[n] for n in CLUSTER_LIMITS)
            if nmbufs and nmbufs < total:
                changed.append(("kern.ipc.nmbufs",) + self.set("kern.ipc.nmbufs", total,
                                                                boot=True))
        return changed


def check_mbuf_limits(values: Mapping[str, int]) -> None:
    """FreeBSD's rule: a limited nmbufs covers the total of the limited cluster zones.

    0 means unlimited: an unlimited nmbufs always passes, an unlimited cluster
    zone adds nothing to the total.
    """
    nmbufs = values["kern.ipc.nmbufs"]
    total = sum(values[n] for n in CLUSTER_LIMITS)
    if nmbufs and nmbufs < total:
        raise SysctlError(
            f"kern.ipc.nmbufs: {nmbufs} is below the total of the cluster limits ({total})")


def mbuf_limits_hook(tree: SysctlTree) -> Hook:
    """A hook enforcing :func:`check_mbuf_limits` on the proposed state of ``tree``."""
    def hook(name: str, old: int, new: int) -> None:
        proposed = tree.snapshot()
        proposed[name] = new
        check_mbuf_limits(proposed)
    return hook
