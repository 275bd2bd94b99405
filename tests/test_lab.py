"""The lab: its config and model, its config writer, the lab extra, and `forwarder
lab` end to end -- it works, and it leaves nothing behind, also when interrupted
with Ctrl-C (SIGINT) while it is kept up or in the middle of its load test.

Only namespaces with the lab's own random prefix are looked at: other test runs
may have namespaces of their own on the same machine.
"""
from __future__ import annotations

import importlib.metadata
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from ipaddress import IPv4Interface, IPv6Interface
from pathlib import Path

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwarder import lab as labpkg
from forwarder import netns as nn
from forwarder.config import load_config, parse_config
from forwarder.lab.daemons import have_bird, have_frr
from forwarder.lab.process import forwarder_argv
from forwarder.lab.tomlwrite import to_toml
from forwarder.lab.topology import LAB_TOML, host_address, lab_from_config, load_lab_config
from tests.labrun import lab_prefix, leftovers
from tests.topology import requires_netns

REPO = Path(__file__).resolve().parent.parent
LAB = forwarder_argv("lab")


# --- the shipped config ---------------------------------------------------------------

def test_lab_config_is_one_file_in_the_package_and_configs_links_to_it():
    pkg = REPO / "forwarder" / "lab" / "lab.toml"
    link = REPO / "configs" / "lab.toml"
    assert link.is_symlink() and link.resolve() == pkg.resolve()
    assert not (REPO / "forwarder" / "configs").exists()
    assert Path(str(LAB_TOML)).resolve() == pkg.resolve()      # importlib.resources finds it
    assert load_lab_config().path == Path(str(LAB_TOML))
    assert load_lab_config(link).path == link


def test_lab_config_is_a_valid_router_config_with_three_links_and_a_small_mtu():
    cfg = load_lab_config()
    hosts = [i for i in cfg.interfaces if i.netns]
    assert len(hosts) == len(cfg.interfaces) >= 3
    assert len({i.netns for i in hosts}) == len(hosts)
    assert min(i.mtu for i in hosts) <= 1280
    assert all(i.mtu == 1500 for i in hosts[:2])      # the load test runs h1 -> h2


@requires_netns
def test_lab_of_the_config_maps_namespaces_and_its_config_parses_again():
    cfg = load_lab_config()
    with nn.Topology() as topo:
        lab = lab_from_config(topo, cfg)
        assert lab.router_ns == topo.prefix + "r"
        assert [h.netns for h in lab.hosts] == [topo.prefix + i.netns for i in cfg.interfaces]
        assert all(nn.netns_exists(n) for n in lab.namespaces)
        again = parse_config(lab.config_text(Path("/tmp/x/lab.sock")), "rendered")
    assert str(again.router.socket) == "/tmp/x/lab.sock"
    assert again.router.name == cfg.router.name and again.router.log_level == cfg.router.log_level
    assert [i.netns for i in again.interfaces] == [h.netns for h in lab.hosts]
    assert [(i.name, i.addresses, i.addresses6, i.ra, i.mtu, i.mac) for i in again.interfaces] == \
        [(i.name, i.addresses, i.addresses6, i.ra, i.mtu, i.mac) for i in cfg.interfaces]
    assert all(i.addresses6 for i in cfg.interfaces)          # the shipped lab is dual-stack
    assert again.routes == cfg.routes
    assert again.sysctl == cfg.sysctl
    assert [(h.address, h.gateway) for h in lab.hosts] == \
        [(host_address(i.addresses[0]), i.addresses[0].ip) for i in cfg.interfaces]
    assert [(h.address6, h.gateway6) for h in lab.hosts] == \
        [(host_address(i.addresses6[0]), i.addresses6[0].ip) for i in cfg.interfaces]


def test_a_lab_link_needs_an_ipv4_address(tmp_path):
    path = tmp_path / "v6only.toml"
    path.write_text('[router]\nname = "x"\n\n[[interface]]\nname = "tap1"\n'
                    'addresses = ["2001:db8:1::1/64"]\nnetns = "h1"\n')
    with pytest.raises(ValueError, match="interface tap1: a lab's link needs an IPv4 address"):
        lab_from_config(nn.Topology(), load_config(path))


def test_a_lab_config_names_the_host_of_each_interface(tmp_path):
    path = tmp_path / "no-host.toml"
    path.write_text('[router]\nname = "x"\n\n[[interface]]\nname = "tap1"\n'
                    'addresses = ["10.1.0.1/24"]\n')
    with pytest.raises(ValueError, match="interface tap1: a lab's interfaces name their host"):
        lab_from_config(nn.Topology(), load_config(path))      # refused before any namespace


