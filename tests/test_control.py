"""Operating a real router in namespaces: the control socket (permissions,
protocol), reload by SIGHUP and by `forwarder reload` with good and broken
configs, health while the dataplane is stalled, the Prometheus endpoint, and
kern.ipc.nmbclusters lowered and raised under a flood with the denials and
the zone warning following the limit.

h1 (10.1.0.2) --tap1-- router --tap3-- h3 (10.3.0.2); 10.3.0.100-249 never answer ARP
                         |--tap2-- h2 (10.2.0.2)
"""
from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from allocator_pyx.netstat import MBUF_ZONES, netstat_m_dict
from forwarder import netns as nn
from forwarder.dataplane import DROP_REASONS
from forwarder.lab.tomlwrite import to_toml
from tests.routerlab import RunningRouter, lab_config, lab_doc, router_mac, start_router
from tests.topology import lab, make_lab, requires_netns, topology  # noqa: F401

pytestmark = requires_netns

METRICS_PORT = 9477            # inside the router's own namespace: nothing else there
ROUTES = [{"prefix": "10.20.0.0/16", "via": "10.2.0.2"}]


@pytest.fixture(scope="module")
def router(lab, tmp_path_factory):  # noqa: F811
    r = start_router(lab, tmp_path_factory.mktemp("control"), routes=ROUTES,
                     metrics=f"127.0.0.1:{METRICS_PORT}")
    yield r
    code, out = r.stop()
    assert code == 0, out
    assert "mbuf clusters in use" in out


def config_text(r: RunningRouter, routes=ROUTES, sysctl=None, extra: str = "") -> str:
    """A config for the running router (same socket, interfaces and metrics)."""
    return lab_config(r.lab, r.socket, sysctl, routes, f"127.0.0.1:{METRICS_PORT}", extra)


def prefixes(r: RunningRouter) -> set[str]:
    return {x["prefix"] for x in r.call("route.list")}


def reloads(r: RunningRouter) -> dict:
    return r.call("stats")["reloads"]


def line_of(text: str, needle: str) -> int:
    return text[:text.index(needle)].count("\n") + 1


# --- the socket and its protocol ------------------------------------------------------------

