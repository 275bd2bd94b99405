"""The control plane's documented contract, where the other suites leave gaps
(found by tests/mutations/control_plane.toml): validation bounds and every
problem reported, tunable ranges at both ends, reload refusing boot-only
changes and ordering the mbuf limits, runtime routes against the table limit
and against reload, the exact shapes of refusals and --json, the control
socket never wider than 0600, netstat -m's rounding, the Prometheus series.

One router for the module (h1, h2, h3 on 10.k.0.0/24; net.route.max_routes=8
from -o: 6 connected and local routes + 10.20.0.0/16 leave room for one more).
"""
from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from allocator_pyx.netstat import netstat_m, netstat_m_dict, parse_netstat_m
from forwarder import metrics, sysctl
from forwarder import netns as nn
from forwarder.admission import EndpointStats
from forwarder.config import ConfigError, parse_config
from forwarder.control import ControlServer
from forwarder.dataplane import DROP_REASONS
from forwarder.lab.tomlwrite import to_toml
from forwarder.route import RouteTable
from forwarder.sysctl import REGISTRY, SysctlError
from tests.routerlab import RunningRouter, lab_doc, start_router
from tests.topology import lab, make_lab, requires_netns, topology  # noqa: F401

ROUTER = '[router]\nname = "r1"\n'
ONE_LINK = ROUTER + '[[interface]]\nname = "tap0"\naddresses = ["10.1.0.1/24"]\n'


def problems(text: str, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "r.toml", overrides or [])
    return [str(p) for p in e.value.problems]


# --- config: bounds and every problem at once -------------------------------------------

def test_mtu_bounds_are_inclusive() -> None:
    for mtu in (68, 16000):
        assert parse_config(ONE_LINK + f"mtu = {mtu}\n").interfaces[0].mtu == mtu
    for mtu in (67, 16001):
        assert problems(ONE_LINK + f"mtu = {mtu}\n") == \
            [f"r.toml:6: interface[0].mtu: {mtu} out of range (68..16000)"]


def test_every_bad_route_is_reported_not_just_the_first() -> None:
    text = ONE_LINK + (
        '[[route]]\nprefix = "10.4.0.0/16"\n'                                  # no target
        '[[route]]\nprefix = "10.5.0.0/16"\nvia = "10.1.0.2"\ntype = "blackhole"\n'  # two
        '[[route]]\nprefix = "10.6.0.0/16"\nvia = "10.9.0.1"\n'                # off-link
        '[[route]]\nprefix = "10.7.0.0/16"\ninterface = "tap9"\n')             # no such if
    assert problems(text) == [
        "r.toml:6: route[0]: exactly one of via, interface, type is required (has none)",
        "r.toml:8: route[1]: exactly one of via, interface, type is required (has via, type)",
        "r.toml:14: route[2].via: 10.9.0.1 is not on any connected prefix",
        "r.toml:17: route[3].interface: 'tap9' is not a configured interface (tap0)",
    ]


@pytest.mark.parametrize("via,kind", [("10.1.0.0", "network"), ("10.1.0.255", "broadcast")])
def test_a_gateway_on_the_network_or_broadcast_address_is_refused(via: str, kind: str) -> None:
    assert problems(ONE_LINK + f'[[route]]\nprefix = "10.8.0.0/16"\nvia = "{via}"\n') == \
        [f"r.toml:8: route[0].via: {via} is the network or broadcast address of 10.1.0.0/24"]


def test_interface_and_route_limits_admit_exactly_their_value() -> None:
    two = ONE_LINK + '[[interface]]\nname = "tap1"\naddresses = ["10.2.0.1/24"]\n'
    routes = '[[route]]\nprefix = "10.8.0.0/16"\ntype = "blackhole"\n' \
             '[[route]]\nprefix = "10.9.0.0/16"\ntype = "prohibit"\n'
    cfg = parse_config(two + routes, "r.toml",
                       ["net.link.max_interfaces=2", "net.route.max_routes=2"])
    assert len(cfg.interfaces) == 2 and len(cfg.routes) == 2
    assert problems(two + routes, ["net.link.max_interfaces=1", "net.route.max_routes=1"]) == [
        "r.toml:6: interface: 2 interfaces exceed net.link.max_interfaces (1)",
        "r.toml:12: route: 2 routes exceed net.route.max_routes (1)"]


