"""Neighbour unreachability detection (RFC 4861 7.3): the IPv6 neighbour
cache's REACHABLE, STALE, DELAY and PROBE states, on the wire.

h1 2001:db8:1::2/64 --tap1-- router 2001:db8:1::1/64

h1 is a Linux kernel: it answers the router's solicitations, multicast and
unicast.  The other neighbours of the link are played with scapy from h1's
side of tap1, from MACs h1 does not have, so that only the test answers
for them (or nobody does).  The timers are shortened for each test through
the runtime sysctl path; nd6_delay is shortened in the config already.
"""
from __future__ import annotations

from typing import Iterator

import pytest
from scapy.layers.inet6 import (ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS,
                                ICMPv6NDOptDstLLAddr, ICMPv6NDOptSrcLLAddr, IPv6)
from scapy.layers.l2 import Ether

from tests.routerlab import RunningRouter, router_mac, start_router
from tests.topology import RouterLab, lab, requires_netns, topology  # noqa: F401
from tests.wire import Sniffer, host_ipv6, host_mac

pytestmark = requires_netns

R1, H1 = "2001:db8:1::1", "2001:db8:1::2"
DELAY = 1                       # net.inet6.icmp6.nd6_delay, from the config


@pytest.fixture(scope="module")
def router(lab: RouterLab, tmp_path_factory) -> Iterator[RunningRouter]:
    r = start_router(lab, tmp_path_factory.mktemp("nd6states"),
                     sysctl={"net.inet6.icmp6.nd6_delay": DELAY},
                     addresses={"tap1": [f"{R1}/64"]})
    host_ipv6(lab, "h1", H1)
    yield r
    code, out = r.stop()
    assert code == 0, out


@pytest.fixture(autouse=True)
def zones_back_at_rest(router: RunningRouter) -> Iterator[None]:
    with router.zones_kept():
        yield


def entry(r: RunningRouter, ip: str) -> dict | None:
    return next((e for e in r.call("ndp.list") if e["ip"] == ip and e["interface"] == "tap1"),
                None)


def wait_state(r: RunningRouter, ip: str, state: str | None, timeout: float) -> dict | None:
    """ip's entry once it is in ``state`` (None: once it is gone)."""
    def now_in() -> dict | bool:
        e = entry(r, ip)
        if state is None:
            return e is None
        return e if e is not None and e["state"] == state else False
    got = r.wait_for(now_in, timeout=timeout, what=f"{ip} {state or 'gone'} "
                     f"(now {entry(r, ip)})")
    return got if isinstance(got, dict) else None


def forget(r: RunningRouter, ip: str) -> None:
    if entry(r, ip) is not None:
        r.call("ndp.del", ip=ip, interface="tap1")


def echo(src: str, mac: str, seq: int) -> bytes:
    return bytes(Ether(dst=router_mac(1), src=mac) / IPv6(src=src, dst=R1)
                 / ICMPv6EchoRequest(id=0x4e, seq=seq))


def is_reply(to: str, seq: int):
    return lambda p: (ICMPv6EchoReply in p and p[IPv6].dst == to
                      and p[ICMPv6EchoReply].seq == seq)


def is_ns_for(target: str):
    return lambda p: ICMPv6ND_NS in p and p[ICMPv6ND_NS].tgt == target


def advert(src_mac: str, target: str, dst: str, *, s: int, o: int, tll: str | None) -> bytes:
    """A Neighbor Advertisement for target from the neighbour at src_mac."""
    eth_dst = "33:33:00:00:00:01" if dst == "ff02::1" else router_mac(1)
    na = IPv6(src=target, dst=dst, hlim=255) / ICMPv6ND_NA(tgt=target, R=0, S=s, O=o)
    if tll is not None:
        na = na / ICMPv6NDOptDstLLAddr(lladdr=tll)
    return bytes(Ether(dst=eth_dst, src=src_mac) / na)


def solicit_router(s1: Sniffer, src: str, mac: str) -> None:
    """A Neighbor Solicitation for the router's address from src at mac."""
    s1.send(bytes(Ether(dst="33:33:ff:00:00:01", src=mac)
                  / IPv6(src=src, dst="ff02::1:ff00:1", hlim=255) / ICMPv6ND_NS(tgt=R1)
                  / ICMPv6NDOptSrcLLAddr(lladdr=mac)))


