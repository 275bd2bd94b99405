"""Config file contract: parsing, every validation rule with file:line: key, overrides.

Each bad config marks the line the error must point at with ``#!``.
"""
from __future__ import annotations

from ipaddress import (IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface,
                       IPv6Network)
from pathlib import Path

import pytest

from forwarder.config import (ConfigError, Interface, Route, generate_mac, load_config,
                              parse_config)
from forwarder.tomlpos import Locator

REPO = Path(__file__).resolve().parent.parent

ROUTER = '[router]\nname = "r1"\n'
TWO_LINKS = ROUTER + '''
[[interface]]
name = "tap0"
addresses = ["10.1.0.1/24"]

[[interface]]
name = "tap1"
addresses = ["10.2.0.1/24"]
'''


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "router.toml"
    path.write_text(text)
    return path


def marked_line(text: str) -> int:
    lines = [i for i, line in enumerate(text.splitlines(), 1) if "#!" in line]
    assert len(lines) == 1, "mark exactly one line with #!"
    return lines[0]


def error_of(tmp_path: Path, text: str, overrides: list[str] | None = None) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides or [])
    return e.value


def expect(tmp_path: Path, text: str, key: str, message: str) -> ConfigError:
    """The config fails, and its first problem is ``file:<#! line>: key: message...``."""
    err = error_of(tmp_path, text)
    first = str(err.problems[0])
    prefix = f"{tmp_path / 'router.toml'}:{marked_line(text)}: {key}: "
    assert first.startswith(prefix), f"{first!r} does not start with {prefix!r}"
    assert message in first, f"{message!r} not in {first!r}"
    assert (err.line, err.key) == (marked_line(text), key)
    return err


# --- the good path --------------------------------------------------------------------

def test_example_config_loads() -> None:
    cfg = load_config(REPO / "configs" / "router.toml")
    assert cfg.router.name == "r1"
    assert cfg.router.socket == Path("/run/forwarder/r1.sock")
    assert [i.name for i in cfg.interfaces] == ["tap1", "tap2", "tap3"]
    assert all(i.netns for i in cfg.interfaces)
    assert cfg.interface("tap3").mtu == 1280
    assert cfg.interface("tap3").addresses == (IPv4Interface("10.3.0.1/24"),
                                               IPv4Interface("172.16.3.1/24"))
    types = {r.type for r in cfg.routes}
    assert {"unicast", "blackhole"} <= types
    assert any(r.via is not None for r in cfg.routes)
    # both spellings of sysctl keys are in the example
    text = (REPO / "configs" / "router.toml").read_text()
    assert '\nkern.ipc.nmbclusters' in text and '\n"kern.ipc.nmbufs"' in text
    assert cfg.sysctl["kern.ipc.nmbclusters"] == 0 and cfg.sysctl["kern.ipc.nmbufs"] == 0


def test_full_model(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '''
[router]
name = "edge-1"
socket = "/tmp/edge.sock"
log_level = "DEBUG"

[metrics]
listen = "127.0.0.1:9477"

[[interface]]
name = "tap0"
addresses = ["10.1.0.1/24", "192.168.7.1/30"]
mtu = 9000
mac = "02:AA:00:00:00:01"
netns = "/proc/1/ns/net"

[[interface]]
name = "tap1"
addresses = ["10.2.0.1/24"]
netns = "h2"
offload = false

[[route]]
prefix = "default"
via = "10.2.0.2"

[[route]]
prefix = "10.9.0.0/16"
interface = "tap0"

[[route]]
prefix = "10.10.0.0/16"
type = "unreachable"
'''))
    assert cfg.router.socket == Path("/tmp/edge.sock")
    assert cfg.router.log_level == "debug"
    assert cfg.metrics.address == ("127.0.0.1", 9477)
    tap0, tap1 = cfg.interfaces
    assert tap0 == Interface(name="tap0", addresses=(IPv4Interface("10.1.0.1/24"),
                                                     IPv4Interface("192.168.7.1/30")),
                             mtu=9000, mac="02:aa:00:00:00:01", netns="/proc/1/ns/net",
                             mtu_configured=True)
    assert tap0.netns_path == "/proc/1/ns/net"
    assert tap1.netns_path == "/var/run/netns/h2"
    assert tap1.mtu == 1500 and tap1.mac_generated and tap1.mac == generate_mac("tap1", "edge-1")
    assert tap0.offload and not tap1.offload
    r0, r1, r2 = cfg.routes
    assert r0.prefix == IPv4Network("0.0.0.0/0") and r0.via == IPv4Address("10.2.0.2")
    assert cfg.link_for(r0.via) == (tap1, IPv4Network("10.2.0.0/24"))
    assert r1.interface == "tap0" and r1.type == "unicast"
    assert r2.type == "unreachable" and r2.via is None and r2.interface is None
    assert cfg.sysctl == {}
    assert cfg.sysctl_tree(physmem=1 << 30).get("net.inet.ip.ttl") == 64


def test_generated_mac_is_stable_local_unicast() -> None:
    mac = generate_mac("tap0", "r1")
    assert mac == generate_mac("tap0", "r1") != generate_mac("tap1", "r1")
    assert mac != generate_mac("tap0", "r2")
    first = int(mac[:2], 16)
    assert first & 0x02 and not first & 0x01


def test_parse_config_from_text_without_file() -> None:
    cfg = parse_config(TWO_LINKS)
    assert cfg.path is None and len(cfg.interfaces) == 2
    with pytest.raises(ConfigError) as e:
        parse_config("bogus = 1\n" + ROUTER)
    assert str(e.value) == "<config>:1: bogus: unknown key (allowed: router, sysctl, " \
                           "metrics, interface, route, control_plane)"


# --- sysctl table ---------------------------------------------------------------------

