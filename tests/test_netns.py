"""Namespaces, TAPs moved into hosts, veths, and their cleanup (real kernel, root only).

Traffic only ever flows between namespaces these tests create.
"""
from __future__ import annotations

import errno
import os
import select
import socket
import struct
import subprocess
import threading
import time
from ipaddress import IPv4Interface

import pytest

from forwarder import netns as nn
from forwarder.config import Interface
from tests.topology import RouterLab, lab, requires_netns, topology  # noqa: F401

pytestmark = requires_netns

ETH_P_ARP, ETH_P_IP = 0x0806, 0x0800
ROUTER_MAC = bytes.fromhex("020000000101")


# --- a tiny Python "router" end: enough ARP and ICMP to answer a ping --------------------

def read_frame(fd: int, ethertype: int, timeout: float = 3.0) -> bytes:
    """Next frame of ``ethertype`` read from the TAP (others are skipped)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        frame = os.read(fd, 65536)
        if struct.unpack_from("!H", frame, 12)[0] == ethertype:
            return frame
    raise TimeoutError(f"no frame of type {ethertype:#06x} on the TAP")


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def arp_reply(request: bytes, mac: bytes) -> bytes:
    sha, spa, tpa = request[22:28], request[28:32], request[38:42]
    return (request[6:12] + mac + struct.pack("!H", ETH_P_ARP)
            + struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 2) + mac + tpa + sha + spa)


def echo_reply(request: bytes, mac: bytes) -> bytes:
    ihl = (request[14] & 0x0F) * 4
    ip = bytearray(request[14:14 + ihl])
    icmp = bytearray(request[14 + ihl:])
    ip[12:16], ip[16:20] = request[30:34], request[26:30]
    ip[10:12] = b"\0\0"
    ip[10:12] = struct.pack("!H", checksum(bytes(ip)))
    icmp[0] = 0
    icmp[2:4] = b"\0\0"
    icmp[2:4] = struct.pack("!H", checksum(bytes(icmp)))
    return request[6:12] + mac + struct.pack("!H", ETH_P_IP) + bytes(ip) + bytes(icmp)


# --- fixtures -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def taps(lab: RouterLab) -> dict[str, nn.Tap]:  # noqa: F811
    """The three TAPs opened in the router namespace, kernel sides moved into h1..h3."""
    return lab.open_taps()


# --- namespaces -----------------------------------------------------------------------------

def test_topology_creates_and_removes_namespaces() -> None:
    with nn.Topology() as topo:
        a = topo.netns("a")
        assert a.startswith(topo.prefix) and a in nn.list_netns()
        assert nn.netns_exists(a)
        assert nn.link_info("lo", a).up  # type: ignore[union-attr]
        with pytest.raises(FileExistsError):
            nn.create_netns(a)
    assert a not in nn.list_netns()
    assert not nn.netns_exists(a)


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_topology_cleans_up_on_failure(exc: type[BaseException]) -> None:
    made: list[str] = []
    with pytest.raises(exc):
        with nn.Topology() as topo:
            made.append(topo.netns("x"))
            made.append(topo.netns("y"))
            tap = topo.tap("fwtx0", made[0], host_ns=made[1], host_addresses=["10.77.0.2/24"])
            proc = topo.popen(made[1], ["sleep", "60"])
            raise exc("boom")
    assert not set(made) & set(nn.list_netns())
    assert proc.poll() is not None
    with pytest.raises(OSError) as e:
        os.fstat(tap.fd)
    assert e.value.errno == errno.EBADF


def test_close_is_idempotent_and_tolerates_vanished_namespaces() -> None:
    topo = nn.Topology()
    a = topo.netns("gone")
    nn.remove_netns(a)
    topo.close()
    topo.close()
    assert a not in nn.list_netns()


def test_iproute_never_creates_a_namespace() -> None:
    with pytest.raises(FileNotFoundError):
        nn.iproute("fw-does-not-exist")
    assert "fw-does-not-exist" not in nn.list_netns()


def test_enter_netns_only_moves_the_thread_and_restores_it() -> None:
    own = os.stat("/proc/thread-self/ns/net").st_ino
    with nn.Topology() as topo:
        a = topo.netns("t")
        target = os.stat(nn.netns_path(a)).st_ino
        seen: dict[str, int] = {}
        go = threading.Event()

        def other_thread() -> None:  # started before: stays where it is
            go.wait(10)
            seen["other"] = os.stat("/proc/thread-self/ns/net").st_ino

        def child_thread() -> None:  # started inside: inherits the namespace
            seen["child"] = os.stat("/proc/thread-self/ns/net").st_ino

        t = threading.Thread(target=other_thread)
        t.start()
        with nn.enter_netns(a):
            seen["inside"] = os.stat("/proc/thread-self/ns/net").st_ino
            go.set()
            t.join()
            child = threading.Thread(target=child_thread)
            child.start()
            child.join()
        assert seen == {"inside": target, "other": own, "child": target}
        assert os.stat("/proc/thread-self/ns/net").st_ino == own
        with pytest.raises(ZeroDivisionError):
            with nn.enter_netns(a):
                1 / 0
        assert os.stat("/proc/thread-self/ns/net").st_ino == own


# --- TAPs ---------------------------------------------------------------------------------

def test_tap_kernel_side_is_in_the_host_configured(lab: RouterLab,  # noqa: F811
                                                   taps: dict[str, nn.Tap]) -> None:
    for host in lab.hosts:
        info = nn.link_info(host.ifname, host.netns)
        assert info is not None, f"{host.ifname} not in {host.netns}"
        assert info.up and info.mtu == 1500
        assert info.addresses == (host.address,)
        assert nn.link_info(host.ifname, lab.router_ns) is None   # moved out of the router
        root = nn.link_info(host.ifname)                         # never in the root netns
        assert root is None or root.mac != info.mac
        routes = nn.run_in_netns(host.netns, ["ip", "-4", "route", "show", "default"]).stdout
        assert f"default via {host.router.ip} dev {host.ifname}" in routes
        disabled = nn.run_in_netns(
            host.netns, ["cat", f"/proc/sys/net/ipv6/conf/{host.ifname}/disable_ipv6"]).stdout
        assert disabled.strip() == "1"


def test_tap_fd_reads_the_hosts_arp_request(lab: RouterLab,  # noqa: F811
                                            taps: dict[str, nn.Tap]) -> None:
    host = lab.host("h1")
    ping = lab.topo.popen(host.netns, ["ping", "-n", "-c1", "-W1", str(host.router.ip)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        frame = read_frame(taps["h1"].fd, ETH_P_ARP)
    finally:
        ping.wait(timeout=10)
    host_mac = nn.link_info(host.ifname, host.netns).mac  # type: ignore[union-attr]
    assert frame[0:6] == b"\xff" * 6
    assert frame[6:12].hex(":") == host_mac
    op = struct.unpack_from("!H", frame, 20)[0]
    assert op == 1                                                   # request
    assert socket.inet_ntoa(frame[28:32]) == str(host.address.ip)    # who has
    assert socket.inet_ntoa(frame[38:42]) == str(host.router.ip)     # the router?


def test_tap_fd_writes_reach_the_host(lab: RouterLab,  # noqa: F811
                                      taps: dict[str, nn.Tap]) -> None:
    """Answer the host's ARP and echo request from Python: ping succeeds."""
    host, fd = lab.host("h2"), taps["h2"].fd
    ping = lab.topo.popen(host.netns, ["ping", "-n", "-c1", "-W3", str(host.router.ip)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        os.write(fd, arp_reply(read_frame(fd, ETH_P_ARP), ROUTER_MAC))
        while True:
            frame = read_frame(fd, ETH_P_IP)
            if frame[23] == 1 and frame[34] == 8:        # ICMP echo request
                break
        os.write(fd, echo_reply(frame, ROUTER_MAC))
        out, _ = ping.communicate(timeout=10)
    finally:
        if ping.poll() is None:
            ping.kill()
    assert ping.returncode == 0, out
    neigh = nn.run_in_netns(host.netns, ["ip", "neigh", "show", str(host.router.ip)]).stdout
    assert ROUTER_MAC.hex(":") in neigh


def test_tap_in_an_anonymous_namespace_by_path() -> None:
    """A container-like namespace known only as /proc/PID/ns/net."""
    with nn.Topology() as topo:
        router = topo.netns("r")
        path = topo.anonymous_netns()
        assert path.startswith("/proc/") and path.endswith("/ns/net")
        tap = topo.tap("fwc0", router, host_ns=path, host_addresses=["10.66.0.2/24"],
                       gateway="10.66.0.1", mtu=1400)
        info = nn.link_info("fwc0", path)
        assert info is not None and info.up and info.mtu == 1400
        assert info.addresses == (IPv4Interface("10.66.0.2/24"),)
        ping = topo.popen(path, ["ping", "-n", "-c1", "-W1", "10.66.0.1"],
                          stdout=subprocess.DEVNULL)
        assert read_frame(tap.fd, ETH_P_ARP)[38:42] == socket.inet_aton("10.66.0.1")
        ping.wait(timeout=10)
        # the config's notion of a path-named namespace is the same file
        itf = Interface(name="fwc0", addresses=(), netns=path)
        assert itf.netns_path == nn.netns_path(path) == path


def test_tap_dies_with_its_host_namespace() -> None:
    with nn.Topology() as topo:
        router, host = topo.netns("r"), topo.netns("h")
        tap = topo.tap("fwd0", router, host_ns=host, host_addresses=["10.55.0.2/24"])
        nn.remove_netns(host)
        deadline = time.monotonic() + 5
        while True:
            try:
                os.read(tap.fd, 2048)
            except BlockingIOError:
                pass
            except OSError as e:
                assert e.errno == errno.EBADFD
                break
            assert time.monotonic() < deadline, "TAP still alive after its netns died"
            time.sleep(0.05)
        assert nn.link_info("fwd0", router) is None


def test_tap_stays_in_router_namespace_without_host() -> None:
    with nn.Topology() as topo:
        router = topo.netns("r")
        tap = topo.tap("fwl0", router, host_addresses=["10.44.0.2/24"], mtu=9000)
        info = nn.link_info("fwl0", router)
        assert info is not None and info.mtu == 9000 and info.up
        assert tap.host_ns == router
        nn.link_set("fwl0", router, mtu=1500, mac="02:00:00:00:44:02", up=False)
        info = nn.link_info("fwl0", router)
        assert info is not None and not info.up
        assert (info.mtu, info.mac) == (1500, "02:00:00:00:44:02")
        os.close(tap.fd)          # closing the fd removes the device
        topo.taps.remove(tap)
        assert nn.link_info("fwl0", router) is None


def test_tap_offloads_are_probed_down_to_what_the_kernel_accepts() -> None:
    """TUNSETOFFLOAD refuses a whole request for one bit it does not know, or
    for TSO without CSUM; tap_set_offload asks for less until it is
    accepted.  Bit 0x8000 is unknown to every kernel (Linux 6.18 stops at
    the UDP tunnel bits, 0x100): the request falls back to checksum only."""
    with nn.Topology() as topo:
        router = topo.netns("r")
        fd = nn.tap_open("fwo0", router, extra_flags=nn.IFF_VNET_HDR)
        try:
            assert nn.tap_set_offload(fd) == nn.TUN_F_ALL
            assert nn.tap_set_offload(fd, nn.TUN_F_CSUM | nn.TUN_F_TSO4 | 0x8000) == nn.TUN_F_CSUM
            assert nn.tap_set_offload(fd, nn.TUN_F_TSO4) == 0
            assert nn.tun_flag_names(nn.TUN_F_CSUM | nn.TUN_F_USO6) == ["csum", "uso6"]
        finally:
            os.close(fd)


def test_tap_open_rejects_bad_names() -> None:
    with pytest.raises(ValueError):
        nn.tap_open("x" * 16, "unused")
    with pytest.raises(ValueError):
        nn.tap_open("", "unused")


# --- veth (kernel forwarding baseline) -------------------------------------------------------

def test_veth_between_namespaces_and_kernel_forwarding() -> None:
    with nn.Topology() as topo:
        a, r, b = topo.netns("a"), topo.netns("r"), topo.netns("b")
        topo.veth("fva", a, "fvra", r, addresses_a=["10.31.0.2/24"],
                  addresses_b=["10.31.0.1/24"])
        topo.veth("fvrb", r, "fvb", b, addresses_a=["10.32.0.1/24"],
                  addresses_b=["10.32.0.2/24"])
        nn.configure_host("fva", a, [], gateway="10.31.0.1")
        nn.configure_host("fvb", b, [], gateway="10.32.0.1")
        root_before = open("/proc/sys/net/ipv4/ip_forward").read()
        nn.write_sysctl(r, "net.ipv4.ip_forward", 1)
        with nn.enter_netns(r):
            assert open("/proc/sys/net/ipv4/ip_forward").read() == "1\n"
        assert open("/proc/sys/net/ipv4/ip_forward").read() == root_before   # untouched
        result = nn.run_in_netns(a, ["ping", "-n", "-c1", "-W2", "10.32.0.2"])
        assert result.returncode == 0, result.stdout + result.stderr
    assert not {a, r, b} & set(nn.list_netns())


def test_ns_argv() -> None:
    assert nn.ns_argv("h1", ["ping"]) == ["ip", "netns", "exec", "h1", "ping"]
    assert nn.ns_argv("/proc/9/ns/net", ["ping"]) == ["nsenter", "--net=/proc/9/ns/net", "--",
                                                      "ping"]
