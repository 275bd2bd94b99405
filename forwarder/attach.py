"""Attached ports: the router's ports on the interfaces it is handed.

Docker, containerlab and Kubernetes (Multus) wire a router container with
ready-made veths (``eth1``, ``eth2``, ...) in its own namespace, and
containerlab moves them in only after the container has started.  A port
with ``attach = "eth1"`` reaches its interface in one of two ways
(``attach_mode``, per port or ``[router]``):

``"packet"`` (the default): a packet socket bound to eth1 is the port's file
descriptor (forwarder/netns.py: :func:`~forwarder.netns.packet_open`).  It
is read and written as a TAP opened with IFF_VNET_HDR is, frames behind a
struct virtio_net_hdr (PACKET_VNET_HDR; read from a ring, written a burst
per sendmmsg(): forwarder/net/if_packet.pxi), so the
dataplane's TAP path serves it unchanged: super-frames and partial checksums
cross whole in both directions.  There is no TUNSETOFFLOAD: what the socket
hands the router is what eth1's peer sends (a veth's TSO, checksum and USO
are on unless the other side turned them off), and what the router hands
it, the kernel completes in software where eth1's features lack it
(validate_xmit_skb), so the port always runs with every offload.  Transmit
goes straight to the driver (PACKET_QDISC_BYPASS); the socket does not read
back what the namespace itself sends on eth1 (PACKET_IGNORE_OUTGOING), and
never its own frames.  Packet sockets take their copy of a frame before tc
ingress, so a tc ingress filter on eth1 that drops every frame keeps the
namespace's IP stack off the link: cls_bpf in direct-action mode with a
one-instruction classic BPF program (``ret #TC_ACT_SHOT``), because the
drop action (act_gact) is a module kernels are built without and an eBPF
program would need CAP_BPF.  A veth deleted and made again under the same
name is the same socket bound to the new index (the forwarding thread's
file table holds only the fds open when it started).  veth GRO stays as it
is (off by default: turning it on puts the veth in NAPI mode and measured
no gain for the router).

``"tap"``: the router creates a TAP (``tap-<port>``, in its own namespace)
and joins it to eth1 with tc, through pyroute2:

* an ingress qdisc on each, and on each a u32 filter that matches every frame
  (one key, value 0 under mask 0) with a mirred *egress redirect* to the other.
  A frame arriving on eth1 is handed to the TAP's transmit side, which is the
  router's read(); a frame the router writes to the TAP arrives on its ingress
  and leaves by eth1.  tc ingress runs before the IP stack, so neither reaches
  the namespace's kernel.  GSO super-frames cross unsegmented where both ends
  take them (veths do TSO; the TAP has the offloads TUNSETOFFLOAD accepted), and
  are segmented by the kernel where one does not.  u32 rather than matchall:
  cls_matchall is a separate module not every kernel is built with
  (CONFIG_NET_CLS_MATCHALL), cls_u32 is everywhere tc is.

Either way the namespace's kernel is kept off the link: eth1's IPv4 and IPv6
addresses are removed (and logged), and IPv6 address generation is turned
off on eth1 (and on the TAP; IFLA_INET6_ADDR_GEN_MODE none, over netlink:
/proc/sys is read-only in a container), so it never answers ARP or ND there
and sends no router solicitations or MLD reports of its own.  The packet
mode is the faster (benchmarks/README.md, "Container wiring"): a frame
crosses the veth and nothing else, where the TAP mode adds the TAP and a tc
redirect each way.

A port takes eth1's MAC and MTU unless the config gives them (``mac``, ``mtu``;
a configured MTU is set on eth1 too, or frames the router forwards at that size
would not fit it).

Interfaces that are not there yet are waited for: :class:`Attacher` listens to
the namespace's link events (RTM_NEWLINK / RTM_DELLINK on a bound netlink
socket) and also looks every ``RESCAN`` seconds, so that a missed event or a
rename cannot leave a port down.  While any is missing it logs every
``PROGRESS`` seconds what it waits for ("n of m" with containerlab's
CLAB_INTFS); the router is not ready until all are joined or
``attach_timeout`` passes, and then goes on with what it has and keeps
watching.  An interface that goes away marks its port down (its traffic is
dropped as ``interface_down``, its neighbours forgotten; logged once); when one
of that name appears again it is joined again, with no restart.  A packet
socket whose interface goes away or down reads ENETDOWN once (counted in the
port's ``rx_errors``, the fd stays polled); an interface taken down and up
again is heard again without the router doing anything (the kernel hooks the
socket in again at NETDEV_UP), one deleted and made again is bound anew.

The race that stays: a frame that arrives on eth1 between its creation and the
filter being added reaches the namespace's IP stack (which has no address
there once we removed them, and drops it).  Joining takes a few milliseconds;
in packet mode the drop filter goes on before the router sets eth1 up.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, nla, nlmsg
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWTFILTER, RTMGRP_LINK

from forwarder import netns

log = logging.getLogger("forwarder.attach")

PACKET, TAP = "packet", "tap"     # attach_mode: how a port reaches its interface
TC_INGRESS = 0xFFFF0000          # the ingress qdisc's handle, ffff:
TC_PRIO = 1
ETH_P_ALL = 0x0003
BPF_RET, BPF_K = 0x06, 0x00      # linux/bpf_common.h: return a constant
TC_ACT_SHOT = 2                  # linux/pkt_cls.h: drop
TCA_BPF_FLAG_ACT_DIRECT = 1      # the program's return value is the action
IN6_ADDR_GEN_MODE_NONE = 1       # linux/if_link.h
RESCAN = 2.0                     # seconds between full looks at the links
PROGRESS = 5.0                   # seconds between "waiting for ..." lines


@dataclass
class LinkSeen:
    """What the namespace has under an attach name."""
    index: int
    mac: str
    mtu: int


@dataclass
class Port:
    """One attached port and its state."""
    name: str                    # the router's port (CLI, stats, metrics)
    link: str                    # the interface it attaches to
    tap: str | None = None       # "tap" mode: the TAP the router created for it ...
    tap_index: int = 0
    fd: int = -1                 # "packet" mode: the packet socket the dataplane reads
    mode: str = PACKET
    joined: LinkSeen | None = None
    joins: int = 0
    losses: int = 0


def _ingress_qdisc(ipr, index: int) -> None:
    """An ingress qdisc of our own on ``index``: one found there (ours from
    before, or a runtime's) is replaced, so that only our filter runs."""
    try:
        ipr.tc("add", "ingress", index, TC_INGRESS)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise
        ipr.tc("del", "ingress", index, TC_INGRESS)
        ipr.tc("add", "ingress", index, TC_INGRESS)


def _redirect(ipr, from_index: int, to_index: int) -> None:
    """Every frame arriving on ``from_index`` leaves by ``to_index``."""
    _ingress_qdisc(ipr, from_index)
    ipr.tc("add-filter", "u32", from_index, parent=TC_INGRESS, prio=TC_PRIO,
           protocol=ETH_P_ALL, keys=["0x0/0x0+0"], target=0x10001,
           action=[{"kind": "mirred", "direction": "egress", "action": "redirect",
                    "ifindex": to_index}])


class _cbpf_filter(nlmsg):
    """RTM_NEWTFILTER for cls_bpf with a classic BPF program (TCA_BPF_OPS),
    which pyroute2's "bpf" kind does not encode (it takes an eBPF fd only).
    Its own class, not a tcmsg subclass: pyroute2 keeps the compiled
    attribute map on the class, and tcmsg's would be inherited."""
    prefix = "TCA_"
    fields = (("family", "B"), ("pad1", "B"), ("pad2", "H"), ("index", "i"),
              ("handle", "I"), ("parent", "I"), ("info", "I"))
    nla_map = (("TCA_UNSPEC", "none"), ("TCA_KIND", "asciiz"),
               ("TCA_OPTIONS", "cbpf_options"))

    class cbpf_options(nla):
        nla_map = (("TCA_BPF_UNSPEC", "none"), ("TCA_BPF_ACT", "none"),
                   ("TCA_BPF_POLICE", "none"), ("TCA_BPF_CLASSID", "uint32"),
                   ("TCA_BPF_OPS_LEN", "uint16"), ("TCA_BPF_OPS", "cdata"),
                   ("TCA_BPF_FD", "uint32"), ("TCA_BPF_NAME", "asciiz"),
                   ("TCA_BPF_FLAGS", "uint32"))


def _drop(ipr, index: int) -> None:
    """Every frame arriving on ``index`` is dropped at tc ingress: after the
    packet sockets took their copy, before the IP stack.

    cls_bpf in direct-action mode with a classic BPF program of one
    instruction, ``ret #TC_ACT_SHOT``: the drop action (act_gact) is a module
    of its own that kernels are built without (this one is), and an eBPF
    program would need CAP_BPF; classic BPF loads with CAP_NET_ADMIN."""
    _ingress_qdisc(ipr, index)
    msg = _cbpf_filter()
    msg["index"] = index
    msg["handle"] = 1
    msg["parent"] = TC_INGRESS
    msg["info"] = (TC_PRIO << 16) | socket.htons(ETH_P_ALL)
    ops = struct.pack("=HBBI", BPF_RET | BPF_K, 0, 0, TC_ACT_SHOT)   # struct sock_filter
    msg["attrs"] = [["TCA_KIND", "bpf"], ["TCA_OPTIONS", {"attrs": [
        ["TCA_BPF_OPS_LEN", 1], ["TCA_BPF_OPS", ops], ["TCA_BPF_NAME", "forwarder-drop"],
        ["TCA_BPF_FLAGS", TCA_BPF_FLAG_ACT_DIRECT]]}]]
    msg["header"]["type"] = RTM_NEWTFILTER
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    ipr.nlm_request_batch([msg])


def _no_ipv6_of_its_own(ipr, index: int, name: str) -> None:
    """No link-local address (so no DAD, router solicitations or MLD) on a link
    the kernel must stay off; disable_ipv6 too where /proc/sys is writable."""
    ipr.link("set", index=index, af_spec={"attrs": [["AF_INET6", {"attrs": [
        ["IFLA_INET6_ADDR_GEN_MODE", IN6_ADDR_GEN_MODE_NONE]]}]]})
    with contextlib.suppress(OSError):
        netns._write_proc(None, f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", 1)


def _remove_addresses(ipr, index: int) -> list[str]:
    """Every address of the link, IPv4 and IPv6; what was removed."""
    gone = []
    for a in ipr.get_addr(index=index):
        addr = f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
        with contextlib.suppress(NetlinkError):
            ipr.addr("del", index=index, address=a.get_attr("IFA_ADDRESS"),
                     prefixlen=a["prefixlen"])
            gone.append(addr)
    return gone


def prepare_tap(name: str) -> int:
    """The TAP of an attached port, in this namespace: no IPv6 of its own; its index."""
    with netns.iproute() as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        _no_ipv6_of_its_own(ipr, idx, name)
        return idx


def join(port: Port, mtu: int | None) -> LinkSeen | None:
    """Join ``port.link`` to the port: its packet socket bound to it, or its
    TAP redirected to and from it; None when the link is not there.

    ``mtu``: set it on the link (a configured MTU); None keeps the link's."""
    with netns.iproute() as ipr:
        found = ipr.link_lookup(ifname=port.link)
        if not found:
            return None
        idx = found[0]
        if mtu is not None:
            link = ipr.get_links(idx)[0]
            if link.get_attr("IFLA_MTU") != mtu:
                log.info("port %s: mtu of %s set to %d (configured)", port.name, port.link, mtu)
                ipr.link("set", index=idx, mtu=mtu)
        if port.mode == PACKET:
            _drop(ipr, idx)                     # the stack is kept out before the link is up
        gone = _remove_addresses(ipr, idx)      # first: disable_ipv6 would hide some
        _no_ipv6_of_its_own(ipr, idx, port.link)
        ipr.link("set", index=idx, state="up")
        if gone:
            log.info("port %s: removed %s from %s (the router answers ARP and ND there, "
                     "not the kernel)", port.name, ", ".join(gone), port.link)
        if port.mode == PACKET:
            netns.packet_bind(port.fd, idx)
        else:
            _redirect(ipr, idx, port.tap_index)
            _redirect(ipr, port.tap_index, idx)
        link = ipr.get_links(idx)[0]
        return LinkSeen(index=idx, mac=link.get_attr("IFLA_ADDRESS"), mtu=link.get_attr("IFLA_MTU"))


class Attacher:
    """Joins the attached ports as their interfaces appear, and again after
    they come back; see the module docstring."""

    def __init__(self, ports: list[Port], *, timeout: float,
                 on_join: Callable[[Port, LinkSeen], None],
                 on_loss: Callable[[Port], None],
                 mtus: dict[str, int | None] | None = None,
                 expected: int | None = None) -> None:
        self.ports = ports
        self.timeout = timeout
        self.on_join = on_join
        self.on_loss = on_loss
        self.mtus = mtus or {}
        self.expected = expected          # CLAB_INTFS: how many containerlab will hand us
        self.started = time.monotonic()
        self.timed_out = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._said = 0.0
        self.all_joined = False           # every port was joined once

    # --- state ------------------------------------------------------------------------

    @property
    def missing(self) -> list[Port]:
        return [p for p in self.ports if p.joined is None]

    @property
    def ready(self) -> bool:
        """All joined once, or the wait is over (the router goes on with what it
        has).  It stays ready when a port goes down later: restarting the
        router would not bring the interface back, so health checks that
        restart unhealthy containers must not be told otherwise."""
        return self.all_joined or self.timeout == 0 or \
            time.monotonic() - self.started >= self.timeout

    def waiting_text(self) -> str:
        have = len(self.ports) - len(self.missing)
        clab = f"; CLAB_INTFS={self.expected}" if self.expected else ""
        return (f"{', '.join(p.link for p in self.missing)} ({have} of {len(self.ports)} "
                f"attached{clab}, {time.monotonic() - self.started:.0f} s of {self.timeout:g})")

    # --- the work ------------------------------------------------------------------------

    def scan(self) -> None:
        """Join what appeared, mark down what went away (or was re-created)."""
        with self._lock:
            with netns.iproute() as ipr:
                present = {link.get_attr("IFLA_IFNAME"): link["index"]
                           for link in ipr.get_links()}
            for p in self.ports:
                idx = present.get(p.link)
                if p.joined is not None and idx != p.joined.index:
                    p.joined = None
                    p.losses += 1
                    log.warning("port %s: %s is gone; port down until it comes back",
                                p.name, p.link)
                    self.on_loss(p)
                if p.joined is None and idx is not None:
                    try:
                        seen = join(p, self.mtus.get(p.name))
                    except (NetlinkError, OSError) as e:
                        log.warning("port %s: cannot join %s yet: %s", p.name, p.link, e)
                        continue
                    if seen is None:
                        continue
                    p.joined = seen
                    p.joins += 1
                    log.info("port %s: attached to %s (ifindex %d, mac %s, mtu %d)%s",
                             p.name, p.link, seen.index, seen.mac, seen.mtu,
                             " again" if p.joins > 1 else "")
                    self.on_join(p, seen)
        self._progress()

    def _progress(self) -> None:
        """While the wait at start lasts: what is missing, every PROGRESS s."""
        if not self.missing:
            self.all_joined = True
        if self.all_joined or self.timed_out or self.timeout == 0:
            return
        now = time.monotonic()
        if self.timeout and now - self.started >= self.timeout:
            self.timed_out = True
            log.warning("attach_timeout (%g s) passed: forwarding without %s; still watching",
                        self.timeout, ", ".join(p.link for p in self.missing))
        elif now - self._said >= PROGRESS:
            self._said = now
            log.info("waiting for %s", self.waiting_text())

    def start(self) -> None:
        """Join what is there now, then watch from a thread of its own."""
        if self.expected and self.expected != len(self.ports):
            log.warning("CLAB_INTFS=%d, but %d ports attach (%s): containerlab and this "
                        "config disagree on the links", self.expected, len(self.ports),
                        ", ".join(p.link for p in self.ports))
        self.scan()
        self._thread = threading.Thread(target=self._run, name="attach", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching, and take our filters off the links (the TAPs go with
        their file descriptors): a link left behind passes frames to the
        namespace's kernel again, and a router started later joins it anew."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        with self._lock, netns.iproute() as ipr:
            for p in self.ports:
                if p.joined is not None:
                    with contextlib.suppress(NetlinkError):
                        ipr.tc("del", "ingress", p.joined.index, TC_INGRESS)

    def _run(self) -> None:
        events = netns.iproute()
        try:
            events.bind(groups=RTMGRP_LINK)
            last = time.monotonic()
            while not self._stop.is_set():
                ready, _, _ = select.select([events.fileno()], [], [], 0.5)
                changed = False
                if ready:
                    for msg in events.get():
                        if msg["event"] in ("RTM_NEWLINK", "RTM_DELLINK"):
                            changed = True
                if changed or time.monotonic() - last >= RESCAN:
                    last = time.monotonic()
                    try:
                        self.scan()
                    except Exception:  # noqa: BLE001 - keep watching; say why once per scan
                        log.exception("attach: scan failed")
        finally:
            events.close()


def expected_interfaces() -> int | None:
    """containerlab's CLAB_INTFS: the number of data interfaces it will hand us."""
    try:
        n = int(os.environ.get("CLAB_INTFS", ""))
    except ValueError:
        return None
    return n if n > 0 else None