def test_sysctl_dotted_and_quoted_keys(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ROUTER + '''
[sysctl]
kern.ipc.nmbclusters = 1024
"kern.ipc.nmbufs" = 0
"net.inet".ip.ttl = 32
net.inet.ip.forwarding = false

[sysctl.net.link]
max_interfaces = 8
'''))
    assert cfg.sysctl == {"kern.ipc.nmbclusters": 1024, "kern.ipc.nmbufs": 0,
                          "net.inet.ip.ttl": 32, "net.inet.ip.forwarding": 0,
                          "net.link.max_interfaces": 8}
    tree = cfg.sysctl_tree(physmem=1 << 30)
    assert tree.get("kern.ipc.nmbclusters") == 1024 and tree.get("net.inet.ip.ttl") == 32


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, ROUTER + '[sysctl]\nkern.ipc.nmbclusters = 1024\n')
    cfg = load_config(path, ["kern.ipc.nmbclusters=65536", "net.inet.ip.ttl = 9",
                             "net.route.max_routes=1000"])
    assert cfg.sysctl == {"kern.ipc.nmbclusters": 65536, "net.inet.ip.ttl": 9,
                          "net.route.max_routes": 1000}


@pytest.mark.parametrize("override,message", [
    ("kern.ipc.nmbclusterz=1", "-o kern.ipc.nmbclusterz=1: unknown oid"),
    ("net.inet.ip.ttl=0", "-o net.inet.ip.ttl=0: 0 out of range (1..255)"),
    ("net.inet.ip.ttl", "expected name=value"),
    ("net.inet.ip.forwarding=maybe", "invalid value 'maybe'"),
])
def test_bad_overrides(tmp_path: Path, override: str, message: str) -> None:
    err = error_of(tmp_path, ROUTER, [override])
    assert str(err).startswith("command line: -o ")
    assert message in str(err)
    assert err.line is None


def test_sysctl_unknown_name(tmp_path: Path) -> None:
    expect(tmp_path, ROUTER + '[sysctl]\nkern.ipc.nmbcluster = 5 #!\n',
           "sysctl.kern.ipc.nmbcluster", "unknown oid 'kern.ipc.nmbcluster'; did you mean "
                                         "kern.ipc.nmbclusters")


def test_sysctl_out_of_range_quoted(tmp_path: Path) -> None:
    expect(tmp_path, ROUTER + '[sysctl]\nnet.inet.ip.ttl = 64\n"net.inet.icmp.icmplim" = -3 #!\n',
           "sysctl.net.inet.icmp.icmplim", "-3 out of range (0..100000)")


def test_sysctl_in_subtable(tmp_path: Path) -> None:
    expect(tmp_path, ROUTER + '[sysctl.net.inet.ip]\nforwarding = 1\nttl = 300 #!\n',
           "sysctl.net.inet.ip.ttl", "300 out of range (1..255)")


def test_sysctl_wrong_type(tmp_path: Path) -> None:
    expect(tmp_path, ROUTER + '[sysctl]\nnet.inet.ip.ttl = 1.5 #!\n',
           "sysctl.net.inet.ip.ttl", "must be an integer (1..255), not float")


def test_sysctl_set_twice(tmp_path: Path) -> None:
    expect(tmp_path, ROUTER + '[sysctl]\nkern.ipc.nmbclusters = 5\n'
                              '"kern.ipc.nmbclusters" = 6 #!\n',
           "sysctl.kern.ipc.nmbclusters", "set twice")


def test_sysctl_must_be_a_table(tmp_path: Path) -> None:
    expect(tmp_path, 'sysctl = 3 #!\n' + ROUTER, "sysctl", "must be a table")


# --- syntax and structure -------------------------------------------------------------

def test_toml_syntax_error_has_line(tmp_path: Path) -> None:
    expect_text = ROUTER + '[[interface]]\nname = "tap0\n'
    err = error_of(tmp_path, expect_text)
    assert str(err).startswith(f"{tmp_path / 'router.toml'}:4: TOML syntax error: ")
    err = error_of(tmp_path, ROUTER + 'mtu = = 3\n')
    assert err.line == 3 and "column" in str(err)
    err = error_of(tmp_path, ROUTER + 'name = "again"\n')   # duplicate key is a TOML error
    assert err.line == 3


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="nonexistent.toml: cannot read: No such file"):
        load_config("/nonexistent.toml")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "router.toml"
    path.write_bytes(ROUTER.encode() + b'# \xff\n')
    with pytest.raises(ConfigError, match=r"router.toml:3: not valid UTF-8"):
        load_config(path)


def test_unknown_top_level_key(tmp_path: Path) -> None:
    expect(tmp_path, ROUTER + '\n[routes] #!\nprefix = "1.0.0.0/8"\n',
           "routes", "unknown key (allowed: router, sysctl, metrics, interface, route, control_plane)")


def test_missing_router(tmp_path: Path) -> None:
    expect(tmp_path, '#!\n[sysctl]\n', "router", "missing required table [router]")


def test_router_name_required_and_valid(tmp_path: Path) -> None:
    expect(tmp_path, '[router] #!\nlog_level = "info"\n', "router.name", "missing required key")
    expect(tmp_path, '[router]\nname = "../etc" #!\n', "router.name", "not a valid router name")
    expect(tmp_path, '[router]\nname = 7 #!\n', "router.name", "must be a string, not integer")


def test_router_unknown_key_and_level(tmp_path: Path) -> None:
    expect(tmp_path, ROUTER + 'colour = "red" #!\n', "router.colour",
           "unknown key (allowed: name, socket, log_level, attach_timeout, attach_mode)")
    expect(tmp_path, ROUTER + 'log_level = "loud" #!\n', "router.log_level",
           "'loud' is not a log level (debug, info, warning, error, critical)")
    expect(tmp_path, ROUTER + 'socket = "r1.sock" #!\n', "router.socket", "absolute path")


def test_metrics_listen(tmp_path: Path) -> None:
    expect(tmp_path, ROUTER + '[metrics]\nlisten = "127.0.0.1" #!\n', "metrics.listen",
           "expected HOST:PORT")
    expect(tmp_path, ROUTER + '[metrics]\nlisten = "127.0.0.1:70000" #!\n', "metrics.listen",
           "port 70000 out of range (1..65535)")
    assert parse_config(ROUTER + '[metrics]\nlisten = "[::1]:9477"\n').metrics.address == \
        ("::1", 9477)


def test_interface_as_plain_table(tmp_path: Path) -> None:
    expect(tmp_path, ROUTER + '[interface] #!\nname = "tap0"\n', "interface",
           "write [[interface]], not [interface]")


# --- interfaces ---------------------------------------------------------------------

def test_interface_unknown_key(tmp_path: Path) -> None:
    expect(tmp_path, TWO_LINKS + 'speed = 10 #!\n', "interface[1].speed",
           "unknown key (allowed: name, addresses, mtu, mac, netns, attach, attach_mode, "
           "offload, ra)")


