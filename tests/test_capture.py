"""Packet capture (forwarder/capture.py, net/dp_capture.pxi) against real hosts.

h1 (10.1.0.2) --tap1-- router --tap2-- h2 (10.2.0.2)
                         |--tap3-- h3 (10.3.0.2)

`forwarder capture` runs as a user runs it (a CLI process on the router's
control socket) while the hosts ping; what it wrote is read back with
scapy's rdpcap and with `tcpdump -r`, the tools an operator opens it with.
"""
from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.utils import rdpcap

from forwarder import capture as cap
from forwarder.lab.process import forwarder_argv
from tests.routerlab import RunningRouter, start_router
from tests.topology import RouterLab, lab, requires_netns, topology  # noqa: F401

pytestmark = requires_netns

ROUTES = [{"prefix": "10.99.0.0/16", "type": "blackhole"}]


@pytest.fixture(scope="module")
def router(lab: RouterLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRouter]:  # noqa: F811
    r = start_router(lab, tmp_path_factory.mktemp("capture"), routes=ROUTES)
    for h in ("h1", "h2", "h3"):
        lab.ping(h, lab.host(h).router.ip, count=1)
    assert lab.ping("h1", "10.2.0.2", count=1).returncode == 0
    yield r
    code, out = r.stop()
    assert code == 0, out


@pytest.fixture(autouse=True)
def zones_back_at_rest(router: RunningRouter) -> Iterator[None]:
    with router.zones_kept():
        yield


