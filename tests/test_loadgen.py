"""The load generator: its templates, its counters against the kernel's, its JSON
schema and its plots; and `forwarder bench --quick` end to end.

The loads run between hosts of a lab built from the shipped lab.toml (real router,
real TAPs, private namespaces); the counters they report are checked against what
the kernel counted on the hosts' links, read here independently with pyroute2.
"""
from __future__ import annotations

import json
import re
import statistics
import struct
import subprocess
from pathlib import Path

import psutil
import pytest

from forwarder import netns as nn
from forwarder.config import load_config
from forwarder.lab import frames, plot, report, spec
from forwarder.lab.path import check_ours, host_path
from forwarder.lab.process import forwarder_argv
from forwarder.lab.run import run_load, sweep
from forwarder.lab.topology import lab_up
from tests.topology import netns_available, requires_netns

MACS = dict(src_mac="02:00:00:00:01:02", dst_mac="02:00:00:00:01:01")


# --- templates (no namespaces needed) ----------------------------------------------------

def test_imix_pattern_has_the_simple_imix_weights():
    pattern, imix = spec.parse_sizes("imix")
    assert imix and len(pattern) == 12
    assert {s: pattern.count(s) for s in set(pattern)} == {64: 7, 594: 4, 1518: 1}
    # interleaved, not 7 small ones in a row
    assert max(len(run) for run in "".join("s" if s == 64 else "L" for s in pattern).split("L")) <= 3
    assert spec.parse_sizes("64,1518") == ([64, 1518], False)
    for bad in ("63", "abc", "", "20000"):
        with pytest.raises(spec.LoadgenError):
            spec.parse_sizes(bad)


@pytest.mark.parametrize("proto", spec.PROTOCOLS)
@pytest.mark.parametrize("size", [64, 65, 128, 594, 1518])
def test_templates_have_the_size_and_valid_checksums_also_when_patched(proto, size):
    raw = frames.build_template(proto, size, 3, dst_ip="10.2.0.2", **MACS)
    assert len(raw) == size - spec.FCS
    frames.verify_template(proto, raw, 3)          # raises on any mismatch


def test_patched_icmp_and_tcp_checksums_are_valid_for_many_values():
    from scapy.layers.inet import ICMP, IP, TCP
    from scapy.layers.l2 import Ether
    for proto, cls in (("icmp", ICMP), ("tcp", TCP)):
        raw = frames.build_template(proto, 64, 1, dst_ip="10.2.0.2", **MACS)
        patch = frames.make_patcher(proto)
        for seq, ts in ((1, 2), (0xFFFFFFFF, 0xFFFFFFFF), (0x12345, 0xFFFF0000), (65535, 1)):
            buf = bytearray(raw)
            patch(buf, seq, ts)
            ip = Ether(bytes(buf))[IP]
            fresh = IP(bytes(ip))
            del fresh[cls].chksum
            assert IP(bytes(fresh))[cls].chksum == ip[cls].chksum, (proto, seq, ts)
            L = spec.LAYOUTS[proto]
            assert struct.unpack_from("!I", buf, L.seq_off)[0] == seq
            assert struct.unpack_from("!I", buf, L.ts_off)[0] == ts
            assert struct.unpack_from("!H", buf, L.magic_off)[0] == spec.MAGIC


def test_ipv6_frames_start_at_78_bytes_rfc_5180():
    pattern, imix = spec.parse_sizes("imix", family=6)
    assert imix and {s: pattern.count(s) for s in set(pattern)} == {78: 7, 594: 4, 1518: 1}
    assert spec.parse_sizes("78,1518", family=6) == ([78, 1518], False)
    with pytest.raises(spec.LoadgenError, match=r"frame size 64: must be 78\.\.1518 .*RFC 5180"):
        spec.parse_sizes("64", family=6)
    with pytest.raises(spec.LoadgenError, match="family 5"):
        spec.LoadSpec(family=5).check()


@pytest.mark.parametrize("proto", spec.PROTOCOLS)
@pytest.mark.parametrize("size", [78, 79, 594, 1518])
def test_ipv6_templates_have_the_size_and_valid_checksums_also_when_patched(proto, size):
    raw = frames.build_template(proto, size, 3, dst_ip="2001:db8:2::2", family=6, **MACS)
    assert len(raw) == size - spec.FCS and raw[12:14] == b"\x86\xdd"
    frames.verify_template(proto, raw, 3, family=6)