def test_interface_name_too_long(tmp_path: Path) -> None:
    expect(tmp_path, ROUTER + '[[interface]]\nname = "tap0123456789abc" #!\n'
                              'addresses = ["10.1.0.1/24"]\n',
           "interface[0].name", "'tap0123456789abc' is 16 characters; interface names have 1..15")
    # 15 is fine
    parse_config(ROUTER + '[[interface]]\nname = "tap0123456789ab"\naddresses = ["10.1.0.1/24"]\n')


def test_interface_name_missing(tmp_path: Path) -> None:
    expect(tmp_path, ROUTER + '[[interface]] #!\naddresses = ["10.1.0.1/24"]\n',
           "interface[0].name", "missing required key 'name'")


def test_duplicate_interface_names(tmp_path: Path) -> None:
    text = TWO_LINKS + '\n[[interface]]\nname = "tap0" #!\naddresses = ["10.3.0.1/24"]\n'
    expect(tmp_path, text, "interface[2].name", "duplicate interface name 'tap0' "
                                                "(also interface[0])")


def test_overlapping_prefixes(tmp_path: Path) -> None:
    text = TWO_LINKS + '\n[[interface]]\nname = "tap2"\naddresses = [\n  "10.3.0.1/24",\n' \
                       '  "10.0.0.1/12", #!\n]\n'
    expect(tmp_path, text, "interface[2].addresses[1]",
           "10.0.0.1/12 overlaps 10.1.0.1/24 on interface[0]")


def test_overlap_on_the_same_interface(tmp_path: Path) -> None:
    text = ROUTER + '[[interface]]\nname = "tap0"\naddresses = ["10.1.0.1/24", ' \
                    '"10.1.0.2/24"] #!\n'
    expect(tmp_path, text, "interface[0].addresses[1]", "overlaps 10.1.0.1/24")


@pytest.mark.parametrize("address,message", [
    ("10.1.0.1", "expected an IPv4 address with prefix length"),
    ("10.1.0.1/33", "is not an IPv4 address/prefix"),
    ("10.1.0.300/24", "is not an IPv4 address/prefix"),
    ("10.1.0.0/24", "is the network address of 10.1.0.0/24"),
    ("10.1.0.255/24", "is the broadcast address of 10.1.0.0/24"),
    ("127.0.0.1/8", "not a unicast host address"),
    ("224.0.0.1/24", "not a unicast host address"),
])
def test_bad_addresses(tmp_path: Path, address: str, message: str) -> None:
    text = ROUTER + f'[[interface]]\nname = "tap0"\naddresses = ["{address}"] #!\n'
    expect(tmp_path, text, "interface[0].addresses[0]", message)


def test_addresses_required(tmp_path: Path) -> None:
    expect(tmp_path, ROUTER + '[[interface]] #!\nname = "tap0"\n', "interface[0].addresses",
           "missing required key 'addresses'")
    expect(tmp_path, ROUTER + '[[interface]]\nname = "tap0"\naddresses = [] #!\n',
           "interface[0].addresses", "must be a non-empty list")


def test_point_to_point_prefixes_are_fine() -> None:
    cfg = parse_config(ROUTER + '[[interface]]\nname = "p0"\naddresses = ["10.9.9.0/31"]\n'
                                '[[route]]\nprefix = "10.8.0.0/16"\nvia = "10.9.9.1"\n')
    assert cfg.routes[0].via == IPv4Address("10.9.9.1")


@pytest.mark.parametrize("mtu,message", [(40, "40 out of range (68..16000)"),
                                         (70000, "70000 out of range (68..16000)"),
                                         ('"1500"', "must be an integer (68..16000), not string")])
def test_bad_mtu(tmp_path: Path, mtu: object, message: str) -> None:
    expect(tmp_path, TWO_LINKS.replace('name = "tap0"', f'name = "tap0"\nmtu = {mtu} #!'),
           "interface[0].mtu", message)


@pytest.mark.parametrize("mac,message", [("02:00:00:00:00", "is not a MAC address"),
                                         ("01:00:5e:00:00:01", "is not a unicast address"),
                                         ("00:00:00:00:00:00", "is not a unicast address")])
def test_bad_mac(tmp_path: Path, mac: str, message: str) -> None:
    expect(tmp_path, TWO_LINKS.replace('name = "tap1"', f'name = "tap1"\nmac = "{mac}" #!'),
           "interface[1].mac", message)


def test_duplicate_mac(tmp_path: Path) -> None:
    text = TWO_LINKS.replace('name = "tap0"', 'name = "tap0"\nmac = "02:00:00:00:00:01"')
    text = text.replace('name = "tap1"', 'name = "tap1"\nmac = "02:00:00:00:00:01" #!')
    expect(tmp_path, text, "interface[1].mac", "is also the MAC of interface[0]")


@pytest.mark.parametrize("value", ['"no"', "0", "[]"])
def test_bad_offload(tmp_path: Path, value: str) -> None:
    expect(tmp_path, TWO_LINKS.replace('name = "tap1"', f'name = "tap1"\noffload = {value} #!'),
           "interface[1].offload", "must be a boolean (true or false)")


@pytest.mark.parametrize("netns,message", [("proc/1/ns/net", "must be absolute"),
                                           ("", "a namespace name"),
                                           ("my ns", "a namespace name")])
def test_bad_netns(tmp_path: Path, netns: str, message: str) -> None:
    expect(tmp_path, TWO_LINKS.replace('name = "tap1"', f'name = "tap1"\nnetns = "{netns}" #!'),
           "interface[1].netns", message)


def test_too_many_interfaces(tmp_path: Path) -> None:
    text = TWO_LINKS + '\n[[interface]] #!\nname = "tap2"\naddresses = ["10.3.0.1/24"]\n'
    err = error_of(tmp_path, text, ["net.link.max_interfaces=2"])
    assert str(err) == f"{tmp_path / 'router.toml'}:{marked_line(text)}: interface: " \
                       "3 interfaces exceed net.link.max_interfaces (2)"


# --- routes ---------------------------------------------------------------------------

def route(body: str) -> str:
    return TWO_LINKS + '\n[[route]]\nprefix = "10.3.0.0/16"\nvia = "10.2.0.2"\n\n' + body