class Capture:
    """`forwarder capture ARGS` in the background, armed when started."""

    def __init__(self, router: RunningRouter, *args: str, stdout=subprocess.DEVNULL) -> None:
        self.proc = subprocess.Popen(
            forwarder_argv("capture", "--socket", str(router.socket), *args),
            stdout=stdout, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()          # "capturing ...": the dataplane is armed
        assert "capturing" in line, line + self.proc.stderr.read()

    def wait(self, timeout: float = 20) -> str:
        """The capture's last words (its totals line); it must exit 0."""
        _, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        return err


def test_a_capture_of_100_pings_opens_in_rdpcap_and_tcpdump(router: RunningRouter,
                                                              lab: RouterLab,  # noqa: F811
                                                              tmp_path: Path) -> None:
    out = tmp_path / "tap1.pcap"
    # (icmp only: the router's own ARP probes of h1 may cross tap1 meanwhile)
    c = Capture(router, "tap1", "-n", "200", "-w", str(out), "--filter", "icmp")
    cp = lab.run("h1", ["ping", "-c", "100", "-i", "0.01", "-W", "1", "10.2.0.2"])
    assert cp.returncode == 0, cp.stdout
    assert "200 packets captured (count), 0 lost" in c.wait()
    pk = rdpcap(str(out))
    assert len(pk) == 200
    req = [p for p in pk if ICMP in p and p[ICMP].type == 8]
    rep = [p for p in pk if ICMP in p and p[ICMP].type == 0]
    assert len(req) == len(rep) == 100
    assert {(p[IP].src, p[IP].dst) for p in req} == {("10.1.0.2", "10.2.0.2")}
    assert sorted(p[ICMP].seq for p in req) == list(range(1, 101))
    assert all(p[IP].ttl == 64 for p in req)            # as received: before the decrement
    assert all(a.time <= b.time for a, b in zip(pk, pk[1:]))
    tcpdump = subprocess.run(["tcpdump", "-n", "-r", str(out)], capture_output=True, text=True)
    assert tcpdump.returncode == 0, tcpdump.stderr
    lines = tcpdump.stdout.splitlines()
    assert len(lines) == 200
    assert sum("10.1.0.2 > 10.2.0.2: ICMP echo request" in x for x in lines) == 100


def test_stdout_stream_pipes_into_tcpdump(router: RunningRouter, lab: RouterLab) -> None:  # noqa: F811
    argv = forwarder_argv("capture", "--socket", str(router.socket), "tap2", "-Q", "out",
                          "-n", "10", "-w", "-", "--filter", "icmp")
    cap_p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=False)
    tcpdump = subprocess.Popen(["tcpdump", "-n", "-r", "-"], stdin=cap_p.stdout,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cap_p.stdout.close()
    assert b"capturing" in cap_p.stderr.readline()
    lab.run("h1", ["ping", "-c", "10", "-i", "0.05", "-W", "1", "10.2.0.2"])
    out, _ = tcpdump.communicate(timeout=20)
    assert cap_p.wait(timeout=5) == 0
    lines = [x for x in out.splitlines() if "ICMP echo request" in x]
    assert len(lines) == 10 and all("10.1.0.2 > 10.2.0.2" in x for x in lines), out


def test_drops_capture_carries_the_reasons(router: RunningRouter, lab: RouterLab,  # noqa: F811
                                           tmp_path: Path) -> None:
    out = tmp_path / "drops.pcapng"
    c = Capture(router, "drops", "-n", "3", "-w", str(out))
    lab.ping("h1", "10.99.7.7", count=3, wait=0.3)
    assert "3 packets captured (count)" in c.wait()
    pk = rdpcap(str(out))
    assert len(pk) == 3
    assert all(p[IP].dst == "10.99.7.7" and p[ICMP].type == 8 for p in pk)
    assert all(p.comments and b"drop: blackhole" in p.comments[0] for p in pk), \
        [p.comments for p in pk]
    tcpdump = subprocess.run(["tcpdump", "-n", "-r", str(out)], capture_output=True, text=True)
    assert tcpdump.returncode == 0 and len(tcpdump.stdout.splitlines()) == 3, tcpdump.stderr


def test_drops_without_w_print_a_line_with_the_reason(router: RunningRouter,
                                                      lab: RouterLab) -> None:  # noqa: F811
    c = Capture(router, "drops", "-n", "1", stdout=subprocess.PIPE)
    lab.run("h1", ["ping", "-c", "1", "-t", "1", "-W", "1", "10.2.0.2"])
    out, err = c.proc.communicate(timeout=20)
    assert c.proc.returncode == 0, err
    assert "tap1 drop ttl_exceeded" in out and "10.1.0.2 > 10.2.0.2 ttl 1" in out, out


def test_an_idle_port_capture_ends_at_its_duration(router: RunningRouter) -> None:
    t0 = time.monotonic()
    c = Capture(router, "tap3", "-d", "1", "-n", "5")
    err = c.wait()
    assert "0 packets captured (timeout)" in err
    assert time.monotonic() - t0 < 10
    # the dataplane is disarmed: a new capture can start at once
    Capture(router, "tap3", "-d", "0.2").wait()


def test_a_slow_reader_loses_packets_and_says_how_many(router: RunningRouter,
                                                       lab: RouterLab) -> None:  # noqa: F811
    """A reader that stalls fills the ring: the dataplane counts what it
    could not keep, forwarding goes on, and captured + lost is every frame
    the port saw while armed."""
    before = {}
    got = []

    def header(h: dict) -> None:
        s = router.interface("tap1")
        before.update(rx=s["rx_packets"], tx=s["tx_packets"])
        done = threading.Event()

        def flood() -> None:
            lab.run("h1", ["ping", "-f", "-c", "3000", "-s", "1400", "-W", "1", "10.2.0.2"])
            done.set()
        threading.Thread(target=flood, daemon=True).start()
        done.wait(30)
        time.sleep(3.0)     # not reading meanwhile: the socket buffers fill, then the ring

    totals = cap.stream(router.socket, {"interface": "tap1", "count": 100000, "timeout": 8.0},
                        header, got.extend)
    s = router.interface("tap1")
    seen = (s["rx_packets"] - before["rx"]) + (s["tx_packets"] - before["tx"])
    assert totals["ended"] == "timeout"
    assert totals["lost"] > 0, totals
    assert totals["captured"] == len(got)
    assert totals["captured"] + totals["lost"] == seen, (totals, seen)
    assert lab.ping("h1", "10.2.0.2", count=1).returncode == 0


def test_refusals(router: RunningRouter) -> None:
    for args, msg in [(("nope",), "no interface 'nope'"),
                      (("tap1", "-n", "0"), "count 0 out of range"),
                      (("tap1", "-d", "0"), "timeout 0.0 out of range"),
                      (("tap1", "-s", "10"), "snap length 10 out of range")]:
        cp = subprocess.run(forwarder_argv("capture", "--socket", str(router.socket), *args),
                            capture_output=True, text=True, timeout=20)
        assert cp.returncode == 1 and msg in cp.stderr, (args, cp.stderr)
    c = Capture(router, "tap1", "-d", "2")
    cp = subprocess.run(forwarder_argv("capture", "--socket", str(router.socket), "tap2"),
                        capture_output=True, text=True, timeout=20)
    assert cp.returncode == 1 and "a capture is running already" in cp.stderr
    c.wait()


def test_bpf_filter_selects(router: RunningRouter, lab: RouterLab,  # noqa: F811
                            tmp_path: Path) -> None:
    out = tmp_path / "h3.pcap"
    c = Capture(router, "tap1", "-Q", "in", "-n", "3", "-w", str(out),
                "--filter", "icmp[icmptype] == icmp-echo and dst host 10.3.0.2")
    for _ in range(3):
        lab.ping("h1", "10.2.0.2", count=1)
        lab.ping("h1", "10.3.0.2", count=1)
    err = c.wait()
    assert "3 packets captured (count)" in err
    filtered = int(err.split(" not matching")[0].rsplit(", ", 1)[1])
    assert filtered >= 2, err                  # the pings to h2 (and h3's replies are "out")
    pk = rdpcap(str(out))
    assert [p[IP].dst for p in pk] == ["10.3.0.2"] * 3 and all(p[ICMP].type == 8 for p in pk)
