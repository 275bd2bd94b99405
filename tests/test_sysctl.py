"""The tunable registry and SysctlTree: parsing, validation, boot-only, hooks, output."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwarder import sysctl
from forwarder.sysctl import (REGISTRY, SysctlError, SysctlTree, check_mbuf_limits,
                              format_describe, format_get, format_set, lookup,
                              mbuf_default_limits, mbuf_limits_hook, parse_assignment)

GIB = 1 << 30


def tree(**kw: object) -> SysctlTree:
    return SysctlTree(physmem=8 * GIB, **kw)  # type: ignore[arg-type]


# --- registry -----------------------------------------------------------------------

def test_registry_has_every_required_tunable() -> None:
    required = {
        "kern.ipc.nmbclusters": True, "kern.ipc.nmbufs": True, "kern.ipc.nmbjumbop": True,
        "kern.ipc.nmbjumbo9": True, "kern.ipc.nmbjumbo16": True,
        "net.inet.ip.forwarding": True, "net.inet.ip.ttl": True,
        "net.inet.icmp.icmplim": True, "net.link.ether.inet.max_age": True,
        "net.link.ether.inet.maxhold": True, "net.link.ether.inet.maxtries": True,
        "net.route.max_routes": False, "net.link.max_interfaces": False,
    }
    for name, runtime in required.items():
        t = REGISTRY[name]
        assert t.runtime is runtime, name
        assert t.description and "\n" not in t.description
        assert t.min <= t.default_value(8 * GIB) <= t.max
        assert t.type in (int, bool)


def test_fixed_defaults() -> None:
    t = tree()
    assert t.get("net.inet.ip.forwarding") == 1
    assert t.get("net.inet.ip.ttl") == 64
    assert t.get("net.inet.icmp.icmplim") == 200
    assert t.get("net.link.ether.inet.max_age") == 1200
    assert t.get("net.link.ether.inet.maxhold") == 16
    assert t.get("net.link.ether.inet.maxtries") == 3
    assert t.get("net.route.max_routes") == 1048576
    assert t.get("net.link.max_interfaces") == 64
    assert (REGISTRY["net.inet.ip.ttl"].min, REGISTRY["net.inet.ip.ttl"].max) == (1, 255)
    assert REGISTRY["net.inet.icmp.icmplim"].max == 100000


def test_mbuf_defaults_follow_freebsd_formula() -> None:
    physmem = 8 * GIB
    maxmbufmem = physmem // 2
    limits = mbuf_default_limits(physmem)
    assert limits["kern.ipc.nmbclusters"] == maxmbufmem // 2048 // 4 == 524288
    assert limits["kern.ipc.nmbjumbop"] == maxmbufmem // 4096 // 4
    assert limits["kern.ipc.nmbjumbo9"] == maxmbufmem // 9216 // 6
    assert limits["kern.ipc.nmbjumbo16"] == maxmbufmem // 16384 // 6
    clusters = sum(v for k, v in limits.items() if k != "kern.ipc.nmbufs")
    assert limits["kern.ipc.nmbufs"] == max(maxmbufmem // 256 // 5, clusters)
    check_mbuf_limits(limits)  # the defaults are consistent
    t = tree()
    for name, value in limits.items():
        assert t.get(name) == value == t.default(name)


def test_mbuf_defaults_are_clamped_to_int() -> None:
    limits = mbuf_default_limits(1 << 60)
    assert all(0 < v <= sysctl.INT_MAX for v in limits.values())


def test_default_physmem_is_the_machine() -> None:
    t = SysctlTree()
    assert t.get("kern.ipc.nmbclusters") == \
        mbuf_default_limits(sysctl.physical_memory())["kern.ipc.nmbclusters"] > 0


# --- get / set ------------------------------------------------------------------------

def test_set_returns_old_and_new_and_formats_like_sysctl8() -> None:
    t = tree(values={"kern.ipc.nmbclusters": 0})
    assert format_get("kern.ipc.nmbclusters", t.get("kern.ipc.nmbclusters")) == \
        "kern.ipc.nmbclusters: 0"
    old, new = t.set("kern.ipc.nmbclusters", "65536")
    assert (old, new) == (0, 65536)
    assert format_set("kern.ipc.nmbclusters", old, new) == "kern.ipc.nmbclusters: 0 -> 65536"
    assert t["kern.ipc.nmbclusters"] == 65536
    # lowering works too (0 = unlimited)
    assert t.set("kern.ipc.nmbclusters", "0") == (65536, 0)


@pytest.mark.parametrize("text,value", [("64", 64), (" 128 ", 128), ("0x40", 64),
                                        ("1_000", 1000)])
def test_int_spellings(text: str, value: int) -> None:
    assert tree().set("net.link.ether.inet.max_age", text)[1] == value


@pytest.mark.parametrize("text,value", [("0", 0), ("1", 1), ("false", 0), ("on", 1),
                                        (True, 1), (0, 0)])
def test_bool_spellings(text: object, value: int) -> None:
    t = tree()
    t.set("net.inet.ip.forwarding", text)
    assert t.get("net.inet.ip.forwarding") == value


@pytest.mark.parametrize("name,value,message", [
    ("kern.ipc.nmbcluster", "1", "unknown oid 'kern.ipc.nmbcluster'; did you mean "
                                 "kern.ipc.nmbclusters"),
    ("net.inet.ip.ttl", "abc", "net.inet.ip.ttl: invalid value 'abc' (integer 1..255)"),
    ("net.inet.ip.ttl", "256", "net.inet.ip.ttl: 256 out of range (1..255)"),
    ("net.inet.ip.ttl", "0", "net.inet.ip.ttl: 0 out of range (1..255)"),
    ("kern.ipc.nmbclusters", "-1", "kern.ipc.nmbclusters: -1 out of range (0..2147483647)"),
    ("net.inet.icmp.icmplim", "100001", "out of range (0..100000)"),
    ("net.inet.ip.forwarding", "2", "net.inet.ip.forwarding: invalid value '2' (boolean: 0 or 1)"),
    ("net.inet.ip.ttl", "1.5", "invalid value '1.5'"),
    ("net.route.max_routes", "10", "net.route.max_routes: read-only at runtime (boot-only"),
    ("net.link.max_interfaces", "10", "read-only at runtime"),
])
def test_runtime_errors_change_nothing(name: str, value: str, message: str) -> None:
    t = tree()
    before = t.snapshot()
    with pytest.raises(SysctlError) as e:
        t.set(name, value)
    assert message in str(e.value)
    assert t.snapshot() == before


def test_boot_only_is_settable_at_boot() -> None:
    t = tree(values={"net.route.max_routes": 100000, "net.link.max_interfaces": "8"})
    assert t.get("net.route.max_routes") == 100000
    assert t.set("net.link.max_interfaces", 16, boot=True) == (8, 16)


def test_bool_given_to_int_tunable_is_refused() -> None:
    with pytest.raises(SysctlError):
        tree().set("net.inet.ip.ttl", True)


def test_describe_all_info() -> None:
    t = tree()
    assert t.describe("kern.ipc.nmbclusters").startswith("Maximum number of mbuf clusters")
    assert format_describe(lookup("kern.ipc.nmbclusters")) == \
        "kern.ipc.nmbclusters: " + t.describe("kern.ipc.nmbclusters")
    names = [n for n, _ in t.all()]
    assert names == sorted(REGISTRY)
    assert [n for n, _ in t.all("kern.ipc")] == sorted(n for n in REGISTRY
                                                         if n.startswith("kern.ipc."))
    assert t.all("kern.ipc.nmbufs") == [("kern.ipc.nmbufs", t.get("kern.ipc.nmbufs"))]
    assert t.all("kern.ip") == []  # prefixes match whole components
    info = t.info("net.inet.ip.ttl")
    assert info == {"name": "net.inet.ip.ttl", "type": "int", "min": 1, "max": 255,
                    "default": 64, "value": 64, "runtime": True,
                    "description": REGISTRY["net.inet.ip.ttl"].description}
    with pytest.raises(SysctlError):
        t.describe("no.such.name")


def test_parse_assignment() -> None:
    assert parse_assignment("kern.ipc.nmbclusters=65536") == ("kern.ipc.nmbclusters", "65536")
    assert parse_assignment(" a.b = 1 ") == ("a.b", "1")
    for bad in ("kern.ipc.nmbclusters", "=1", "a=", ""):
        with pytest.raises(SysctlError, match="expected name=value"):
            parse_assignment(bad)


# --- hooks --------------------------------------------------------------------------

def test_hook_sees_old_state_and_change() -> None:
    t = tree()
    seen: list[tuple[str, int, int, int]] = []
    t.add_hook(lambda n, o, v: seen.append((n, o, v, t.get(n))))
    t.set("net.inet.ip.ttl", "32")
    assert seen == [("net.inet.ip.ttl", 64, 32, 64)]  # called before the commit
    t.set("net.inet.ip.ttl", "32")                     # no change, no call
    assert len(seen) == 1


def test_hook_filtered_by_name() -> None:
    t = tree()
    calls: list[str] = []
    t.add_hook(lambda n, o, v: calls.append(n), names="kern.ipc.nmbclusters")
    t.set("net.inet.ip.ttl", "1")
    t.set("kern.ipc.nmbclusters", "100")
    assert calls == ["kern.ipc.nmbclusters"]
    with pytest.raises(SysctlError):
        t.add_hook(lambda n, o, v: None, names=["bogus.name"])


def test_veto_changes_nothing_and_rolls_back_earlier_hooks() -> None:
    t = tree()
    applied: dict[str, int] = {}
    later: list[int] = []

    def apply(name: str, old: int, new: int) -> None:
        applied[name] = new

    def veto(name: str, old: int, new: int) -> None:
        if new < 10:
            raise SysctlError(f"{name}: {new} is too small for the mbuf layer")

    t.add_hook(apply)
    t.add_hook(veto)
    t.add_hook(lambda n, o, v: later.append(v))
    with pytest.raises(SysctlError, match="too small"):
        t.set("kern.ipc.nmbclusters", "5")
    assert t.get("kern.ipc.nmbclusters") == 524288
    assert applied == {"kern.ipc.nmbclusters": 524288}   # rolled back
    assert later == []                                   # never reached
    t.set("kern.ipc.nmbclusters", "50")
    assert applied == {"kern.ipc.nmbclusters": 50} and later == [50]


def test_remove_hook() -> None:
    t = tree()
    calls: list[int] = []

    def hook(n: str, o: int, v: int) -> None:
        calls.append(v)
    t.add_hook(hook)
    t.remove_hook(hook)
    t.set("net.inet.ip.ttl", 9)
    assert calls == []


def test_mbuf_limits_hook_rejects_nmbufs_below_cluster_total() -> None:
    t = tree(values={name: 100 for name in sysctl.MBUF_LIMITS if name != "kern.ipc.nmbufs"}
             | {"kern.ipc.nmbufs": 1000})
    t.add_hook(mbuf_limits_hook(t), names=sysctl.MBUF_LIMITS)
    with pytest.raises(SysctlError, match="below the total of the cluster limits \\(400\\)"):
        t.set("kern.ipc.nmbufs", "399")
    assert t.get("kern.ipc.nmbufs") == 1000
    with pytest.raises(SysctlError):
        t.set("kern.ipc.nmbclusters", "701")   # 701 + 300 > 1000
    assert t.set("kern.ipc.nmbclusters", "700") == (100, 700)
    assert t.set("kern.ipc.nmbufs", "0") == (1000, 0)          # unlimited always fits
    assert t.set("kern.ipc.nmbclusters", "0") == (700, 0)


def test_set_many_is_all_or_nothing() -> None:
    t = tree()
    before = t.snapshot()
    undone: list[tuple[int, int]] = []
    t.add_hook(lambda n, o, v: undone.append((o, v)), names="net.inet.ip.ttl")
    with pytest.raises(SysctlError):
        t.set_many({"net.inet.ip.ttl": "10", "net.inet.icmp.icmplim": "-1"})
    assert t.snapshot() == before
    assert undone == [(64, 10), (10, 64)]  # the hook saw the change and its undo
    changed = t.set_many({"net.inet.ip.ttl": "10", "net.inet.icmp.icmplim": "0"})
    assert changed == [("net.inet.ip.ttl", 64, 10), ("net.inet.icmp.icmplim", 200, 0)]


def test_load_refuses_unknown_names() -> None:
    with pytest.raises(SysctlError, match="unknown oid"):
        tree(values={"kern.ipc.bogus": 1})


# --- properties -----------------------------------------------------------------------

@given(st.sampled_from([t for t in sysctl.TUNABLES if t.type is int]),
       st.integers(min_value=-(2**40), max_value=2**40))
def test_int_parse_accepts_exactly_the_range(t: sysctl.Tunable, value: int) -> None:
    if t.min <= value <= t.max:
        assert t.parse(str(value)) == value == t.parse(value)
    else:
        with pytest.raises(SysctlError, match="out of range"):
            t.parse(str(value))


def test_default_nmbufs_is_raised_to_cover_clusters_at_boot() -> None:
    """As FreeBSD's tunable_mbinit(): only when nmbufs itself was not given."""
    t = tree(values={"kern.ipc.nmbclusters": 20_000_000})
    total = sum(t.get(n) for n in sysctl.CLUSTER_LIMITS)
    assert t.get("kern.ipc.nmbufs") == total
    check_mbuf_limits(t.snapshot())
    t = tree(values={"kern.ipc.nmbclusters": 20_000_000, "kern.ipc.nmbufs": 5})
    assert t.get("kern.ipc.nmbufs") == 5   # explicit: left for the mbuf layer to judge
