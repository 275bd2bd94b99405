"""Ports attached to the veths a container runtime hands the router.

The lab is wired as a container runtime wires a router container: h1's link
(eth1) is handed over 2 s after the router started, h3's (eth3, MTU 1280)
is there before it starts and carries addresses of the router namespace's
kernel, and h2 is on an ordinary TAP moved into its namespace (a mixed
config).  Hosts are real kernels; ping, traceroute and iperf3 run across.
Every test runs in both attach modes (``[router] attach_mode``): "packet",
the default (a packet socket on the veth), and "tap" (a TAP joined to it by
tc); what only the packet mode does is in tests/test_attach_packet.py.
"""
from __future__ import annotations

import os
import re
import time
from typing import Iterator

import pytest
from scapy.layers.l2 import ARP

from forwarder import netns as nn
from forwarder.config import ATTACH_MODES
from forwarder.lab.process import launch
from forwarder.lab.tomlwrite import to_toml
from tests.routerlab import RunningRouter
from tests.wire import Sniffer, arp_frame, host_mac, iperf3
from tests.topology import RouterLab, make_lab, requires_netns

pytestmark = requires_netns

KERNEL_ADDRS = (("10.3.9.1", 24), ("2001:db8:3:9::1", 64))    # eth3's before the router


@pytest.fixture(scope="module", params=ATTACH_MODES)
def mode(request) -> str:
    """The attach mode under test."""
    return request.param


@pytest.fixture(scope="module")
def lab(mode: str) -> Iterator[RouterLab]:
    with nn.Topology() as topo:                         # one per mode
        yield make_lab(topo, mtus=(1500, 1500, 1280), attach=(1, 3))


@pytest.fixture(scope="module")
def router(lab: RouterLab, mode: str, tmp_path_factory) -> Iterator[RunningRouter]:
    """Started before eth1 exists; what it said while it waited is kept in
    ``router.waiting`` for the tests."""
    work = tmp_path_factory.mktemp("attach")
    h3 = lab.host("h3")
    lab.hand_over(h3)                                   # eth3: there from the start ...
    with nn.iproute(lab.router_ns) as ipr:              # ... with the kernel's addresses
        idx = ipr.link_lookup(ifname="eth3")[0]
        for a, plen in KERNEL_ADDRS:
            ipr.addr("add", index=idx, address=a, prefixlen=plen, flags=nn.IFA_F_NODAD)
    sock = work / f"{lab.name}.sock"
    doc = lab.config_doc(sock)
    doc["router"]["attach_timeout"] = 60
    doc["router"]["attach_mode"] = mode
    cfg = work / "router.toml"
    cfg.write_text(to_toml(doc))
    r = launch(lab.topo.popen, lab.router_ns, cfg, sock, kind=RunningRouter, lab=lab, wait=False)
    lab.router = r
    try:
        health = r.cli("health", check=False)
        r.waiting = {"health": (health.returncode, health.stdout + health.stderr),
                     "stats": r.stats()}
        time.sleep(2)
        lab.hand_over(lab.host("h1"))
        r.wait_healthy(20)
        lab.configure_hosts()
        yield r
    finally:
        code, out = r.stop()
        assert code == 0, out


@pytest.fixture(autouse=True)
def zones_back_at_rest(router: RunningRouter) -> Iterator[None]:
    with router.zones_kept():
        yield


def router_link(lab: RouterLab, name: str) -> tuple[int, str, list[str]]:
    """An interface of the router's namespace: its index, MAC and addresses."""
    with nn.iproute(lab.router_ns) as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        mac = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
        return idx, mac, [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx)]


def test_not_ready_while_waiting_then_ready(router: RunningRouter) -> None:
    code, text = router.waiting["health"]
    assert code == 1 and re.search(r"not ready: waiting for eth1 \(1 of 2 attached", text), text
    before = {i["name"]: i["link"] for i in router.waiting["stats"]["interfaces"]}
    assert before == {"eth1": "down", "tap2": "up", "eth3": "up"}
    assert router.cli("health").stdout.startswith("healthy")
    assert {i["name"]: i["link"] for i in router.stats()["interfaces"]} == \
        {"eth1": "up", "tap2": "up", "eth3": "up"}
    log = router.log_text()
    assert "waiting for eth1 (1 of 2 attached" in log
    assert re.search(r"port eth1: attached to eth1 \(ifindex \d+, mac [0-9a-f:]{17}, mtu 1500\)",
                     log), log


