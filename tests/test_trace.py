"""The packet trace (forwarder/trace.py, net/dp_trace.pxi) against real hosts.

h1 (10.1.0.2, 2001:db8:1::2) --tap1-- router --tap2-- h2 (10.2.0.2, 2001:db8:2::2)
                                        |--tap3-- h3 (10.3.0.2)

Each test arms a trace through the control socket (or the CLI), makes real
traffic with ping from the host namespaces, and reads `trace show` back:
the stages a packet went through, in order, and how it ended.
"""
from __future__ import annotations

import json
from typing import Iterator

import jsonschema
import pytest

from forwarder import schemas
from tests.routerlab import RunningRouter, start_router
from tests.topology import RouterLab, make_lab, requires_netns, topology  # noqa: F401

pytestmark = requires_netns

ROUTES = [{"prefix": "10.99.0.0/16", "type": "blackhole"},
          {"prefix": "10.98.0.0/16", "type": "unreachable"}]


@pytest.fixture(scope="module")
def lab(topology):  # noqa: F811
    return make_lab(topology, ipv6=True)


@pytest.fixture(scope="module")
def router(lab: RouterLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRouter]:
    r = start_router(lab, tmp_path_factory.mktemp("trace"), routes=ROUTES)
    # Warm ARP both ways so a traced ping is not held for resolution
    # (one test below traces exactly that, on purpose).
    for h in ("h1", "h2", "h3"):
        lab.ping(h, lab.host(h).router.ip, count=1)
    yield r
    code, out = r.stop()
    assert code == 0, out


@pytest.fixture(autouse=True)
def zones_back_at_rest(router: RunningRouter) -> Iterator[None]:
    with router.zones_kept():
        yield


def traced(router: RunningRouter, n: int, timeout: float = 5.0) -> list[dict]:
    """The trace's packets once n are there and each has an end."""
    def ready() -> list[dict] | None:
        pk = router.call("trace.show")["packets"]
        if len(pk) >= n and all(p["end"]["kind"] != "in flight" for p in pk[:n]):
            return pk
        return None
    return router.wait_for(ready, timeout=timeout)


def stages(p: dict) -> list[str]:
    return [s["stage"] for s in p["steps"]]


def step(p: dict, stage: str) -> str:
    """The text of the packet's (first) step of that stage."""
    for s in p["steps"]:
        if s["stage"] == stage:
            return s["text"]
    raise AssertionError(f"no {stage} step in {p['steps']}")


def in_order(seq: list[str], wanted: list[str]) -> bool:
    it = iter(seq)
    return all(any(x == w for x in it) for w in wanted)


def test_forwarded_ping_shows_every_stage_in_order_and_ends_transmitted(
        router: RunningRouter, lab: RouterLab) -> None:
    router.call("trace.start", count=1, interface="tap1")
    assert lab.ping("h1", "10.2.0.2", count=1).returncode == 0
    (p,) = traced(router, 1)
    assert p["interface"] == "tap1" and p["length"] == 98
    assert "10.1.0.2 > 10.2.0.2" in p["summary"] and "ICMP echo request" in p["summary"]
    assert in_order(stages(p), ["ether_input", "ip_input", "ip_lookup", "ip_ttl", "arp",
                                "ether_output", "tx"]), stages(p)
    assert step(p, "ip_input") == "ok 10.1.0.2 > 10.2.0.2 hlen=20 len=84 proto=1"
    assert step(p, "ip_lookup") == "10.2.0.0/24 forward dev tap2"
    assert step(p, "ip_ttl") == "64 -> 63"
    assert step(p, "arp").startswith("hit 10.2.0.2 is-at ")
    assert step(p, "tx") == "tap2 98 bytes"
    assert p["end"] == {"kind": "transmitted", "detail": "tap2"}
    assert all(a["dt_us"] <= b["dt_us"] for a, b in zip(p["steps"], p["steps"][1:]))


