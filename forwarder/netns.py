"""Network namespaces, TAP devices and links, through pyroute2.

A namespace is named by a *spec*: a name under /var/run/netns (``"h1"``) or an
absolute path (``"/proc/1234/ns/net"``, a container's namespace).  ``None``
means the namespace the calling thread is in, and so does a spec that names
that namespace (``"/proc/self/ns/net"``): :func:`enter_netns` and
:func:`iproute` do not enter it.  setns(2) needs CAP_SYS_ADMIN even into the
namespace a thread is already in, which a container with NET_ADMIN only lacks.

* :func:`tap_open` opens a TAP through /dev/net/tun inside a namespace: it
  enters the namespace on the calling thread only (setns(2)), creates the
  device with TUNSETIFF, and returns to the thread's own namespace.
* :func:`link_set`, :func:`link_move`, :func:`configure_host` and
  :func:`add_veth` configure links over netlink in the right namespace.
* :class:`Topology` builds throw-away namespaces for tests and benchmarks and
  removes everything it made on exit, on an exception or on KeyboardInterrupt.

A TAP lives as long as its file descriptor: closing the fd removes the device
from whatever namespace it is in, and destroying the namespace that holds the
device unregisters it (the fd then reads EBADFD).
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import signal
import socket
import struct
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, ip_interface
from typing import ClassVar, Iterable, Iterator, Sequence

from pyroute2 import IPRoute
from pyroute2 import netns as _pyr_netns

log = logging.getLogger(__name__)

NETNS_RUN_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_UP = 0x1
IFNAMSIZ = 16
TUNSETOFFLOAD = 0x400454D0      # _IOW('T', 208, unsigned int)
TUNSETVNETHDRSZ = 0x400454D8    # _IOW('T', 216, int)
TUNGETVNETHDRSZ = 0x800454D7    # _IOR('T', 215, int)
TUN_F_CSUM = 0x01               # the kernel side may hand us partial checksums
TUN_F_TSO4 = 0x02               # ... and TCP/IPv4 super-frames
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20               # Linux 6.2; Debian 12's headers lack USO4/USO6
TUN_F_USO6 = 0x40
TUN_F_NAMES = {TUN_F_CSUM: "csum", TUN_F_TSO4: "tso4", TUN_F_TSO6: "tso6",
               TUN_F_TSO_ECN: "tso_ecn", TUN_F_USO4: "uso4", TUN_F_USO6: "uso6"}
TUN_F_ALL = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_USO4 | TUN_F_USO6
VNET_HDR_LEN = 10               # sizeof(struct virtio_net_hdr)

# <linux/if_packet.h>, <linux/if_ether.h>, <asm-generic/socket.h>; Python's socket
# module has none of the packet-socket options
SOL_PACKET = 263
PACKET_VNET_HDR = 15            # a struct virtio_net_hdr in front of every frame
PACKET_QDISC_BYPASS = 20        # Linux 3.14: transmit straight to the driver
PACKET_IGNORE_OUTGOING = 23     # Linux 4.20: frames the host sends are not read back
ETH_P_ALL = 0x0003
SO_SNDBUFFORCE = 32             # as SO_SNDBUF / SO_RCVBUF, past the sysctl maxima
SO_RCVBUFFORCE = 33             # (CAP_NET_ADMIN)
PACKET_RX_RING = 5
PACKET_COPY_THRESH = 7          # a frame too long for a ring slot is queued whole besides
PACKET_VERSION = 10
TPACKET_V2 = 1
PACKET_RING_FRAME = 2048        # a ring slot: header, virtio-net header, an MTU-1500 frame
PACKET_RING_BLOCK = 1 << 16     # 32 slots a block ...
PACKET_RING_FRAMES = 1024       # ... 1024 in all (2 MiB), as many as a TAP's queue holds
PACKET_RCVBUF = 8 << 20         # bytes of long frames queued for the router (see packet_open)
PACKET_SNDBUF = 8 << 20
PROT_READ, PROT_WRITE, MAP_SHARED = 1, 2, 1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)


class NetnsError(OSError):
    """A namespace or link operation failed."""


# --- namespaces --------------------------------------------------------------------

def netns_path(spec: str) -> str:
    """The file of a namespace: names live under /var/run/netns, paths stay."""
    if "/" in spec:
        return spec
    return os.path.join(NETNS_RUN_DIR, spec)


def netns_exists(spec: str) -> bool:
    return os.path.exists(netns_path(spec))


def is_current(spec: str) -> bool:
    """Whether ``spec`` is the namespace the calling thread is in already."""
    try:
        target = os.stat(netns_path(spec))
        own = os.stat("/proc/thread-self/ns/net")
    except OSError:
        return False
    return (target.st_dev, target.st_ino) == (own.st_dev, own.st_ino)


def list_netns() -> list[str]:
    return sorted(_pyr_netns.listnetns())


def create_netns(name: str, *, loopback_up: bool = True) -> str:
    """Create a named namespace (FileExistsError if it exists); return its path."""
    if "/" in name or not name:
        raise ValueError(f"{name!r}: a namespace name has no '/'")
    if netns_exists(name):
        raise FileExistsError(errno.EEXIST, "network namespace exists", name)
    _pyr_netns.create(name)
    log.debug("netns %s created", name)
    if loopback_up:
        link_set("lo", name, up=True)
    return netns_path(name)


def remove_netns(name: str, *, missing_ok: bool = True) -> None:
    """Unmount and unlink a named namespace; it dies with its last user."""
    if not netns_exists(name):
        if missing_ok:
            return
        raise FileNotFoundError(errno.ENOENT, "no such network namespace", name)
    _pyr_netns.remove(name)
    log.debug("netns %s removed", name)


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def enter_netns(spec: str | None) -> Iterator[None]:
    """Run the body with the calling *thread* in namespace ``spec``, then return.

    setns(2) changes the namespace of the calling thread only; sockets and
    devices created in the body belong to ``spec`` and stay there.
    """
    if spec is None or is_current(spec):
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(netns_path(spec), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            try:
                _setns(own)
            except OSError as e:  # the thread would keep working in the wrong namespace
                log.critical("cannot return to the original network namespace: %s", e)
                raise RuntimeError("cannot restore the thread's network namespace") from e
    finally:
        os.close(own)


def iproute(spec: str | None = None) -> IPRoute:
    """An IPRoute whose netlink socket is in namespace ``spec`` (never creates it)."""
    if spec is None:
        return IPRoute()
    if not netns_exists(spec):
        raise FileNotFoundError(errno.ENOENT, "no such network namespace", spec)
    if is_current(spec):
        return IPRoute()
    return IPRoute(netns=netns_path(spec), flags=0)


# --- links -------------------------------------------------------------------------

def _index(ipr: IPRoute, ifname: str, spec: str | None) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise NetnsError(errno.ENODEV, f"no link {ifname!r} in netns {spec or '(current)'}")
    return found[0]


def tap_open(name: str, netns: str | None = None, *, extra_flags: int = 0) -> int:
    """Create (or attach to) TAP ``name`` in namespace ``netns``; return its fd.

    The fd is non-blocking and close-on-exec, IFF_TAP | IFF_NO_PI: one read()
    is one Ethernet frame.  ``extra_flags`` may add IFF_VNET_HDR or
    IFF_MULTI_QUEUE.
    """
    encoded = name.encode()
    if not 0 < len(encoded) < IFNAMSIZ:
        raise ValueError(f"{name!r}: interface names have 1..{IFNAMSIZ - 1} bytes")
    ifr = struct.pack("16sH22x", encoded, IFF_TAP | IFF_NO_PI | extra_flags)
    with enter_netns(netns):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError:
            os.close(fd)
            raise
    log.debug("tap %s opened in netns %s (fd %d)", name, netns or "(current)", fd)
    return fd


@dataclass
class PacketSocket:
    """An open packet socket of :func:`packet_open` and its mapped receive ring."""
    fd: int
    ring: int                   # the ring's address in this process
    frames: int                 # slots ...
    frame_size: int             # ... of this many bytes

    def close(self) -> None:
        """Unmap the ring, close the socket (once nothing reads the ring any more)."""
        if self.ring:
            _libc.munmap(ctypes.c_void_p(self.ring), ctypes.c_size_t(self.frames * self.frame_size))
            self.ring = 0
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def packet_open() -> PacketSocket:
    """A packet socket for an attached port (forwarder/attach.py), bound to no
    interface yet (protocol 0: it receives nothing until :func:`packet_bind`),
    non-blocking and close-on-exec, with its receive ring mapped.

    Written as a TAP opened with IFF_VNET_HDR is (a burst per sendmmsg() from
    the forwarding loop) behind a struct virtio_net_hdr (PACKET_VNET_HDR:
    super-frames and partial checksums in both directions); frames go straight to the driver
    (PACKET_QDISC_BYPASS: a veth has no qdisc worth the detour), and what the
    host itself sends on the interface is not read back
    (PACKET_IGNORE_OUTGOING; its own writes never are).  Read from a
    TPACKET_V2 ring of PACKET_RING_FRAMES slots, the virtio-net header in
    each (forwarder/net/if_packet.pxi): no system call per frame.  A frame
    too long for a slot (a super-frame) is queued whole on the socket as
    well (PACKET_COPY_THRESH) and read from there with readv().  The socket
    buffers are raised to PACKET_RCVBUF / PACKET_SNDBUF: the defaults
    (rmem_default, about 200 KB) hold three 64 KB super-frames.
    """
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                          | socket.SOCK_CLOEXEC, 0)
    except PermissionError as e:
        raise PermissionError(e.errno, "an attached port on a packet socket needs "
                              "CAP_NET_RAW (Docker and containerd give it by default; where "
                              "it is dropped, attach_mode = \"tap\" needs only "
                              "CAP_NET_ADMIN)") from None
    try:
        s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, PACKET_RCVBUF)
        s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, PACKET_SNDBUF)
        s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        s.setsockopt(SOL_PACKET, PACKET_COPY_THRESH, 1)
        # struct tpacket_req: block size, block count, frame size, frame count
        blocks = PACKET_RING_FRAMES * PACKET_RING_FRAME // PACKET_RING_BLOCK
        s.setsockopt(SOL_PACKET, PACKET_RX_RING, struct.pack(
            "IIII", PACKET_RING_BLOCK, blocks, PACKET_RING_FRAME, PACKET_RING_FRAMES))
        size = PACKET_RING_FRAMES * PACKET_RING_FRAME
        ring = _libc.mmap(None, ctypes.c_size_t(size), PROT_READ | PROT_WRITE, MAP_SHARED,
                          s.fileno(), ctypes.c_long(0))
        if ring in (None, ctypes.c_void_p(-1).value):
            err = ctypes.get_errno()
            raise OSError(err, f"mmap of the packet ring: {os.strerror(err)}")
    except OSError:
        s.close()
        raise
    return PacketSocket(fd=s.detach(), ring=ring, frames=PACKET_RING_FRAMES,
                        frame_size=PACKET_RING_FRAME)


def packet_bind(fd: int, ifindex: int) -> None:
    """Bind a packet socket of :func:`packet_open` to interface ``ifindex``
    (every protocol).  Binding again moves it: an interface deleted and made
    anew under the same name has another index, the fd stays the same (the
    forwarding thread's file table holds only the fds open when it started)."""
    # struct sockaddr_ll: family, protocol (network order), ifindex, hatype,
    # pkttype, halen, addr[8]
    addr = struct.pack("=H2siHBB8s", socket.AF_PACKET, struct.pack("!H", ETH_P_ALL),
                       ifindex, 0, 0, 0, b"")
    if _libc.bind(fd, addr, len(addr)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind(AF_PACKET, ifindex {ifindex}): {os.strerror(err)}")


def tun_flag_names(flags: int) -> list[str]:
    """TUN_F_* bits as names, in bit order."""
    return [name for bit, name in TUN_F_NAMES.items() if flags & bit]


def tap_set_offload(fd: int, wanted: int = TUN_F_ALL) -> int:
    """TUNSETOFFLOAD on a TAP opened with IFF_VNET_HDR: enable the offloads of
    ``wanted`` that the kernel accepts, and return them.

    The kernel refuses the whole request (EINVAL) when one bit is unknown to
    it (USO4/USO6 before Linux 6.2), when TSO or USO comes without CSUM, or
    when USO4 comes without USO6; so ask for less until it accepts: without
    USO, without TSO_ECN, checksum only, nothing.  The header size is set to
    that of struct virtio_net_hdr (the default, set anyway).
    """
    fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
    tries = [wanted, wanted & ~(TUN_F_USO4 | TUN_F_USO6),
             wanted & ~(TUN_F_USO4 | TUN_F_USO6 | TUN_F_TSO_ECN), wanted & TUN_F_CSUM, 0]
    if not wanted & TUN_F_CSUM:
        tries = [0]                 # nothing else is accepted without CSUM
    last: OSError | None = None
    for flags in dict.fromkeys(tries):
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
            return flags
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            last = e
    raise last if last else OSError(errno.EINVAL, "TUNSETOFFLOAD")


def _set_mtu_mac(ipr: IPRoute, idx: int, mtu: int | None, mac: str | None) -> None:
    attrs: dict[str, object] = {}
    if mtu is not None:
        attrs["mtu"] = mtu
    if mac is not None:
        attrs["address"] = mac
    if attrs:
        ipr.link("set", index=idx, **attrs)


def link_set(ifname: str, netns: str | None = None, *, up: bool | None = None,
             mtu: int | None = None, mac: str | None = None) -> None:
    """Set MTU / MAC / state of a link; None leaves that attribute alone."""
    with iproute(netns) as ipr:
        idx = _index(ipr, ifname, netns)
        _set_mtu_mac(ipr, idx, mtu, mac)
        if up is not None:
            ipr.link("set", index=idx, state="up" if up else "down")


@dataclass(frozen=True)
class LinkInfo:
    index: int
    name: str
    mac: str
    mtu: int
    up: bool
    addresses: tuple[IPv4Interface, ...]


def link_info(ifname: str, netns: str | None = None) -> LinkInfo | None:
    """What a link looks like in ``netns``, or None when it is not there."""
    with iproute(netns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return None
        link = ipr.get_links(found[0])[0]
        addrs = tuple(
            IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
            for a in ipr.get_addr(index=found[0], family=2))
        return LinkInfo(index=found[0], name=ifname, mac=link.get_attr("IFLA_ADDRESS"),
                        mtu=link.get_attr("IFLA_MTU"), up=bool(link["flags"] & IFF_UP),
                        addresses=addrs)


def wait_link(ifname: str, netns: str | None, timeout: float = 5.0) -> LinkInfo:
    """Poll until ``ifname`` shows up in ``netns`` (e.g. after a router moved it there)."""
    deadline = time.monotonic() + timeout
    while True:
        info = link_info(ifname, netns)
        if info is not None:
            return info
        if time.monotonic() > deadline:
            raise TimeoutError(f"link {ifname!r} did not appear in netns {netns!r}")
        time.sleep(0.05)


def link_move(ifname: str, dst: str, src: str | None = None, *,
              rename: str | None = None) -> None:
    """Move link ``ifname`` from namespace ``src`` into ``dst`` (a name or a path),
    named ``rename`` there if given (one request, as container runtimes do it).

    An open TAP fd keeps working after its device moved.
    """
    with iproute(src) as ipr:
        idx = _index(ipr, ifname, src)
        fd = os.open(netns_path(dst), os.O_RDONLY | os.O_CLOEXEC)
        try:
            ipr.link("set", index=idx, net_ns_fd=fd, **({"ifname": rename} if rename else {}))
        finally:
            os.close(fd)
    log.debug("link %s moved from %s to %s%s", ifname, src or "(current)", dst,
              f" as {rename}" if rename else "")


def configure_host(ifname: str, netns: str,
                   addresses: Iterable[str | IPv4Interface | IPv6Interface], *,
                   gateway: str | IPv4Address | None = None, mtu: int | None = None,
                   mac: str | None = None, routes: Iterable[tuple[str, str]] = (),
                   ipv6: bool = False, gateway6: str | IPv6Address | None = None) -> None:
    """Configure a host's end of a link inside ``netns``.

    Loopback and the link go up, the addresses are added, and ``gateway``
    becomes the default route; ``routes`` adds (prefix, gateway) pairs.
    IPv6 addresses among ``addresses`` (and ``gateway6``, the IPv6 default
    route) go on as :func:`configure_host_ipv6` puts them; without any, and
    with ``ipv6=False`` (the default), IPv6 is disabled on the link, so the host
    sends no router solicitations or MLD reports through it.
    """
    addrs = [ip_interface(a) for a in addresses]
    v6 = [a for a in addrs if a.version == 6]
    if not (ipv6 or v6 or gateway6):
        _write_proc(netns, f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", 1)
    with iproute(netns) as ipr:
        lo = ipr.link_lookup(ifname="lo")
        if lo:
            ipr.link("set", index=lo[0], state="up")
        idx = _index(ipr, ifname, netns)
        _set_mtu_mac(ipr, idx, mtu, mac)
        for a in addrs:
            if a.version == 4:
                ipr.addr("add", index=idx, address=str(a.ip), prefixlen=a.network.prefixlen)
        ipr.link("set", index=idx, state="up")
        if gateway is not None:
            ipr.route("add", dst="0.0.0.0/0", gateway=str(gateway), oif=idx)
        for prefix, via in routes:
            ipr.route("add", dst=prefix, gateway=via, oif=idx)
    if v6 or gateway6:
        configure_host_ipv6(ifname, netns, v6, gateway=gateway6)
    log.debug("host side %s in %s configured (gateway %s)", ifname, netns, gateway)


IFA_F_NODAD = 0x02          # linux/if_addr.h: no duplicate address detection


def configure_host_ipv6(ifname: str, netns: str, addresses: Iterable[str | IPv6Interface], *,
                        gateway: str | IPv6Address | None = None) -> None:
    """IPv6 on a host's end of a link (after :func:`configure_host`): no
    duplicate address detection and no router solicitations (the link
    carries only what the lab or a test makes), the addresses, and a
    default route via ``gateway`` (a global or link-local router address)."""
    for key, value in (("accept_dad", 0), ("router_solicitations", 0), ("disable_ipv6", 0)):
        _write_proc(netns, f"/proc/sys/net/ipv6/conf/{ifname}/{key}", value)
    with iproute(netns) as ipr:
        idx = _index(ipr, ifname, netns)
        for addr in addresses:
            a = IPv6Interface(addr)
            ipr.addr("add", index=idx, address=str(a.ip), prefixlen=a.network.prefixlen,
                     flags=IFA_F_NODAD)
        if gateway is not None:
            ipr.route("add", dst="::/0", gateway=str(gateway), oif=idx, family=socket.AF_INET6)
    log.debug("host side %s in %s: IPv6 configured (gateway %s)", ifname, netns, gateway)


def add_veth(name_a: str, netns_a: str, name_b: str, netns_b: str) -> None:
    """A veth pair with end ``name_a`` in ``netns_a`` and ``name_b`` in ``netns_b``.

    Both namespaces must exist; the pair dies with either of them.
    """
    with iproute(netns_a) as ipr:
        fd = os.open(netns_path(netns_b), os.O_RDONLY | os.O_CLOEXEC)
        try:
            ipr.link("add", ifname=name_a, kind="veth",
                     peer={"ifname": name_b, "net_ns_fd": fd})
        finally:
            os.close(fd)
    log.debug("veth %s@%s <-> %s@%s", name_a, netns_a, name_b, netns_b)


def write_sysctl(netns: str | None, name: str, value: str | int) -> None:
    """Write a Linux sysctl (``net.ipv4.ip_forward``) as seen from inside ``netns``."""
    _write_proc(netns, "/proc/sys/" + name.replace(".", "/"), value)


def _write_proc(netns: str | None, path: str, value: str | int) -> None:
    with enter_netns(netns):
        with open(path, "w", encoding="ascii") as f:
            f.write(f"{value}\n")


# --- running tools inside a namespace -------------------------------------------------

def ns_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """argv that runs ``argv`` inside ``netns`` (ip netns exec, or nsenter for paths)."""
    if "/" in netns:
        return ["nsenter", f"--net={netns}", "--", *argv]
    return ["ip", "netns", "exec", netns, *argv]


def run_in_netns(netns: str, argv: Sequence[str], *, timeout: float = 30.0,
                 check: bool = False, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a tool (ping, iperf3, ...) inside ``netns`` and capture its output."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run(ns_argv(netns, argv), timeout=timeout, check=check,
                          **kwargs)  # type: ignore[call-overload]


def popen_in_netns(netns: str, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """Start a tool inside ``netns`` (a server, a traffic generator)."""
    return subprocess.Popen(ns_argv(netns, argv), **kwargs)  # type: ignore[call-overload]


# --- topologies ----------------------------------------------------------------------

@dataclass
class Tap:
    name: str
    fd: int
    router_ns: str | None
    host_ns: str | None


@dataclass
class Topology:
    """Throw-away namespaces, TAPs, veths and processes, all undone by :meth:`close`.

    Namespace names get a per-instance prefix so that parallel runs never
    collide: ``topo.netns("h1")`` returns e.g. ``"fw3f9a1c-h1"``.

        with Topology() as topo:
            r = topo.netns("r")
            h1 = topo.netns("h1")
            tap = topo.tap("tap1", r, host_ns=h1, host_addresses=["10.1.0.2/24"],
                           gateway="10.1.0.1")
    """
    prefix: str = field(default_factory=lambda: f"fw{uuid.uuid4().hex[:6]}-")
    namespaces: list[str] = field(default_factory=list)
    taps: list[Tap] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)
    _closed: bool = False
    # Every prefix handed out in this process: what is still named so after
    # everything was closed was left behind (the test suite checks it).
    issued: ClassVar[list[str]] = []

    def __post_init__(self) -> None:
        Topology.issued.append(self.prefix)
        atexit.register(self.close)

    def __enter__(self) -> "Topology":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def netns(self, name: str) -> str:
        """Create namespace ``<prefix><name>`` with loopback up; return its name."""
        full = self.prefix + name
        create_netns(full, loopback_up=False)
        self.namespaces.append(full)
        link_set("lo", full, up=True)
        return full

    def anonymous_netns(self) -> str:
        """A namespace with no name, held by a sleeping process (like a container's).

        Returns its path ``/proc/PID/ns/net``; the process is killed on close.
        """
        proc = subprocess.Popen(["unshare", "--net", "sleep", "infinity"],
                                stdin=subprocess.DEVNULL)
        self.processes.append(proc)
        own = os.stat("/proc/self/ns/net").st_ino
        path = f"/proc/{proc.pid}/ns/net"
        deadline = time.monotonic() + 5
        while True:  # wait until unshare(2) happened
            try:
                if os.stat(path).st_ino != own:
                    break
            except FileNotFoundError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise NetnsError(errno.ESRCH, "unshare --net did not start")
            time.sleep(0.01)
        link_set("lo", path, up=True)
        return path

    def tap(self, name: str, router_ns: str, *, host_ns: str | None = None,
            host_addresses: Iterable[str] = (), gateway: str | None = None,
            mtu: int | None = None, host_mac: str | None = None,
            ipv6: bool = False) -> Tap:
        """Open TAP ``name`` in ``router_ns`` (the fd is the router's end), bring it up,
        then optionally move the kernel side into ``host_ns`` and configure it there."""
        fd = tap_open(name, router_ns)
        tap = Tap(name=name, fd=fd, router_ns=router_ns, host_ns=host_ns or router_ns)
        self.taps.append(tap)
        if host_ns is None:  # the kernel side stays with the router
            host_ns = router_ns
        else:
            link_move(name, host_ns, src=router_ns)
        configure_host(name, host_ns, list(host_addresses), gateway=gateway,
                       mtu=mtu, mac=host_mac, ipv6=ipv6)
        return tap

    def veth(self, name_a: str, netns_a: str, name_b: str, netns_b: str, *,
             addresses_a: Iterable[str] = (), addresses_b: Iterable[str] = (),
             mtu: int | None = None, ipv6: bool = False) -> None:
        """A veth pair between two of our namespaces, configured and up."""
        add_veth(name_a, netns_a, name_b, netns_b)
        configure_host(name_a, netns_a, list(addresses_a), mtu=mtu, ipv6=ipv6)
        configure_host(name_b, netns_b, list(addresses_b), mtu=mtu, ipv6=ipv6)

    def popen(self, netns: str, argv: Sequence[str], **kwargs: object) -> subprocess.Popen:
        """Start a process inside ``netns``; it is terminated on close."""
        proc = popen_in_netns(netns, argv, **kwargs)
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        """Undo everything: processes, TAP fds, then namespaces.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        # a second Ctrl-C must not leave namespaces behind
        old = None
        with contextlib.suppress(ValueError):  # not the main thread
            old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for proc in reversed(self.processes):
                _stop(proc)
            for tap in reversed(self.taps):
                with contextlib.suppress(OSError):
                    os.close(tap.fd)
            for name in reversed(self.namespaces):
                try:
                    remove_netns(name)
                except OSError as e:
                    log.error("cannot remove netns %s: %s", name, e)
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=3)