def test_a_config_the_dataplane_cannot_hold_is_refused_at_parse_time() -> None:
    """The limits the dataplane's C state fixes (64 interfaces, 8 addresses
    each) are the config's: 65 interfaces or 9 addresses are config errors
    naming the line and key, never a failure at start."""
    many = '[router]\nname = "r"\n' + "".join(
        f'[[interface]]\nname = "tap{k}"\naddresses = ["10.{k}.0.1/24"]\n' for k in range(65))
    assert problems(many) == [
        "r.toml:195: interface: 65 interfaces exceed net.link.max_interfaces (64)"]
    with pytest.raises(SysctlError, match=r"65 out of range \(1\.\.64\)"):
        REGISTRY["net.link.max_interfaces"].parse(65)
    nine = ", ".join(f'"10.1.{k}.1/24"' for k in range(9))
    text = f'[router]\nname = "r"\n\n[[interface]]\nname = "tap0"\naddresses = [{nine}]\n'
    assert problems(text) == [
        "r.toml:6: interface[0].addresses: 9 addresses: an interface holds at most 8"]
    eight = ", ".join(f'"10.1.{k}.1/24"' for k in range(8))
    assert len(parse_config(text.replace(nine, eight)).interfaces[0].addresses) == 8


# --- tunables: each kind's range, both ends --------------------------------------------

def test_every_tunable_accepts_exactly_its_documented_range() -> None:
    # The ranges operators read in `sysctl -d` / README, pinned here.
    expected = {
        "kern.ipc.nmbclusters": (0, sysctl.INT_MAX), "kern.ipc.nmbufs": (0, sysctl.INT_MAX),
        "kern.ipc.nmbjumbop": (0, sysctl.INT_MAX), "kern.ipc.nmbjumbo9": (0, sysctl.INT_MAX),
        "kern.ipc.nmbjumbo16": (0, sysctl.INT_MAX), "net.inet.ip.forwarding": (0, 1),
        "net.inet.ip.ttl": (1, 255), "net.inet.icmp.icmplim": (0, 100000),
        "net.inet6.ip6.forwarding": (0, 1), "net.inet6.ip6.hlim": (1, 255),
        "net.inet6.icmp6.errppslimit": (0, 100000),
        "net.inet6.icmp6.nd6_basereachable": (1000, 3600000),
        "net.inet6.icmp6.nd6_delay": (1, 3600), "net.inet6.icmp6.nd6_umaxtries": (1, 100),
        "net.inet6.icmp6.nd6_mmaxtries": (1, 100),
        "net.inet6.icmp6.nd6_gctimer": (1, 86400 * 365),
        "net.link.ether.inet.max_age": (1, 86400 * 365),
        "net.link.ether.inet.maxhold": (1, 10000), "net.link.ether.inet.maxtries": (1, 100),
        "net.link.ether.inet.max_per_if": (1, 3072),
        "net.link.ether.inet.max_incomplete": (1, 3072),
        "net.link.ether.inet.basereachable": (1000, 3600000),
        "net.link.ether.inet.delay": (1, 3600), "net.link.ether.inet.umaxtries": (1, 100),
        "net.link.ether.inet.request_ppslimit": (0, 100000),
        "net.inet6.icmp6.nd6_ns_ppslimit": (0, 100000),
        "net.route.max_routes": (1, 1 << 24), "net.link.max_interfaces": (1, 64),
        "net.forwarder.control.max_clients": (1, 4096),
        "net.forwarder.control.request_timeout": (1, 3600),
        "net.forwarder.control.idle_timeout": (1, 86400),
        "net.forwarder.metrics.max_clients": (1, 4096),
        "net.forwarder.metrics.request_timeout": (1, 3600),
    }
    assert set(expected) == set(REGISTRY)
    for name, (lo, hi) in expected.items():
        t = REGISTRY[name]
        for ok in (lo, hi):
            assert t.parse(str(ok)) == ok == t.parse(ok), name
        for bad in (lo - 1, hi + 1):
            with pytest.raises(SysctlError) as e:
                t.parse(str(bad))
            msg = "(boolean: 0 or 1)" if t.type is bool else f"out of range ({lo}..{hi})"
            assert msg in str(e.value), (name, bad, str(e.value))