def test_control_socket_is_a_socket_of_mode_0600(router):
    st = os.stat(router.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()


def _exchange(path: Path, *lines: bytes) -> list[dict]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(str(path))
        f = s.makefile("rwb")
        out = []
        for line in lines:
            f.write(line + b"\n")
            f.flush()
            out.append(json.loads(f.readline()))
        return out
    finally:
        s.close()


def test_protocol_is_versioned_json_lines_with_errors_as_replies(router):
    def req(command, version=1, **args):
        return json.dumps({"version": version, "command": command, "args": args}).encode()

    hello, ping, v2, unknown, badargs, notjson, notobj, bad_value = _exchange(
        router.socket, req("hello"), req("ping"), req("ping", version=2), req("frob"),
        req("sysctl.set", names=["x"]), b"{not json", b"[1, 2]",
        req("sysctl.set", assignments={"net.inet.ip.ttl": 0}))
    assert hello == {"version": 1, "ok": True,
                     "result": {"protocol": 1, "router": router.lab.name, "pid": router.proc.pid}}
    assert ping["result"] == "pong"
    assert not v2["ok"] and v2["kind"] == "version" and "not supported" in v2["error"]
    assert not unknown["ok"] and unknown["kind"] == "command"
    assert not badargs["ok"] and badargs["kind"] == "args"
    assert not notjson["ok"] and not notobj["ok"]
    assert not bad_value["ok"] and bad_value["kind"] == "SysctlError"
    assert "out of range" in bad_value["error"]
    # One connection carried all of that; the router is fine.
    assert router.call("health")["healthy"]


# --- reload: SIGHUP and `forwarder reload` --------------------------------------------------

def test_sighup_with_a_good_config_applies_it(router):
    good = router.config.read_text()
    n0, mark = reloads(router)["ok"], len(router.log_text())
    try:
        router.config.write_text(config_text(
            router, routes=ROUTES + [{"prefix": "10.88.0.0/16", "via": "10.2.0.2"}],
            sysctl={"net.inet.icmp.icmplim": 150}))
        router.sighup()
        router.wait_for(lambda: reloads(router)["ok"] == n0 + 1, what="SIGHUP reload")
        assert "10.88.0.0/16" in prefixes(router)
        assert router.sysctl("net.inet.icmp.icmplim") == "net.inet.icmp.icmplim: 150\n"
        listed = router.cli("route", "list").stdout
        assert re.search(r"^10\.88\.0\.0/16 +10\.2\.0\.2 +tap2 +forward +static$", listed, re.M), listed
        router.wait_log(r"reload of .*router\.toml ok: .*route \+10\.88\.0\.0/16", since=mark)
    finally:
        router.config.write_text(good)
        router.call("reload")
    assert "10.88.0.0/16" not in prefixes(router)
    assert router.sysctl("net.inet.icmp.icmplim") == "net.inet.icmp.icmplim: 200\n"


BROKEN = {
    # name: (text appended to a good config, the text on the line the error names)
    "toml syntax": ('\n[[route]\nprefix = "10.89.0.0/16"\n', "[[route]\n"),
    "off-link gateway": ('\n[[route]]\nprefix = "10.89.0.0/16"\nvia = "10.9.9.9"\n',
                         'via = "10.9.9.9"'),
    "unknown tunable": ('\n[sysctl]\n"kern.ipc.nosuch" = 5\n', '"kern.ipc.nosuch"'),
    "out of range": ('\n[sysctl]\n"net.inet.ip.ttl" = 300\n', '"net.inet.ip.ttl" = 300'),
}


def _break(router: RunningRouter, case: str) -> tuple[str, int]:
    """Write a broken config; return the old text and the line the error names."""
    good = router.config.read_text()
    tail, needle = BROKEN[case]
    text = config_text(router) + tail
    router.config.write_text(text)
    return good, line_of(text, needle)


@pytest.mark.parametrize("case", list(BROKEN))
def test_sighup_with_a_broken_config_keeps_the_running_one(router, case):
    before, r0, mark = router.snapshot(), reloads(router), len(router.log_text())
    good, line = _break(router, case)
    try:
        router.sighup()
        router.wait_for(lambda: reloads(router)["failed"] == r0["failed"] + 1,
                        what="reload failure counted")
        assert router.snapshot() == before
        r1 = reloads(router)
        assert r1["ok"] == r0["ok"]
        path = re.escape(str(router.config))
        assert re.match(f"{path}:{line}: ", r1["last_error"]), r1["last_error"]
        router.wait_log(rf"ERROR reload of {path} failed, running config kept: {path}:{line}: ",
                        since=mark)
        assert router.call("health")["healthy"]
    finally:
        router.config.write_text(good)


def test_forwarder_reload_applies_a_good_config_and_refuses_a_broken_one(lab, router):
    good = router.config.read_text()
    r0 = reloads(router)
    try:
        # Runtime state first: a route added by hand and a tunable set by hand.
        router.cli("route", "add", "10.66.0.0/16", "via", "10.2.0.2")
        router.sysctl("net.link.ether.inet.max_age=600")
        router.config.write_text(config_text(
            router, routes=ROUTES + [{"prefix": "10.99.0.0/16", "type": "prohibit"}]))
        cp = router.cli("reload")
        assert cp.stdout == "reloaded: route -10.66.0.0/16; route +10.99.0.0/16\n"
        # Runtime routes go, the config's come; a tunable the config leaves alone stays.
        assert {"10.99.0.0/16", "10.20.0.0/16"} <= prefixes(router)
        assert "10.66.0.0/16" not in prefixes(router)
        assert router.sysctl("net.link.ether.inet.max_age") == "net.link.ether.inet.max_age: 600\n"
        cp = lab.ping("h1", "10.99.0.1", count=1, wait=2)
        assert "Packet filtered" in cp.stdout, cp.stdout

        before = router.snapshot()
        for case in BROKEN:
            _, line = _break(router, case)
            cp = router.cli("reload", check=False)
            assert cp.returncode == 1, (case, cp.stdout, cp.stderr)
            assert cp.stdout == ""
            assert re.match(rf"forwarder reload: {re.escape(str(router.config))}:{line}: ",
                            cp.stderr), cp.stderr
            assert router.snapshot() == before
        router.config.unlink()
        cp = router.cli("reload", check=False)
        assert cp.returncode == 1 and "cannot read" in cp.stderr, cp.stderr
        assert router.snapshot() == before
        r1 = reloads(router)
        assert (r1["ok"], r1["failed"]) == (r0["ok"] + 1, r0["failed"] + len(BROKEN) + 1)
        assert re.search(rf"reloads: {r1['ok']} ok, {r1['failed']} failed \(last error: .*cannot read",
                         router.cli("stats").stdout)
    finally:
        router.config.write_text(good)
        router.call("reload")
        router.call("sysctl.set", assignments={"net.link.ether.inet.max_age": 1200})
    assert "10.99.0.0/16" not in prefixes(router)
    assert reloads(router)["last_error"] is None


# --- health ---------------------------------------------------------------------------------

def _healthy(router: RunningRouter) -> bool:
    return router.call("health")["healthy"]


def test_health_fails_while_the_dataplane_is_stalled(lab, router):
    mark = len(router.log_text())
    try:
        # A short stall ends by itself.  Progress within the last 2 s still
        # counts: the loop went round at most 50 ms (its epoll timeout) before
        # the stall, which began after t0, so it cannot turn unhealthy before
        # t0 + 1.95 s, however slow the machine (only a lower bound holds).
        t0 = time.monotonic()
        cp = router.cli("debug", "stall", "4")
        assert cp.stdout == "dataplane stalled for 4 s (forwarder debug resume ends it)\n"
        router.wait_for(lambda: not _healthy(router), timeout=10, what="unhealthy in a stall")
        assert time.monotonic() - t0 >= 1.9
        router.wait_for(lambda: _healthy(router), timeout=10, what="healthy after the stall")

        # A long one is ended by resume; meanwhile `forwarder health` exits 1.
        router.cli("debug", "stall", "60")
        router.wait_for(lambda: not _healthy(router), timeout=10, what="unhealthy in a stall")
        cp = router.cli("health", check=False)
        assert cp.returncode == 1, cp.stdout + cp.stderr
        assert re.fullmatch(r"unhealthy: dataplane stalled for \d+\.\d s\n", cp.stderr), cp.stderr
        h = json.loads(router.cli("health", "--json", check=False).stdout)
        assert h["healthy"] is False and h["stalled"] is True and h["running"] is True
        assert h["progress_age"] >= 2
        cp = router.cli("debug", "stall", "5", check=False)
        assert cp.returncode == 1 and "already stalled" in cp.stderr, cp.stderr
        # Counters are read under the dataplane's lock: a client that will not
        # wait gives up (unreachable), and the router does not mind.
        cp = router.cli("stats", "--timeout", "0.5", check=False)
        assert cp.returncode == 3 and "no answer within 0.5 s" in cp.stderr, cp.stderr
        # The metrics endpoint still answers (within scrape()'s 5 s client
        # timeout, not after the 60 s stall) and says the dataplane is down.
        m = samples(scrape(lab))
        assert m[("forwarder_dataplane_up", frozenset({"router": router.lab.name}.items()))] == 0
        assert ("forwarder_zone_used", frozenset({"router": router.lab.name,
                                                  "zone": "mbuf_cluster"}.items())) in m
        assert router.cli("debug", "resume").stdout == "dataplane resumed\n"
        router.wait_for(lambda: _healthy(router), timeout=5, what="healthy after resume")
        assert router.cli("health").returncode == 0
        assert router.cli("debug", "resume").stdout == "dataplane was not stalled\n"
        assert lab.ping("h1", "10.3.0.2", count=1, wait=2).returncode == 0
    finally:
        router.call("debug.resume")
    router.wait_log(r"WARNING dataplane resumed after \d+\.\d s stall", since=mark)
    time.sleep(0.2)
    assert "Traceback" not in router.log_text()[mark:]


# --- metrics ------------------------------------------------------------------------------------

def scrape(lab, path: str = "/metrics") -> str:
    """GET the router's metrics endpoint from a thread inside the router's namespace."""
    out: dict[str, object] = {}

    def get() -> None:
        try:
            with nn.enter_netns(lab.router_ns):
                with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}{path}",
                                            timeout=5) as resp:
                    out["text"] = resp.read().decode()
        except Exception as e:  # noqa: BLE001 - reported below
            out["error"] = e

    t = threading.Thread(target=get, name="scrape")
    t.start()
    t.join(10)
    assert "text" in out, f"scrape failed: {out.get('error', 'timed out')}"
    return out["text"]  # type: ignore[return-value]


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, frozenset of labels): value}."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_metrics_endpoint_serves_counters_drops_and_zone_gauges(lab, router):
    assert lab.ping("h1", "10.3.0.2", count=2, wait=2).returncode == 0
    gauges = ("used", "free", "limit")

    def zone_gauges(zs: dict[str, dict]) -> dict:
        return {z: [zs[z][k] for k in gauges] for z in MBUF_ZONES}

    for _ in range(5):       # a scrape between two equal zone readings: the gauges are exact
        before, zones_before = router.stats(), router.zones()
        m = samples(scrape(lab))
        after, zones = router.stats(), router.zones()
        if zone_gauges(zones_before) == zone_gauges(zones):
            break
    name = router.lab.name

    def val(metric: str, **labels: str) -> float:
        return m[(metric, frozenset({"router": name, **labels}.items()))]

    for b, a in zip(before["interfaces"], after["interfaces"]):
        for key in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "rx_nobuf", "rx_errors"):
            v = val(f"forwarder_interface_{key}_total", interface=b["name"])
            assert b[key] <= v <= a[key], (b["name"], key)
    assert val("forwarder_interface_rx_packets_total", interface="tap1") >= 2
    for reason in DROP_REASONS:
        v = val("forwarder_drops_total", reason=reason)
        assert before["drops"][reason] <= v <= after["drops"][reason], reason
    assert before["forwarded"] <= val("forwarder_forwarded_packets_total") <= after["forwarded"]
    assert val("forwarder_forwarded_packets_total") >= 4
    for kind in ("echo_replies", "unreachable", "time_exceeded", "ratelimited"):
        assert before["icmp"][kind] <= val("forwarder_icmp_total", kind=kind) <= after["icmp"][kind]
    nmbclusters = router.call("sysctl.get", names=["kern.ipc.nmbclusters"])[0]["value"]
    for z in MBUF_ZONES:
        for key in gauges:
            lo, hi = sorted((zones_before[z][key], zones[z][key]))
            assert lo <= val(f"forwarder_zone_{key}", zone=z) <= hi, (z, key)
        for key, metric in (("fails", "failures"), ("requests", "requests")):
            assert zones_before[z][key] <= val(f"forwarder_zone_{metric}_total", zone=z) \
                <= zones[z][key], (z, key)
        assert val("forwarder_zone_sleeps_total", zone=z) == zones[z]["sleeps"]
    assert val("forwarder_zone_limit", zone="mbuf_cluster") == nmbclusters
    assert val("forwarder_zone_used", zone="mbuf_cluster") + \
        val("forwarder_zone_free", zone="mbuf_cluster") > 0          # the Packet zone's clusters
    assert val("forwarder_dataplane_up") == 1
    assert 0 <= val("forwarder_dataplane_progress_age_seconds") < 2
    assert val("forwarder_sysctl", name="net.inet.ip.ttl") == 64
    assert val("forwarder_sysctl", name="kern.ipc.nmbclusters") == nmbclusters
    assert val("forwarder_reloads_total", result="ok") == reloads(router)["ok"]
    assert val("forwarder_arp_entries") == after["arp"]["entries"]


