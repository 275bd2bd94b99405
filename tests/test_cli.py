"""The `forwarder` command against a real router in namespaces: sysctl round
trips and formats, boot values from [sysctl] and -o, every refusal with its
exit code (and nothing changed), netstat -m / vmstat -z / stats agreeing with
each other and with the packets sent, route add/del changing forwarding live,
ARP listing and deletion, an unreachable router.

h1 (10.1.0.2) --tap1-- router --tap3-- h3 (10.3.0.2, and 10.77.0.2 on its lo)
                         |--tap2-- h2 (10.2.0.2)

Exit codes (forwarder/cli.py): 0 done, 1 refused (nothing changed),
2 usage, 3 unreachable; `health` 0 or 1.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from allocator_pyx.netstat import netstat_m_dict, parse_netstat_m, parse_vmstat_z
from forwarder import netns as nn
from forwarder.dataplane import RX_SPARES
from forwarder.sysctl import REGISTRY
from tests.routerlab import RunningRouter, start_router
from tests.topology import lab, requires_netns, topology  # noqa: F401

pytestmark = requires_netns

BOOT_ARGV = ("-o", "net.inet.ip.ttl=33", "-o", "net.route.max_routes=5000")
BOOT_SYSCTL = {"net.link.ether.inet.maxhold": 8, "net.inet.ip.ttl": 50}   # -o wins for ttl


@pytest.fixture(scope="module")
def router(lab, tmp_path_factory):  # noqa: F811
    r = start_router(lab, tmp_path_factory.mktemp("cli"), sysctl=BOOT_SYSCTL,
                     extra_argv=BOOT_ARGV)
    yield r
    code, out = r.stop()
    assert code == 0, out
    assert "mbuf clusters in use" in out


def forwarder(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """`forwarder ARGV` with no router chosen for it."""
    return subprocess.run([sys.executable, "-m", "forwarder.cli", *argv],
                          capture_output=True, text=True, timeout=timeout)


def sysctl_values(r: RunningRouter) -> dict[str, int]:
    return {i["name"]: i["value"] for i in r.call("sysctl.list")}


def arp_table(r: RunningRouter) -> list[tuple]:
    """The entries and their MACs (not their states: those move with time,
    REACHABLE to STALE, whatever a command does)."""
    return [(e["ip"], e["interface"], e["mac"]) for e in r.call("arp.list")]


def refused(cp: subprocess.CompletedProcess, code: int, message: str) -> None:
    assert cp.returncode == code, f"exit {cp.returncode}, wanted {code}: {cp.stdout}{cp.stderr}"
    assert cp.stdout == "", cp.stdout
    assert re.search(message, cp.stderr), cp.stderr
    assert "Traceback" not in cp.stderr, cp.stderr


# --- boot values ---------------------------------------------------------------------

def test_boot_values_come_from_the_config_and_o_options(lab, router):
    assert router.sysctl("net.inet.ip.ttl") == "net.inet.ip.ttl: 33\n"          # -o over [sysctl]
    assert router.sysctl("net.route.max_routes") == "net.route.max_routes: 5000\n"  # -o, boot-only
    assert router.sysctl("net.link.ether.inet.maxhold") == "net.link.ether.inet.maxhold: 8\n"
    # The router originates its echo replies with that TTL.
    cp = lab.ping("h1", "10.1.0.1", count=1, wait=2)
    assert cp.returncode == 0, cp.stdout
    assert "ttl=33" in cp.stdout, cp.stdout


def test_boot_options_are_kept_across_a_reload(router):
    assert router.cli("reload").stdout == "reloaded: no changes\n"
    assert sysctl_values(router)["net.inet.ip.ttl"] == 33


@pytest.mark.parametrize("argv,message", [
    (["-o", "net.inet.ip.ttl=999"], r"command line: -o net.inet.ip.ttl=999: 999 out of range"),
    (["-o", "kern.ipc.nosuch=1"], r"unknown oid 'kern.ipc.nosuch'"),
    (["-o", "net.inet.ip.ttl"], r"expected name=value"),
    (["-o", "net.inet.ip.forwarding=maybe"], r"boolean: 0 or 1"),
])
def test_bad_boot_options_are_refused_before_anything_starts(lab, router, argv, message):
    # In the lab's router namespace, in case a bad option were ever accepted.
    cp = nn.run_in_netns(lab.router_ns, [sys.executable, "-m", "forwarder.cli", "run", "-c",
                                         str(router.config), *argv], timeout=20)
    refused(cp, 2, message)
    assert router.call("health")["healthy"]


# --- sysctl round trips ----------------------------------------------------------------

def test_sysctl_set_prints_old_and_new_and_get_reads_it_back(router):
    assert router.cli("sysctl", "net.inet.icmp.icmplim=150").stdout == \
        "net.inet.icmp.icmplim: 200 -> 150\n"
    try:
        assert router.cli("sysctl", "net.inet.icmp.icmplim").stdout == "net.inet.icmp.icmplim: 150\n"
        assert router.cli("sysctl", "-n", "net.inet.icmp.icmplim").stdout == "150\n"
        # Several at once, in order; -n drops the names as sysctl(8) does.
        cp = router.cli("sysctl", "net.inet.icmp.icmplim=120", "net.link.ether.inet.max_age=600")
        assert cp.stdout == ("net.inet.icmp.icmplim: 150 -> 120\n"
                             "net.link.ether.inet.max_age: 1200 -> 600\n")
        assert router.cli("sysctl", "-n", "net.link.ether.inet.max_age=1200").stdout == \
            "600 -> 1200\n"
        # Booleans take 0/1 and words; an unchanged value is still reported.
        assert router.cli("sysctl", "net.inet.ip.forwarding=on").stdout == \
            "net.inet.ip.forwarding: 1 -> 1\n"
        data = router.cli_json("sysctl", "net.inet.icmp.icmplim=0x64")
        assert data == [{"name": "net.inet.icmp.icmplim", "old": 120, "new": 100}]
        assert sysctl_values(router)["net.inet.icmp.icmplim"] == 100
    finally:
        router.call("sysctl.set", assignments={"net.inet.icmp.icmplim": 200,
                                               "net.link.ether.inet.max_age": 1200})


def test_sysctl_all_lists_every_tunable_and_d_describes_them(router):
    lines = router.cli("sysctl", "-a").stdout.splitlines()
    assert [ln.split(": ")[0] for ln in lines] == sorted(REGISTRY)
    assert all(re.fullmatch(r"[a-z0-9_.]+: \d+", ln) for ln in lines), lines
    assert router.cli("sysctl", "-a", "-n").stdout.split() == \
        [ln.split(": ")[1] for ln in lines]
    # A prefix names a subtree.
    kern = router.cli("sysctl", "kern.ipc").stdout.splitlines()
    assert [ln.split(":")[0] for ln in kern] == sorted(n for n in REGISTRY if n.startswith("kern.ipc."))
    assert router.cli("sysctl", "-d", "kern.ipc.nmbclusters").stdout == \
        "kern.ipc.nmbclusters: Maximum number of mbuf clusters allowed (0 = unlimited)\n"
    assert router.cli("sysctl", "-d", "-n", "net.inet.ip.ttl").stdout == \
        REGISTRY["net.inet.ip.ttl"].description + "\n"
    described = router.cli("sysctl", "-d", "-a").stdout.splitlines()
    assert described == [f"{n}: {REGISTRY[n].description}" for n in sorted(REGISTRY)]
    records = {i["name"]: i for i in router.cli_json("sysctl", "-a")}
    assert records["net.route.max_routes"]["runtime"] is False
    assert records["kern.ipc.nmbclusters"]["runtime"] is True
    assert records["net.inet.ip.ttl"] == {
        "name": "net.inet.ip.ttl", "type": "int", "min": 1, "max": 255, "default": 64,
        "value": 33, "runtime": True, "description": REGISTRY["net.inet.ip.ttl"].description}


@pytest.mark.parametrize("argv,code,message", [
    (["kern.ipc.nosuch"], 1, r"unknown oid 'kern.ipc.nosuch'"),
    (["kern.ipc.nmbcluster=5"], 1, r"unknown oid .*did you mean kern.ipc.nmbclusters"),
    (["net.inet.ip.ttl=abc"], 1, r"net.inet.ip.ttl: invalid value 'abc' \(integer 1..255\)"),
    (["net.inet.ip.ttl=0"], 1, r"net.inet.ip.ttl: 0 out of range \(1..255\)"),
    (["net.inet.ip.ttl=256"], 1, r"out of range"),
    (["net.inet.ip.forwarding=2"], 1, r"boolean: 0 or 1"),
    (["net.route.max_routes=10"], 1, r"read-only at runtime"),
    (["net.link.max_interfaces=8"], 1, r"read-only at runtime"),
    (["kern.ipc.nmbufs=10"], 1, r"below the cluster limits"),
    # All or nothing: the first assignment is undone when the second is refused.
    (["net.inet.icmp.icmplim=7", "net.inet.ip.ttl=999"], 1, r"999 out of range"),
    (["net.inet.icmp.icmplim=7", "kern.ipc.nosuch=1"], 1, r"unknown oid"),
    # The command line's shape: usage errors.
    (["kern.ipc.nmbclusters="], 2, r"expected name=value"),
    (["=5"], 2, r"expected name=value"),
    (["net.inet.ip.ttl=5", "net.inet.ip.ttl=6"], 2, r"given twice"),
    (["net.inet.ip.ttl", "net.inet.ip.ttl=5"], 2, r"not both"),
    (["-a", "kern.ipc"], 2, r"takes no NAME"),
    (["-d"], 2, r"needs a NAME"),
    (["-d", "net.inet.ip.ttl=5"], 2, r"takes names"),
    (["--frobnicate"], 2, r"unrecognized arguments"),
])
def test_sysctl_refusals_exit_non_zero_and_change_nothing(router, argv, code, message):
    before = sysctl_values(router)
    refused(router.cli("sysctl", *argv, check=False), code, message)
    assert sysctl_values(router) == before


# --- routes and ARP: refusals ------------------------------------------------------------

@pytest.mark.parametrize("argv,code,message", [
    (["route", "del", "10.66.0.0/16"], 1, r"no route for 10.66.0.0/16"),
    (["route", "del", "10.1.0.1/32"], 1, r"one of the router's addresses"),
    (["route", "del", "banana"], 1, r"'banana' is not a prefix like 10.0.0.0/8 or 2001:db8::/32"),
    (["route", "add", "10.66.0.0/16", "via", "10.9.9.9"], 1, r"not on any connected prefix"),
    (["route", "add", "10.66.0.0/16", "via", "banana"], 1, r"not an IPv4 address"),
    (["route", "add", "10.66.0.0/16", "via", "10.2.0.1"], 1, r"router's own addresses"),
    (["route", "add", "10.66.0.0/16", "dev", "tap9"], 1, r"no interface 'tap9'"),
    (["route", "add", "10.66.0.1/16", "via", "10.2.0.2"], 1, r"has host bits set"),
    (["route", "add", "10.2.0.1/32", "blackhole"], 1, r"one of the router's addresses"),
    (["route", "add", "10.66.0.0/16"], 2, r"expected 'via GW', 'dev IF' or a type"),
    (["route", "add", "10.66.0.0/16", "via"], 2, r"expected 'via GW'"),
    (["route", "add"], 2, r"usage: forwarder route add"),
    (["route", "del"], 2, r"usage: forwarder route del PREFIX"),
    (["route", "frob"], 2, r"unknown operation 'frob'"),
    (["arp", "-d", "10.1.0.99"], 1, r"no ARP entry for 10.1.0.99"),
    (["arp", "-d", "banana"], 1, r"'banana' is not an IPv4 address"),
    (["arp", "-d", "10.1.0.2", "-i", "tap9"], 1, r"no interface 'tap9'"),
    (["arp", "-a", "-d", "10.1.0.2"], 2, r"give one of them"),
    (["arp", "-i", "tap1"], 2, r"-i IF goes with -d IP"),
    (["debug", "stall"], 2, r"usage: forwarder debug stall SECONDS"),
    (["debug", "stall", "0"], 1, r"expected 0 < SECONDS"),
    (["debug", "stall", "7200"], 1, r"expected 0 < SECONDS"),
    (["debug", "resume", "3"], 2, r"usage: forwarder debug resume"),
    (["debug", "frob"], 2, r"invalid choice"),
    (["netstat"], 2, r"only -m"),
    (["vmstat"], 2, r"only -z"),
    (["stats", "--timeout", "0"], 2, r"expected 0 < SECONDS"),
])
def test_route_arp_and_other_refusals(router, argv, code, message):
    routes = router.call("route.list")
    arp = arp_table(router)
    refused(router.cli(*argv, check=False), code, message)
    assert router.call("route.list") == routes
    assert arp_table(router) == arp
    assert router.call("health")["healthy"]


def test_usage_errors_need_no_router():
    for argv, message in (([], r"required: COMMAND"), (["bogus"], r"invalid choice: 'bogus'"),
                          (["run"], r"-c/--config"), (["sysctl", "-x"], r"unrecognized")):
        refused(forwarder(*argv), 2, message)


# --- which router; an unreachable one ------------------------------------------------------

def test_the_router_is_found_from_its_config_file(router):
    cp = forwarder("stats", "--json", "-c", str(router.config))
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["router"] == router.lab.name
    assert forwarder("sysctl", "-c", str(router.config), "net.inet.ip.ttl").stdout == \
        "net.inet.ip.ttl: 33\n"


def _serve(path: Path, behaviour: str, stop: threading.Event) -> threading.Thread:
    """A fake control socket: 'close' hangs up, 'silent' never answers,
    'garbage' answers with something that is not the protocol."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    srv.settimeout(0.1)

    def loop() -> None:
        conns = []
        deadline = time.monotonic() + 30
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    c, _ = srv.accept()
                except socket.timeout:
                    continue
                conns.append(c)
                if behaviour == "close":
                    c.close()
                elif behaviour == "garbage":
                    c.sendall(b"HTTP/1.0 400 Bad Request\n")
        finally:
            for c in conns:
                c.close()
            srv.close()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def test_an_unreachable_router_exits_3_and_health_1(tmp_path):
    missing = tmp_path / "missing.sock"
    for argv in (["stats"], ["sysctl", "-a"], ["sysctl", "net.inet.ip.ttl=5"], ["route"],
                 ["netstat", "-m"], ["reload"], ["debug", "resume"]):
        refused(forwarder(*argv, "--socket", str(missing)), 3, r"no such socket")
    refused(forwarder("health", "--socket", str(missing)), 1, r"unhealthy: .*no such socket")
    # A socket file nobody listens on any more (a router that was killed).
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    refused(forwarder("stats", "--socket", str(stale)), 3, r"stale.sock: Connection refused")
    plain = tmp_path / "plain"
    plain.write_text("not a socket\n")
    refused(forwarder("stats", "--socket", str(plain)), 3, r"plain: Connection refused")
    refused(forwarder("stats", "--name", f"no-such-router-{os.getpid()}"), 3, r"no such socket")
    refused(forwarder("stats", "-c", str(tmp_path / "none.toml")), 2, r"cannot read")
    stop = threading.Event()
    threads = []
    try:
        for behaviour, message in (("close", r"closed the connection"),
                                   ("silent", r"no answer within 0.5 s"),
                                   ("garbage", r"not a forwarder control socket")):
            path = tmp_path / f"{behaviour}.sock"
            threads.append(_serve(path, behaviour, stop))
            t0 = time.monotonic()
            refused(forwarder("stats", "--timeout", "0.5", "--socket", str(path)), 3, message)
            assert time.monotonic() - t0 < 10
    finally:
        stop.set()
        for t in threads:
            t.join(5)