# --- longest-prefix match: a /25 deleted under its /24 ------------------------------------

def test_deleting_a_25_reveals_its_24_and_gives_the_tbl8_group_back() -> None:
    t = RouteTable(tbl8_max=1)                        # room for one split /24
    t.add("0.0.0.0/0", type="unreachable")
    t.add("10.1.2.0/24", ifindex=1)
    t.add("10.1.2.128/25", ifindex=2)
    assert [t.lookup(a)["prefix"] for a in ("10.1.2.127", "10.1.2.128", "10.1.3.0")] == \
        ["10.1.2.0/24", "10.1.2.128/25", "0.0.0.0/0"]
    assert t.stats()["tbl8_groups_used"] == 1
    t.delete("10.1.2.128/25")
    assert t.lookup("10.1.2.200")["prefix"] == "10.1.2.0/24"
    assert t.stats()["tbl8_groups_used"] == 0         # collapsed under the /24
    t.add("10.9.9.9/32", ifindex=3)                   # so another /24 can split
    assert t.lookup("10.9.9.9")["prefix"] == "10.9.9.9/32"
    assert t.lookup("10.9.9.8")["prefix"] == "0.0.0.0/0"
    t.delete("10.9.9.9/32")
    assert t.lookup("10.9.9.9")["prefix"] == "0.0.0.0/0"


# --- netstat -m: bytes in KiB, each rounded down on its own ------------------------------

def test_netstat_m_total_kib_is_rounded_from_the_byte_total() -> None:
    # 2 mbufs in use (512 B) and 2 cached (512 B): 0K current, 0K cache, 1K total,
    # as FreeBSD prints bytes_inuse/1024, bytes_incache/1024, bytes_total/1024.
    zones = {"mbuf": dict(size=256, used=2, free=2)}
    assert netstat_m_dict(zones)["bytes"] == {"current": 512, "cache": 512, "total": 1024}
    assert parse_netstat_m(netstat_m(zones))["bytes_k"] == {"current": 0, "cache": 0, "total": 1}


# --- the control socket: 0600 from the start --------------------------------------------

def _server(path: Path) -> ControlServer:
    return ControlServer(path, mock.MagicMock())


def test_the_socket_is_never_reachable_by_others_even_before_chmod(tmp_path: Path) -> None:
    """The umask, not only the chmod after bind(), keeps it 0600: with chmod
    doing nothing the socket is still created owner-only."""
    path = tmp_path / "a.sock"
    with mock.patch("forwarder.control.os.chmod"):
        srv = _server(path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0
    finally:
        srv.server_close()


def test_the_socket_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "b.sock"
    with mock.patch("forwarder.control.os.umask", return_value=0o022):   # umask left as is
        old = os.umask(0o000)
        try:
            srv = _server(path)
        finally:
            os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        srv.server_close()


# --- Prometheus: every series, from distinct numbers --------------------------------------

# The interface counters metrics.py's docstring promises, written out (not read
# from metrics.INTERFACE_COUNTERS, which is what is under test).
INTERFACE_SERIES = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "rx_nobuf",
                    "rx_errors", "tx_errors", "rx_gso", "rx_gso_segments", "tx_gso",
                    "tx_gso_segments", "gso_software", "csum_software")


