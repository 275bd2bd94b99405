"""forwarder/inet.pxd: checksums (RFC 1071 / RFC 1624), TTL decrement, address classes.

The inline nogil helpers are reached through forwarder.inet_test (def wrappers).
Checksums cross the boundary as the 16-bit value read big-endian.
"""
import random
import struct

import pytest
from hypothesis import assume, example, given, settings, strategies as st

from forwarder import inet_test as it  # noqa: E402


# --- pure-Python reference ----------------------------------------------------

def ones_sum(data: bytes) -> int:
    """One's complement sum of 16-bit big-endian words, folded (0 only for all-zero data)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ref_cksum(data: bytes) -> int:
    return ~ones_sum(data) & 0xFFFF


def add1c(a: int, b: int) -> int:
    s = a + b
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def rfc1141_update(hc: int, old: int, new: int) -> int:
    """The older HC' = HC + m + ~m' (RFC 1141, eqn. 2 of RFC 1624): wrong at the edge."""
    return add1c(add1c(hc, old), ~new & 0xFFFF)


def with_cksum(hdr: bytearray) -> bytearray:
    hdr[10:12] = b"\0\0"
    hdr[10:12] = ref_cksum(bytes(hdr)).to_bytes(2, "big")
    return hdr


@st.composite
def ip_headers(draw, min_ttl=0):
    """A random IPv4 header (with random options) carrying a correct checksum."""
    ihl = draw(st.integers(5, 15))
    options = draw(st.binary(min_size=(ihl - 5) * 4, max_size=(ihl - 5) * 4))
    fields = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, draw(st.integers(0, 255)),
                         draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF)),
                         draw(st.integers(0, 0xFFFF)), draw(st.integers(min_ttl, 255)),
                         draw(st.integers(0, 255)), 0,
                         draw(st.binary(min_size=4, max_size=4)),
                         draw(st.binary(min_size=4, max_size=4)))
    return with_cksum(bytearray(fields + options))


# --- in_cksum -----------------------------------------------------------------

@given(st.binary(max_size=300))
@example(b"")
@example(b"\xff")
@example(b"\x00" * 20)
@example(b"\xff" * 21)
def test_cksum_matches_reference(data):
    assert it.cksum(data) == ref_cksum(data)


@given(st.lists(st.binary(min_size=1, max_size=64).map(lambda b: b if len(b) % 2 == 0 else b + b"\x5a"),
                max_size=6),
       st.binary(max_size=33))
def test_cksum_chain_equals_whole(segments, last):
    """Even-length segments then an odd tail: same as one buffer."""
    whole = b"".join(segments) + last
    assert it.cksum_chain(segments + [last]) == ref_cksum(whole)


@given(ip_headers())
def test_header_with_cksum_verifies(hdr):
    assert it.cksum(bytes(hdr)) == 0
    copy = bytearray(hdr)
    copy[10:12] = b"\xde\xad"
    it.set_cksum(copy)
    assert copy == hdr


def test_cksum_known_vector():
    # RFC 1071 section 3 example bytes: 00 01 f2 03 f4 f5 f6 f7 -> sum 0xddf2
    assert it.cksum(bytes.fromhex("0001f203f4f5f6f7")) == ~0xDDF2 & 0xFFFF
    # a classic header (Wikipedia "IPv4 header checksum" example): checksum b861
    hdr = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert it.cksum(hdr) == 0xB861


# --- RFC 1624 incremental update ----------------------------------------------

@given(st.integers(1, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_update16_equals_recompute_model(rest, old, new):
    """rest = one's complement sum of every other header word (never 0 in a real header)."""
    hc = ~add1c(rest, old) & 0xFFFF
    assert it.cksum_update16(hc, old, new) == ~add1c(rest, new) & 0xFFFF


@given(ip_headers(), st.data())
def test_update16_equals_full_recompute(hdr, data):
    """Change any 16-bit word but the checksum: incremental == full recompute."""
    hl = len(hdr)
    off = data.draw(st.sampled_from([o for o in range(0, hl, 2) if o != 10]))
    new = data.draw(st.integers(0, 0xFFFF))
    old = int.from_bytes(hdr[off:off + 2], "big")
    hc = int.from_bytes(hdr[10:12], "big")
    hdr[off:off + 2] = new.to_bytes(2, "big")
    # an all-zero header (sum +0) is the one case eqn. 3 and a recompute
    # differ (0x0000 vs 0xFFFF, RFC 1624 section 3); no IPv4 header is all zero
    assume(any(hdr[:10]) or any(hdr[12:]))
    inc = it.cksum_update16(hc, old, new)
    assert inc == int.from_bytes(with_cksum(bytearray(hdr))[10:12], "big")