def test_route_via_not_connected(tmp_path: Path) -> None:
    text = route('[[route]]\nprefix = "10.4.0.0/16"\nvia = "10.9.0.1" #!\n')
    err = expect(tmp_path, text, "route[1].via", "10.9.0.1 is not on any connected prefix")
    assert str(err) == f"{tmp_path / 'router.toml'}:{marked_line(text)}: route[1].via: " \
                       "10.9.0.1 is not on any connected prefix"


def test_route_via_own_address(tmp_path: Path) -> None:
    expect(tmp_path, route('[[route]]\nprefix = "10.4.0.0/16"\nvia = "10.2.0.1" #!\n'),
           "route[1].via", "10.2.0.1 is one of the router's own addresses")


def test_route_via_not_an_address(tmp_path: Path) -> None:
    expect(tmp_path, route('[[route]]\nprefix = "10.4.0.0/16"\nvia = "gateway" #!\n'),
           "route[1].via", "'gateway' is not an IPv4 address")


def test_route_prefix_host_bits(tmp_path: Path) -> None:
    expect(tmp_path, route('[[route]]\nprefix = "10.4.1.0/16" #!\ntype = "blackhole"\n'),
           "route[1].prefix", "'10.4.1.0/16': host bits set (a network like 10.3.0.0/16 "
                              "or \"default\"); did you mean 10.4.0.0/16?")


def test_route_prefix_garbage_and_missing(tmp_path: Path) -> None:
    expect(tmp_path, route('[[route]]\nprefix = "10.4/16x" #!\ntype = "blackhole"\n'),
           "route[1].prefix", "'10.4/16x'")
    expect(tmp_path, route('[[route]] #!\ntype = "blackhole"\n'),
           "route[1].prefix", "missing required key 'prefix'")


def test_route_with_no_target(tmp_path: Path) -> None:
    expect(tmp_path, route('[[route]] #!\nprefix = "10.4.0.0/16"\n'), "route[1]",
           "exactly one of via, interface, type is required (has none)")


def test_route_with_several_targets(tmp_path: Path) -> None:
    expect(tmp_path, route('[[route]] #!\nprefix = "10.4.0.0/16"\nvia = "10.1.0.2"\n'
                           'interface = "tap0"\n'), "route[1]",
           "exactly one of via, interface, type is required (has via, interface)")


def test_route_unknown_interface_and_type(tmp_path: Path) -> None:
    expect(tmp_path, route('[[route]]\nprefix = "10.4.0.0/16"\ninterface = "eth9" #!\n'),
           "route[1].interface", "'eth9' is not a configured interface (tap0, tap1)")
    expect(tmp_path, route('[[route]]\nprefix = "10.4.0.0/16"\ntype = "drop" #!\n'),
           "route[1].type", "'drop' is not a route type (blackhole, unreachable, prohibit)")


def test_route_unknown_key(tmp_path: Path) -> None:
    expect(tmp_path, route('[[route]]\nprefix = "10.4.0.0/16"\ntype = "prohibit"\n'
                           'metric = 5 #!\n'),
           "route[1].metric", "unknown key (allowed: prefix, via, interface, type)")


def test_duplicate_routes(tmp_path: Path) -> None:
    expect(tmp_path, route('[[route]]\nprefix = "10.3.0.0/16" #!\ntype = "blackhole"\n'),
           "route[1].prefix", "10.3.0.0/16 is also route[0]")
    expect(tmp_path, route('[[route]]\nprefix = "10.1.0.0/24" #!\ntype = "blackhole"\n'),
           "route[1].prefix", "10.1.0.0/24 is the connected prefix of tap0")


def test_too_many_routes(tmp_path: Path) -> None:
    err = error_of(tmp_path, route('[[route]]\nprefix = "10.4.0.0/16"\ntype = "blackhole"\n'),
                   ["net.route.max_routes=1"])
    assert "route: 2 routes exceed net.route.max_routes (1)" in str(err)


def test_every_problem_is_reported_in_file_order(tmp_path: Path) -> None:
    text = ROUTER + '''
[sysctl]
net.inet.ip.ttl = 0

[[interface]]
name = "tap0"
addresses = ["10.1.0.1/24"]
mtu = 40

[[route]]
prefix = "10.4.0.0/16"
via = "10.9.0.1"
'''
    err = error_of(tmp_path, text, ["bogus=1"])
    keys = [p.key for p in err.problems]
    assert keys == ["sysctl.net.inet.ip.ttl", "interface[0].mtu", "route[0].via", "-o bogus=1"]
    lines = [p.line for p in err.problems]
    assert lines == [5, 10, 14, None]
    assert len(str(err).splitlines()) == 4


# --- IPv6 -----------------------------------------------------------------------------

DUAL = ROUTER + '''
[[interface]]
name = "tap0"
addresses = ["10.1.0.1/24", "2001:db8:1::1/64"]
mac = "52:54:00:12:34:56"
ra = true

[[interface]]
name = "tap1"
addresses = ["2001:db8:2::1/64"]
'''


def test_example_config_documents_dual_stack() -> None:
    """The commented "#6 " example in configs/router.toml is a valid config."""
    text = (REPO / "configs" / "router.toml").read_text()
    cfg = parse_config(text.replace("\n#6 ", "\n").replace("\n#6\n", "\n\n"))
    tap4, tap5 = cfg.interface("tap4"), cfg.interface("tap5")
    assert tap4.addresses == (IPv4Interface("10.4.0.1/24"),) and tap4.ra
    assert tap5.addresses == () and tap5.addresses6 == (IPv6Interface("2001:db8:5::1/64"),)
    assert Route(IPv6Network("::/0"), via=IPv6Address("fe80::1"), via_interface="tap5") \
        in cfg.routes
    assert cfg.interface("tap2").link_local == IPv6Interface("fe80::ff:fe00:201/64")