# --- counters agree with each other and with the traffic --------------------------------------

def _iface(stats: dict, name: str) -> dict:
    return next(i for i in stats["interfaces"] if i["name"] == name)


def test_stats_netstat_and_vmstat_agree_with_the_packets_sent(lab, router):
    n, payload = 300, b"x" * 100
    frame_len = 14 + 20 + 8 + len(payload)
    with nn.enter_netns(lab.host("h3").netns):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with nn.enter_netns(lab.host("h1").netns):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("10.3.0.2", 40100))
        rx.settimeout(0.2)
        # Resolve both neighbours first, so that only the datagrams cross.
        assert lab.ping("h1", "10.3.0.2", count=1, wait=2).returncode == 0
        before, z0 = router.stats(), router.zones()
        got, deadline = 0, time.monotonic() + 10
        for sent in range(50, n + 1, 50):      # in batches: below every queue's size
            for _ in range(50):
                tx.sendto(payload, ("10.3.0.2", 40100))
            while got < sent and time.monotonic() < deadline:
                try:
                    got += rx.recv(2048) == payload
                except socket.timeout:
                    pass
        assert got == n, f"{got} of {n} datagrams arrived"
        after = router.stats()
    finally:
        rx.close()
        tx.close()
    assert after["forwarded"] - before["forwarded"] == n
    tap1b, tap1a = _iface(before, "tap1"), _iface(after, "tap1")
    tap3b, tap3a = _iface(before, "tap3"), _iface(after, "tap3")
    assert tap1a["rx_packets"] - tap1b["rx_packets"] == n
    assert tap1a["rx_bytes"] - tap1b["rx_bytes"] == n * frame_len
    assert tap3a["tx_packets"] - tap3b["tx_packets"] == n
    assert tap3a["tx_bytes"] - tap3b["tx_bytes"] == n * frame_len
    assert _iface(after, "tap2")["tx_packets"] == _iface(before, "tap2")["tx_packets"]
    assert after["drops"] == before["drops"]
    assert after["icmp"] == before["icmp"]

    # vmstat -z: each frame read took one item of the Packet zone, none was refused,
    # and nothing is held once everything went out.
    z1 = router.zones()
    assert z1["mbuf_packet"]["requests"] - z0["mbuf_packet"]["requests"] >= n
    assert all(z1[k]["fails"] == z0[k]["fails"] for k in z1)
    assert z1["mbuf_packet"]["used"] == 0

    # The three views, in their text forms, agree with each other (no traffic now).
    for _ in range(5):
        vm1 = parse_vmstat_z(router.cli("vmstat", "-z").stdout)
        ns = parse_netstat_m(router.cli("netstat", "-m").stdout)
        vm2 = parse_vmstat_z(router.cli("vmstat", "-z").stdout)
        if vm1 == vm2:
            break
    assert vm1 == vm2, "the zones kept changing with no traffic"
    assert set(vm1) == set(z1)
    derived = netstat_m_dict(vm1)
    for key in ("mbufs", "clusters", "packets", "jumbop", "jumbo9", "jumbo16"):
        assert all(ns[key][f] == derived[key][f] for f in ns[key]), key
    assert ns["denied"] == {k: derived["denied"][k] for k in ("mbufs", "clusters", "packets")}
    # At rest only the 16k clusters kept for super-frames are in use (RX_SPARES
    # per TAP that may send them), each with its mbuf.
    spares = RX_SPARES * sum(bool({"tso4", "tso6", "uso4", "uso6"} & set(i["offloads"]))
                             for i in router.stats()["interfaces"])
    assert ns["mbufs"]["current"] == ns["jumbo16"]["current"] == spares > 0
    assert ns["clusters"]["current"] == 0
    assert ns["clusters"]["max"] == sysctl_values(router)["kern.ipc.nmbclusters"]
    js = router.cli_json("netstat", "-m")
    assert js == netstat_m_dict(router.call("zones"))
    # stats: the text table says what the JSON says (read again when a host's own
    # frame -- an ARP refresh, an MLD report -- crossed tap1 between the two reads).
    keys = ("rx_packets", "rx_bytes", "rx_nobuf", "rx_errors", "tx_packets", "tx_bytes",
            "tx_errors")
    for _ in range(5):
        text = router.cli("stats").stdout
        final = router.stats()
        row = re.search(r"^tap1 +(\d+) +(\d+) +(\d+) +(\d+) +(\d+) +(\d+) +(\d+)$", text, re.M)
        assert row, text
        t1 = _iface(final, "tap1")
        if [int(x) for x in row.groups()] == [t1[k] for k in keys]:
            break
    assert [int(x) for x in row.groups()] == [t1[k] for k in keys]
    assert f"forwarded {final['forwarded']}," in text


