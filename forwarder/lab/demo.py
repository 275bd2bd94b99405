"""`forwarder lab`: a router and its hosts in private namespaces, shown working.

    forwarder lab                 build, ping, traceroute, load-test, report, remove
    forwarder lab --keep          ... then stay up until Ctrl-C (prints how to enter hosts)
    forwarder lab -c FILE         another topology (default: the shipped lab.toml)

With ``--bgp`` the router gets a control plane (forwarder/cplane.py) and one
more step: FRR's bgpd in it peers with BIRD on the second host, which
announces 200 prefixes; the table fills, and the first host pings into one.

Six steps, each one line of output: [1/6] the namespaces and [2/6] the router
(:func:`forwarder.lab.topology.lab_up`: ``forwarder run`` inside the router's
namespace, exactly as a user would run it, its control socket in a temporary
directory); [3/6] a ping from the first host to the last and [4/6] a traceroute
along the same way, over IPv4 and, where both hosts have IPv6 addresses, over
IPv6 too (ping -6, traceroute -6: one more line each); [5/6] a short load from the first host to the second with
its summary and the router's netstat -m; [6/6] the clean-up, and whether any
namespace was left behind.  Everything is undone on exit, on errors, on Ctrl-C
and on SIGTERM.
"""
from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from allocator_pyx.netstat import netstat_m
from forwarder import netns as nn
from forwarder.lab.path import host_path
from forwarder.lab.report import Progress, fmt_offered, format_summary, write_json
from forwarder.lab.run import run_load
from forwarder.lab.spec import LoadSpec
from forwarder.lab.topology import LAB_TOML, Lab, LabHost, lab_up

Say = Callable[[str], None]
STEPS = ("namespaces", "router", "ping", "traceroute", "load", "cleanup")
STEPS_BGP = ("namespaces", "router", "bgp", "ping", "traceroute", "load", "cleanup")
BGP_PREFIXES = [f"100.64.{i}.0/24" for i in range(200)]
BGP_TARGET = "100.64.7.1"                     # in BGP_PREFIXES, owned by the BGP neighbour


def step(what: str, steps: tuple[str, ...] = STEPS) -> str:
    """The label of a step: "[3/6] ping        "."""
    return f"[{steps.index(what) + 1}/{len(steps)}] {what:<12}"


def target(dst: LabHost, family: int) -> str:
    """The address of ``dst`` that a ping or traceroute of ``family`` goes to."""
    a = dst.address if family == 4 else dst.address6
    assert a is not None
    return str(a.ip)


def ping(lab: Lab, src: LabHost, dst: LabHost, count: int = 3,
         family: int = 4, target_ip: str | None = None) -> tuple[bool, str]:
    cp = lab.ping(src.name, target_ip or target(dst, family), count=count, wait=2,
                  extra=["-i", "0.2"] + (["-6"] if family == 6 else []))
    m = re.search(r"(\d+) packets transmitted, (\d+) received", cp.stdout)
    rtt = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)", cp.stdout)
    got = f"{m.group(2)}/{m.group(1)} received" if m else "no answer"
    if rtt:
        got += f", rtt min/avg/max {rtt.group(1)}/{rtt.group(2)}/{rtt.group(3)} ms"
    return cp.returncode == 0, got


def traceroute(lab: Lab, src: LabHost, dst: LabHost, family: int = 4) -> tuple[bool, list[str]]:
    cp = lab.run(src.name, ["traceroute", f"-{family}", "-n", "-q", "1", "-w", "2", "-m", "5",
                            target(dst, family)], timeout=40)
    hops = []
    for line in cp.stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            hops.append(f"{parts[0]} {parts[1]}" + (f" {parts[2]} ms" if len(parts) > 2
                                                      and parts[1] != "*" else ""))
    ok = bool(hops) and hops[-1].split()[1] == target(dst, family)
    return ok, hops


def bgp(lab: Lab, say: Say, stack: contextlib.ExitStack, steps: tuple[str, ...]) -> bool:
    """FRR's bgpd in the router's control plane, BIRD on the second host
    announcing BGP_PREFIXES; the table fills, the first host pings into one."""
    from forwarder.lab.daemons import (bgpd_conf, bird, bird_bgp_conf, frr, have_bird,
                                       have_frr)
    if not (have_frr() and have_bird()):
        say(step("bgp", steps) + " needs frr and bird2 (scripts/install.sh installs them)")
        return False
    assert lab.router is not None and lab.control_plane is not None and len(lab.hosts) > 1
    src, peer = lab.hosts[0], lab.hosts[1]
    mine, theirs = str(peer.router.ip), str(peer.address.ip)
    with nn.iproute(peer.netns) as ipr:
        ipr.addr("add", index=ipr.link_lookup(ifname="lo")[0], address=BGP_TARGET, prefixlen=32)
    work = Path(tempfile.mkdtemp(prefix=f"{lab.topo.prefix}bgp-"))
    stack.callback(shutil.rmtree, work, ignore_errors=True)
    t0 = time.monotonic()
    stack.enter_context(frr(lab.control_plane, work, bgpd_conf(mine, 65001, theirs, 65002)))
    b = stack.enter_context(bird(peer.netns, work, bird_bgp_conf(theirs, 65002, mine, 65001,
                                                                 BGP_PREFIXES)))
    took = b.wait_established("up", 30)
    deadline = time.monotonic() + 30
    learnt = 0
    while time.monotonic() < deadline:
        learnt = sum(r.get("origin") == "bgp" for r in lab.router.call("route.list"))
        if learnt >= len(BGP_PREFIXES):
            break
        time.sleep(0.1)
    filled = time.monotonic() - t0
    good, text = ping(lab, src, peer, target_ip=BGP_TARGET)
    say(step("bgp", steps) + f" BIRD in {peer.name} (AS 65002) -> FRR bgpd in the control "
        f"plane (AS 65001): session up after {took:.1f} s, {learnt} of {len(BGP_PREFIXES)} "
        f"prefixes in the dataplane after {filled:.1f} s; {src.name} -> {BGP_TARGET}: {text}")
    return good and learnt >= len(BGP_PREFIXES)