@given(ip_headers(), st.binary(min_size=4, max_size=4), st.sampled_from([12, 16]))
def test_update32_equals_full_recompute(hdr, addr, off):
    old = int.from_bytes(hdr[off:off + 4], "big")
    hc = int.from_bytes(hdr[10:12], "big")
    hdr[off:off + 4] = addr
    inc = it.cksum_update32(hc, old, int.from_bytes(addr, "big"))
    assert inc == int.from_bytes(with_cksum(bytearray(hdr))[10:12], "big")


def make_zero_result_header(rng, ttl):
    """A header whose checksum after the TTL decrement is 0x0000: choose every
    field at random, then ip_id so that the decremented header sums to 0xFFFF."""
    ihl = rng.randint(5, 15)
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, rng.randrange(256), rng.randrange(65536),
                                0, rng.randrange(65536), ttl - 1, rng.randrange(256), 0,
                                rng.randbytes(4), rng.randbytes(4)) + rng.randbytes((ihl - 5) * 4))
    rest = ones_sum(bytes(hdr))                 # ip_id and checksum are zero here
    hdr[4:6] = (~rest & 0xFFFF).to_bytes(2, "big")  # rest + ~rest = 0xFFFF
    assert ones_sum(bytes(hdr)) == 0xFFFF       # after the decrement: checksum 0x0000
    hdr[8] = ttl                                # back to the pre-decrement TTL
    return with_cksum(hdr)


def test_rfc1624_edge_result_zero():
    """The case RFC 1624 is about: the new checksum is 0x0000.  Eqn. 3 gives
    0x0000 like a full recompute; RFC 1141's eqn. 2 would give 0xFFFF."""
    rng = random.Random(1624)
    for _ in range(2000):
        ttl = rng.randint(2, 255)
        hdr = make_zero_result_header(rng, ttl)
        hc = int.from_bytes(hdr[10:12], "big")
        old = int.from_bytes(hdr[8:10], "big")
        new = old - 0x0100
        full = with_cksum(bytearray(hdr[:8] + bytes([ttl - 1]) + hdr[9:]))
        assert full[10:12] == b"\0\0"
        assert it.cksum_update16(hc, old, new) == 0x0000
        assert rfc1141_update(hc, old, new) == 0xFFFF   # the bug the test would catch
        # the same through the TTL helper, in place
        assert it.dec_ttl(hdr) == ttl - 1
        assert hdr == full
        assert it.cksum(bytes(hdr)) == 0


def test_rfc1624_edge_old_zero_and_old_ffff():
    """Old checksum 0x0000 (header summing to 0xFFFF before the decrement), and
    old checksum 0xFFFF (-0, as an RFC 1141 updater upstream leaves it; still
    verifies): the decrement still equals a full recompute."""
    rng = random.Random(1141)
    for _ in range(2000):
        ttl = rng.randint(2, 254)
        # a header whose sum at TTL ttl is 0xFFFF: its checksum is 0x0000
        hdr = make_zero_result_header(rng, ttl + 1)
        hdr[8] = ttl
        hdr = with_cksum(hdr)
        assert hdr[10:12] == b"\0\0"
        for stored in (0x0000, 0xFFFF):
            h = bytearray(hdr)
            h[10:12] = stored.to_bytes(2, "big")
            assert it.cksum(bytes(h)) == 0      # both encodings verify
            full = with_cksum(bytearray(h[:8] + bytes([ttl - 1]) + h[9:]))
            assert it.dec_ttl(h) == ttl - 1
            assert h == full, (stored, h.hex(), full.hex())


def test_edge_cases_exhaustive_ttl_word():
    """Every TTL/protocol word with the rest of the header summing to each of a
    few values including 0xFFFF and 0x0001: eqn. 3 == recompute."""
    for rest in (0x0001, 0x00FF, 0x0100, 0x7FFF, 0xFEFF, 0xFF00, 0xFFFE, 0xFFFF):
        for ttl in range(1, 256):
            for proto in (0, 1, 6, 17, 0xFE, 0xFF):
                old = ttl << 8 | proto
                new = (ttl - 1) << 8 | proto
                hc = ~add1c(rest, old) & 0xFFFF
                assert it.cksum_update16(hc, old, new) == ~add1c(rest, new) & 0xFFFF


# --- TTL ----------------------------------------------------------------------

@given(ip_headers(min_ttl=2))
def test_dec_ttl_random(hdr):
    ttl = hdr[8]
    expect = with_cksum(bytearray(hdr[:8] + bytes([ttl - 1]) + hdr[9:]))
    assert it.dec_ttl(hdr) == ttl - 1
    assert hdr == expect
    assert it.cksum(bytes(hdr)) == 0