def test_dual_stack_model() -> None:
    cfg = parse_config(DUAL + '''
[[route]]
prefix = "2001:db8:50::/48"
via = "2001:db8:2::2"

[[route]]
prefix = "::/0"
via = "fe80::1%tap1"

[[route]]
prefix = "default"
via = "10.1.0.2"

[[route]]
prefix = "2001:db8:60::/48"
interface = "tap0"

[[route]]
prefix = "2001:db8:70::/48"
type = "prohibit"
''')
    tap0, tap1 = cfg.interfaces
    assert tap0.addresses == (IPv4Interface("10.1.0.1/24"),)          # IPv4 only, as before
    assert tap0.addresses6 == (IPv6Interface("2001:db8:1::1/64"),) and tap0.ra
    assert tap1.addresses == () and not tap1.ra                       # IPv6-only is fine
    assert tap0.networks6 == (IPv6Network("2001:db8:1::/64"),)
    assert tap0.link_local == IPv6Interface("fe80::5054:ff:fe12:3456/64")
    assert cfg.connected6 == {IPv6Network("2001:db8:1::/64"): tap0,
                              IPv6Network("2001:db8:2::/64"): tap1}
    assert cfg.addresses6() == [(IPv6Interface("2001:db8:1::1/64"), tap0),
                                (IPv6Interface("2001:db8:2::1/64"), tap1)]
    assert cfg.connected() == [(IPv4Interface("10.1.0.1/24"), tap0)]
    r0, r1, r2, r3, r4 = cfg.routes
    assert r0 == Route(IPv6Network("2001:db8:50::/48"), via=IPv6Address("2001:db8:2::2"))
    assert cfg.link_for(r0.via) == (tap1, IPv6Network("2001:db8:2::/64"))
    # the gateway's %scope is kept apart: via is the bare address
    assert r1 == Route(IPv6Network("::/0"), via=IPv6Address("fe80::1"), via_interface="tap1")
    assert r1.via is not None and r1.via.scope_id is None
    assert cfg.link_for(IPv6Address("fe80::1%tap1")) == (tap1, IPv6Network("fe80::/64"))
    assert cfg.link_for(IPv6Address("fe80::1")) is None
    assert r2.prefix == IPv4Network("0.0.0.0/0") and r2.via_interface is None   # "default": IPv4
    assert cfg.link_for(r2.via) == (tap0, IPv4Network("10.1.0.0/24"))
    assert r3 == Route(IPv6Network("2001:db8:60::/48"), interface="tap0")
    assert r4 == Route(IPv6Network("2001:db8:70::/48"), type="prohibit")


def test_ipv6_defaults_for_an_ipv4_config() -> None:
    tap0 = parse_config(TWO_LINKS).interfaces[0]
    assert tap0.addresses6 == () and tap0.ra is False


@pytest.mark.parametrize("mac,link_local", [
    ("52:54:00:12:34:56", "fe80::5054:ff:fe12:3456"),   # U/L bit set by the flip
    ("02:00:00:00:02:01", "fe80::ff:fe00:201"),         # and cleared
    ("00:1B:44:11:3A:B7", "fe80::21b:44ff:fe11:3ab7"),  # RFC 4291 appendix A's rule
])
def test_link_local_is_the_modified_eui64_of_the_mac(mac: str, link_local: str) -> None:
    cfg = parse_config(ROUTER + f'[[interface]]\nname = "t"\naddresses = ["10.1.0.1/24"]\n'
                                f'mac = "{mac}"\n')
    assert cfg.interfaces[0].link_local == IPv6Interface(f"{link_local}/64")


def test_a_generated_mac_has_a_link_local_too() -> None:
    itf = parse_config(TWO_LINKS).interfaces[0]
    mac = bytes.fromhex(itf.mac.replace(":", ""))
    iid = bytes([mac[0] ^ 0x02]) + mac[1:3] + b"\xff\xfe" + mac[3:]
    assert itf.link_local == IPv6Interface((IPv6Address(b"\xfe\x80" + bytes(6) + iid), 64))
    with pytest.raises(ValueError, match="not a MAC address"):
        Interface(name="x", addresses=()).link_local


@pytest.mark.parametrize("address,message", [
    ("2001:db8:1::1", "'2001:db8:1::1': expected an IPv6 address with prefix length "
                      "(e.g. \"2001:db8:1::1/64\")"),
    ("2001:db8:1::1/129", "'2001:db8:1::1/129' is not an IPv6 address/prefix"),
    ("2001:db8:1::1/0", "prefix length 0; an interface prefix has length 1..128"),
    ("2001:db8:1::zz/64", "is not an IPv6 address/prefix"),
    ("2001:db8:1::1%tap0/64", "an interface address takes no %zone"),
    ("::/64", "not a unicast host address: the unspecified address"),
    ("::1/128", "not a unicast host address: the loopback address"),
    ("ff02::1/64", "not a unicast host address: multicast (ff00::/8)"),
    ("::ffff:10.9.0.1/120", "not a unicast host address: IPv4-mapped (::ffff:0:0/96)"),
    ("fe80::1/64", "fe80::1/64: link-local addresses (fe80::/10) are not configured: every "
                   "interface has one, derived from its MAC"),
    ("febf::1/64", "link-local addresses (fe80::/10)"),
    ("2001:db8:1::/64", "2001:db8:1::/64 is the subnet-router anycast address of "
                        "2001:db8:1::/64 (RFC 4291 2.6.1: the all-zero host part is reserved "
                        "for the routers on that link); use a host address"),
    ("2001:db8:1::/126", "subnet-router anycast"),
])
def test_bad_ipv6_addresses(tmp_path: Path, address: str, message: str) -> None:
    text = ROUTER + '[[interface]]\nname = "tap0"\naddresses = [\n  "10.1.0.1/24",\n' \
                    f'  "{address}", #!\n]\n'
    expect(tmp_path, text, "interface[0].addresses[1]", message)


@pytest.mark.parametrize("address", ["2001:db8:1::/127", "2001:db8:1::1/128", "fd00::1/8",
                                     "2001:db8:1::1/1"])
def test_ipv6_edge_addresses_are_fine(address: str) -> None:
    cfg = parse_config(ROUTER + f'[[interface]]\nname = "t"\naddresses = ["{address}"]\n')
    assert cfg.interfaces[0].addresses6 == (IPv6Interface(address),)