def test_patched_ipv6_checksums_are_valid_for_many_values():
    """UDP over IPv6 must carry a checksum: the patcher updates it (RFC 1624)
    where ICMPv6 and TCP keep theirs with a complement word."""
    from scapy.layers.inet import TCP, UDP
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
    from scapy.layers.l2 import Ether
    for proto, cls, field in (("udp", UDP, "chksum"), ("icmp", ICMPv6EchoRequest, "cksum"),
                              ("tcp", TCP, "chksum")):
        raw = frames.build_template(proto, 78, 1, dst_ip="2001:db8:2::2", family=6, **MACS)
        patch = frames.make_patcher(proto, 6)
        buf = bytearray(raw)
        L = spec.layout(proto, 6)
        for seq, ts in ((1, 2), (0xFFFFFFFF, 0xFFFFFFFF), (0x12345, 0xFFFF0000), (65535, 1),
                        (0, 0), (0xDEADBEEF, 0x01020304)):
            patch(buf, seq, ts)                 # patched again and again, as the senders do
            ip = Ether(bytes(buf))[IPv6]
            fresh = IPv6(bytes(ip))
            delattr(fresh[cls], field)
            want = getattr(IPv6(bytes(fresh))[cls], field)
            assert getattr(ip[cls], field) == want != 0, (proto, seq, ts)
            assert struct.unpack_from("!I", buf, L.seq_off)[0] == seq
            assert struct.unpack_from("!I", buf, L.ts_off)[0] == ts
            assert struct.unpack_from("!H", buf, L.magic_off)[0] == spec.MAGIC


def test_flows_differ_in_source_address_and_port():
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    pk = [Ether(frames.build_template("udp", 64, f, dst_ip="10.2.0.2", src_addrs=2, **MACS))
          for f in range(4)]
    assert [p[UDP].sport for p in pk] == [spec.SPORT_BASE + f for f in range(4)]
    assert [p[IP].src for p in pk] == ["198.18.0.1", "198.18.0.2", "198.18.0.1", "198.18.0.2"]


def test_spec_is_always_bounded():
    assert spec.LoadSpec(rate=1000, duration=2).max_count() == 2000
    assert spec.LoadSpec(duration=2).max_count() == spec.DEFAULT_MAX_COUNT
    assert spec.LoadSpec(count=10, rate=1000, duration=2).max_count() == 10
    for bad in (dict(duration=0), dict(duration=10_000), dict(flows=0), dict(rate=-1),
                dict(proto="sctp"), dict(procs=0)):
        with pytest.raises(spec.LoadgenError):
            spec.LoadSpec(**bad).check()


def test_schema_check_finds_missing_keys_and_wrong_types():
    assert report.check_schema({"schema": 1}) != []
    doc = {"schema": "x", "reordered": True}
    problems = report.check_schema(doc)
    assert "$.reordered: expected int, got bool" in problems
    assert "$.sent: missing" in problems


def test_only_our_own_namespaces_are_accepted():
    for ns in ("h1", "default", "/proc/1/ns/net", "fwXYZ-h1", "fw12345-h1"):
        with pytest.raises(spec.LoadgenError, match="not made by forwarder"):
            check_ours(ns)


# --- against a real router ------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab():
    if not netns_available():
        pytest.skip("needs root and /dev/net/tun")
    with lab_up() as lab:
        yield lab


@pytest.fixture(scope="module")
def path(lab):
    return host_path(lab, "h1", "h2")


@pytest.fixture(scope="module")
def path6(lab):
    return host_path(lab, "h1", "h2", family=6)


def _kernel(ns: str, ifname: str) -> dict:
    with nn.iproute(ns) as ipr:
        link = ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0]
        return dict(link.get_attr("IFLA_STATS64"))


@requires_netns
def test_path_is_resolved_through_the_router(lab, path):
    assert path.src_if == "tap1" and path.dst_if == "tap2"
    assert path.next_hop == "10.1.0.1"
    assert path.next_hop_mac == load_config(lab.router.config).interface("tap1").mac