# --- nmbclusters under a flood ------------------------------------------------------------------

class Flood:
    """h1 sends UDP to 150 addresses on h3's link that never answer ARP, from an
    AF_PACKET socket in h1's namespace: every frame is held by the router
    (16 per neighbour) and pins a cluster.  Bounded in frames and time."""

    def __init__(self, lab, max_frames: int = 1_500_000, max_seconds: float = 20.0) -> None:
        h1 = lab.host("h1")
        with nn.enter_netns(h1.netns):
            self.s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
            self.s.bind((h1.ifname, 0))
        src = nn.link_info(h1.ifname, h1.netns).mac
        self.frames = [bytes(Ether(dst=router_mac(1), src=src)
                             / IP(src="10.1.0.2", dst=f"10.3.0.{100 + i}")
                             / UDP(sport=7, dport=9) / (b"f" * 18)) for i in range(150)]
        self.max_frames, self.max_seconds = max_frames, max_seconds
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="flood", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self.stop.is_set() and self.sent < self.max_frames \
                and time.monotonic() < deadline:
            for _ in range(100):
                try:
                    self.s.send(self.frames[self.sent % 150])
                except OSError:              # the TAP's queue is full: let it drain
                    break
                self.sent += 1
            time.sleep(0.001)

    def __enter__(self) -> "Flood":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.s.close()


