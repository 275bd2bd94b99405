"""Every command's --json output against its JSON Schema (forwarder/schemas/,
docs/json.md), read off a real router through the real CLI.

The router imports routes from a control plane (a namespace whose kernel
routes it copies), so that `route list` shows every type and origin: connected
and local (IPv4 and IPv6), static over gateways and blackhole / prohibit,
runtime unreachable and on-link, imported multipath (ECMP, IPv4 and IPv6, with
weights) and blackhole, a static route shadowing an imported one.  The ARP and
neighbour tables hold resolved and incomplete entries; `stats` carries
route_import with a skipped route.

h1 (10.1.0.2, 2001:db8:1::2) --tap1-- router --tap2-- h2 --tap3-- h3
"""
from __future__ import annotations

import argparse
import copy
import json
import socket
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from jsonschema import Draft202012Validator

from forwarder import netns as nn
from forwarder import schemas
from forwarder.cli import build_parser
from tests.routerlab import RunningRouter, kroute, routes, start_router
from tests.topology import RouterLab, make_lab, requires_netns, topology  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
RTPROT_BGP = 186
STATIC = [
    {"prefix": "198.18.0.0/16", "via": "10.2.0.2"},          # also imported: shadows bgp
    {"prefix": "2001:db8:50::/48", "via": "2001:db8:3::2"},
    {"prefix": "192.0.2.0/24", "type": "blackhole"},
    {"prefix": "2001:db8:dead::/48", "type": "prohibit"},
]
ECMP4, ECMP6 = "198.51.100.0/24", "2001:db8:ff::/48"
# placeholders of schemas.OUTPUTS' command lines
ARGS = {"NAME": "net.inet", "NAME=VALUE": "net.inet.ip.ttl=61", "SECONDS": "10"}


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schemas.load(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


def errors(name: str, doc: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator(name).iter_errors(doc)]


# --- the router -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab(topology):  # noqa: F811
    return make_lab(topology, ipv6=True)


@pytest.fixture(scope="module")
def router(lab: RouterLab, topology, tmp_path_factory) -> Iterator[RunningRouter]:  # noqa: F811
    cp = topology.netns("cp")
    r = start_router(lab, tmp_path_factory.mktemp("json"), control_plane=cp, routes=STATIC,
                     sysctl={"net.link.ether.inet.maxtries": 100,
                             "net.inet6.icmp6.nd6_mmaxtries": 100})
    for addr in ("10.2.0.2", "10.3.0.2", "2001:db8:2::2", "2001:db8:3::2"):
        assert lab.ping("h1", addr, count=1, wait=2).returncode == 0, addr
    # incomplete entries: nobody answers for .99 (asked again for 100 s)
    for addr in ("10.2.0.99", "2001:db8:2::99"):
        lab.ping("h1", addr, count=1, wait=0.2)
    r.cli("route", "add", "203.0.113.0/24", "unreachable")
    r.cli("route", "add", "2001:db8:77::/48", "dev", "tap3")
    with nn.iproute(cp) as ipr:
        tap2, tap3 = ipr.link_lookup(ifname="tap2")[0], ipr.link_lookup(ifname="tap3")[0]
        for dst, gw2, gw3 in ((ECMP4, "10.2.0.2", "10.3.0.2"),
                              (ECMP6, "2001:db8:2::2", "2001:db8:3::2")):
            ipr.route("replace", dst=dst, family=socket.AF_INET6 if ":" in dst else socket.AF_INET,
                      proto=RTPROT_BGP, multipath=[{"gateway": gw2, "oif": tap2, "hops": 0},
                                                   {"gateway": gw3, "oif": tap3, "hops": 2}])
    kroute(cp, "add", "198.18.0.0/16", gateway="10.3.0.2", proto=RTPROT_BGP)
    kroute(cp, "add", "100.64.0.0/10", type="blackhole", proto=RTPROT_BGP)
    kroute(cp, "add", "100.127.0.0/16", type="throw", proto=RTPROT_BGP)     # skipped: type
    r.wait_for(lambda: all((routes(r).get(p) or {}).get("paths") for p in (ECMP4, ECMP6))
               and "100.64.0.0/10" in routes(r), 5, what="the imported routes in the dataplane")
    yield r
    code, out = r.stop()
    assert code == 0, out


def argv_of(output: schemas.Output) -> list[str]:
    return [ARGS.get(w, w) for w in output.argv]


@pytest.fixture(scope="module")
def outputs(router: RunningRouter, lab: RouterLab) -> dict[tuple[str, ...], Any]:
    """{command line: its --json document} for every entry of schemas.OUTPUTS,
    and `health --json` of a stalled router (exit 1, still JSON)."""
    got: dict[tuple[str, ...], Any] = {}
    router.call("trace.start", count=2, interface="tap1")
    assert lab.ping("h1", "10.2.0.2", count=2).returncode == 0
    router.wait_for(lambda: len(router.call("trace.show")["packets"]) == 2, 5,
                    what="two traced packets")
    for o in schemas.OUTPUTS:
        if o.argv[0] == "debug":
            continue
        cp = router.cli(*argv_of(o), "--json")
        got[o.argv] = json.loads(cp.stdout)
    router.sysctl("net.inet.ip.ttl=64")
    stall = ("debug", "stall", "SECONDS")
    got[stall] = json.loads(router.cli(*argv_of(schemas.Output(stall, "debug")), "--json").stdout)
    router.wait_for(lambda: not router.call("health")["healthy"], 4, what="unhealthy, stalled")
    cp = router.cli("health", "--json", check=False)
    assert cp.returncode == 1, cp.stdout + cp.stderr
    got[("health", "stalled")] = json.loads(cp.stdout)
    got[("debug", "resume")] = router.cli_json("debug", "resume")
    router.wait_for(lambda: router.call("health")["healthy"], 5, what="healthy again")
    return got


def schema_of(argv: tuple[str, ...]) -> str:
    if argv == ("health", "stalled"):
        return "health"
    return next(o.schema for o in schemas.OUTPUTS if o.argv == argv)


# --- every output valid -----------------------------------------------------------------

@requires_netns
def test_every_json_output_of_a_real_router_is_valid_against_its_schema(outputs) -> None:
    bad = {" ".join(argv): errs for argv, doc in outputs.items()
           if (errs := errors(schema_of(argv), doc))}
    assert not bad, json.dumps(bad, indent=1)
    assert {schema_of(a) for a in outputs} == set(schemas.names())   # every schema was used


@requires_netns
def test_the_outputs_validated_carry_every_shape_the_schemas_describe(outputs) -> None:
    """What was validated above is not a trivial case: every route type and
    origin, multipath paths in both families, shadows, optional blocks, null
    and non-null neighbour fields."""
    rl = {r["prefix"]: r for r in outputs[("route", "list")]}
    assert {r["type"] for r in rl.values()} == {"forward", "local", "blackhole", "unreachable",
                                               "prohibit", "multipath"}
    assert {r["origin"] for r in rl.values()} >= {"connected", "local", "static", "runtime", "bgp"}
    for p in (ECMP4, ECMP6):
        assert [(x["interface"], x["weight"]) for x in rl[p]["paths"]] == [("tap2", 1), ("tap3", 3)]
    assert rl["198.18.0.0/16"]["shadows"] == "bgp"
    assert rl["2001:db8:77::/48"] == {"prefix": "2001:db8:77::/48", "type": "forward",
                                      "via": None, "interface": "tap3", "origin": "runtime"}
    stats, verbose = outputs[("stats",)], outputs[("stats", "-v")]
    assert "drop_reasons" not in stats and set(verbose["drop_reasons"]) == set(verbose["drops"])
    assert stats["route_import"]["skipped"].get("type", 0) >= 1, stats["route_import"]
    for table, ip in (("arp", "10.2.0.99"), ("ndp", "2001:db8:2::99")):
        rows = {e["ip"]: e for e in outputs[(table, "-a")]}
        assert rows[ip]["state"] == "incomplete" and rows[ip]["mac"] is None, rows
        assert any(e["mac"] for e in rows.values()), rows
    assert outputs[("sysctl", "NAME=VALUE")] == [{"name": "net.inet.ip.ttl", "old": 64, "new": 61}]
    assert outputs[("health",)]["healthy"] and not outputs[("health", "stalled")]["healthy"]
    assert outputs[("debug", "resume")] == {"resumed": True}
    ends = [p["end"]["kind"] for p in outputs[("trace", "show")]["packets"]]
    assert len(ends) == 2 and "transmitted" in ends and "in flight" not in ends, ends


# --- the schemas reject what is not so ------------------------------------------------------

def _route(doc: list, prefix: str) -> dict:
    return next(r for r in doc if r["prefix"] == prefix)


# (name, command line, how the real output is spoiled)
SPOILED: list[tuple[str, tuple[str, ...], Callable[[Any], None]]] = [
    ("route type unknown", ("route", "list"), lambda d: d[0].update(type="unicast")),
    ("route without origin", ("route", "list"), lambda d: d[0].pop("origin")),
    ("route with an unknown key", ("route", "list"), lambda d: d[0].update(metric=1)),
    ("route via not an address", ("route", "list"),
     lambda d: _route(d, "198.18.0.0/16").update(via="10.2.0.256")),
    ("multipath without paths", ("route", "list"), lambda d: _route(d, ECMP4).pop("paths")),
    ("multipath with its own via", ("route", "list"),
     lambda d: _route(d, ECMP6).update(via="2001:db8:2::2")),
    ("paths on a forward route", ("route", "list"),
     lambda d: _route(d, "198.18.0.0/16").update(paths=_route(d, ECMP4)["paths"])),
    ("path weight 0", ("route", "list"), lambda d: _route(d, ECMP4)["paths"][0].update(weight=0)),
    ("prefix without length", ("route", "list"), lambda d: d[0].update(prefix="10.1.0.0")),
    ("stats counter a string", ("stats",), lambda d: d["interfaces"][0].update(rx_packets="1")),
    ("stats counter negative", ("stats",), lambda d: d["drops"].update(no_route=-1)),
    ("stats without icmp", ("stats",), lambda d: d.pop("icmp")),
    ("stats unknown offload", ("stats",), lambda d: d["interfaces"][0]["offloads"].append("lro")),
    ("stats link state unknown", ("stats",), lambda d: d["interfaces"][0].update(link="gone")),
    ("route_import skipped 0", ("stats",), lambda d: d["route_import"]["skipped"].update(x=0)),
    ("route_import without netns", ("stats",), lambda d: d["route_import"].pop("netns")),
    ("stats without control", ("stats",), lambda d: d.pop("control")),
    ("control reason unknown", ("stats",), lambda d: d["control"]["rejected"].update(slow=1)),
    ("control reason missing", ("stats",), lambda d: d["control"]["rejected"].pop("args")),
    ("control refused negative", ("stats",), lambda d: d["control"].update(refused=-1)),
    ("drop reason described by a number", ("stats", "-v"),
     lambda d: d["drop_reasons"].update(runt=1)),
    ("arp state unknown", ("arp", "-a"), lambda d: d[0].update(state="permanent")),
    ("arp resolved without a MAC", ("arp", "-a"),
     lambda d: next(e for e in d if e["mac"]).update(mac=None)),
    ("arp entry IPv6", ("arp", "-a"), lambda d: d[0].update(ip="2001:db8:1::2")),
    ("ndp incomplete with expiry", ("ndp", "-a"),
     lambda d: next(e for e in d if e["state"] == "incomplete").update(expires_in=3.0)),
    ("ndp MAC in capitals", ("ndp", "-a"),
     lambda d: next(e for e in d if e["mac"]).update(mac="0A:00:00:00:00:01")),
    ("sysctl value a string", ("sysctl", "-a"), lambda d: d[0].update(value="5")),
    ("sysctl type unknown", ("sysctl", "NAME"), lambda d: d[0].update(type="float")),
    ("sysctl set without old", ("sysctl", "NAME=VALUE"), lambda d: d[0].pop("old")),
    ("netstat without denied", ("netstat", "-m"), lambda d: d.pop("denied")),
    ("netstat jumbo without size", ("netstat", "-m"), lambda d: d["jumbo9"].pop("size")),
    ("zone name unknown", ("vmstat", "-z"), lambda d: d[0].update(name="mbuf_huge")),
    ("health healthy a string", ("health",), lambda d: d.update(healthy="yes")),
    ("health without ready", ("health",), lambda d: d.pop("ready")),
    ("stall of 0 s", ("debug", "stall", "SECONDS"), lambda d: d.update(seconds=0)),
    ("resume and stall mixed", ("debug", "resume"), lambda d: d.update(seconds=1.0)),
]


@requires_netns
def test_the_schemas_reject_wrong_shapes(outputs) -> None:
    accepted = []
    for what, argv, spoil in SPOILED:
        doc = copy.deepcopy(outputs[argv])
        spoil(doc)
        if not errors(schema_of(argv), doc):
            accepted.append(what)
    assert not accepted, f"schemas accepted wrong shapes: {accepted}"
    assert errors("arp", {"entries": outputs[("arp", "-a")]})         # an object for a list


# --- every command has a schema, every schema is shipped and documented ------------------------

def _subcommands_with_json() -> set[str]:
    parser = build_parser(extras=False)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name for name, p in sub.choices.items()
            if any("--json" in a.option_strings for a in p._actions)}