def test_overlapping_ipv6_prefixes(tmp_path: Path) -> None:
    text = DUAL + '\n[[interface]]\nname = "tap2"\naddresses = [\n  "10.3.0.1/24",\n' \
                  '  "2001:db8::1/32", #!\n]\n'
    expect(tmp_path, text, "interface[2].addresses[1]",
           "2001:db8::1/32 overlaps 2001:db8:1::1/64 on interface[0] "
           "(connected prefixes must be disjoint)")
    text = ROUTER + '[[interface]]\nname = "tap0"\naddresses = ["2001:db8:1::1/64", ' \
                    '"2001:db8:1::2/64"] #!\n'
    expect(tmp_path, text, "interface[0].addresses[1]", "overlaps 2001:db8:1::1/64")
    # the families never overlap each other: ::a01:1/120 is not 10.1.0.1/24
    parse_config(ROUTER + '[[interface]]\nname = "t"\naddresses = ["10.1.0.1/24", "::a01:1/120"]\n')


def test_at_most_max_addresses_of_each_family(tmp_path: Path) -> None:
    v4 = [f'"10.1.{k}.1/24"' for k in range(9)]
    v6 = [f'"2001:db8:{k}::1/64"' for k in range(9)]

    def text(addresses: list[str]) -> str:
        return ROUTER + f'[[interface]]\nname = "t"\naddresses = [{", ".join(addresses)}] #!\n'
    itf = parse_config(text(v4[:8] + v6[:8])).interfaces[0]
    assert len(itf.addresses) == len(itf.addresses6) == 8
    expect(tmp_path, text(v4[:1] + v6), "interface[0].addresses",
           "9 IPv6 addresses: an interface holds at most 8 of each family")
    expect(tmp_path, text(v4 + v6[:1]), "interface[0].addresses",
           "9 IPv4 addresses: an interface holds at most 8 of each family")
    expect(tmp_path, text(v4), "interface[0].addresses",
           "9 addresses: an interface holds at most 8")


def test_ra_needs_a_slash_64(tmp_path: Path) -> None:
    def link(addresses: str, ra: str = "true") -> str:
        return ROUTER + f'[[interface]]\nname = "tap0"\naddresses = {addresses}\nra = {ra} #!\n'
    expect(tmp_path, link('["10.1.0.1/24"]'), "interface[0].ra",
           "ra = true needs an IPv6 prefix of length 64 on this interface (SLAAC forms "
           "addresses only in a /64); it has no IPv6 address")
    expect(tmp_path, link('["2001:db8:1::1/56", "2001:db8:2::1/80"]'), "interface[0].ra",
           "it has 2001:db8:1::1/56, 2001:db8:2::1/80")
    expect(tmp_path, link('["2001:db8:1::1/64"]', '"yes"'), "interface[0].ra",
           "must be a boolean (true or false), not string")
    assert parse_config(link('["2001:db8:1::1/56", "2001:db8:2::1/64"]')).interfaces[0].ra
    assert not parse_config(link('["10.1.0.1/24"]', "false")).interfaces[0].ra
    # a refused /64 is reported once, not again as a missing /64
    err = error_of(tmp_path, link('["fe80::1/64"]'))
    assert [p.key for p in err.problems] == ["interface[0].addresses[0]"]


def route6(body: str) -> str:
    return DUAL + '\n[[route]]\nprefix = "2001:db8:50::/48"\nvia = "2001:db8:2::2"\n\n' + body


@pytest.mark.parametrize("prefix,via,message", [
    ("2001:db8:60::/48", "10.1.0.2", "10.1.0.2: an IPv6 prefix needs an IPv6 gateway"),
    ("::/0", "10.1.0.2", "an IPv6 prefix needs an IPv6 gateway"),
    ("10.60.0.0/16", "2001:db8:1::2", "2001:db8:1::2: an IPv4 prefix needs an IPv4 gateway"),
    ("default", "fe80::1%tap0", "an IPv4 prefix needs an IPv4 gateway"),
    ("10.60.0.0/16", "fe80::zz", "'fe80::zz' is not an IPv4 address"),
    ("2001:db8:60::/48", "gateway", "'gateway' is not an IPv6 address (e.g. \"2001:db8:2::2\", "
                                    "or \"fe80::1%tap1\" for a link-local gateway)"),
    ("2001:db8:60::/48", "2001:db8:9::1", "2001:db8:9::1 is not on any connected prefix"),
    ("2001:db8:60::/48", "2001:db8:2::1", "2001:db8:2::1 is one of the router's own addresses"),
    ("2001:db8:60::/48", "2001:db8:2::", "2001:db8:2:: is the subnet-router anycast address "
                                         "of 2001:db8:2::/64"),
    ("2001:db8:60::/48", "fe80::1", "fe80::1: a link-local gateway needs its interface, "
                                    "e.g. fe80::1%tap1 (interfaces: tap0, tap1)"),
    ("2001:db8:60::/48", "fe80::1%eth9", "'fe80::1%eth9': 'eth9' is not a configured "
                                         "interface (tap0, tap1)"),
    ("2001:db8:60::/48", "fe80::5054:ff:fe12:3456%tap0",
     "fe80::5054:ff:fe12:3456 is one of the router's own addresses (the link-local address "
     "of tap0)"),
    ("2001:db8:60::/48", "2001:db8:2::2%tap1", "only a link-local gateway names its interface; "
                                               "write 2001:db8:2::2"),
    ("2001:db8:60::/48", "ff02::2", "ff02::2 is multicast: a gateway is a neighbour's "
                                    "unicast address"),
    ("2001:db8:60::/48", "::", ":: is the unspecified address"),
    ("2001:db8:60::/48", "::1", "::1 is the loopback address"),
])
def test_bad_ipv6_gateways(tmp_path: Path, prefix: str, via: str, message: str) -> None:
    expect(tmp_path, route6(f'[[route]]\nprefix = "{prefix}"\nvia = "{via}" #!\n'),
           "route[1].via", message)


def test_a_link_local_gateway_needs_no_ipv6_prefix_on_its_link() -> None:
    cfg = parse_config(TWO_LINKS + '[[route]]\nprefix = "::/0"\nvia = "fe80::1%tap1"\n')
    assert cfg.routes[0].via_interface == "tap1"