@requires_netns
def test_counters_agree_with_the_kernels_interface_counters(lab, path):
    src0, dst0 = _kernel(path.src_netns, path.src_if), _kernel(path.dst_netns, path.dst_if)
    r = run_load(spec.LoadSpec(proto="udp", sizes="64,1518", flows=4, rate=10000,
                                duration=1.0), path)
    src1, dst1 = _kernel(path.src_netns, path.src_if), _kernel(path.dst_netns, path.dst_if)
    assert report.check_schema(r) == []
    sent, recv = r["sent"], r["received"]
    assert 8000 <= sent["packets"] <= 10000
    # every offered frame went into the source link: taken by the router or refused
    # (the hosts' kernels may add a frame or two of their own: the lab is dual-stack, and a
    # host sends MLD reports and solicitations of up to 110 bytes after it got its address)
    out = (src1["tx_packets"] - src0["tx_packets"]) + (src1["tx_dropped"] - src0["tx_dropped"])
    assert -2 <= out - sent["packets"] <= 4, (out, sent)
    assert src1["tx_dropped"] - src0["tx_dropped"] == sent["refused"]
    if not sent["refused"]:
        own = max(out - sent["packets"], 0)
        assert abs((src1["tx_bytes"] - src0["tx_bytes"]) - sent["bytes"]) <= 2 * 60 + own * 110
    # and every frame counted by the receiver was counted by the destination's kernel
    got = dst1["rx_packets"] - dst0["rx_packets"]
    assert got - 2 <= recv["packets"] <= got, (got, recv)
    assert abs((dst1["rx_bytes"] - dst0["rx_bytes"]) - recv["bytes"]) <= \
        2 * 60 + (got - recv["packets"]) * 110
    # the schedule: 4 flows x 64-byte frames, then 4 flows x 1518 (60 and 1514 bytes on the link)
    assert sent["bytes"] == sum(60 if (k // 4) % 2 == 0 else 1514 for k in range(sent["packets"]))
    # the per-flow view adds up, and agrees with the router's own count
    assert sum(f["sent"] for f in r["flows"]) == sent["packets"]
    assert sum(f["received"] for f in r["flows"]) == recv["packets"]
    assert sum(f["lost"] for f in r["flows"]) == r["loss"]["packets"]
    assert r["loss"]["packets"] == sent["packets"] - recv["packets"]
    assert r["router"]["forwarded"] >= recv["packets"]
    # (the load's own kernel snapshots lie inside ours: a host frame may fall between them)
    assert 0 <= out - (r["kernel"]["src"]["tx_packets"] + r["kernel"]["src"]["tx_dropped"]) <= 4
    assert r["kernel"]["receiver_socket"]["drops"] == 0
    # a paced load through an idle router loses nothing and is timed
    assert r["loss"]["ratio"] < 0.01
    lat = r["latency_us"]
    assert lat["samples"] == recv["packets"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"] < 1e6
    assert sum(r["latency_histogram"]["counts"]) == lat["samples"]
    ts = r["timeseries"]
    assert abs(sum(ts["offered_pps"]) * ts["interval_s"] - sent["packets"]) < 1


@requires_netns
@pytest.mark.parametrize("proto,sizes", [("tcp", "imix"), ("icmp", "64,594")])
def test_tcp_syn_and_icmp_echo_loads_are_received_per_flow(path, proto, sizes):
    r = run_load(spec.LoadSpec(proto=proto, sizes=sizes, flows=3, rate=3000, duration=0.4,
                                procs=2), path)
    assert report.check_schema(r) == []
    assert r["received"]["packets"] > 0.95 * r["sent"]["packets"] > 0
    assert all(f["received"] > 0 for f in r["flows"])
    assert r["spec"]["procs"] == 2 and r["spec"]["imix"] == (sizes == "imix")


@requires_netns
def test_ipv6_loads_go_through_the_router_per_flow(lab, path6):
    assert (path6.family, path6.next_hop, path6.dst_ip) == (6, "2001:db8:1::1", "2001:db8:2::2")
    assert path6.next_hop_mac == load_config(lab.router.config).interface("tap1").mac
    src0, dst0 = _kernel(path6.src_netns, path6.src_if), _kernel(path6.dst_netns, path6.dst_if)
    r = run_load(spec.LoadSpec(proto="udp", sizes="78,1518", flows=4, rate=5000,
                                duration=0.6, family=6), path6)
    dst1 = _kernel(path6.dst_netns, path6.dst_if)
    assert report.check_schema(r) == []
    assert r["spec"]["family"] == 6 and r["spec"]["sizes"] == [78, 1518]
    sent, recv = r["sent"], r["received"]
    assert sent["bytes"] == sum(74 if (k // 4) % 2 == 0 else 1514 for k in range(sent["packets"]))
    assert recv["packets"] > 0.99 * sent["packets"] > 0
    assert all(f["received"] > 0 for f in r["flows"])
    assert r["router"]["forwarded"] >= recv["packets"]
    got = dst1["rx_packets"] - dst0["rx_packets"]
    assert got - 2 <= recv["packets"] <= got, (got, recv)
    for proto in ("icmp", "tcp"):
        r = run_load(spec.LoadSpec(proto=proto, sizes="imix", flows=2, rate=2000,
                                    duration=0.3, family=6), path6)
        assert r["received"]["packets"] > 0.95 * r["sent"]["packets"] > 0, proto
    with pytest.raises(spec.LoadgenError, match="an IPv4 load on a path to 2001:db8:2::2"):
        run_load(spec.LoadSpec(duration=0.1), path6)


@requires_netns
def test_cli_writes_json_matching_the_schema_and_a_png(lab, path, tmp_path):
    js, png = tmp_path / "r.json", tmp_path / "r.png"
    cp = subprocess.run(forwarder_argv("loadgen", "--src", path.src_netns, "--dst",
                                       path.dst_netns, "--router-socket", str(lab.socket),
                                       "-d", "0.5", "-r", "4000", "-f", "5",
                                       "--json", str(js), "--plot", str(png)),
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "offered" in cp.stdout and "delivered" in cp.stdout and "p99" in cp.stdout
    doc = json.loads(js.read_text())
    assert report.check_schema(doc) == []
    assert doc["schema"] == report.SCHEMA
    assert doc["spec"]["flows"] == len(doc["flows"]) == 5
    assert doc["spec"]["rate_pps"] == 4000.0
    assert doc["received"]["packets"] > 0
    _assert_png(png)


def _assert_png(png: Path) -> None:
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
    import matplotlib.image as mpimg
    assert mpimg.imread(str(png)).ndim == 3


@requires_netns
def test_sweep_steps_the_rate_and_plots_delivered_vs_offered(path, tmp_path):
    sw = sweep(spec.LoadSpec(duration=0.3, flows=2), path, rates=[1000, 4000],
                  say=lambda _m: None, progress=False)
    assert sw["schema"] == report.SWEEP_SCHEMA
    assert [round(p["spec"]["rate_pps"]) for p in sw["points"]] == [1000, 4000]
    assert all(report.check_schema(p) == [] for p in sw["points"])
    assert sw["points"][1]["sent"]["packets"] > 2 * sw["points"][0]["sent"]["packets"]
    assert sw["peak_pps"] >= sw["points"][0]["received"]["pps"]
    png = tmp_path / "sweep.png"
    plot.plot_sweep(sw, str(png))
    _assert_png(png)
    assert "saturation" in report.format_sweep(sw)


# --- the benchmark, quickly -------------------------------------------------------------------

def test_bench_ratios_and_table_cover_the_offload_copy_loop():
    from forwarder.lab import bench
    res = {n: {k: bench.summarize([v]) for k, *_ in bench.FIGURES} | {"peak_rss_bytes": None}
           for n, v in (("router", 2.0), ("copy", 1.0), ("offload", 4.0))}
    res["offload"]["tap_offloads"] = ["csum", "tso4"]
    rat = bench.ratios(res)
    assert set(rat) == {"router/copy", "router/offload"}
    assert rat["router/offload"]["iperf3_p4_gbps"] == 0.5
    table = bench.format_table({"results": res, "ratios": rat, "params": {"reps": 1}})
    header, *rows = table.splitlines()
    assert header.split("  ")[-1].strip() == "router/offload"
    assert "C copy loop, offloads (d)" in header and "kernel" not in header
    p4 = next(r for r in rows if r.startswith("iperf3 TCP Gbit/s (4 streams)"))
    assert p4.split()[-2:] == ["2.00x", "0.50x"]
    assert "(d)'s TAPs: csum,tso4" in table
    # the container wirings: attached veths over TAPs in the hosts, and over bridges
    res = {n: {k: bench.summarize([v]) for k, *_ in bench.FIGURES} | {"peak_rss_bytes": None}
           for n, v in (("router", 2.0), ("attach", 1.8), ("bridge", 1.2))}
    rat = bench.ratios(res)
    assert set(rat) == {"attach/router", "attach/bridge"}
    assert rat["attach/router"]["pps64"] == pytest.approx(0.9)
    assert rat["attach/bridge"]["pps64"] == pytest.approx(1.5)
    header = bench.format_table({"results": res, "ratios": rat, "params": {"reps": 1}})
    assert header.splitlines()[0].split()[-2:] == ["attach/router", "attach/bridge"]


@requires_netns
def test_bench_over_ipv6(tmp_path):
    js = tmp_path / "bench6.json"
    cp = subprocess.run(forwarder_argv("bench", "--quick", "--family", "6", "--only",
                                       "router,kernel,copy", "--reps", "1", "--duration", "0.3",
                                       "--json", str(js)),
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    doc = json.loads(js.read_text())
    assert (doc["params"]["family"], doc["params"]["small_frame"]) == (6, 78)
    for name in ("router", "kernel", "copy"):
        for key in ("pps64", "pps_imix", "iperf3_gbps", "latency_p50_us"):
            assert doc["results"][name][key]["median"] > 0, (name, key)
    table = cp.stdout[cp.stdout.index("\nIPv6 "):]
    assert "78 B pps (delivered)" in table and "own 78 B rate" in table
    assert "64 B" not in table


@requires_netns
def test_bench_quick_runs_all_four_and_leaves_nothing(tmp_path):
    js = tmp_path / "bench.json"
    cp = subprocess.run(forwarder_argv("bench", "--quick", "--duration", "0.3", "--json", str(js)),
                        capture_output=True, text=True, timeout=150)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    doc = json.loads(js.read_text())
    assert doc["schema"] == "forwarder.bench/1"
    assert set(doc["results"]) == {"router", "kernel", "copy", "offload"}
    for name, res in doc["results"].items():
        for key in ("pps64", "pps_imix", "iperf3_gbps", "iperf3_p4_gbps", "latency_p50_us",
                    "latency_p99_us"):
            s = res[key]
            assert len(s["runs"]) >= 3, (name, key)
            runs = s["runs"]
            assert (s["min"], s["median"], s["max"]) == (
                min(runs), statistics.median(runs), max(runs)), (name, key, s)
            assert s["spread_pct"] == pytest.approx(100 * (s["max"] - s["min"]) / 2 / s["median"])
            assert s["median"] > 0, (name, key, s)
        assert (res["peak_rss_bytes"] is None) == (name == "kernel")
        # the forwarding process's CPU time per packet (the kernel has no process)
        assert ("cpu_us_per_packet64" in res) == (name != "kernel")
    assert doc["results"]["router"]["peak_rss_bytes"] > 10 * 2**20
    # (d)'s TAPs took at least checksum and TSO offloads (Linux >= 2.6.27)
    assert {"csum", "tso4"} <= set(doc["results"]["offload"]["tap_offloads"])
    for k in ("router/kernel", "router/copy", "router/offload"):
        assert set(doc["ratios"][k]) >= {"pps64", "pps_imix", "iperf3_gbps", "iperf3_p4_gbps",
                                         "latency_p50_us"}
        base = doc["results"][k.split("/")[1]]
        for key, ratio in doc["ratios"][k].items():
            if ratio is not None:
                assert ratio == pytest.approx(doc["results"]["router"][key]["median"]
                                              / base[key]["median"]), (k, key)
    for row in ("64 B pps", "IMIX pps", "iperf3 TCP Gbit/s (1 stream)",
                "iperf3 TCP Gbit/s (4 streams)", "latency p99", "peak RSS",
                "C copy loop, offloads (d)", "router/offload"):
        assert row in cp.stdout
    # nothing left: the namespaces it named, the router and the two copy loops
    prefixes = re.findall(r"namespaces (fw[0-9a-f]{6}-)\*", cp.stdout)
    assert len(prefixes) == 4
    assert not [n for n in nn.list_netns() if n.startswith(tuple(prefixes))]
    pids = [int(p) for p in re.findall(r"forwarding process pid (\d+)", cp.stdout)]
    assert len(pids) == 3
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