def denied(router: RunningRouter) -> int:
    """netstat -m's denied requests (mbufs + clusters + mbuf+clusters), as the CLI prints them."""
    d = netstat_m_dict(router.call("zones"))["denied"]
    return d["mbufs"] + d["clusters"] + d["packets"]


def test_nmbclusters_lowered_and_raised_under_a_flood(lab, router):
    """Lowering kern.ipc.nmbclusters while a flood pins clusters makes the
    denied counts grow, counted as no_buffer drops, with one zone warning in
    the log; raising it back to 0 (unlimited) stops new denials while the
    flood goes on.  The router keeps forwarding throughout."""
    warning = r"WARNING \[zone: mbuf_cluster\] kern\.ipc\.nmbclusters limit reached"
    original = router.call("sysctl.get", names=["kern.ipc.nmbclusters"])[0]["value"]
    mark = len(router.log_text())

    def window(seconds: float = 1.0) -> tuple[int, int]:
        d0, rx0 = denied(router), router.stats()["interfaces"][0]["rx_packets"]
        time.sleep(seconds)
        return denied(router) - d0, router.stats()["interfaces"][0]["rx_packets"] - rx0

    try:
        with Flood(lab) as flood:
            assert router.sysctl("kern.ipc.nmbclusters=0") == \
                f"kern.ipc.nmbclusters: {original} -> 0\n"
            time.sleep(0.3)
            more_denied, frames = window()
            assert frames > 1000, "the flood is not reaching the router"
            assert more_denied == 0, "denials with no limit"

            s0 = router.stats()
            assert router.sysctl("kern.ipc.nmbclusters=256") == "kern.ipc.nmbclusters: 0 -> 256\n"
            more_denied, frames = window()
            assert more_denied > 0, "no denial at a limit of 256 clusters"
            netstat = router.cli("netstat", "-m").stdout
            m = re.search(r"^\d+/\d+/\d+/256 mbuf clusters in use", netstat, re.M)
            assert m, netstat
            m = re.search(r"^(\d+)/(\d+)/(\d+) requests for mbufs denied", netstat, re.M)
            assert m and int(m.group(2)) > 0, netstat
            s1 = router.stats()
            assert s1["drops"]["no_buffer"] > s0["drops"]["no_buffer"]
            assert s1["interfaces"][0]["rx_nobuf"] > s0["interfaces"][0]["rx_nobuf"]
            router.wait_log(warning, timeout=3, since=mark)
            # The limit holds (without it the holds alone would pin 150 x 16 clusters).
            used = router.zones()["mbuf_cluster"]["used"]
            assert used <= 2 * 256, used

            assert router.sysctl("kern.ipc.nmbclusters=0") == "kern.ipc.nmbclusters: 256 -> 0\n"
            time.sleep(0.3)
            more_denied, frames = window()
            assert frames > 1000, "the flood stopped too early to tell"
            assert more_denied == 0, f"{more_denied} denials after raising the limit"

            # Lowered once more: denials again, but no second warning within the interval.
            router.call("sysctl.set", assignments={"kern.ipc.nmbclusters": 256})
            more_denied, _ = window(0.7)
            assert more_denied > 0
            router.call("sysctl.set", assignments={"kern.ipc.nmbclusters": 0})
            time.sleep(0.7)                  # > the watcher's period
            assert flood.sent <= flood.max_frames
        assert len(re.findall(warning, router.log_text()[mark:])) == 1
        # Still forwarding.
        assert lab.ping("h1", "10.2.0.2", count=1, wait=2).returncode == 0
    finally:
        router.call("sysctl.set", assignments={"kern.ipc.nmbclusters": original})
        router.forget_arp(incomplete=True)
    # Nothing is held any more: every cluster is back in a cache.
    router.wait_for(lambda: netstat_m_dict(router.call("zones"))["clusters"]["current"] == 0,
                    timeout=5, what="clusters released")
    assert router.call("health")["healthy"]