def test_ttl_1_probe_ends_in_icmp_time_exceeded(router: RunningRouter, lab: RouterLab) -> None:
    router.call("trace.start", count=1, interface="tap1")
    lab.run("h1", ["ping", "-c", "1", "-t", "1", "-W", "1", "10.2.0.2"])
    (p,) = traced(router, 1)
    assert step(p, "drop") == "ttl_exceeded"
    assert step(p, "icmp_error") == "time exceeded code 0 to 10.1.0.2"
    # the error itself leaves through tap1, traced as part of the same packet
    assert in_order(stages(p), ["ip_lookup", "drop", "icmp_error", "ip_output", "arp", "tx"])
    assert step(p, "tx").startswith("tap1 ")
    assert p["end"] == {"kind": "icmp error", "detail": "time exceeded"}
    assert "ip_ttl" not in stages(p)            # expiry is checked before any change


def test_blackhole_ends_in_drop_blackhole(router: RunningRouter, lab: RouterLab) -> None:
    router.call("trace.start", count=1, interface="tap1")
    lab.ping("h1", "10.99.1.1", count=1, wait=0.5)
    (p,) = traced(router, 1)
    assert step(p, "ip_lookup") == "10.99.0.0/16 blackhole"
    assert stages(p)[-1] == "drop"
    assert p["end"] == {"kind": "dropped", "detail": "blackhole"}


def test_unreachable_route_answers_host_unreachable(router: RunningRouter, lab: RouterLab) -> None:
    router.call("trace.start", count=1, interface="tap1")
    lab.ping("h1", "10.98.1.1", count=1, wait=0.5)
    (p,) = traced(router, 1)
    assert step(p, "drop") == "unreachable_route"
    assert p["end"] == {"kind": "icmp error", "detail": "host unreachable"}


def test_echo_to_the_router_is_delivered_and_answered(router: RunningRouter,
                                                      lab: RouterLab) -> None:
    router.call("trace.start", count=1, interface="tap1")
    assert lab.ping("h1", "10.1.0.1", count=1).returncode == 0
    (p,) = traced(router, 1)
    assert in_order(stages(p), ["ip_input", "ip_local", "icmp_input", "ip_output", "tx"])
    assert step(p, "ip_local") == "for us: 10.1.0.1"
    assert p["end"]["kind"] == "delivered"


def test_packet_held_for_arp_records_its_release(router: RunningRouter, lab: RouterLab) -> None:
    router.forget_arp("10.3.0.2")
    router.call("trace.start", count=1, interface="tap1")
    assert lab.ping("h1", "10.3.0.2", count=1, wait=2).returncode == 0
    (p,) = traced(router, 1)
    assert step(p, "arp").startswith("miss 10.3.0.2 on tap3: held (1 waiting)")
    texts = [s["text"] for s in p["steps"] if s["stage"] == "arp"]
    assert any(t.startswith("resolved 10.3.0.2 is-at ") for t in texts), texts
    assert p["end"] == {"kind": "transmitted", "detail": "tap3"}


def test_ipv6_forwarded_ping(router: RunningRouter, lab: RouterLab) -> None:
    lab.run("h1", ["ping", "-6", "-c", "1", "-W", "2", "2001:db8:2::2"])    # warm ND
    router.call("trace.start", count=1, interface="tap1")
    cp = lab.run("h1", ["ping", "-6", "-c", "1", "-W", "2", "2001:db8:2::2"])
    assert cp.returncode == 0, cp.stdout + cp.stderr
    (p,) = traced(router, 1)
    assert in_order(stages(p), ["ether_input", "ip6_input", "ip6_lookup", "ip6_hlim", "nd6",
                                "ether_output", "tx"]), stages(p)
    assert step(p, "ip6_lookup") == "2001:db8:2::/64 forward dev tap2"
    assert step(p, "ip6_hlim") == "64 -> 63"
    assert p["end"] == {"kind": "transmitted", "detail": "tap2"}