def test_ping_and_traceroute_across_attached_and_tap_ports(lab: RouterLab,
                                                           router: RunningRouter) -> None:
    for src, dst in (("h1", "10.3.0.2"), ("h1", "10.2.0.2"), ("h3", "10.2.0.2")):
        cp = lab.ping(src, dst, count=2, wait=2, extra=["-i", "0.2"])
        assert cp.returncode == 0, (src, dst, cp.stdout)
    cp = lab.run("h1", ["traceroute", "-n", "-q", "1", "-w", "2", "-m", "4", "10.3.0.2"],
                 timeout=30)
    hops = [line.split()[1] for line in cp.stdout.splitlines()[1:]]
    assert hops == ["10.1.0.1", "10.3.0.2"], cp.stdout


def test_the_routers_mac_on_an_attached_link_is_the_veths(lab: RouterLab,
                                                          router: RunningRouter) -> None:
    for name, gw in (("eth1", "10.1.0.1"), ("eth3", "10.3.0.1")):
        _, mac, _ = router_link(lab, name)
        assert router.interface(name)["mac"] == mac
        lab.ping(f"h{name[-1]}", gw, count=1)
        with nn.iproute(lab.host(f"h{name[-1]}").netns) as ipr:
            learned = {n.get_attr("NDA_DST"): n.get_attr("NDA_LLADDR")
                       for n in ipr.get_neighbours(family=2)}
        assert learned.get(gw) == mac, learned


def test_the_namespaces_kernel_holds_no_address_on_attached_links(
        lab: RouterLab, router: RunningRouter, mode: str) -> None:
    taps = ("tap-eth1", "tap-eth3")
    for name in ("eth1", "eth3") + (taps if mode == "tap" else ()):
        assert router_link(lab, name)[2] == [], name        # no link-local either
    with nn.iproute(lab.router_ns) as ipr:                  # a packet port makes no device
        assert [bool(ipr.link_lookup(ifname=t)) for t in taps] == [mode == "tap"] * 2
    assert re.search(r"port eth3: removed 10\.3\.9\.1/24, 2001:db8:3:9::1/64 from eth3",
                     router.log_text()), router.log_text()
    # and its frames never reach that kernel: the router answers ARP for its own
    # address there, nobody for the address the kernel had
    mac = host_mac(lab, "h3")
    with Sniffer(lab.host("h3").netns, "eth3") as s:
        for target in ("10.3.9.1", "10.3.0.1"):
            s.send(arp_frame(1, mac, "10.3.0.2", target))
        replies = s.collect(lambda p: ARP in p and p[ARP].op == 2, timeout=1.5, want=2)
    assert [(p[ARP].psrc, p[ARP].hwsrc) for p in replies] == \
        [("10.3.0.1", router.interface("eth3")["mac"])]


def test_tcp_super_frames_cross_whole(lab: RouterLab, router: RunningRouter) -> None:
    a = router.interface("eth1")
    doc = iperf3(lab, "h1", "h2", "10.2.0.2", 5401)
    assert doc["end"]["sum_received"]["bits_per_second"] > 100e6
    b = router.interface("eth1")
    assert b["rx_gso"] - a["rx_gso"] > 100, (a, b)        # whole super-frames came in on eth1