@pytest.mark.parametrize("ttl", [0, 1])
def test_dec_ttl_expired_untouched(ttl):
    hdr = with_cksum(bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 84, 1, 0x4000, ttl, 1, 0,
                                           b"\x0a\0\0\1", b"\x0a\0\1\1")))
    before = bytes(hdr)
    assert it.dec_ttl(hdr) == 0
    assert bytes(hdr) == before


def test_dec_ttl_down_to_one():
    hdr = with_cksum(bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 84, 7, 0, 255, 17, 0,
                                           b"\xc0\xa8\0\1", b"\x08\x08\x08\x08")))
    for ttl in range(254, 0, -1):
        assert it.dec_ttl(hdr) == ttl
        assert it.cksum(bytes(hdr)) == 0
    assert hdr[8] == 1
    assert it.dec_ttl(hdr) == 0


# --- layout, constants, byte order -----------------------------------------------

def test_constants():
    c = it.constants()
    assert c["ETHERTYPE_IP"] == 0x0800 and c["ETHERTYPE_ARP"] == 0x0806
    assert c["ETHERTYPE_IPV6"] == 0x86DD and c["ETHER_HDR_LEN"] == 14
    assert c["ARP_HDR_LEN"] == 28 and c["IP_HDR_LEN"] == 20
    assert (c["ICMP_ECHOREPLY"], c["ICMP_UNREACH"], c["ICMP_ECHO"], c["ICMP_TIMXCEED"]) == (0, 3, 8, 11)
    assert (c["ICMP_UNREACH_NET"], c["ICMP_UNREACH_HOST"], c["ICMP_UNREACH_NEEDFRAG"],
            c["ICMP_UNREACH_FILTER_PROHIB"], c["ICMP_TIMXCEED_INTRANS"]) == (0, 1, 4, 13, 0)
    assert (c["IP_DF"], c["IP_MF"], c["IP_OFFMASK"]) == (0x4000, 0x2000, 0x1FFF)
    assert (c["IPPROTO_ICMP"], c["IPPROTO_TCP"], c["IPPROTO_UDP"]) == (1, 6, 17)


def test_struct_layout():
    s = it.struct_sizes()
    assert (s["ether_header"], s["ether_arp"], s["ip_hdr"], s["icmp_hdr"]) == (14, 28, 20, 8)
    assert (s["ip_ttl"], s["ip_sum"], s["ip_src"], s["ip_dst"], s["icmp_seq"]) == (8, 10, 12, 16, 6)


@given(ip_headers())
def test_parse_ip_struct(hdr):
    f = it.parse_ip(bytes(hdr))
    v_ihl, tos, ln, ident, off, ttl, p, sm, src, dst = struct.unpack("!BBHHHBBHII", hdr[:20])
    assert f == {"v": 4, "hl": (v_ihl & 15) * 4, "len": ln, "id": ident, "off": off, "ttl": ttl,
                 "p": p, "sum": sm, "src": src, "dst": dst}


def test_byteorder():
    hs, ns, hl, nl = it.byteorder(0x12345678)
    if struct.pack("=H", 1) == b"\x01\x00":     # little endian host
        assert (hs, ns, hl, nl) == (0x7856, 0x7856, 0x78563412, 0x78563412)
    else:
        assert (hs, ns, hl, nl) == (0x5678, 0x5678, 0x12345678, 0x12345678)


def ip(s):
    return struct.unpack("!I", bytes(int(x) for x in s.split(".")))[0]


@pytest.mark.parametrize("addr,src,dst,mcast", [
    ("0.0.0.0", True, True, False),
    ("0.1.2.3", True, True, False),
    ("1.0.0.0", False, False, False),
    ("10.1.2.3", False, False, False),
    ("126.255.255.255", False, False, False),
    ("127.0.0.1", True, True, False),
    ("128.0.0.0", False, False, False),
    ("223.255.255.255", False, False, False),
    ("224.0.0.1", True, False, True),
    ("239.255.255.255", True, False, True),
    ("240.0.0.0", True, True, False),
    ("254.1.1.1", True, True, False),
    ("255.255.255.255", True, True, False),
])
def test_martians(addr, src, dst, mcast):
    c = it.classify(ip(addr))
    assert c["martian_src"] is src
    assert c["martian_dst"] is dst
    assert c["multicast"] is mcast
    assert c["lbcast"] is (addr == "255.255.255.255")
    assert c["loopback"] is addr.startswith("127.")
    assert c["zeronet"] is addr.startswith("0.")
    assert c["badclass"] is (int(addr.split(".")[0]) >= 240)


@settings(max_examples=500)
@given(st.integers(0, 0xFFFFFFFF))
def test_martians_random(a):
    top = a >> 24
    c = it.classify(a)
    assert c["martian_src"] is (top == 0 or top == 127 or top >= 224)
    assert c["martian_dst"] is (top == 0 or top == 127 or top >= 240)
