"""Nothing is silently lost: every frame the router reads is forwarded,
delivered to it, handled as ARP, or dropped with a counted reason -- also
for garbage.  And garbage never crashes it."""
from __future__ import annotations

import random
import struct
import time

import pytest

from tests.routerlab import router_mac, start_router
from tests.topology import make_lab, requires_netns, topology  # noqa: F401
from tests.wire import Sniffer, host_mac

pytestmark = requires_netns


@pytest.fixture(scope="module")
def lab(topology):  # noqa: F811
    return make_lab(topology, n_hosts=2)


@pytest.fixture(scope="module")
def router(lab, tmp_path_factory):
    r = start_router(lab, tmp_path_factory.mktemp("router"))
    yield r
    code, out = r.stop()
    assert code == 0, out


def junk_frames(n: int, ours: bytes, src: bytes, seed: int = 1812) -> list[bytes]:
    """Frames of every shape a broken or hostile host could send: random
    ethertypes, IPv4 and ARP with random contents, random destinations,
    bare headers."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 6
        dst = ours if kind != 5 else rnd.choice([b"\xff" * 6, b"\x01\x00\x5e\x00\x00\x01",
                                                 bytes(rnd.getrandbits(8) for _ in range(6))])
        body = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 120)))
        if kind == 0:
            etype = rnd.getrandbits(16)
        elif kind in (1, 5):
            etype = 0x0800
            body = bytes([0x40 | rnd.randint(0, 15)]) + body       # IPv4-looking first byte
        elif kind == 2:
            etype = 0x0806
        elif kind == 3:                                             # ARP with the right shape
            etype = 0x0806
            body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, rnd.choice([1, 2, 7])) + body[:20].ljust(20, b"\0")
        else:                      # a bare header (AF_PACKET refuses anything shorter)
            etype, body = rnd.choice([0x0800, 0x0806]), b""
        out.append(dst + src + struct.pack("!H", etype) + body)
    return out


def accounted(s: dict) -> int:
    return (sum(s["drops"].values()) + s["forwarded"] + s["delivered_local"]
            + s["arp"]["received"])


def test_every_frame_read_is_accounted_for(lab, router):
    frames = junk_frames(3000, bytes.fromhex(router_mac(1).replace(":", "")),
                         bytes.fromhex(host_mac(lab, "h1").replace(":", "")))
    s1 = Sniffer(lab.host("h1").netns, "tap1")

    def tap_dropped() -> int:
        """Frames the kernel dropped on the TAP's queue towards the router."""
        cp = lab.run("h1", ["cat", "/sys/class/net/tap1/statistics/tx_dropped"], timeout=10)
        return int(cp.stdout)

    try:
        dropped0 = tap_dropped()
        before = router.stats()
        for i, f in enumerate(frames):
            s1.send(f)
            if i % 200 == 199:
                # Stay below the TAP's 1000-frame queue: what overflows there is
                # dropped by the kernel before the router could read it.
                time.sleep(0.005)
        deadline = time.monotonic() + 5
        while True:
            after = router.stats()
            rx = after["interfaces"][0]["rx_packets"] - before["interfaces"][0]["rx_packets"]
            if rx >= len(frames) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        dropped = tap_dropped() - dropped0
    finally:
        s1.close()
    # h1's kernel may add a frame of its own (an ARP); it is accounted the same way.
    assert len(frames) - dropped <= rx <= len(frames) + 5
    assert dropped < len(frames) // 10
    assert accounted(after) - accounted(before) == rx
    assert after["interfaces"][0]["rx_nobuf"] == before["interfaces"][0]["rx_nobuf"]
    assert router.cli("health", check=False).returncode == 0
    # ... and it still forwards.
    assert lab.ping("h1", "10.2.0.2", count=1, wait=2).returncode == 0