def test_reachable_goes_stale_and_traffic_through_it_is_probed_by_unicast(
        lab: RouterLab, router: RunningRouter) -> None:
    """An answer to the router's multicast solicitation makes h1 REACHABLE
    for 0.5..1.5 x nd6_basereachable (1 s here), then STALE.  A packet sent
    through the STALE entry makes it DELAY, and nd6_delay later the router
    asks h1 by unicast -- Ethernet and IPv6 destination h1 itself, not its
    solicited-node group; h1 answers and the entry is REACHABLE again (Linux
    answers a unicast solicitation with Solicited set and no target
    link-layer option: a confirmation that carries no MAC)."""
    mac = host_mac(lab, "h1")
    forget(router, H1)
    before = router.stats()["nd6"]
    with router.tunables({"net.inet6.icmp6.nd6_basereachable": 1000}), \
            Sniffer(lab.host("h1").netns, "tap1") as s1:
        s1.send(echo(H1, mac, 1))       # the reply needs h1's MAC
        asked = s1.collect(is_ns_for(H1), timeout=2)
        assert asked and asked[0][IPv6].dst == "ff02::1:ff00:2"
        assert s1.collect(is_reply(H1, 1), timeout=2)
        e = wait_state(router, H1, "reachable", timeout=1)
        assert e["mac"] == mac and e["expires_in"] <= 1.5
        wait_state(router, H1, "stale", timeout=2)
        s1.send(echo(H1, mac, 2))
        reply = s1.collect(is_reply(H1, 2), timeout=2)
        assert reply and reply[0][Ether].dst == mac     # a STALE entry is used
        assert entry(router, H1)["state"] == "delay"
        probe = s1.collect(is_ns_for(H1), timeout=DELAY + 2)
        assert probe, "no probe"
        p = probe[0]
        assert (p[Ether].dst, p[IPv6].dst, p[IPv6].src, p[IPv6].hlim) == (mac, H1, R1, 255)
        assert p[ICMPv6NDOptSrcLLAddr].lladdr == router_mac(1)
        assert p.time - reply[0].time >= DELAY - 0.15    # DELAY waited nd6_delay
        answer = s1.collect(lambda q: ICMPv6ND_NA in q and q[ICMPv6ND_NA].tgt == H1, timeout=1)
        assert answer and answer[0][ICMPv6ND_NA].S == 1
        e = wait_state(router, H1, "reachable", timeout=1)
        assert e["mac"] == mac
    after = router.stats()["nd6"]
    assert after["probes_sent"] - before["probes_sent"] == 1
    assert after["solicitations_sent"] - before["solicitations_sent"] == 2
    forget(router, H1)


def test_a_neighbour_that_stops_answering_gets_umaxtries_probes_then_is_freed(
        lab: RouterLab, router: RunningRouter) -> None:
    """A neighbour that solicited the router (source link-layer option) is
    learned STALE.  Traffic to it makes it DELAY, then PROBE: nd6_umaxtries
    (2 here) unicast solicitations to its cached MAC, a second apart, while
    packets still go to that MAC; nobody answers, and RetransTimer after the
    last one the entry is freed -- not asked for by multicast."""
    ghost, gmac = "2001:db8:1::77", "02:00:00:00:77:77"
    before = router.stats()["nd6"]
    with router.tunables({"net.inet6.icmp6.nd6_umaxtries": 2}), \
            Sniffer(lab.host("h1").netns, "tap1") as s1:
        solicit_router(s1, ghost, gmac)
        e = wait_state(router, ghost, "stale", timeout=2)
        assert e["mac"] == gmac and e["expires_in"] > 86000      # nd6_gctimer: a day
        s1.send(echo(ghost, gmac, 1))
        wait_state(router, ghost, "delay", timeout=1)
        wait_state(router, ghost, "probe", timeout=DELAY + 1)
        s1.send(echo(ghost, gmac, 2))   # in PROBE: still sent to the cached MAC
        wait_state(router, ghost, None, timeout=4)
        frames = s1.collect(lambda p: (is_ns_for(ghost)(p) or is_reply(ghost, 1)(p)
                                       or is_reply(ghost, 2)(p)), timeout=0.3, want=100)
    probes = [p for p in frames if ICMPv6ND_NS in p]
    assert [(p[Ether].dst, p[IPv6].dst) for p in probes] == [(gmac, ghost)] * 2
    assert 0.85 <= probes[1].time - probes[0].time <= 1.3
    replies = [p for p in frames if ICMPv6EchoReply in p]
    assert [(p[ICMPv6EchoReply].seq, p[Ether].dst) for p in replies] == [(1, gmac), (2, gmac)]
    assert router.stats()["nd6"]["probes_sent"] - before["probes_sent"] == 2