@pytest.mark.parametrize("prefix,message", [
    ("2001:db8:60::1/48", "'2001:db8:60::1/48': host bits set (a network like 2001:db8:50::/48 "
                          "or \"::/0\"); did you mean 2001:db8:60::/48?"),
    ("2001:db8:60::/129", "'2001:db8:60::/129': '129' is not a valid netmask"),
    ("2001:db8:zz::/48", "'2001:db8:zz::/48'"),
    ("fe80::%tap0/64", "a prefix takes no %zone"),
    ("fe80::/64", "fe80::/64 is link-local (fe80::/10): such destinations are never routed"),
    ("ff00::/8", "ff00::/8 is multicast (ff00::/8): such destinations are never routed"),
    ("2001:db8:50::/48", "2001:db8:50::/48 is also route[0]"),
    ("2001:db8:1::/64", "2001:db8:1::/64 is the connected prefix of tap0"),
    ("2001:db8:2::/64", "2001:db8:2::/64 is the connected prefix of tap1"),
])
def test_bad_ipv6_route_prefixes(tmp_path: Path, prefix: str, message: str) -> None:
    expect(tmp_path, route6(f'[[route]]\nprefix = "{prefix}" #!\ntype = "blackhole"\n'),
           "route[1].prefix", message)


def test_duplicates_are_per_family(tmp_path: Path) -> None:
    cfg = parse_config(route6('[[route]]\nprefix = "::/0"\ntype = "unreachable"\n'
                              '[[route]]\nprefix = "default"\ntype = "unreachable"\n'))
    assert [str(r.prefix) for r in cfg.routes] == ["2001:db8:50::/48", "::/0", "0.0.0.0/0"]
    expect(tmp_path, route6('[[route]]\nprefix = "::/0"\ntype = "unreachable"\n'
                            '[[route]]\nprefix = "::/0" #!\ninterface = "tap0"\n'),
           "route[2].prefix", "::/0 is also route[1]")


def test_ipv6_interface_routes_and_types(tmp_path: Path) -> None:
    expect(tmp_path, route6('[[route]]\nprefix = "2001:db8:60::/48"\ninterface = "eth9" #!\n'),
           "route[1].interface", "'eth9' is not a configured interface (tap0, tap1)")
    expect(tmp_path, route6('[[route]]\nprefix = "2001:db8:60::/48"\ntype = "drop" #!\n'),
           "route[1].type", "'drop' is not a route type (blackhole, unreachable, prohibit)")


def test_an_ipv4_route_cannot_leave_by_an_ipv6_only_interface(tmp_path: Path) -> None:
    expect(tmp_path, route6('[[route]]\nprefix = "10.60.0.0/16"\ninterface = "tap1" #!\n'),
           "route[1].interface", "'tap1' has no IPv4 address: an IPv4 route out of it "
           "could not ask ARP for its neighbours")
    cfg = parse_config(route6('[[route]]\nprefix = "2001:db8:60::/48"\ninterface = "tap1"\n'
                              '[[route]]\nprefix = "10.60.0.0/16"\ninterface = "tap0"\n'))
    assert [(str(r.prefix), r.interface) for r in cfg.routes[1:]] == \
        [("2001:db8:60::/48", "tap1"), ("10.60.0.0/16", "tap0")]


def test_ipv6_problems_are_all_reported_in_file_order(tmp_path: Path) -> None:
    text = ROUTER + '''
[[interface]]
name = "tap0"
addresses = ["10.1.0.1/24", "fe80::1/64"]
ra = true

[[interface]]
name = "tap1"
addresses = ["2001:db8:2::1/64", "2001:db8:2::/48"]
ra = true

[[route]]
prefix = "2001:db8:50::/48"
via = "10.1.0.2"

[[route]]
prefix = "::/0"
via = "fe80::1"
'''
    err = error_of(tmp_path, text)
    assert [(p.line, p.key) for p in err.problems] == [
        (6, "interface[0].addresses[1]"), (11, "interface[1].addresses[1]"),
        (16, "route[0].via"), (20, "route[1].via")]


# --- the locator ------------------------------------------------------------------------

def test_locator_handles_strings_comments_and_multiline_values() -> None:
    text = '''# [[route]] in a comment
[router]
name = "a # not a comment"
s = """
[[route]]
x = 1
"""
t = \'\'\'[[route]]\'\'\'
arr = [
  "x", # ]
  [1, 2],
  { k = "}" },
]

[[route]]
prefix = "1.0.0.0/8"
[[route]]
"pre.fix" = 1
[route.sub]
k = 2
'''
    loc = Locator(text)
    assert loc.line_of(("router", "name")) == 3
    assert loc.line_of(("router", "t")) == 8
    assert loc.line_of(("router", "arr", 0)) == 10
    assert loc.line_of(("router", "arr", 2)) == 12
    assert loc.line_of(("route", 0)) == 15
    assert loc.line_of(("route", 0, "prefix")) == 16
    assert loc.line_of(("route", 1)) == 17
    assert loc.line_of(("route", 1, "pre.fix")) == 18
    assert loc.line_of(("route", 1, "sub", "k")) == 20
    assert loc.line_of(("route", 1, "missing")) == 17
    assert loc.line_of(("nothing",)) is None



# --- attached ports -------------------------------------------------------------------

ATTACHED = ROUTER + '''attach_timeout = 20

[[interface]]
name = "eth1"
attach = "eth1"
addresses = ["10.71.0.1/24", "2001:db8:71::1/64"]

[[interface]]
name = "tap2"
addresses = ["10.2.0.1/24"]
netns = "h2"
'''


def test_an_attached_port_takes_its_links_mac_and_mtu_unless_given() -> None:
    cfg = parse_config(ATTACHED + '\n[[interface]]\nname = "up"\nattach = "eth2"\n'
                       'addresses = ["10.72.0.1/24"]\nmtu = 9000\nmac = "02:00:00:00:72:01"\n'
                       'attach_mode = "tap"\n')
    eth1, tap2, up = cfg.interfaces
    assert cfg.router.attach_timeout == 20
    assert (eth1.attach, eth1.attach_mode, eth1.tap, eth1.mac_generated, eth1.mtu_configured) \
        == ("eth1", "packet", None, True, False)           # a packet socket: no TAP
    assert (tap2.attach, tap2.attach_mode, tap2.tap, tap2.netns) == (None, None, "tap2", "h2")
    assert (up.attach_mode, up.tap, up.mtu, up.mtu_configured, up.mac, up.mac_generated) == \
        ("tap", "tap-up", 9000, True, "02:00:00:00:72:01", False)
    assert parse_config(ROUTER).router.attach_timeout == 300


