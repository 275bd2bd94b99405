"""`forwarder lab` end to end: it works, and it leaves nothing behind -- also when
interrupted with Ctrl-C (SIGINT) while it is kept up or in the middle of its load test.

Only namespaces with the lab's own random prefix are looked at: other test runs
may have namespaces of their own on the same machine.
"""
from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Interface
from pathlib import Path

import psutil
import pytest

from forwarder import netns as nn
from forwarder.config import load_config, parse_config
from forwarder.lab import find_config, host_address, render_config
from tests.topology import requires_netns

REPO = Path(__file__).resolve().parent.parent
LAB = [sys.executable, "-m", "forwarder.cli", "lab"]


# --- the shipped config ---------------------------------------------------------------

def test_lab_config_is_shipped_in_the_repo_and_the_package():
    repo = REPO / "configs" / "lab.toml"
    pkg = REPO / "forwarder" / "configs" / "lab.toml"
    assert repo.read_bytes() == pkg.read_bytes()
    assert find_config() == repo
    assert find_config("/x/y.toml") == Path("/x/y.toml")


def test_lab_config_is_a_valid_router_config_with_three_links_and_a_small_mtu():
    cfg = load_config(REPO / "configs" / "lab.toml")
    hosts = [i for i in cfg.interfaces if i.netns]
    assert len(hosts) >= 3
    assert len({i.netns for i in hosts}) == len(hosts)
    assert min(i.mtu for i in hosts) <= 1280
    assert all(i.mtu == 1500 for i in hosts[:2])      # the load test runs h1 -> h2


def test_rendered_config_maps_namespaces_and_socket_and_parses_again():
    cfg = load_config(REPO / "configs" / "lab.toml")
    mapping = {i.netns: f"fw000000-{i.netns}" for i in cfg.interfaces}
    text = render_config(cfg, mapping, Path("/tmp/x/lab.sock"))
    again = parse_config(text, "rendered")
    assert str(again.router.socket) == "/tmp/x/lab.sock"
    assert [i.netns for i in again.interfaces] == [mapping[i.netns] for i in cfg.interfaces]
    assert [(i.name, i.addresses, i.mtu, i.mac) for i in again.interfaces] == \
        [(i.name, i.addresses, i.mtu, i.mac) for i in cfg.interfaces]
    assert again.routes == cfg.routes
    assert again.sysctl == cfg.sysctl


def test_host_address_is_next_to_the_router():
    assert host_address(IPv4Interface("10.1.0.1/24")) == IPv4Interface("10.1.0.2/24")
    assert host_address(IPv4Interface("10.1.0.254/24")) == IPv4Interface("10.1.0.253/24")
    assert host_address(IPv4Interface("192.168.9.1/30")) == IPv4Interface("192.168.9.2/30")
    with pytest.raises(ValueError):
        host_address(IPv4Interface("10.0.0.1/32"))


# --- end to end ---------------------------------------------------------------------------

def _prefix(output: str) -> str:
    m = re.search(r"\[1/6\] namespaces\s+(fw[0-9a-f]{6}-)r ", output)
    assert m, output
    return m.group(1)


def _leftovers(prefix: str, pids: list[psutil.Process] = ()) -> list[str]:
    """Everything a lab with ``prefix`` could leave behind."""
    left = [f"netns {n}" for n in nn.list_netns() if n.startswith(prefix)]
    left += [f"workdir {d}" for d in glob.glob(os.path.join(tempfile.gettempdir(),
                                                            prefix + "lab-*"))]
    for p in psutil.process_iter(["pid", "cmdline"]):
        with_prefix = any(prefix in a for a in (p.info["cmdline"] or []))
        if with_prefix:
            left.append(f"process {p.info['pid']} {' '.join(p.info['cmdline'])}")
    for p in pids:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"process {p.pid} {' '.join(p.cmdline())}")
        except psutil.NoSuchProcess:
            pass
    return left


@requires_netns
def test_lab_runs_end_to_end_and_removes_everything(tmp_path):
    out_json = tmp_path / "load.json"
    cp = subprocess.run([*LAB, "-d", "0.5", "-r", "5000", "--json", str(out_json)],
                        capture_output=True, text=True, timeout=90)
    out = cp.stdout
    assert cp.returncode == 0, out + cp.stderr
    prefix = _prefix(out)
    # the progress, step by step
    for step in ("[2/6] router", "[3/6] ping", "[4/6] traceroute", "[5/6] load", "[6/6] cleanup"):
        assert step in out, out
    assert re.search(r"\[3/6\] ping\s+h1 -> h3 10\.3\.0\.2: 3/3 received", out), out
    assert re.search(r"traceroute\s+h1 -> h3: 1 10\.1\.0\.1 .*\|\s+2 10\.3\.0\.2", out), out
    # the summary table and netstat -m
    for row in ("| offered", "| delivered", "| loss", "| latency", "| router drops"):
        assert row in out, out
    assert re.search(r"\| latency\s+\| p50 [\d.]+ (µs|ms)\s+p99 [\d.]+ (µs|ms)", out), out
    assert "mbuf clusters in use (current/cache/total/max)" in out
    assert "router exit 0; no namespace left behind" in out
    # what the table showed is what the load did
    import json
    r = json.loads(out_json.read_text())
    assert r["received"]["packets"] > 0
    assert r["router"]["forwarded"] >= r["received"]["packets"]
    assert r["path"]["src_netns"] == prefix + "h1" and r["path"]["dst_netns"] == prefix + "h2"
    assert _leftovers(prefix) == []


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
    assert _leftovers(prefix, kids) == [], out
    return out


@requires_netns
def test_lab_keep_stays_up_until_ctrl_c_then_cleans_up():
    proc, output = _start_lab("--keep", "-d", "0.3", "-r", "2000")
    try:
        out = output.until("waiting for Ctrl-C", 60)
        prefix = _prefix(out)
        # it told how to enter each host, and those namespaces are really there
        for h in ("h1", "h2", "h3"):
            assert f"ip netns exec {prefix}{h} bash" in out, out
            assert nn.netns_exists(prefix + h)
        pid = int(re.search(r"\(pid (\d+)\)", out).group(1))
        router = psutil.Process(pid)
        assert "forwarder.cli" in " ".join(router.cmdline())
        sock = re.search(r"forwarder stats --socket (\S+)", out).group(1)
        cp = subprocess.run([sys.executable, "-m", "forwarder.cli", "stats", "--json",
                             "--socket", sock], capture_output=True, text=True, timeout=30)
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
        prefix = _prefix(out)
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