def test_metrics_export_each_counter_under_its_own_name() -> None:
    iface = {k: 10 + i for i, k in enumerate(INTERFACE_SERIES)}
    iface["name"] = "tap1"
    iface["link"] = "down"
    drops = {r: 100 + i for i, r in enumerate(DROP_REASONS)}
    icmp = {"errors_sent": 7, "unreachable": 3, "time_exceeded": 4, "echo_replies": 9,
            "ratelimited": 5}
    icmp6 = {"echo_replies": 51, "unreachable": 52, "packet_too_big": 53, "time_exceeded": 54,
             "parameter_problem": 55, "ratelimited": 56}
    nd6 = {"received": 61, "solicitations_sent": 62, "advertisements_sent": 63, "entries": 64,
           "probes_sent": 65, "solicitations_ratelimited": 66}
    arp = {"received": 71, "requests_sent": 72, "replies_sent": 73, "requests_ratelimited": 74,
           "probes_sent": 75, "entries": 2}
    stats = {"interfaces": [iface], "drops": drops, "icmp": icmp, "forwarded": 41,
             "delivered_local": 42, "fragments_created": 43, "arp": arp,
             "icmp6": icmp6, "nd6": nd6}
    zones = [dict(name="mbuf_cluster", size=2048, limit=256, used=11, free=12, requests=13,
                  fails=14, sleeps=15)]
    control = EndpointStats("control socket", "net.forwarder.control", ("bad_json", "args"))
    for reason in ("bad_json", "bad_json", "args"):
        control.reject(reason)
    assert control.admit(1) and not control.admit(1) and not control.admit(1)
    router = SimpleNamespace(
        config=SimpleNamespace(router=SimpleNamespace(name="rX")),
        dp=SimpleNamespace(progress_age=lambda: 0.01, stats=lambda: stats),
        healthy=lambda: True, reloads=SimpleNamespace(ok=6, failed=2),
        attached_ports=lambda: {"tap1": SimpleNamespace(name="tap1", joins=3, losses=2)},
        sysctl=sysctl.SysctlTree({"net.inet.ip.ttl": 33}, physmem=1 << 30),
        endpoints={"control": control})
    reg = CollectorRegistry()
    reg.register(metrics.RouterCollector(router))
    with mock.patch("forwarder.mbufs.zone_stats", return_value=zones):
        text = generate_latest(reg).decode()
    got = {(s.name, frozenset(s.labels.items())): s.value
           for fam in text_string_to_metric_families(text) for s in fam.samples}

    def val(metric: str, **labels: str) -> float:
        return got[(metric, frozenset({"router": "rX", **labels}.items()))]

    for key in INTERFACE_SERIES:
        assert val(f"forwarder_interface_{key}_total", interface="tap1") == iface[key], key
    for reason, v in drops.items():
        assert val("forwarder_drops_total", reason=reason) == v
    helps = [line for line in text.splitlines() if line.startswith("# HELP forwarder_drops_total ")]
    assert len(helps) == 1
    for reason, desc in DROP_REASONS.items():
        assert f"{reason}: {desc}" in helps[0], reason
    kinds = {dict(labels)["kind"]: v for (n, labels), v in got.items()
             if n == "forwarder_icmp_total"}
    # errors_sent is the sum of its parts: exporting it would count errors twice
    assert kinds == {k: v for k, v in icmp.items() if k != "errors_sent"}
    assert val("forwarder_forwarded_packets_total") == 41
    assert val("forwarder_delivered_local_total") == 42
    assert val("forwarder_fragments_created_total") == 43
    for key in ("used", "free", "limit"):
        assert val(f"forwarder_zone_{key}", zone="mbuf_cluster") == zones[0][key]
    for key, metric in (("fails", "failures"), ("sleeps", "sleeps"), ("requests", "requests")):
        assert val(f"forwarder_zone_{metric}_total", zone="mbuf_cluster") == zones[0][key]
    assert val("forwarder_reloads_total", result="ok") == 6
    assert val("forwarder_reloads_total", result="failed") == 2
    assert val("forwarder_sysctl", name="net.inet.ip.ttl") == 33
    assert val("forwarder_arp_entries") == 2
    kinds6 = {dict(labels)["kind"]: v for (n, labels), v in got.items()
              if n == "forwarder_icmp6_total"}
    assert kinds6 == icmp6
    for k in ("received", "solicitations_sent", "advertisements_sent",
              "solicitations_ratelimited"):
        assert val("forwarder_nd6_total", kind=k) == nd6[k]
    assert val("forwarder_nd6_entries") == 64
    assert val("forwarder_nd6_probes_total") == 65
    kinds4 = {dict(labels)["kind"]: v for (n, labels), v in got.items()
              if n == "forwarder_arp_total"}
    assert kinds4 == {k: v for k, v in arp.items() if k not in ("entries", "probes_sent")}
    assert val("forwarder_arp_probes_total") == 75
    assert val("forwarder_dataplane_up") == 1
    assert val("forwarder_interface_up", interface="tap1") == 0
    assert val("forwarder_attach_joins_total", interface="tap1") == 3
    assert val("forwarder_attach_losses_total", interface="tap1") == 2
    assert val("forwarder_control_rejected_total", reason="bad_json") == 2
    assert val("forwarder_control_rejected_total", reason="args") == 1
    assert val("forwarder_control_refused_connections_total") == 2
    assert val("forwarder_control_clients") == 1


