"""Fuzzing, the short version (scripts/fuzz.py runs the long one).

* hypothesis draws fuzz cases (forwarder/lab/mutate.py: a valid frame, a few
  structure-aware mutations, checksums fixed or not, a virtio-net header of
  its own) and sends them to the dataplane in this process, where the
  headers arrive unchecked by any kernel; after each example the dataplane
  must be alive, have accounted for every frame, have every mbuf back and
  answer an echo.  A failure shrinks to a minimal list of minimal cases.
* a seeded run of the same dataplane, and one through a real router's TAP in
  a namespace lab: the same checks, and the frames must reach deep into the
  path (the drop reasons of every stage rise, packets are forwarded).
* a router killed in the middle of a run: the fuzzer says so, and writes the
  frames since the last good check as a pcap with the command to replay them.
"""
from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.utils import rdpcap

from forwarder.lab import fuzz, mutate
from tests.machine import requires_netns
from tests.topology import topology  # noqa: F401

LINK = mutate.Link(ours=bytes.fromhex("020000000101"), host=bytes.fromhex("020000000102"))
N_SEEDS = len(mutate.seeds(LINK))

# Stages the fuzz must reach; each is a drop reason of its own stage.
DEEP_IN_PROCESS = {
    "runt", "not_our_mac", "ethertype", "arp_malformed", "vnet_hdr_invalid", "ip_bad_version",
    "ip_bad_header_length", "ip_bad_checksum", "ip_bad_total_length", "martian_source",
    "martian_destination", "link_broadcast", "ip_broadcast_destination", "no_route",
    "ttl_exceeded", "needfrag_df_set", "ip6_bad_length", "ip6_martian_source", "ip6_beyond_scope",
    "ip6_too_big", "nd_malformed", "local_not_echo", "icmp_malformed"}
DEEP_LAB = DEEP_IN_PROCESS - {"runt", "vnet_hdr_invalid"}     # h1's kernel refuses those


@pytest.fixture(scope="module")
def dataplane():
    target = fuzz.InProcess()
    yield target
    target.close()


op = st.tuples(st.integers(0, len(mutate.OPS) - 1), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
vnet = st.tuples(*(st.integers(0, len(c) - 1) for c in mutate.VNET_CHOICES))
case = st.builds(mutate.Case, seed=st.integers(0, N_SEEDS - 1),
                 ops=st.lists(op, max_size=3).map(tuple), fix=st.integers(0, 2),
                 vnet=st.none() | vnet)


@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cases=st.lists(case, min_size=1, max_size=12))
def test_hypothesis_cases_leave_the_dataplane_whole(dataplane, cases) -> None:
    """Each example's frames: read, accounted for, every mbuf back, still answering."""
    w = dataplane.link
    for c in cases:
        frame, hdr = mutate.build(c, w, dataplane.min_len)
        dataplane.send(frame, hdr)
    problems = dataplane.check()
    assert not problems, "\n".join(problems + [mutate.describe(c, w) for c in cases])


def drops_that_rose(before: dict, after: dict) -> set[str]:
    return {k for k, v in after["drops"].items() if v > before["drops"][k]}


def test_a_seeded_run_in_process_reaches_every_stage(dataplane, tmp_path) -> None:
    before = dataplane.dp.stats()
    res = fuzz.fuzz(dataplane, 40_000, seed=16, check_every=20_000, out_dir=tmp_path,
                    name="dataplane")
    after = dataplane.dp.stats()
    assert res.ok, res.to_json()
    assert [c.frames for c in res.checkpoints] == [20_000, 40_000]
    assert res.sent == 40_000 and fuzz.read(after) - fuzz.read(before) >= 40_000
    missing = DEEP_IN_PROCESS - drops_that_rose(before, after)
    assert not missing, f"stages the fuzz never reached: {sorted(missing)}"
    assert after["forwarded"] - before["forwarded"] > 5_000
    assert after["interfaces"][0]["rx_gso"] > before["interfaces"][0]["rx_gso"]