def test_every_subcommand_taking_json_has_a_schema() -> None:
    with_json = _subcommands_with_json()
    assert with_json >= {"sysctl", "netstat", "vmstat", "stats", "route", "arp", "ndp", "health"}
    missing = {c for c in with_json if not schemas.for_command(c)}
    assert not missing, f"--json without a schema in forwarder/schemas (OUTPUTS): {missing}"
    assert {o.argv[0] for o in schemas.OUTPUTS} <= with_json     # no schema for a lost command


def test_every_schema_is_draft_2020_12_named_in_outputs_and_documented() -> None:
    docs = (ROOT / "docs" / "json.md").read_text()
    assert {o.schema for o in schemas.OUTPUTS} == set(schemas.names())
    for name in schemas.names():
        schema = schemas.load(name)
        assert schema["$schema"] == schemas.DIALECT, name
        Draft202012Validator.check_schema(schema)
        assert f"forwarder/schemas/{name}.json" in docs, f"docs/json.md does not link {name}"
    with pytest.raises(KeyError, match="no JSON schema"):
        schemas.load("nonexistent")


def test_the_examples_of_the_docs_are_valid() -> None:
    """Each ```json block of docs/json.md follows the schema named just
    before it (<!-- schema: NAME -->)."""
    text = (ROOT / "docs" / "json.md").read_text()
    seen = set()
    for chunk in text.split("<!-- schema: ")[1:]:
        name, _, rest = chunk.partition(" -->")
        body = rest.split("```json\n", 1)[1].split("```", 1)[0]
        assert not errors(name, json.loads(body)), (name, errors(name, json.loads(body)))
        seen.add(name)
    assert seen == set(schemas.names())