# --- a real router ----------------------------------------------------------------------

ROUTES = [{"prefix": "10.20.0.0/16", "via": "10.2.0.2"}]
MAX_ROUTES = 8


@pytest.fixture(scope="module")
def router(lab, tmp_path_factory):  # noqa: F811
    r = start_router(lab, tmp_path_factory.mktemp("contract"), routes=ROUTES,
                     extra_argv=("-o", f"net.route.max_routes={MAX_ROUTES}"))
    yield r
    code, out = r.stop()
    assert code == 0, out


def config_text(r: RunningRouter, sysctl_: dict | None = None, routes=ROUTES,
                mtu1: int | None = None) -> str:
    doc = lab_doc(r.lab, r.socket, sysctl_, routes)
    if mtu1 is not None:
        tap1 = next(i for i in doc["interface"] if i["name"] == "tap1")
        tap1["mtu"] = mtu1
    return to_toml(doc)


def refused(cp: subprocess.CompletedProcess, code: int, stderr: str) -> None:
    assert (cp.returncode, cp.stdout, cp.stderr) == (code, "", stderr)


@requires_netns
def test_stats_v_names_and_describes_every_drop_reason(router):
    out = router.cli("stats", "-v").stdout
    for name, desc in DROP_REASONS.items():
        assert re.search(rf"^ +\d+ {name} +{re.escape(desc)}$", out, re.M), name
    assert router.cli_json("stats", "-v")["drop_reasons"] == DROP_REASONS
    plain = router.cli_json("stats")
    assert "drop_reasons" not in plain and set(plain["drops"]) == set(DROP_REASONS)
    # Public names are the C symbols lowercased (dp_drop.h: _(SYMBOL, "description")).
    header = (Path(__file__).parent.parent / "forwarder" / "dp_drop.h").read_text()
    symbols = re.findall(r"^  _\((\w+),", header, re.M)
    assert [s.lower() for s in symbols] == list(DROP_REASONS)


def test_a_runtime_tunable_reaches_the_dataplane(lab, router):
    try:
        assert router.sysctl("net.inet.ip.ttl=77") == "net.inet.ip.ttl: 64 -> 77\n"
        cp = lab.ping("h1", "10.1.0.1", count=1, wait=2)
        assert cp.returncode == 0 and "ttl=77" in cp.stdout, cp.stdout
    finally:
        router.call("sysctl.set", assignments={"net.inet.ip.ttl": 64})


@requires_netns
def test_route_add_respects_the_table_limit_but_replaces_when_full(router):
    assert len(router.call("route.list")) == MAX_ROUTES - 1
    try:
        assert router.cli("route", "add", "10.66.0.0/16", "blackhole").stdout == \
            "route 10.66.0.0/16 added\n"                                     # the 8th: fits
        before = router.call("route.list")
        refused(router.cli("route", "add", "10.67.0.0/16", "blackhole", check=False), 1,
                f"forwarder route: route table full: {MAX_ROUTES} routes, "
                f"net.route.max_routes is {MAX_ROUTES}\n")
        assert router.call("route.list") == before
        # A full table still takes a replacement of a route it has.
        assert router.cli("route", "add", "10.66.0.0/16", "prohibit").stdout == \
            "route 10.66.0.0/16 added\n"
        assert router.call("route.list") != before
    finally:
        for p in ("10.66.0.0/16", "10.67.0.0/16"):
            if p in {x["prefix"] for x in router.call("route.list")}:
                router.call("route.del", prefix=p)