# --- routes and ARP, live ---------------------------------------------------------------------

def test_route_add_and_del_change_forwarding_live(lab, router):
    h3 = lab.host("h3").netns
    with nn.iproute(h3) as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.addr("add", index=lo, address="10.77.0.2", prefixlen=32)
    try:
        cp = lab.ping("h1", "10.77.0.2", count=1, wait=2)
        assert cp.returncode != 0 and "Destination Net Unreachable" in cp.stdout, cp.stdout

        assert router.cli("route", "add", "10.77.0.0/24", "via", "10.3.0.2").stdout == \
            "route 10.77.0.0/24 added\n"
        listed = {r["prefix"]: r for r in router.cli_json("route")}
        r77 = listed["10.77.0.0/24"]
        assert (r77["via"], r77["interface"], r77["type"]) == ("10.3.0.2", "tap3", "forward")
        assert re.search(r"^10\.77\.0\.0/24 +10\.3\.0\.2 +tap3 +forward +runtime$",
                         router.cli("route", "list").stdout, re.M)
        cp = lab.ping("h1", "10.77.0.2", count=2, wait=2)
        assert cp.returncode == 0 and "2 received" in cp.stdout, cp.stdout

        # Replaced in place: now silently dropped.
        router.cli("route", "add", "10.77.0.0/24", "blackhole")
        before = router.stats()["drops"]["blackhole"]
        cp = lab.ping("h1", "10.77.0.2", count=1, wait=1)
        assert cp.returncode != 0 and "From" not in cp.stdout, cp.stdout
        assert router.stats()["drops"]["blackhole"] == before + 1

        assert router.cli("route", "del", "10.77.0.0/24").stdout == "route 10.77.0.0/24 deleted\n"
        assert "10.77.0.0/24" not in {r["prefix"] for r in router.call("route.list")}
        cp = lab.ping("h1", "10.77.0.2", count=1, wait=2)
        assert cp.returncode != 0 and "Destination Net Unreachable" in cp.stdout, cp.stdout
        refused(router.cli("route", "del", "10.77.0.0/24", check=False), 1, r"no route")
    finally:
        for r in router.call("route.list"):
            if r["prefix"].startswith("10.77."):
                router.call("route.del", prefix=r["prefix"])
        with nn.iproute(h3) as ipr:
            ipr.addr("del", index=lo, address="10.77.0.2", prefixlen=32)