def test_the_small_mtu_attached_link_needs_frag_or_fragments(lab: RouterLab,
                                                             router: RunningRouter) -> None:
    assert router_link(lab, "eth3")[0] and router.interface("eth3")["mtu"] == 1280
    # first without DF (h1 knows no smaller path MTU yet): the router fragments
    made = router.stats()["fragments_created"]
    cp = lab.ping("h1", "10.3.0.2", count=2, wait=2, extra=["-M", "dont", "-s", "1400"])
    assert cp.returncode == 0, cp.stdout
    assert router.stats()["fragments_created"] - made >= 4
    # with DF: frag needed, carrying the attached link's MTU
    cp = lab.ping("h1", "10.3.0.2", count=1, wait=2, extra=["-M", "do", "-s", "1400"])
    assert cp.returncode != 0 and re.search(r"mtu\s*=\s*1280", cp.stdout + cp.stderr), cp.stdout


def test_a_deleted_interface_is_down_then_forwards_again_when_it_comes_back(
        lab: RouterLab, router: RunningRouter) -> None:
    assert lab.ping("h2", "10.1.0.2", count=1, wait=2).returncode == 0
    idx, _, _ = router_link(lab, "eth1")
    with nn.iproute(lab.router_ns) as ipr:
        ipr.link("del", index=idx)                     # the runtime takes eth1 away
    router.wait_for(lambda: router.interface("eth1")["link"] == "down", 5, what="eth1 down")
    down = router.stats()["drops"]["interface_down"]
    assert lab.ping("h2", "10.1.0.2", count=1, wait=1).returncode != 0
    assert router.stats()["drops"]["interface_down"] > down
    assert router.cli("health").returncode == 0       # the wait at start is over: still healthy
    t = time.monotonic()
    lab.hand_over(lab.host("h1"))                      # and brings a new one
    lab.configure_host(lab.host("h1"))
    router.wait_for(lambda: lab.ping("h2", "10.1.0.2", count=1, wait=1).returncode == 0, 10,
                    what="h1 reachable again")
    assert time.monotonic() - t < 10
    log = router.log_text()
    assert log.count("port eth1: eth1 is gone; port down until it comes back") == 1
    assert re.search(r"port eth1: attached to eth1 .* again", log), log


def test_after_attach_timeout_the_router_goes_on_and_still_attaches_late_links(
        tmp_path, mode: str) -> None:
    """An interface that never came within attach_timeout: the router says so
    once, is ready without it, and joins it when it does come."""
    with nn.Topology() as topo:
        _late_links(make_lab(topo, n_hosts=2, attach=(1, 2), name="late"), tmp_path, mode)


def _late_links(lab: RouterLab, tmp_path, mode: str) -> None:
    topology = lab.topo
    sock = tmp_path / "late.sock"
    doc = lab.config_doc(sock)
    doc["router"]["attach_timeout"] = 1
    doc["router"]["attach_mode"] = mode
    cfg = tmp_path / "router.toml"
    cfg.write_text(to_toml(doc))
    os.environ["CLAB_INTFS"] = "3"                     # containerlab says 3; the config has 2
    try:
        r = launch(topology.popen, lab.router_ns, cfg, sock, kind=RunningRouter, wait=False)
    finally:
        del os.environ["CLAB_INTFS"]
    try:
        assert r.cli("health", check=False).returncode == 1
        lab.hand_over(lab.host("h1"))
        r.wait_log(r"attach_timeout \(1 s\) passed: forwarding without eth2; still watching", 5)
        assert r.cli("health").stdout.startswith("healthy: dataplane went round") and \
            "still waiting for eth2 (1 of 2 attached" in r.cli("health").stdout
        log = r.log_text()
        assert "CLAB_INTFS=3, but 2 ports attach" in log, log
        assert re.search(r"waiting for eth1, eth2 \(0 of 2 attached; CLAB_INTFS=3", log), log
        lab.hand_over(lab.host("h2"))
        r.wait_log(r"port eth2: attached to eth2", 5)
        lab.configure_hosts()
        assert lab.ping("h1", "10.2.0.2", count=1, wait=2).returncode == 0
        assert {i["name"]: (i["link"], i["attach"]) for i in r.stats()["interfaces"]} == {
            "eth1": ("up", {"link": "eth1", "joins": 1, "losses": 0}),
            "eth2": ("up", {"link": "eth2", "joins": 1, "losses": 0})}
    finally:
        code, out = r.stop()
    assert code == 0, out