@requires_netns
def test_route_json_and_refusal_shapes(router):
    listed = router.cli_json("route")
    assert {tuple(sorted(r)) for r in listed} == {("interface", "origin", "prefix", "type", "via")}
    assert {"prefix": "10.20.0.0/16", "via": "10.2.0.2", "interface": "tap2",
            "type": "forward", "origin": "static"} in listed
    refused(router.cli("route", "del", "10.66.0.0/16", check=False), 1,
            "forwarder route: no route for 10.66.0.0/16\n")


@requires_netns
def test_a_config_route_overridden_at_runtime_comes_back_on_reload(router):
    router.cli("route", "add", "10.20.0.0/16", "blackhole")
    try:
        r = next(x for x in router.call("route.list") if x["prefix"] == "10.20.0.0/16")
        assert r["type"] == "blackhole"
        assert router.cli("reload").stdout == "reloaded: route ~10.20.0.0/16\n"
        r = next(x for x in router.call("route.list") if x["prefix"] == "10.20.0.0/16")
        assert (r["type"], r["via"], r["interface"]) == ("forward", "10.2.0.2", "tap2")
    finally:
        router.call("reload")


@requires_netns
def test_reload_changing_a_boot_only_tunable_is_refused_and_changes_nothing(router):
    good = router.config.read_text()
    before = router.snapshot()
    try:
        router.config.write_text(config_text(
            router, {"net.link.max_interfaces": 32},
            routes=ROUTES + [{"prefix": "10.88.0.0/16", "type": "blackhole"}], mtu1=1400))
        refused(router.cli("reload", check=False), 1,
                "forwarder reload: boot-only tunables changed: net.link.max_interfaces; "
                "restart\n")
        assert router.snapshot() == before
    finally:
        router.config.write_text(good)
    assert router.cli("reload").stdout == "reloaded: no changes\n"


@requires_netns
def test_reload_orders_mbuf_limit_changes_so_every_step_is_valid(router):
    """nmbufs must cover the cluster limits after each single change: it goes
    first when it grows or becomes unlimited, last when it shrinks."""
    good = router.config.read_text()
    limited = {"kern.ipc.nmbjumbop": 0, "kern.ipc.nmbjumbo9": 0, "kern.ipc.nmbjumbo16": 0}

    def reload_to(values: dict) -> None:
        router.config.write_text(config_text(router, {**limited, **values}))
        cp = router.cli("reload", check=False)
        assert cp.returncode == 0, cp.stderr
        got = {i["name"]: i["value"] for i in router.call("sysctl.list")}
        assert {k: got[k] for k in values} == values

    try:
        reload_to({"kern.ipc.nmbclusters": 1000, "kern.ipc.nmbufs": 2000})   # nmbufs shrinks
        reload_to({"kern.ipc.nmbclusters": 3000, "kern.ipc.nmbufs": 4000})   # nmbufs grows
        reload_to({"kern.ipc.nmbclusters": 5000, "kern.ipc.nmbufs": 0})      # unlimited
        reload_to({"kern.ipc.nmbclusters": 1000, "kern.ipc.nmbufs": 2000})   # limited again
    finally:
        router.config.write_text(good)
        cp = router.cli("reload", check=False)
        assert cp.returncode == 0, cp.stderr
    info = {i["name"]: i for i in router.call("sysctl.list")}
    assert all(info[n]["value"] == info[n]["default"] for n in sysctl.MBUF_LIMITS)


# --- refused means unchanged ------------------------------------------------------------