def test_a_run_is_reproducible_from_any_frame() -> None:
    """Frame i of a run is the same whether the run starts at 0 or at i."""
    whole = mutate.cases(5, 0, 2 * mutate.CHUNK + 10, LINK)
    assert mutate.cases(5, mutate.CHUNK - 3, 13, LINK) == whole[mutate.CHUNK - 3:mutate.CHUNK + 10]
    assert mutate.cases(6, 0, 10, LINK) != whole[:10]
    frames = [mutate.build(c, LINK) for c in whole[:500]]
    assert frames == [mutate.build(c, LINK) for c in mutate.cases(5, 0, 500, LINK)]
    assert len({f for f, _ in frames}) > 400                   # and they differ
    assert all(len(f) >= 14 for f, _ in frames)


def test_checksums_are_fixed_after_the_mutations() -> None:
    """fix=2: a mutated IPv4 UDP datagram's header and UDP checksums are right
    again (scapy recomputes both and must find the same)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    rnd = random.Random(3)
    udp_seed = next(i for i, s in enumerate(mutate.seeds(LINK)) if s.name == "udp to far")
    checked = 0
    for _ in range(200):
        c = mutate.Case(udp_seed, ((0, rnd.getrandbits(16), rnd.getrandbits(16)),), fix=2)
        frame, _ = mutate.build(c, LINK)
        p = Ether(frame)
        if IP not in p or UDP not in p or p[IP].ihl != 5 or p[IP].len != len(frame) - 14 \
                or p[IP].frag or p[IP].flags.MF or p[UDP].len != p[IP].len - 20:
            continue
        again = p.copy()
        del again[IP].chksum, again[UDP].chksum
        again = Ether(bytes(again))
        assert (again[IP].chksum, again[UDP].chksum) == (p[IP].chksum, p[UDP].chksum), \
            mutate.describe(c, LINK)
        checked += 1
    assert checked > 50


# --- through a real router -----------------------------------------------------------------

@pytest.fixture(scope="module")
def lab_target(topology, tmp_path_factory):  # noqa: F811
    target = fuzz.LabTarget(tmp_path_factory.mktemp("fuzz"), topology)
    yield target
    target.close()


@requires_netns
def test_a_short_run_through_a_tap(lab_target, tmp_path) -> None:
    before = lab_target.call("stats")
    res = fuzz.fuzz(lab_target, 60_000, seed=1812, check_every=30_000, out_dir=tmp_path)
    after = lab_target.call("stats")
    assert res.ok, res.to_json()
    assert len(res.checkpoints) == 2 and not any(c.problems for c in res.checkpoints)
    read = after["interfaces"][0]["rx_packets"] - before["interfaces"][0]["rx_packets"]
    assert read >= res.sent // 2, f"the router read {read} of {res.sent} frames"
    missing = DEEP_LAB - drops_that_rose(before, after)
    assert not missing, f"stages the fuzz never reached: {sorted(missing)}"
    assert after["forwarded"] - before["forwarded"] > 3_000
    assert after["arp"]["received"] > before["arp"]["received"]
    assert after["nd6"]["received"] > before["nd6"]["received"]
    assert list(tmp_path.iterdir()) == []                       # no failure written


@requires_netns
def test_a_crash_is_reported_with_the_frames_to_replay(lab_target, tmp_path) -> None:
    """The router killed after the first chunk past a good check: the run
    fails, and the pcap holds exactly the frames since that check."""
    proc = lab_target.router.proc

    def kill_later(done: int) -> None:
        if done == mutate.CHUNK * 2:
            proc.send_signal(signal.SIGKILL)
            proc.wait(5)

    res = fuzz.fuzz(lab_target, 5 * mutate.CHUNK, seed=99, check_every=mutate.CHUNK,
                    out_dir=tmp_path, on_chunk=kill_later)
    assert not res.ok and "gone" in res.failed
    assert res.frames == 2 * mutate.CHUNK
    pcap = Path(res.pcap)
    assert pcap.parent == tmp_path
    frames = rdpcap(str(pcap))
    want = mutate.cases(99, mutate.CHUNK, mutate.CHUNK, lab_target.link)
    assert len(frames) == len(want)
    assert [bytes(f) for f in frames[:50]] == [mutate.build(c, lab_target.link)[0]
                                               for c in want[:50]]
    side = json.loads(pcap.with_suffix(".vnet.json").read_text())
    assert side["frames"] == len(want)
    assert f"--seed 99 --start {mutate.CHUNK} --frames {mutate.CHUNK}" in res.replay