def test_host_address_is_next_to_the_router():
    assert host_address(IPv4Interface("10.1.0.1/24")) == IPv4Interface("10.1.0.2/24")
    assert host_address(IPv4Interface("10.1.0.254/24")) == IPv4Interface("10.1.0.253/24")
    assert host_address(IPv4Interface("192.168.9.1/30")) == IPv4Interface("192.168.9.2/30")
    assert host_address(IPv6Interface("2001:db8:1::1/64")) == IPv6Interface("2001:db8:1::2/64")
    assert host_address(IPv6Interface("2001:db8:1:0:ffff:ffff:ffff:ffff/64")) == \
        IPv6Interface("2001:db8:1:0:ffff:ffff:ffff:fffe/64")
    with pytest.raises(ValueError):
        host_address(IPv4Interface("10.0.0.1/32"))


# --- the config writer ---------------------------------------------------------------------

_keys = st.text(min_size=1, max_size=12)
_scalars = (st.text(max_size=20) | st.integers(-2**63, 2**63 - 1) | st.booleans()
            | st.floats(allow_nan=False))
_values = _scalars | st.lists(_scalars, max_size=4)
_tables = st.dictionaries(_keys, _values, max_size=5)
_docs = st.dictionaries(_keys, _tables | st.lists(_tables, max_size=3), max_size=5)


@settings(max_examples=150, deadline=None)
@given(_docs)
def test_to_toml_gives_the_document_back(doc):
    assert tomllib.loads(to_toml(doc, header="a header\nof two lines")) == doc


def test_to_toml_writes_arrays_of_tables_as_sections_that_more_toml_extends():
    doc = {"router": {"name": "r1"}, "route": [{"prefix": "10.9.0.0/16", "type": "blackhole"}],
           "sysctl": {"net.inet.ip.ttl": 33}}
    text = to_toml(doc)
    assert text.startswith('[router]\nname = "r1"\n\n[[route]]\nprefix = "10.9.0.0/16"\n')
    assert '\n[sysctl]\n"net.inet.ip.ttl" = 33\n' in text
    more = tomllib.loads(text + '\n[[route]]\nprefix = "10.8.0.0/16"\ntype = "prohibit"\n')
    assert [r["prefix"] for r in more["route"]] == ["10.9.0.0/16", "10.8.0.0/16"]
    assert to_toml({"x": {"inf": math.inf}}) == "[x]\ninf = inf\n"
    for bad in ({"x": {"t": {"nested": 1}}}, {"x": 1}, {"x": {"a": [[1]]}}, {"x": {"n": None}}):
        with pytest.raises(TypeError):
            to_toml(bad)


# --- the lab extra --------------------------------------------------------------------------