def test_count_bounds_the_trace_and_stop_disarms(router: RunningRouter, lab: RouterLab) -> None:
    router.call("trace.start", count=3, interface="tap1")
    lab.ping("h1", "10.2.0.2", count=5, wait=1)
    doc = router.call("trace.show")
    assert len(doc["packets"]) == 3 and doc["remaining"] == 0
    assert [p["id"] for p in doc["packets"]] == sorted(p["id"] for p in doc["packets"])
    router.call("trace.start", count=50, interface="tap2")
    assert router.call("trace.stop")["remaining"] == 50
    lab.ping("h2", "10.1.0.2", count=2, wait=1)
    assert router.call("trace.show")["packets"] == []       # stopped: nothing taken


def test_interface_selects_the_receiving_port(router: RunningRouter, lab: RouterLab) -> None:
    router.call("trace.start", count=4, interface="tap2")
    lab.ping("h1", "10.2.0.2", count=2)
    pk = traced(router, 2)
    assert {p["interface"] for p in pk} == {"tap2"}          # the replies, not the requests
    assert all("ICMP echo reply" in p["summary"] for p in pk)


def test_cli_text_json_and_errors(router: RunningRouter, lab: RouterLab) -> None:
    out = router.cli("trace", "start", "-n", "1", "-i", "tap1").stdout
    assert "tracing the next 1 packets on tap1" in out
    lab.ping("h1", "10.2.0.2", count=1)
    traced(router, 1)
    text = router.cli("trace", "show").stdout
    assert "ip_ttl: 64 -> 63" in text and "end: transmitted tap2" in text
    doc = json.loads(router.cli("trace", "show", "--json").stdout)
    jsonschema.validate(doc, schemas.load("trace-show"))
    assert doc["packets"][0]["end"]["kind"] == "transmitted"
    assert "trace stopped" in router.cli("trace", "stop").stdout
    for argv, msg in [(("trace", "start", "-n", "0"), "count 0 out of range"),
                      (("trace", "start", "-n", "513"), "count 513 out of range"),
                      (("trace", "start", "-i", "nope"), "no interface 'nope'")]:
        cp = router.cli(*argv, check=False)
        assert cp.returncode == 1 and msg in cp.stderr, (argv, cp.stderr)
    cp = router.cli("trace", "show", "-n", "3", check=False)
    assert cp.returncode == 2 and "go with trace start" in cp.stderr


def test_trace_costs_nothing_when_off(router: RunningRouter, lab: RouterLab) -> None:
    """Off means off: after stop, traffic adds no record (the per-packet
    test is the only thing left in the path; its cost is in the bench)."""
    router.call("trace.start", count=1, interface="tap1")
    router.call("trace.stop")
    before = router.stats()["forwarded"]
    lab.ping("h1", "10.2.0.2", count=3, wait=1)
    assert router.stats()["forwarded"] >= before + 3
    assert router.call("trace.show")["packets"] == []



def test_bpf_filter_selects(router: RunningRouter, lab: RouterLab) -> None:
    router.call("trace.start", count=2, interface="tap1", filter="icmp and dst host 10.3.0.2")
    for _ in range(2):
        assert lab.ping("h1", "10.2.0.2", count=1).returncode == 0
        assert lab.ping("h1", "10.3.0.2", count=1).returncode == 0
    doc = router.call("trace.show")
    assert len(doc["packets"]) == 2 and doc["remaining"] == 0
    assert all("> 10.3.0.2" in p["summary"] for p in doc["packets"]), doc["packets"]
    assert doc["filtered"] >= 1                 # the ping to h2 came first, and was passed over
    cp = router.cli("trace", "start", "--filter", "ip hots 10.3.0.2", check=False)
    assert cp.returncode == 1 and "bad filter 'ip hots 10.3.0.2'" in cp.stderr, cp.stderr