def run_demo(lab: Lab, spec: LoadSpec, say: Say, *, json_path: str | None = None,
             plot_path: str | None = None, steps: tuple[str, ...] = STEPS) -> bool:
    """Steps 3 to 5 on a lab that is up; True when each of them worked."""
    assert lab.router is not None
    ok = True
    src, far = lab.hosts[0], lab.hosts[-1]
    near = lab.hosts[1] if len(lab.hosts) > 1 else far
    families = (4, 6) if src.address6 and far.address6 else (4,)
    for family in families:
        good, text = ping(lab, src, far, family=family)
        ok &= good
        say((step("ping", steps) if family == 4 else f"{'':6}{'ping6':<12}")
            + f" {src.name} -> {far.name} {target(far, family)}: {text}")
    for family in families:
        good, hops = traceroute(lab, src, far, family)
        ok &= good
        say((step("traceroute", steps) if family == 4 else f"{'':6}{'traceroute6':<12}")
            + f" {src.name} -> {far.name}: " + ("  |  ".join(hops) or "no hops"))
    say(step("load", steps) + f" {src.name} -> {near.name} {target(near, spec.family)}: "
        f"{spec.proto} "
        f"{spec.sizes} B, {spec.flows} flows, {spec.duration:g} s {fmt_offered(spec.rate)}")
    r = run_load(spec, host_path(lab, src.name, near.name, spec.family),
                 progress=Progress("load", spec.duration))
    if r["received"]["packets"] == 0:
        ok = False
    say("")
    say(format_summary(r))
    say("")
    say("netstat -m:")
    say(netstat_m(lab.router.call("zones")))
    say("")
    if json_path:
        write_json(r, json_path)
        say(f"load result as JSON: {json_path}")
    if plot_path:
        from forwarder.lab.plot import plot_result      # matplotlib: only when asked
        plot_result(r, plot_path)
        say(f"load plot: {plot_path}")
    return ok


def keep_message(lab: Lab) -> str:
    lines = ["lab is up; press Ctrl-C to remove it.  Enter a host with:"]
    for h in lab.hosts:
        lines.append(f"  {h.name:<4} {str(h.address):<18} ip netns exec {h.netns} bash"
                     + (f"   ({h.address6})" if h.address6 else ""))
    lines.append(f"  router             ip netns exec {lab.router_ns} bash"
                 f"   (pid {lab.router.pid if lab.router else '?'})")
    lines.append(f"  router CLI         forwarder stats --socket {lab.socket}   "
                 "(also netstat -m, route, arp, sysctl -a)")
    if len(lab.hosts) >= 2:
        lines.append(f"  load               forwarder loadgen --src {lab.hosts[0].netns} "
                     f"--dst {lab.hosts[1].netns} --router-socket {lab.socket} -d 5")
    lines.append("waiting for Ctrl-C ...")
    return "\n".join(lines)


def run_lab(config: str | Path | None, spec: LoadSpec, say: Say, made: list[str], *,
            keep: bool = False, json_path: str | None = None,
            plot_path: str | None = None, attach: bool = False, with_bgp: bool = False) -> int:
    """The whole demo; ``made`` learns the lab's namespaces (for a report after
    an interruption).  Exit status: 0 when every step worked."""
    say(f"forwarder lab: {config or LAB_TOML}")
    steps = STEPS_BGP if with_bgp else STEPS
    with lab_up(config, report=lambda what, text: say(step(what, steps) + " " + text),
                attach=attach, control_plane=with_bgp) as lab, contextlib.ExitStack() as daemons:
        made[:] = lab.namespaces
        ok = bgp(lab, say, daemons, steps) if with_bgp else True
        ok &= run_demo(lab, spec, say, json_path=json_path, plot_path=plot_path, steps=steps)
        if keep:
            say(keep_message(lab))
            while True:
                time.sleep(3600)
        say(step("cleanup", steps) + " stopping " + ("the daemons and " if with_bgp else "")
            + f"the router, removing {len(lab.namespaces)} namespaces")
    code = lab.router.proc.returncode if lab.router else None
    left = [n for n in made if nn.netns_exists(n)]
    say(f"      done: router exit {code}; " + (f"left behind: {left}" if left else
                                               "no namespace left behind"))
    return 0 if ok and code == 0 else 1