def test_an_nmbufs_below_the_cluster_limits_is_a_config_error_at_its_line() -> None:
    """Checked with the config (file:line:key, or the -o that set it), not only
    when the router applies the limits and refuses to start or reload."""
    text = ONE_LINK + '[sysctl]\n"kern.ipc.nmbclusters" = 200\n"kern.ipc.nmbufs" = 100\n'
    low = problems(text)
    assert len(low) == 1 and re.fullmatch(
        r"r\.toml:8: sysctl\.kern\.ipc\.nmbufs: 100 is below the total of the cluster limits "
        r"\(\d+\); raise it, or set it to 0 \(unlimited\)", low[0]), low
    assert problems(ONE_LINK, ["kern.ipc.nmbufs=10"])[0].startswith(
        "command line: -o kern.ipc.nmbufs=10: 10 is below the total of the cluster limits")
    unlimited = {n: 0 for n in sysctl.CLUSTER_LIMITS}
    assert parse_config(ONE_LINK, "r.toml", [f"{n}={v}" for n, v in unlimited.items()]
                        + ["kern.ipc.nmbufs=10"]).sysctl["kern.ipc.nmbufs"] == 10
    assert parse_config(ONE_LINK, "r.toml", ["kern.ipc.nmbufs=0"]).sysctl["kern.ipc.nmbufs"] == 0


@requires_netns
def test_a_reload_with_inconsistent_mbuf_limits_changes_no_mtu(router):
    good = router.config.read_text()
    before = router.snapshot()
    try:
        router.config.write_text(config_text(router, {"kern.ipc.nmbufs": 10}, mtu1=1400))
        cp = router.cli("reload", check=False)
        assert cp.returncode == 1 and "sysctl.kern.ipc.nmbufs: 10 is below" in cp.stderr, \
            cp.stderr
        assert router.snapshot() == before
        h1 = router.lab.host("h1")
        assert nn.link_info(h1.ifname, h1.netns).mtu == 1500
    finally:
        router.config.write_text(good)
    assert router.cli("reload").stdout == "reloaded: no changes\n"


@requires_netns
@pytest.mark.parametrize("via", ["10.2.0.0", "10.2.0.255"])
def test_route_add_refuses_a_gateway_on_a_network_or_broadcast_address(router, via):
    """As the config does: no neighbour can own those addresses."""
    before = router.call("route.list")
    refused(router.cli("route", "add", "10.70.0.0/16", "via", via, check=False), 1,
            f"forwarder route: gateway {via} is the network or broadcast address of "
            f"10.2.0.0/24\n")
    assert router.call("route.list") == before


@requires_netns
def test_a_reload_failing_half_way_puts_the_changed_mtus_back(tmp_path: Path) -> None:
    """MTUs change first; when a later one cannot (its host namespace is gone),
    those already changed are put back -- in the dataplane and on the host's
    side of the TAP -- and the reload is refused.  A router of its own: it
    loses a host."""
    with nn.Topology() as topo:
        lab2 = make_lab(topo, n_hosts=2)
        r = start_router(lab2, tmp_path / "halfway")
        try:
            good = r.config.read_text()
            h1, h2 = lab2.host("h1"), lab2.host("h2")
            nn.remove_netns(h2.netns)              # tap2 goes with it: its MTU cannot be set
            doc = lab_doc(lab2, r.socket)
            assert to_toml(doc) == good
            for itf in doc["interface"]:
                assert itf["mtu"] == 1500
                itf["mtu"] = 1400
            r.config.write_text(to_toml(doc))
            cp = r.cli("reload", check=False)
            assert cp.returncode == 1, cp.stdout + cp.stderr
            assert cp.stderr.startswith("forwarder reload: interface tap2: mtu 1400: "), cp.stderr
            mtus = {i["name"]: i["mtu"] for i in r.stats()["interfaces"]}
            assert mtus == {"tap1": 1500, "tap2": 1500}
            assert nn.link_info(h1.ifname, h1.netns).mtu == 1500
            r.config.write_text(good)
            assert r.cli("reload").stdout == "reloaded: no changes\n"
        finally:
            code, out = r.stop()
        assert code == 0, out