def test_attach_mode_per_router_and_per_port(tmp_path: Path) -> None:
    """[router] attach_mode is every attached port's unless the port says otherwise."""
    cfg = parse_config(ATTACHED.replace("attach_timeout = 20", 'attach_mode = "tap"')
                       + '\n[[interface]]\nname = "p3"\nattach = "eth3"\n'
                       'addresses = ["10.73.0.1/24"]\nattach_mode = "packet"\n')
    assert cfg.router.attach_mode == "tap"
    assert [(i.attach_mode, i.tap) for i in cfg.interfaces] == \
        [("tap", "tap-eth1"), (None, "tap2"), ("packet", None)]
    assert parse_config(ROUTER).router.attach_mode == "packet"
    expect(tmp_path, ROUTER + 'attach_mode = "veth" #!\n', "router.attach_mode",
           "'veth' is not one of 'packet', 'tap'")
    expect(tmp_path, ATTACHED.replace('attach = "eth1"', 'attach = "eth1"\nattach_mode = 1 #!'),
           "interface[0].attach_mode", "must be a string, not integer")
    expect(tmp_path, ATTACHED.replace('netns = "h2"', 'netns = "h2"\nattach_mode = "tap" #!'),
           "interface[1].attach_mode", "attach_mode is for attached ports")


@pytest.mark.parametrize("extra,key,message", [
    ('[[interface]]\nname = "x"\nattach = "eth1" #!\naddresses = ["10.9.0.1/24"]\n',
     "interface[2].attach", "'eth1' is attached by interface[2] and also attached by "
                            "interface[0]"),
    ('[[interface]]\nname = "tap-eth1" #!\naddresses = ["10.9.0.1/24"]\n',
     "interface[2].name", "'tap-eth1' is the TAP of interface[2] and also the TAP of "
                          "interface[0]"),     # interface[0] in tap mode (the test's ATTACHED)
    ('[[interface]]\nname = "x"\nattach = "tap2" #!\naddresses = ["10.9.0.1/24"]\n',
     "interface[2].attach", "'tap2' is attached by interface[2] and also the TAP of "
                            "interface[1]"),
    ('[[interface]]\nname = "x"\nattach = "eth 2" #!\naddresses = ["10.9.0.1/24"]\n',
     "interface[2].attach", "'eth 2' is not an interface name"),
    ('[[interface]]\nname = "x"\nattach = "eth2" #!\nnetns = "h3"\naddresses = ["10.9.0.1/24"]\n',
     "interface[2].attach", "attach and netns exclude each other"),
])
def test_attach_problems(tmp_path: Path, extra: str, key: str, message: str) -> None:
    tap_mode = ATTACHED.replace("attach_timeout = 20", 'attach_timeout = 20\nattach_mode = "tap"')
    expect(tmp_path, tap_mode + "\n" + extra, key, message)


def test_a_packet_port_makes_no_tap_whose_name_could_clash() -> None:
    assert parse_config(ATTACHED + '\n[[interface]]\nname = "tap-eth1"\n'
                        'addresses = ["10.9.0.1/24"]\n').interfaces[2].tap == "tap-eth1"


def test_attach_timeout_range(tmp_path: Path) -> None:
    expect(tmp_path, ROUTER + 'attach_timeout = -1 #!\n', "router.attach_timeout",
           "-1 out of range (0..86400)")


# --- the control plane ------------------------------------------------------------------

def test_control_plane_section() -> None:
    cfg = parse_config(ROUTER + '\n[control_plane]\nnetns = "r1-cp"\ntables = [254, 100]\n'
                       'protocols = ["bgp", "ospf"]\n')
    cp = cfg.control_plane
    assert (cp.netns, cp.import_routes, cp.tables, cp.protocols) == \
        ("r1-cp", True, (254, 100), ("bgp", "ospf"))
    assert cp.netns_path == "/var/run/netns/r1-cp"
    assert parse_config(ROUTER).control_plane.netns is None
    off = parse_config(ROUTER + '[control_plane]\nnetns = "/proc/7/ns/net"\nimport_routes = false\n')
    assert (off.control_plane.netns_path, off.control_plane.import_routes) == ("/proc/7/ns/net", False)


@pytest.mark.parametrize("body,key,message", [
    ('tables = [255] #!\n', "control_plane.tables[0]", "not 255 (the local table"),
    ('tables = 254 #!\n', "control_plane.tables", "a list of kernel table numbers"),
    ('protocols = ["bgp", "bpg"] #!\n', "control_plane.protocols[1]",
     "'bpg' is not a route protocol (babel, bgp, bird,"),
    ('colour = "red" #!\n', "control_plane.colour", "unknown key (allowed: netns, import_routes, "
                                                    "tables, protocols)"),
])
def test_control_plane_problems(tmp_path: Path, body: str, key: str, message: str) -> None:
    expect(tmp_path, ROUTER + '[control_plane]\nnetns = "cp"\n' + body, key, message)


def test_control_plane_in_the_routers_own_namespace(tmp_path: Path) -> None:
    """netns = "/proc/self/ns/net": the mirrors beside the router's TAPs and attached
    interfaces, so a port may not be named as either (its mirror takes its name)."""
    own = ROUTER + '[control_plane]\nnetns = "/proc/self/ns/net"\n'
    port = '[[interface]]\nname = "{}"\nattach = "eth1"\naddresses = ["10.1.0.1/24"]\n'
    cfg = parse_config(own + port.format("port1"))
    assert cfg.control_plane.in_router_netns and cfg.interfaces[0].tap is None
    tap_mode = parse_config(own + port.format("port1") + 'attach_mode = "tap"\n')
    assert tap_mode.interfaces[0].tap == "tap-port1"
    assert not parse_config(ROUTER + '[control_plane]\nnetns = "/proc/7/ns/net"\n'
                            ).control_plane.in_router_netns
    expect(tmp_path, own + port.format("eth1").replace('"eth1"\nattach', '"eth1" #!\nattach'),
           "interface[0].name", "'eth1' is attached by interface[0], and with [control_plane] "
           "netns = '/proc/self/ns/net' the port's mirror takes its name")
    # elsewhere the mirror lives in a namespace of its own: eth1 on eth1 is fine there
    assert parse_config(ROUTER + '[control_plane]\nnetns = "cp"\n' + port.format("eth1"))
