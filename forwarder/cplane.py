"""The control plane: a mirror of every port in a namespace of its own, and
the routes that namespace's kernel holds, copied into the dataplane.

Routing daemons (FRR, BIRD) speak to the kernel: they install what they learn
as kernel routes over interfaces they see.  VPP's linux-cp answers that with a
TAP "mirror" per dataplane port in a control-plane namespace; this module does
the same, in two parts:

* :class:`Mirrors`: for every port, a TAP in ``[control_plane] netns`` with the
  port's name, MAC, MTU and addresses, up.  The daemons bind to these, and the
  kernel there has the ports' connected prefixes, so a route ``via 10.2.0.2
  dev tap2`` resolves as it would on the router itself.  Each mirror is an
  interface of the dataplane too (``mirror_of``, hidden from the port list):
  the dataplane *punts* to it what arrives on the port for the router itself
  and it does not answer (TCP and UDP to its addresses: BGP, BFD; 224.0.0.0/24
  and ff02::/16 groups: OSPF; ICMP other than echo requests), and a copy of
  each ARP reply and Neighbor Advertisement so that the mirror's kernel learns
  its neighbours; what that kernel sends on the mirror is *injected*: written
  out of the port unchanged.  Echo requests, ARP and ND for the router's
  addresses and Router Advertisements stay the dataplane's.  The mirror TAP
  has a virtio-net header without offloads: the kernel hands over segmented,
  checksummed frames, and takes super-frames punted whole.  Punts and injects
  are counted per port (``punted``, ``injected``, ``punt_errors``: a mirror
  whose kernel does not keep up drops there, and the forwarding loop never
  waits for it).
* :class:`RouteImporter`: a netlink listener in that namespace (its own
  thread, never the forwarding thread) that mirrors RTM_NEWROUTE and
  RTM_DELROUTE of the chosen tables into the dataplane's IPv4 and IPv6 tables
  through :meth:`forwarder.router.Router.import_route`.  A gateway route is
  resolved to the port by the mirror its RTA_OIF names; blackhole, unreachable
  and prohibit keep their type; routes over other links, local/broadcast/
  multicast types, link-local and multicast prefixes, and the kernel's own
  connected routes (proto kernel: the dataplane has those from the config)
  are skipped and counted.  Config and runtime routes win over imported ones
  for the same prefix (an imported route waits behind them, and takes the
  prefix when they go).

What the kernel forces on every such consumer (FRR, zebra-rs and VPP's
linux_nl all learned it):

* multicast netlink has no flow control: the socket gets a large receive
  buffer (SO_RCVBUFFORCE, 128 MiB; each notification costs some 800 bytes of
  it), and an overrun (ENOBUFS on read) is met with a full re-dump, applied as
  mark and sweep (:meth:`RouteImporter.resync`).  The listening socket is a
  plain netlink socket read here, its messages decoded by forwarder/rtnl.py
  (pyroute2's reader keeps an overrun to itself, and a lost notification
  must not go unnoticed; its decoder costs 75 us a route);
* the kernel deletes the IPv4 routes over a link that goes down without
  sending RTM_DELROUTE: every link event of that namespace triggers the same
  re-dump;
* next-hop objects (RTA_NH_ID, FRR's default) are kernel state of their own:
  with net.ipv4.nexthop_compat_mode 0 a route message names only the id, and
  a changed object sends no route message at all.  The objects are listened
  to (RTNLGRP_NEXTHOP) and read before the routes on every re-dump; the
  routes using one follow it;
* IPv6 keeps an ECMP route as sibling routes and deletes them one by one: a
  delete of an imported multipath route triggers the re-dump too.

A route's several next hops (RTA_MULTIPATH, or a group object) become one
multipath next hop of the dataplane (route.pxd: next-hop groups), weights
kept.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from ipaddress import ip_network
from typing import TYPE_CHECKING, Any

from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE, RTMGRP_LINK

from forwarder import netns, rtnl
from forwarder.config import RTPROT, RTPROT_NAMES, Config, link_local_of
from forwarder.route import NHG_SLOTS

if TYPE_CHECKING:
    from forwarder.router import Router

log = logging.getLogger("forwarder.cplane")

RCVBUF = 128 << 20                  # bytes, as VPP's linux-nl: ~800 bytes of buffer per route
RECV_SIZE = 1 << 20
SO_RCVBUFFORCE = 33
RESYNC_DELAY = 0.2                  # seconds: let a burst of link events settle first
BURST_LOG = 1000                    # route changes: a burst this long is logged with its rate
RTN_TYPES = {1: "unicast", 6: "blackhole", 7: "unreachable", 8: "prohibit"}


def proto_name(num: int) -> str:
    return RTPROT_NAMES.get(num, str(num))


RTNLGRP_NEXTHOP = 32                # past the 32 bits of bind(): NETLINK_ADD_MEMBERSHIP
SOL_NETLINK, NETLINK_ADD_MEMBERSHIP = 270, 1


def rtnl_socket(ns: str | None) -> socket.socket:
    """A NETLINK_ROUTE socket of namespace ns (the namespace is the one it is
    made in; it stays there whatever thread uses it)."""
    with netns.enter_netns(ns):
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             socket.NETLINK_ROUTE)


def netlink_dump(ns: str | None, msg_type: int, body_len: int) -> list[rtnl.Route | rtnl.Nexthop]:
    """A dump of msg_type (every family) in namespace ns, read to NLMSG_DONE;
    [] where the kernel does not know it (no next-hop objects)."""
    sock = rtnl_socket(ns)
    out: list[rtnl.Route | rtnl.Nexthop] = []
    with sock:
        sock.bind((0, 0))
        sock.send(rtnl.dump_request(msg_type, body_len))
        while True:
            try:
                msgs = list(rtnl.parse(sock.recv(RECV_SIZE)))
            except OSError as e:
                if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.EAFNOSUPPORT):
                    return out
                raise
            for msg in msgs:
                if msg == rtnl.NLMSG_DONE:
                    return out
                if not isinstance(msg, int):
                    out.append(msg)


# --- mirrors --------------------------------------------------------------------------

class Mirrors:
    """A TAP per port in the control-plane namespace: name, MAC, MTU, addresses
    (no duplicate address detection: they are the port's).  An attached
    port's mirror follows its link (:meth:`Router._mirror_link`): down with
    it, up again with the MAC and MTU it took (:meth:`follow`)."""

    def __init__(self, config: Config) -> None:
        self.netns = config.control_plane.netns_path
        self.by_index: dict[int, str] = {}      # a mirror's ifindex there -> its port
        self._fds: list[int] = []
        self._config = config

    def create(self, dp: Any, ifindex: dict[str, int]) -> None:
        """Before the forwarding loop starts: each mirror is added to ``dp``."""
        assert self.netns is not None
        try:
            for itf in self._config.interfaces:
                fd = netns.tap_open(itf.name, self.netns, extra_flags=netns.IFF_VNET_HDR)
                self._fds.append(fd)
                netns.tap_set_offload(fd, 0)     # its kernel segments and checksums for us
                # a mirror taken down and up again keeps its IPv6 addresses, as IPv4 ones;
                # and its addresses are the port's, which the dataplane answers for: no
                # duplicate address detection (its link-local address would stay tentative
                # for a second or two after every up, and bgpd opens no IPv6 session over
                # a link without a usable link-local address: the peer then holds off)
                for key, value in (("keep_addr_on_down", 1), ("accept_dad", 0)):
                    with contextlib.suppress(OSError):
                        netns._write_proc(self.netns,
                                          f"/proc/sys/net/ipv6/conf/{itf.name}/{key}", value)
                with netns.iproute(self.netns) as ipr:
                    idx = ipr.link_lookup(ifname=itf.name)[0]
                    ipr.link("set", index=idx, address=itf.mac, mtu=itf.mtu)
                    for a in (*itf.addresses, *itf.addresses6):
                        ipr.addr("add", index=idx, address=str(a.ip),
                                 prefixlen=a.network.prefixlen,
                                 **({"flags": netns.IFA_F_NODAD} if a.version == 6 else {}))
                    ipr.link("set", index=idx, state="up")
                self.by_index[idx] = itf.name
                dp.add_interface(fd, f"{itf.name[:12]}~cp", bytes.fromhex(itf.mac.replace(":", "")),
                                 itf.mtu, [], vnet_hdr=True, offloads=0,
                                 mirror_of=ifindex[itf.name])
                log.info("mirror %s in %s: mac %s mtu %d, %s", itf.name,
                         self._config.control_plane.netns, itf.mac, itf.mtu,
                         ", ".join(str(a) for a in (*itf.addresses, *itf.addresses6)) or
                         "no address")
        except BaseException:
            self.close()
            raise

    def follow(self, port: str, mac: str, mtu: int) -> None:
        """An attached port took its interface's MAC and MTU (forwarder/attach.py):
        its mirror takes them too, and the link-local address of the new MAC
        instead of the old one, or the daemons' frames would carry a MAC and
        a next hop the port does not answer for."""
        assert self.netns is not None
        ll = link_local_of(mac)
        with netns.iproute(self.netns) as ipr:
            idx = ipr.link_lookup(ifname=port)[0]
            ipr.link("set", index=idx, address=mac, mtu=mtu)
            have = {a.get_attr("IFA_ADDRESS"): a["prefixlen"]
                    for a in ipr.get_addr(index=idx, family=socket.AF_INET6)}
            for ip, plen in have.items():
                if ip.startswith("fe80:") and ip != str(ll.ip):
                    ipr.addr("del", index=idx, address=ip, prefixlen=plen)
            if str(ll.ip) not in have:
                ipr.addr("add", index=idx, address=str(ll.ip), prefixlen=64,
                         flags=netns.IFA_F_NODAD)
        log.info("mirror %s: mac %s mtu %d, %s, as its port", port, mac, mtu, ll)

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self.by_index.clear()


# --- route import ------------------------------------------------------------------------

@dataclass
class ImportStats:
    imported: int = 0               # routes installed or replaced from the kernel
    removed: int = 0                # ... and taken out again
    resyncs: int = 0                # full re-dumps (start, overruns, link events)
    overruns: int = 0               # ENOBUFS: notifications lost
    skipped: dict[str, int] = field(default_factory=dict)   # by reason

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {"imported": self.imported, "removed": self.removed, "resyncs": self.resyncs,
                "overruns": self.overruns, "skipped": dict(self.skipped)}


@dataclass
class Burst:
    """A burst of route changes (a daemon converging, a session lost): once
    the socket has been quiet for a select() timeout, a burst of at least
    BURST_LOG changes is logged with its length and rate."""
    start: float = 0.0
    last: float = 0.0
    changes0: int = 0

    def note(self, stats: ImportStats) -> None:
        now = time.monotonic()
        if not self.start:
            self.start, self.changes0 = now, stats.imported + stats.removed
        self.last = now

    def settled(self, stats: ImportStats) -> None:
        if not self.start:
            return
        n = stats.imported + stats.removed - self.changes0
        if n >= BURST_LOG:
            secs = max(self.last - self.start, 1e-3)
            log.info("route import: %d changes in %.2f s (%d/s)", n, secs, n / secs)
        self.start = 0.0


class RouteImporter:
    """Kernel routes of the control-plane namespace into the dataplane."""

    def __init__(self, router: "Router", mirrors: Mirrors) -> None:
        cp = router.config.control_plane
        self.router = router
        self.mirrors = mirrors
        self.netns = cp.netns_path
        self.tables = set(cp.tables)
        self.protocols = {RTPROT[p] for p in cp.protocols}
        self.stats = ImportStats()
        self.nexthops: dict[int, rtnl.Nexthop] = {}           # the kernel's objects, by id
        self.nh_routes: dict[str, tuple[int, str]] = {}       # prefix -> (its nexthop id, origin)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resync_at: float | None = None

    # --- parsing -------------------------------------------------------------------

    def parse(self, msg: rtnl.Route) -> tuple[str, dict | None, str] | None:
        """(prefix, next-hop spec, origin) of a route message, or None when it
        is not one to import (counted by reason).  A spec of None: a delete."""
        if msg.table not in self.tables:
            return None                             # another table: not ours to count
        kind = RTN_TYPES.get(msg.type)
        if kind is None:
            self.stats.skip("type")                 # local, broadcast, multicast, throw...
            return None
        if msg.proto == RTPROT["kernel"]:
            return None                             # connected: the dataplane has it
        if self.protocols and msg.proto not in self.protocols:
            self.stats.skip("protocol")
            return None
        if rtnl.link_scoped(msg.family, msg.dst_raw, msg.dst_len):
            self.stats.skip("scope")
            return None
        origin = proto_name(msg.proto)
        if msg.family == socket.AF_INET:            # the kernel refuses host bits: canonical as is
            prefix = f"{msg.dst or '0.0.0.0'}/{msg.dst_len}"
        else:                                       # spelled as the IPv6 table spells it
            prefix = str(ip_network(f"{msg.dst or '::'}/{msg.dst_len}", strict=False))
        self.nh_routes.pop(prefix, None)
        if msg.event == rtnl.RTM_DELROUTE:
            return prefix, None, origin
        if kind != "unicast":
            return prefix, {"type": kind}, origin
        if msg.nh_id and msg.nh_id in self.nexthops:    # a next-hop object (FRR's way): followed
            self.nh_routes[prefix] = (msg.nh_id, origin)
            return self._by_nexthop_object(prefix, msg.nh_id, origin)
        if msg.multipath:                           # (with nexthop_compat_mode 1 spelled out too)
            return self._spec(prefix, msg.multipath, origin)
        if msg.oif:
            return self._spec(prefix, [(msg.oif, msg.gateway, 1)], origin)
        self.stats.skip("nexthop_unknown" if msg.nh_id else "no_next_hop")
        return None

    def _spec(self, prefix: str, hops: list[tuple[int, str | None, int]],
              origin: str) -> tuple[str, dict, str] | None:
        """The dataplane's next hop for kernel next hops [(oif, gateway,
        weight)]: next hops over links that are not mirrors are left out (and
        counted); one left makes a plain route, more an ECMP one."""
        paths: list[dict[str, Any]] = []
        for oif, gw, weight in hops:
            port = self.mirrors.by_index.get(oif)
            if port is None:                        # over lo, or a link of the namespace's own
                self.stats.skip("not_a_mirror" if len(hops) == 1 else "path_not_a_mirror")
                continue
            hop: dict[str, Any] = {"ifindex": self.router.ifindex[port], "weight": weight}
            if gw:
                hop["via"] = gw
            paths.append(hop)
        if not paths:
            if len(hops) > 1:
                self.stats.skip("not_a_mirror")
            return None
        if len(paths) == 1:
            paths[0].pop("weight")
            return prefix, {"type": "forward", **paths[0]}, origin
        if len(paths) > NHG_SLOTS:
            self.stats.skip("multipath_too_wide")
            return None
        return prefix, {"type": "multipath", "paths": paths}, origin

    # --- next-hop objects (RTM_NEWNEXTHOP; ip-nexthop(8)) ------------------------------

    def _by_nexthop_object(self, prefix: str, nhid: int,
                           origin: str) -> tuple[str, dict, str] | None:
        obj = self.nexthops[nhid]
        if obj.blackhole:
            return prefix, {"type": "blackhole"}, origin
        if obj.group:
            members = [(self.nexthops.get(i), w) for i, w in obj.group]
            hops = [(m.oif, m.gateway, w) for m, w in members
                    if m is not None and not m.blackhole and not m.group]
        else:
            hops = [(obj.oif, obj.gateway, 1)]
        return self._spec(prefix, hops, origin)

    def _users(self, nhid: int) -> list[str]:
        """The imported prefixes whose route uses next-hop object nhid, directly
        or through a group."""
        groups = {i for i, o in self.nexthops.items() if any(m == nhid for m, _ in o.group)}
        return [p for p, (i, _) in self.nh_routes.items() if i == nhid or i in groups]

    def apply_nexthop(self, msg: rtnl.Nexthop) -> None:
        """A next-hop object changed or went: its routes follow.  (With
        nexthop_compat_mode 0 the kernel sends no route message for that.)"""
        nhid = msg.id
        if not nhid:
            return
        users = self._users(nhid)
        if msg.event == rtnl.RTM_DELNEXTHOP:
            self.nexthops.pop(nhid, None)
            for prefix in users:                    # the kernel took these routes with it
                self.nh_routes.pop(prefix, None)
                if self.router.withdraw_route(prefix):
                    self.stats.removed += 1
            return
        self.nexthops[nhid] = msg
        for prefix in users:
            nh_id, origin = self.nh_routes[prefix]
            got = self._by_nexthop_object(prefix, nh_id, origin)
            if got is None:
                if self.router.withdraw_route(prefix):
                    self.stats.removed += 1
            elif self.router.import_route(prefix, got[1], origin):
                self.stats.imported += 1

    def dump_nexthops(self) -> None:
        """Every next-hop object of the namespace (before the routes that use them)."""
        self.nexthops = {msg.id: msg for msg in netlink_dump(self.netns, rtnl.RTM_GETNEXTHOP,
                                                              rtnl.NHMSG_LEN)
                         if isinstance(msg, rtnl.Nexthop) and msg.id}

    # --- applying --------------------------------------------------------------------

    def dump(self) -> dict[str, tuple[dict, str]]:
        """Every importable route the kernel holds now (both families), after
        the next-hop objects they may name."""
        want: dict[str, tuple[dict, str]] = {}
        self.dump_nexthops()
        self.nh_routes = {}
        for msg in netlink_dump(self.netns, rtnl.RTM_GETROUTE, rtnl.RTMSG_LEN):
            if not isinstance(msg, rtnl.Route):
                continue
            got = self.parse(msg)
            if got is not None and got[1] is not None:
                want[got[0]] = (got[1], got[2])
        return want

    def resync(self) -> None:
        """Mark and sweep: the dataplane's imported routes become the kernel's."""
        self.stats.resyncs += 1
        added, removed = self.router.sync_imported(self.dump())
        self.stats.imported += added
        self.stats.removed += removed
        log.info("route import: %d routes from %s (+%d, -%d)",
                 len(self.router.imported), self.router.config.control_plane.netns,
                 added, removed)

    def apply(self, msg: rtnl.Route) -> None:
        got = self.parse(msg)
        if got is None:
            return
        prefix, nh, origin = got
        if nh is None:
            was = self.router.imported.get(prefix)
            if self.router.withdraw_route(prefix):
                self.stats.removed += 1
            if was is not None and "paths" in was[0]:
                # IPv6 keeps an ECMP route as sibling routes and may delete one
                # of them alone: what is left is read back from the kernel
                self._resync_soon()
        elif self.router.import_route(prefix, nh, origin):
            self.stats.imported += 1

    def _resync_soon(self) -> None:
        """A full re-dump once a burst of events has settled."""
        self._resync_at = self._resync_at or time.monotonic() + RESYNC_DELAY

    # --- the thread ---------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Listen, then read the whole table once; returns when that is applied.
        (The socket lives in the thread that reads it: pyroute2's sockets
        belong to the thread that made them.)"""
        ready = threading.Event()
        failed: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(ready, failed),
                                        name="route-import", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError(f"route import: no first dump of {self.netns} within {timeout} s")
        if failed:
            raise failed[0]

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _listen(self) -> socket.socket:
        """A netlink socket in the control plane's namespace on route and link events."""
        sock = rtnl_socket(self.netns)
        try:
            sock.bind((0, RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE | RTMGRP_LINK))
            with contextlib.suppress(OSError):      # a kernel without next-hop objects
                sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, RTNLGRP_NEXTHOP)
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except OSError:                     # without CAP_NET_ADMIN: what rmem_max allows
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        except BaseException:
            sock.close()
            raise
        return sock

    def _run(self, ready: threading.Event, failed: list[BaseException]) -> None:
        try:
            sock = self._listen()
            self.resync()                                   # listening first: nothing missed
        except BaseException as e:  # noqa: BLE001 - start() raises it
            failed.append(e)
            ready.set()
            return
        ready.set()
        burst = Burst()
        buf = bytearray(RECV_SIZE)
        view = memoryview(buf)
        sock.setblocking(False)
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([sock], [], [], 0.2)
                if readable:
                    burst.note(self.stats)
                else:
                    burst.settled(self.stats)
                while readable:
                    # one notification per read: drain the socket before the next
                    # select, into one buffer (no 1 MiB allocation per message)
                    try:
                        n = sock.recv_into(buf)
                    except BlockingIOError:
                        break
                    except OSError as e:
                        if e.errno != errno.ENOBUFS:
                            raise
                        self.stats.overruns += 1
                        log.warning("route import: netlink overrun (notifications lost); "
                                    "reading the whole table again")
                        self._resync_at = time.monotonic()
                        continue
                    for msg in rtnl.parse(view[:n]):
                        if isinstance(msg, rtnl.Route):
                            self.apply(msg)
                        elif isinstance(msg, rtnl.Nexthop):
                            self.apply_nexthop(msg)
                        elif msg in (rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK):
                            # the kernel drops routes over a downed link without a word
                            self._resync_soon()
                if readable:
                    burst.note(self.stats)          # its end: when the drain is done
                if self._resync_at is not None and time.monotonic() >= self._resync_at:
                    self._resync_at = None
                    self.resync()
        except Exception:  # noqa: BLE001 - said once; the dataplane keeps its routes
            log.exception("route import stopped")
        finally:
            sock.close()