def test_arp_lists_and_deletes_entries(lab, router):
    assert lab.ping("h1", "10.2.0.2", count=1, wait=2).returncode == 0
    mac = nn.link_info("tap2", lab.host("h2").netns).mac
    text = router.cli("arp", "-a").stdout
    m = re.search(r"^\? \(10\.2\.0\.2\) at (\S+) on tap2 expires in (\d+) seconds \[ethernet\]$",
                  text, re.M)
    assert m, text
    assert m.group(1) == mac
    assert 0 < int(m.group(2)) <= 1200
    assert router.cli("arp", "-d", "10.2.0.2", "-i", "tap2").stdout == "10.2.0.2 (1 entry) deleted\n"
    assert "10.2.0.2" not in {e["ip"] for e in router.cli_json("arp")}
    # Resolved again by the next packet.
    assert lab.ping("h1", "10.2.0.2", count=1, wait=2).returncode == 0
    assert "10.2.0.2" in {e["ip"] for e in router.call("arp.list")}


def test_health_passes_on_a_running_router(router):
    cp = router.cli("health")
    assert re.fullmatch(r"healthy: dataplane went round \d+\.\d{3} s ago\n", cp.stdout), cp.stdout
    h = router.cli_json("health")
    assert h["healthy"] and h["running"] and not h["stalled"] and h["progress_age"] < 2