def test_the_extras_modules_are_what_pyproject_declares():
    """forwarder.lab.MODULES (what the lab commands check for) are the import names
    of pyproject's lab extra, and the router's own dependencies are not in it."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def name(req: str) -> str:
        return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")
    lab = {name(r) for r in project["optional-dependencies"]["lab"]}
    providers = importlib.metadata.packages_distributions()
    assert {name(providers[m][0]) for m in labpkg.MODULES} == lab
    assert not lab & {name(r) for r in project["dependencies"]}
    assert "mbuma-forwarder[lab]" in project["optional-dependencies"]["test"]
    assert labpkg.missing() == []          # the tests run with the extra installed
    assert "pip install 'mbuma-forwarder[lab]'" == labpkg.INSTALL_HINT


def test_an_import_error_inside_the_lab_is_raised_not_swallowed(tmp_path):
    """A scapy that fails to import (here one of ours first on the path): the lab
    commands stay in --help, and `forwarder lab` fails with the real error and its
    traceback, not with advice to install the extra nor silently."""
    broken = tmp_path / "scapy"
    broken.mkdir()
    (broken / "__init__.py").write_text('raise ImportError("this scapy is broken")\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    cp = subprocess.run(forwarder_argv("--help"), capture_output=True, text=True, env=env,
                        timeout=60)
    assert cp.returncode == 0, cp.stderr
    for command in ("lab", "loadgen", "bench"):
        assert re.search(rf"^\s+{command}\s", cp.stdout, re.M), cp.stdout
    for command in ("lab", "loadgen", "bench"):
        cp = subprocess.run(forwarder_argv(command), capture_output=True, text=True, env=env,
                            timeout=60)
        assert cp.returncode == 1, (command, cp.stdout, cp.stderr)
        assert "Traceback" in cp.stderr and "ImportError: this scapy is broken" in cp.stderr, \
            cp.stderr
        assert "pip install" not in cp.stderr, cp.stderr


def test_the_router_runs_this_package_whatever_the_current_directory(tmp_path):
    """A current directory with a forwarder/ and an allocator_pyx/ of its own (as the
    root of a source checkout has, uncompiled): `python -m forwarder.cli` runs those;
    the argv the lab starts routers with runs this package's."""
    for pkg in ("forwarder", "allocator_pyx"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(f'raise ImportError("the {pkg} of the cwd")\n')
    missing = str(tmp_path / "missing.toml")
    shadowed = subprocess.run([sys.executable, "-m", "forwarder.cli", "run", "-c", missing],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert "ImportError: the forwarder of the cwd" in shadowed.stderr, shadowed.stderr
    # `run` imports forwarder.cli, then the allocator (allocator_pyx.mbuf), then reads
    # the config: a missing file is a usage error, after both imports went right.
    cp = subprocess.run(forwarder_argv("run", "-c", missing), cwd=tmp_path,
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 2 and cp.stderr.startswith(f"forwarder: {missing}: "), cp.stderr
    assert "Traceback" not in cp.stderr, cp.stderr


# --- end to end ---------------------------------------------------------------------------

@requires_netns
def test_lab_wired_as_a_container_runtime_wires_it(tmp_path):
    """--attach: the router starts with no links; veths eth1..3 appear in its
    namespace 2 s later, and it attaches to them."""
    cp = subprocess.run([*LAB, "--attach", "-d", "0.3", "-r", "2000"],
                        capture_output=True, text=True, timeout=90)
    out = cp.stdout
    assert cp.returncode == 0, out + cp.stderr
    assert re.search(r"\[2/6\] router .* healthy after [\d.]+ s \(its veths handed over 2 s "
                     r"after it started\); h1 10\.1\.0\.2/24 \S+ via eth1", out), out
    assert re.search(r"\[3/6\] ping\s+h1 -> h3 10\.3\.0\.2: 3/3 received", out), out
    assert re.search(r"^\s+traceroute6\s+h1 -> h3: 1 2001:db8:1::1 .*\|\s+2 2001:db8:3::2",
                     out, re.M), out
    assert "router exit 0; no namespace left behind" in out


@requires_netns
@pytest.mark.skipif(not (have_frr() and have_bird()), reason="needs frr and bird2 (install.sh)")
def test_lab_with_bgp_fills_the_table_from_a_bird_neighbour(tmp_path):
    cp = subprocess.run([*LAB, "--bgp", "-d", "0.3", "-r", "2000"],
                        capture_output=True, text=True, timeout=120)
    out = cp.stdout
    assert cp.returncode == 0, out + cp.stderr
    assert re.search(r"\[1/7\] namespaces .*fw[0-9a-f]{6}-cp \(its control plane\)", out), out
    assert re.search(r"\[3/7\] bgp\s+BIRD in h2 \(AS 65002\) -> FRR bgpd in the control plane "
                     r"\(AS 65001\): session up after [\d.]+ s, 200 of 200 prefixes in the "
                     r"dataplane after [\d.]+ s; h1 -> 100\.64\.7\.1: 3/3 received", out), out
    assert "[7/7] cleanup      stopping the daemons and the router" in out
    assert "router exit 0; no namespace left behind" in out


@requires_netns
def test_lab_runs_end_to_end_and_removes_everything(tmp_path):
    out_json = tmp_path / "load.json"
    cp = subprocess.run([*LAB, "-d", "0.5", "-r", "5000", "--json", str(out_json)],
                        capture_output=True, text=True, timeout=90)
    out = cp.stdout
    assert cp.returncode == 0, out + cp.stderr
    prefix = lab_prefix(out)
    # the progress, step by step
    for step in ("[2/6] router", "[3/6] ping", "[4/6] traceroute", "[5/6] load", "[6/6] cleanup"):
        assert step in out, out
    assert re.search(r"\[3/6\] ping\s+h1 -> h3 10\.3\.0\.2: 3/3 received", out), out
    assert re.search(r"traceroute\s+h1 -> h3: 1 10\.1\.0\.1 .*\|\s+2 10\.3\.0\.2", out), out
    assert re.search(r"^\s+ping6\s+h1 -> h3 2001:db8:3::2: 3/3 received", out, re.M), out
    assert re.search(r"^\s+traceroute6\s+h1 -> h3: 1 2001:db8:1::1 .*\|\s+2 2001:db8:3::2",
                     out, re.M), out
    # the summary table and netstat -m
    for row in ("| offered", "| delivered", "| loss", "| latency", "| router drops"):
        assert row in out, out
    assert re.search(r"\| latency\s+\| p50 [\d.]+ (µs|ms)\s+p99 [\d.]+ (µs|ms)", out), out
    assert "mbuf clusters in use (current/cache/total/max)" in out
    assert "router exit 0; no namespace left behind" in out
    # what the table showed is what the load did
    r = json.loads(out_json.read_text())
    assert r["received"]["packets"] > 0
    assert r["router"]["forwarded"] >= r["received"]["packets"]
    assert r["path"]["src_netns"] == prefix + "h1" and r["path"]["dst_netns"] == prefix + "h2"
    assert leftovers(prefix) == []


class _Output:
    """The lab's output, read by a thread (select() and buffered readline() do not mix)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        import queue
        import threading
        self.proc = proc
        self.lines: list[str] = []
        self.q: "queue.Queue[str | None]" = queue.Queue()
        self.t = threading.Thread(target=self._pump, daemon=True)
        self.t.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.q.put(line)
        self.q.put(None)

    def until(self, marker: str, timeout: float) -> str:
        import queue
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.q.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if marker in line:
                return "".join(self.lines)
        _stop(self.proc)
        raise AssertionError(f"no {marker!r} in the lab's output:\n{''.join(self.lines)}")

    def rest(self, timeout: float) -> str:
        self.proc.wait(timeout)
        self.t.join(10)
        while not self.q.empty():
            line = self.q.get()
            if line is not None:
                self.lines.append(line)
        return "".join(self.lines)


def _stop(proc: subprocess.Popen) -> None:
    """End a lab that a failing test left running: Ctrl-C first, so that it still
    removes its namespaces and its router (SIGKILL would leave them behind)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _start_lab(*args: str) -> tuple[subprocess.Popen, _Output]:
    proc = subprocess.Popen([*LAB, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    return proc, _Output(proc)


def _interrupt_and_check(proc: subprocess.Popen, output: _Output, prefix: str) -> str:
    kids = psutil.Process(proc.pid).children(recursive=True)
    assert kids, "the lab runs its router (and loadgen) as child processes"
    proc.send_signal(signal.SIGINT)
    out = output.rest(timeout=30)
    assert proc.returncode == 130, out
    assert "interrupted; removed the lab" in out, out
    assert "left behind" not in out, out
    assert leftovers(prefix, kids) == [], out
    return out


@requires_netns
def test_lab_keep_stays_up_until_ctrl_c_then_cleans_up():
    proc, output = _start_lab("--keep", "-d", "0.3", "-r", "2000")
    try:
        out = output.until("waiting for Ctrl-C", 60)
        prefix = lab_prefix(out)
        # it told how to enter each host, and those namespaces are really there
        for h in ("h1", "h2", "h3"):
            assert f"ip netns exec {prefix}{h} bash" in out, out
            assert nn.netns_exists(prefix + h)
        pid = int(re.search(r"\(pid (\d+)\)", out).group(1))
        router = psutil.Process(pid)
        assert "forwarder.cli" in " ".join(router.cmdline())
        sock = re.search(r"forwarder stats --socket (\S+)", out).group(1)
        cp = subprocess.run(forwarder_argv("stats", "--json", "--socket", sock),
                            capture_output=True, text=True, timeout=30)
        assert cp.returncode == 0 and '"forwarded"' in cp.stdout, cp.stderr
        # the TAPs are in the hosts, up, while the lab is kept
        for k in (1, 2, 3):
            info = nn.link_info(f"tap{k}", prefix + f"h{k}")
            assert info is not None and info.up
        _interrupt_and_check(proc, output, prefix)
        assert not os.path.exists(sock)
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        _stop(proc)


@requires_netns
def test_lab_interrupted_during_the_load_test_cleans_up():
    proc, output = _start_lab("-d", "30", "-r", "20000")
    try:
        out = output.until("[5/6] load", 60)
        prefix = lab_prefix(out)
        deadline = time.monotonic() + 15
        while True:            # wait until the sender and the receiver run
            kids = psutil.Process(proc.pid).children(recursive=True)
            if len(kids) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(kids) >= 3, kids        # router, sender, receiver
        time.sleep(0.3)
        _interrupt_and_check(proc, output, prefix)
    finally:
        _stop(proc)