# --- a router that cannot start ------------------------------------------------------------------

def test_a_router_that_cannot_start_exits_1_promptly(lab, router, tmp_path):
    """Here the TAP's kernel side must go to a namespace that does not exist:
    the router reports why and exits 1 (it once hung closing its control
    socket), removing the socket; the running router is not disturbed."""
    sock = tmp_path / "broken.sock"
    cfg = tmp_path / "broken.toml"
    cfg.write_text("\n".join([
        "[router]", 'name = "broken"', f'socket = "{sock}"', "",
        "[[interface]]", 'name = "tapx9"', 'addresses = ["10.9.0.1/24"]',
        f'netns = "{lab.topo.prefix}nowhere"', ""]))
    proc = lab.popen_router([sys.executable, "-m", "forwarder.cli", "run", "-c", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=5)
        pytest.fail(f"the router neither started nor exited:\n{out}")
    assert proc.returncode == 1, out
    assert re.search(r"ERROR cannot start: .*nowhere", out), out
    assert "Traceback" not in out
    assert not sock.exists()
    assert router.call("health")["healthy"]
    assert nn.link_info("tapx9", lab.router_ns) is None


def test_a_second_router_on_a_busy_socket_is_refused(lab, router):
    """The running router's own config again: its socket is in use, so the
    newcomer exits 1 before opening a TAP, and leaves the socket alone."""
    cp = nn.run_in_netns(lab.router_ns, [sys.executable, "-m", "forwarder.cli", "run", "-c",
                                         str(router.config)], timeout=20)
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert "a router is already listening there" in cp.stderr, cp.stderr
    assert router.socket.exists()
    assert router.call("hello")["pid"] == router.proc.pid


# --- a dual-stack config --------------------------------------------------------------------

def test_a_dual_stack_config_installs_both_families_and_reloads_them(tmp_path):
    """IPv6 addresses (tap3 has IPv6 only), ra and IPv6 routes in the config:
    the router starts, installs the routes of both families (and takes IPv6
    routes at runtime), forwards IPv4 as ever; a reload moves ra from one
    interface to another and changes the IPv6 routes."""
    with nn.Topology() as topo:
        lab6 = make_lab(topo, n_hosts=3)
        doc = lab_doc(lab6, tmp_path / f"{lab6.name}.sock", routes=ROUTES + [
            {"prefix": "2001:db8:50::/48", "via": "2001:db8:2::2"},
            {"prefix": "::/0", "via": "fe80::1%tap1"}],
            addresses={"tap1": ["2001:db8:1::1/64"], "tap2": ["2001:db8:2::1/64"]})
        doc["interface"][0]["ra"] = True
        doc["interface"][2]["addresses"] = ["2001:db8:3::1/64"]
        r = lab6.start_router(tmp_path, to_toml(doc), kind=RunningRouter)
        assert "WARNING" not in r.log_text()
        r.wait_log(r"INFO interface tap3 up: 2001:db8:3::1/64, fe80::[0-9a-f:]+/64 mtu 1500")
        v6 = {"2001:db8:1::/64", "2001:db8:2::/64", "2001:db8:3::/64", "2001:db8:1::1/128",
              "2001:db8:2::1/128", "2001:db8:3::1/128", "2001:db8:50::/48", "::/0"}
        assert prefixes(r) == {"10.1.0.0/24", "10.2.0.0/24", "10.1.0.1/32", "10.2.0.1/32",
                               "10.20.0.0/16"} | v6
        routes = {x["prefix"]: x for x in r.call("route.list")}
        assert (routes["2001:db8:50::/48"]["via"], routes["2001:db8:50::/48"]["interface"]) == \
            ("2001:db8:2::2", "tap2")
        assert (routes["::/0"]["via"], routes["::/0"]["interface"]) == ("fe80::1", "tap1")
        assert routes["2001:db8:3::1/128"]["type"] == "local"
        # IPv6 routes at runtime, as IPv4 ones
        r.cli("route", "add", "2001:db8:70::/48", "via", "fe80::2%tap2")
        r.cli("route", "add", "2001:db8:71::/48", "blackhole")
        cp = r.cli("route", "add", "2001:db8:72::/48", "via", "10.2.0.2", check=False)
        assert cp.returncode == 1 and "not an IPv6 address (the prefix is IPv6)" in cp.stderr
        cp = r.cli("route", "add", "2001:db8:72::/48", "via", "fe80::2", check=False)
        assert cp.returncode == 1 and "needs its interface, e.g. fe80::2%tap1" in cp.stderr
        assert {"2001:db8:70::/48", "2001:db8:71::/48"} <= prefixes(r)
        r.cli("route", "del", "2001:db8:71::/48")
        assert "2001:db8:71::/48" not in prefixes(r)
        assert lab6.ping("h1", "10.2.0.2", count=1, wait=2).returncode == 0

        mark = len(r.log_text())
        doc["interface"][0]["ra"] = False
        doc["interface"][1]["ra"] = True
        doc["route"] = doc["route"][:2] + [{"prefix": "2001:db8:60::/48", "type": "blackhole"}]
        r.config.write_text(to_toml(doc))
        out = r.cli("reload").stdout
        assert out.startswith("reloaded: ") and "route -::/0" in out and \
            "route +2001:db8:60::/48" in out and "route -2001:db8:70::/48" in out, out
        assert "tap1 ra off" in out and "tap2 ra on" in out, out
        assert lab6.ping("h1", "10.2.0.2", count=1, wait=2).returncode == 0
        code, out = r.stop()
        assert code == 0, out