def test_an_advertisement_with_override_replaces_the_mac_and_makes_the_entry_stale(
        lab: RouterLab, router: RunningRouter) -> None:
    """A neighbour resolved by the router (solicited advertisement, MAC a)
    is REACHABLE.  An unsolicited advertisement with Override and MAC b
    replaces the MAC and makes it STALE; a solicited one without a
    link-layer option confirms it (REACHABLE, MAC b); one without Override
    and MAC c only makes it STALE again.  The next packet goes to b."""
    ghost = "2001:db8:1::78"
    a, b, c = "02:00:00:00:78:0a", "02:00:00:00:78:0b", "02:00:00:00:78:0c"
    try:
        with Sniffer(lab.host("h1").netns, "tap1") as s1:
            s1.send(echo(ghost, a, 1))
            asked = s1.collect(is_ns_for(ghost), timeout=2)
            assert asked and asked[0][IPv6].dst == "ff02::1:ff00:78"
            s1.send(advert(a, ghost, R1, s=1, o=1, tll=a))
            reply = s1.collect(is_reply(ghost, 1), timeout=2)
            assert reply and reply[0][Ether].dst == a
            assert entry(router, ghost)["state"] == "reachable"

            s1.send(advert(b, ghost, "ff02::1", s=0, o=1, tll=b))
            e = wait_state(router, ghost, "stale", timeout=1)
            assert e["mac"] == b

            s1.send(advert(b, ghost, R1, s=1, o=0, tll=None))
            e = wait_state(router, ghost, "reachable", timeout=1)
            assert e["mac"] == b

            s1.send(advert(c, ghost, "ff02::1", s=0, o=0, tll=c))
            e = wait_state(router, ghost, "stale", timeout=1)
            assert e["mac"] == b                            # without Override: kept

            s1.send(echo(ghost, b, 2))
            reply = s1.collect(is_reply(ghost, 2), timeout=2)
            assert reply and reply[0][Ether].dst == b
            assert entry(router, ghost)["state"] == "delay"
    finally:
        forget(router, ghost)


def test_solicitations_make_stale_entries_that_ndp_shows_and_gctimer_frees(
        lab: RouterLab, router: RunningRouter) -> None:
    """A solicitation with a source link-layer option makes a STALE entry
    (expiring after nd6_gctimer, a day), shown by `ndp -a` with ndp(8)'s
    letter S and by its --json as "stale"; another one with a new MAC
    replaces the MAC and starts STALE again, with nd6_gctimer = 1 here: an
    entry nothing uses is then freed a second later."""
    ghost, m1, m2 = "2001:db8:1::79", "02:00:00:00:79:01", "02:00:00:00:79:02"
    try:
        with Sniffer(lab.host("h1").netns, "tap1") as s1:
            solicit_router(s1, ghost, m1)
            wait_state(router, ghost, "stale", timeout=2)
            rows = {e["ip"]: e for e in router.cli_json("ndp", "-a")}
            assert rows[ghost]["state"] == "stale" and rows[ghost]["mac"] == m1
            line = next(ln for ln in router.cli("ndp", "-a").stdout.splitlines()
                        if ln.startswith(ghost + " "))
            fields = line.split()
            assert fields[1:3] == [m1, "tap1"] and fields[4] == "S"
            assert 86000 < int(fields[3].rstrip("s")) <= 86400
            assert "unicast probes" in router.cli("stats").stdout
            with router.tunables({"net.inet6.icmp6.nd6_gctimer": 1}):
                solicit_router(s1, ghost, m2)
                e = router.wait_for(lambda: (x := entry(router, ghost)) and x["mac"] == m2 and x,
                                    timeout=2, what=f"{ghost} at {m2}")
                assert e["state"] == "stale" and e["expires_in"] <= 1
                wait_state(router, ghost, None, timeout=2)
    finally:
        forget(router, ghost)
