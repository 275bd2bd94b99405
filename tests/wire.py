"""Frames on the wire of a lab host (for tests): a packet socket on a host's
side of its TAP that sends raw frames and collects what passes, with the
kernel's receive timestamps.

    s = Sniffer(lab.host("h1").netns, "tap1")
    s.send(bytes(Ether(...) / IP(...) / UDP(...)))
    replies = s.collect(lambda p: ICMP in p, timeout=2)
    replies[0].time          # kernel timestamp (CLOCK_REALTIME, seconds)
"""
from __future__ import annotations

import json
import socket
import struct
import subprocess
import time
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

from scapy.layers.l2 import ARP, Ether

from forwarder import netns as nn
from tests.routerlab import router_mac

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
IFA_F_TENTATIVE = 0x40


class Sniffer:
    """An AF_PACKET socket on a host's side of its TAP: it sees the frames the
    host sends and those it receives.  Opened before the traffic it is to see."""

    def __init__(self, ns: str, ifname: str) -> None:
        with nn.enter_netns(ns):
            self.s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
            self.s.bind((ifname, 0))
        self.s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.s.settimeout(0.2)

    def send(self, frame: bytes) -> None:
        self.s.send(frame)

    def recv(self) -> Ether:
        """The next frame, parsed, with ``.time`` set to the kernel's receive
        timestamp: gaps between frames stay right even when this process
        reads them late.  Raises socket.timeout."""
        data, anc, _flags, _addr = self.s.recvmsg(65536, socket.CMSG_SPACE(16))
        pkt = Ether(data)
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                sec, nsec = struct.unpack("qq", value[:16])
                pkt.time = sec + nsec / 1e9
        return pkt

    def collect(self, match: Callable[[Ether], bool], timeout: float = 2.0,
                want: int = 1) -> list[Ether]:
        """Frames for which ``match`` is true, until ``want`` of them or ``timeout``."""
        got: list[Ether] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(got) < want:
            try:
                pkt = self.recv()
            except socket.timeout:
                continue
            if match(pkt):
                got.append(pkt)
        return got

    def close(self) -> None:
        self.s.close()

    def __enter__(self) -> "Sniffer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def udp_socket(ns: str) -> socket.socket:
    """A UDP socket in namespace ``ns``."""
    with nn.enter_netns(ns):
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


_MACS: dict[tuple[str, str], str] = {}


def host_mac(lab, name: str) -> str:
    """The MAC of host ``name``'s side of its TAP (asked once per namespace:
    each ask is a netlink round trip)."""
    h = lab.host(name)
    key = (h.netns, h.ifname)
    if key not in _MACS:
        _MACS[key] = nn.link_info(h.ifname, h.netns).mac
    return _MACS[key]


def to_router(lab, host: str, pkt: object, dst: str | None = None) -> bytes:
    """``pkt`` in an Ethernet frame from host ``host`` ("h1") to the router's
    MAC on its link (or to ``dst``)."""
    return bytes(Ether(dst=dst or router_mac(int(host[1:])), src=host_mac(lab, host)) / pkt)


@contextmanager
def sniffers(lab, *names: str) -> Iterator[list[Sniffer]]:
    """A Sniffer on each named host's side of its TAP, closed afterwards."""
    with ExitStack() as stack:
        yield [stack.enter_context(Sniffer(lab.host(n).netns, lab.host(n).ifname))
               for n in names]


def arp_frame(op: int, hwsrc: str, psrc: str, pdst: str, dst: str = "ff:ff:ff:ff:ff:ff",
              hwdst: str = "00:00:00:00:00:00") -> bytes:
    """An ARP packet (1 request, 2 reply) from ``hwsrc``/``psrc``, broadcast
    unless ``dst`` says otherwise."""
    return bytes(Ether(dst=dst, src=hwsrc, type=0x0806)
                 / ARP(op=op, hwsrc=hwsrc, psrc=psrc, hwdst=hwdst, pdst=pdst))


def iperf3(lab, src: str, dst_host: str, dst_ip: str, port: int, *flags: str,
           seconds: int = 2) -> dict:
    """iperf3 from host ``src`` to ``dst_ip`` (its server, for one test, in host
    ``dst_host``'s namespace): the client's JSON result, which must hold no error."""
    server = lab.topo.popen(lab.host(dst_host).netns, ["iperf3", "-s", "-1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        cp = lab.run(src, ["iperf3", *flags, "-c", dst_ip, "-p", str(port), "-t", str(seconds),
                           "-J"], timeout=60)
        doc = json.loads(cp.stdout)
        assert "error" not in doc, doc.get("error")
        return doc
    finally:
        server.wait(10)


def link_locals(ns: str, ifname: str) -> list[str]:
    """The fe80:: addresses of ``ifname`` in namespace ``ns``; those still
    under duplicate address detection (not usable yet) marked " tentative"."""
    with nn.iproute(ns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        addrs = ipr.get_addr(index=idx, family=socket.AF_INET6)
    return [a.get_attr("IFA_ADDRESS")
            + (" tentative" if (a.get_attr("IFA_FLAGS") or a["flags"]) & IFA_F_TENTATIVE else "")
            for a in addrs if a.get_attr("IFA_ADDRESS").startswith("fe80:")]


def link_local(ns: str, ifname: str) -> str | None:
    """The usable fe80:: address of ``ifname`` in ``ns``, or None (not yet)."""
    return next((a for a in link_locals(ns, ifname) if " " not in a), None)


def host_ipv6(lab, host: str, address: str, gateway: str | None = None) -> None:
    """IPv6 on a lab host's link (:func:`forwarder.netns.configure_host_ipv6`):
    ``address``/64, and a default route via ``gateway`` if given."""
    h = lab.host(host)
    nn.configure_host_ipv6(h.ifname, h.netns, [f"{address}/64"], gateway=gateway)
