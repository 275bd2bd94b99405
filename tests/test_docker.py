"""The container image under a real Docker engine, used as its users use it.

tests/test_container.py checks the recipe without an engine; this module runs
the image.  A private dockerd (forwarder/lab/docker.py) runs with
``--bridge=none --iptables=false --ip6tables=false --ip-forward=false``, so it
configures nothing in the root namespace, and the last test proves it: links,
addresses, routes, rules, packet filter rules and the forwarding sysctls are
as they were before the module started, the daemon is gone and so are its
temporary directory and mounts.

The image is built from this tree (its Dockerfile's default target, on a
stand-in for python:3.11-slim-bookworm made from Debian's mirror: no image
registry is reachable here) and kept, with the base, in the engine's data root
under /var/cache/mbuma-forwarder, keyed by a hash of the Dockerfile, the build
context and the base's package list: a changed tree builds a new image, an
unchanged one finds its own.  **Cost** on 2 busy vCPUs: warm, about 40 s
for the module; cold (empty cache) about 6 minutes: debootstrap of the base
(~2.5 min), then the image (~2.5 min: the wheel with its Cython extensions);
a change to the package sources (README.md included: the wheel's metadata
reads it) builds the wheel again, ~3 min; a change to the runtime stage's
metadata alone (HEALTHCHECK, STOPSIGNAL), seconds.

Two routers run for the module, as ``docker run`` starts them
(``--network none``, ``--cap-add NET_ADMIN``, ``--device /dev/net/tun``, the
device cgroup rule of docs/containers.md):

* ``router``: the image as it is (ENTRYPOINT, CMD, its default config).  Its
  namespace gets eth1 and eth2 after it started, veths from two client
  namespaces moved in, as containerlab wires a node; ping, traceroute and
  iperf3 cross it; ``docker exec`` runs the commands; the health check, with
  Docker's timing shortened (``--health-interval 1s``: the image's 10 s and 3
  retries would take half a minute) but the image's own command, turns
  unhealthy during ``forwarder debug stall``; ``docker stop`` ends it.
* ``tuned``: ``FORWARDER_OPTS`` and trailing arguments set tunables at boot,
  and a bind-mounted config changed on the host is reloaded by
  ``docker kill -s HUP``.

A third, with a broken config bind-mounted over the default one, must make
``docker run`` fail.  Everything is removed by the fixtures' finalizers, also
when tests fail.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Iterator

import pytest

from forwarder import netns as nn
from forwarder.lab import docker
from forwarder.lab.topology import Lab
from tests.topology import requires_netns
from tests.wire import iperf3

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
CONTAINER_TOML = ROOT / "configs" / "container.toml"
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "cython", "cythonize")
# Docker's health timing for these containers; the command stays the image's.
HEALTH_TIMING = ("--health-interval", "1s", "--health-timeout", "3s", "--health-retries", "2")
TUNED_ENV = "-o net.inet.ip.ttl=40 -o 'net.inet.icmp.icmplim=150'"
TUNED_ARGS = ("run", "-c", "/etc/forwarder-test/router.toml", "-o", "net.inet.ip.ttl=50")

pytestmark = [requires_netns,
              pytest.mark.skipif(bool(docker.missing_tools()),
                                 reason="no Docker engine can be started here: missing "
                                 + ", ".join(docker.missing_tools())
                                 + " (scripts/install.sh installs them)")]


@pytest.fixture(scope="module")
def root_before() -> dict:
    """The root namespace before the engine starts."""
    return docker.root_namespace_state()


@pytest.fixture(scope="module")
def engine(root_before: dict) -> Iterator[docker.Engine]:
    e = docker.Engine()
    try:
        e.start()
    except docker.EngineError as err:
        if "dockerd" not in str(err):           # the lock, a missing tool: not the engine
            raise
        pytest.skip(f"no Docker engine can be started here: {err}")
    try:
        yield e
    finally:
        e.stop()


@pytest.fixture(scope="module")
def image(engine: docker.Engine) -> str:
    t0 = time.monotonic()
    tag = docker.build_image(engine, ROOT)
    log.info("image %s ready in %.1f s", tag, time.monotonic() - t0)
    return tag


@pytest.fixture(scope="module")
def topology() -> Iterator[nn.Topology]:
    topo = nn.Topology()
    try:
        yield topo
    finally:
        topo.close()


class Router:
    """A router container: ``docker exec`` of the forwarder commands, its log."""

    def __init__(self, engine: docker.Engine, name: str) -> None:
        self.engine, self.name = engine, name

    def exec(self, *argv: str, check: bool = True, timeout: float = 30):
        return self.engine.docker("exec", self.name, *argv, check=check, timeout=timeout)

    def forwarder(self, *argv: str, check: bool = True):
        return self.exec("forwarder", *argv, check=check)

    def json(self, *argv: str):
        return json.loads(self.forwarder(*argv, "--json").stdout)

    def sysctl(self, name: str) -> str:
        return self.forwarder("sysctl", "-n", name).stdout.strip()

    def logs(self) -> str:
        return self.engine.logs(self.name)

    def wait_log(self, pattern: str, timeout: float = 10) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.logs(), re.M)
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"no /{pattern}/ in the log of {self.name} within "
                                     f"{timeout} s:\n{self.logs()[-3000:]}")
            time.sleep(0.1)

    def wait_answering(self, timeout: float = 30) -> None:
        """Until its control socket answers (health says anything)."""
        deadline = time.monotonic() + timeout
        while True:
            cp = self.forwarder("health", check=False)
            if "healthy" in cp.stdout + cp.stderr and "no router socket" not in cp.stderr:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no answer within {timeout} s: {cp.stderr}"
                                     f"\n{self.logs()[-3000:]}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def lab(engine: docker.Engine, image: str, topology: nn.Topology,
        root_before: dict) -> Iterator[Lab]:
    """``router`` running, wired after it started; ``lab.waiting`` holds what it
    said before its interfaces came, ``lab.root_during`` the root namespace
    while it forwarded."""
    name = f"{topology.prefix}router"
    engine.run(name, image, options=[*docker.ROUTER_OPTIONS, *HEALTH_TIMING])
    r = Router(engine, name)
    try:
        r.wait_answering()
        health = r.forwarder("health", check=False)
        lab = docker.container_lab(topology, engine.netns(name))
        lab.router = r                                      # type: ignore[assignment]
        lab.waiting = {"health": (health.returncode, health.stdout + health.stderr),
                       "status": engine.health(name)}
        for h in lab.hosts:
            lab.hand_over(h)
        lab.configure_hosts()
        lab.healthy_after = engine.wait_health(name, "healthy", 30)
        lab.root_during = docker.root_namespace_state()
        yield lab
    finally:
        engine.remove(name)


@pytest.fixture(scope="module")
def router(lab: Lab) -> Router:
    return lab.router                                       # type: ignore[return-value]


@pytest.fixture(scope="module")
def tuned(engine: docker.Engine, image: str, topology: nn.Topology,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    """The image with FORWARDER_OPTS and trailing arguments, its config (that
    of the image, with no wait for eth1 and eth2) bind-mounted from here."""
    conf = tmp_path_factory.mktemp("tuned")
    (conf / "router.toml").write_text(
        CONTAINER_TOML.read_text().replace("attach_timeout = 300", "attach_timeout = 0"))
    name = f"{topology.prefix}tuned"
    engine.run(name, image, *TUNED_ARGS,
               options=[*docker.ROUTER_OPTIONS, "-e", f"FORWARDER_OPTS={TUNED_ENV}",
                        "-v", f"{conf}:/etc/forwarder-test:ro"])
    r = Router(engine, name)
    r.conf = conf / "router.toml"                           # type: ignore[attr-defined]
    try:
        r.wait_answering()
        yield r
    finally:
        engine.remove(name)


# --- the image -----------------------------------------------------------------------

def test_the_image_is_built_from_this_tree(engine: docker.Engine, image: str) -> None:
    """Not a stale cache: the image's key label is this tree's, and its
    metadata is the Dockerfile's."""
    meta = engine.inspect(image, "image")
    base = docker.base_tag(ROOT)
    assert meta["Config"]["Labels"][docker.LABEL_TREE] == docker.image_key(ROOT, base)
    cfg = meta["Config"]
    assert cfg["Entrypoint"] == ["forwarder"]
    assert cfg["Cmd"] == ["run", "-c", "/etc/forwarder/router.toml"]
    assert cfg["Healthcheck"]["Test"] == ["CMD", "forwarder", "health"]
    assert cfg["StopSignal"] == "SIGTERM"


def test_the_image_has_no_compiler_and_its_default_config(router: Router) -> None:
    found = router.exec("sh", "-c", "for c in " + " ".join(COMPILERS)
                        + "; do command -v $c; done; true").stdout.split()
    assert found == []
    cp = router.exec("python3", "-c", "import Cython", check=False)
    assert cp.returncode != 0 and "No module named 'Cython'" in cp.stderr
    assert router.exec("cat", "/etc/forwarder/router.toml").stdout == CONTAINER_TOML.read_text()


# --- starting, wiring, forwarding ----------------------------------------------------------

def test_it_waits_for_eth1_and_eth2_then_is_healthy(lab: Lab, router: Router) -> None:
    code, text = lab.waiting["health"]
    assert code == 1 and "not ready: waiting for eth1, eth2 (0 of 2 attached" in text, text
    assert lab.waiting["status"] in ("starting", "unhealthy")
    assert lab.healthy_after < 20
    log_text = router.logs()
    for port in ("eth1", "eth2"):
        assert re.search(rf"port {port}: attached to {port} \(ifindex \d+", log_text), log_text
    assert router.forwarder("health").stdout.startswith("healthy: dataplane went round")


def test_the_engine_leaves_the_root_namespace_alone(lab: Lab, root_before: dict) -> None:
    """While dockerd runs and the router forwards: no bridge, no address, no
    route, no filter rule, no forwarding switched on in the root namespace."""
    assert docker.state_diff(root_before, lab.root_during) == []


def test_ping_traceroute_and_iperf3_through_the_container(lab: Lab, router: Router) -> None:
    before = {i["name"]: i for i in router.json("stats")["interfaces"]}
    for src, dst in (("h1", "10.2.0.2"), ("h2", "10.1.0.2"), ("h1", "10.1.0.1")):
        cp = lab.ping(src, dst, count=2, wait=2, extra=["-i", "0.2"])
        assert cp.returncode == 0, (src, dst, cp.stdout)
    cp = lab.run("h1", ["traceroute", "-n", "-q", "1", "-w", "2", "-m", "4", "10.2.0.2"],
                 timeout=30)
    assert [ln.split()[1] for ln in cp.stdout.splitlines()[1:]] == ["10.1.0.1", "10.2.0.2"], \
        cp.stdout
    doc = iperf3(lab, "h1", "h2", "10.2.0.2", 5301, seconds=2)
    assert doc["end"]["sum_received"]["bits_per_second"] > 100e6
    after = {i["name"]: i for i in router.json("stats")["interfaces"]}
    assert after["eth1"]["rx_packets"] - before["eth1"]["rx_packets"] > 1000
    assert after["eth2"]["tx_packets"] - before["eth2"]["tx_packets"] > 1000


def test_docker_exec_runs_the_commands(lab: Lab, router: Router) -> None:
    assert lab.ping("h1", "10.2.0.2", count=1, wait=2).returncode == 0
    netstat = router.forwarder("netstat", "-m").stdout
    assert re.match(r"\d+/\d+/\d+ mbufs in use \(current/cache/total\)\n", netstat), netstat
    assert re.search(r"^kern\.ipc\.nmbclusters: \d+$", router.forwarder("sysctl", "-a").stdout,
                     re.M)
    assert {z["name"] for z in router.json("vmstat", "-z")} >= {"mbuf", "mbuf_cluster"}
    ports = {i["name"]: (i["link"], i["attach"]["link"]) for i in
             router.json("stats")["interfaces"]}
    assert ports == {"eth1": ("up", "eth1"), "eth2": ("up", "eth2")}
    assert {"10.1.0.0/24", "10.2.0.0/24"} <= {r["prefix"] for r in router.json("route", "list")}
    assert "10.2.0.2" in {e["ip"] for e in router.json("arp", "-a")}
    # and the commands find the router's socket by themselves, as documented
    assert router.forwarder("health", "--name", "router").returncode == 0


# --- boot tunables, reload, a broken config -------------------------------------------------

def test_forwarder_opts_and_trailing_arguments_set_tunables_at_boot(tuned: Router,
                                                                    router: Router) -> None:
    """FORWARDER_OPTS goes in after `run`, the trailing arguments after it:
    for the same tunable the arguments win; the others come from the variable."""
    assert tuned.sysctl("net.inet.ip.ttl") == "50"
    assert tuned.sysctl("net.inet.icmp.icmplim") == "150"
    assert router.sysctl("net.inet.ip.ttl") == "64"          # the config's, nothing at boot
    assert router.sysctl("net.inet.icmp.icmplim") == "200"


def test_sighup_reloads_the_bind_mounted_config(tuned: Router) -> None:
    conf: Path = tuned.conf                                 # type: ignore[attr-defined]
    good = conf.read_text()
    conf.write_text(good + '\n[[route]]\nprefix = "10.30.0.0/16"\ntype = "blackhole"\n')
    tuned.engine.docker("kill", "-s", "HUP", tuned.name)
    tuned.wait_log(r"reload of /etc/forwarder-test/router\.toml ok: .*route \+10\.30\.0\.0/16")
    routes = {r["prefix"]: r for r in tuned.json("route", "list")}
    assert routes["10.30.0.0/16"]["type"] == "blackhole", routes
    # a broken file: the running config stays, the log says where
    conf.write_text(good + '\n[[route]]\nprefix = "10.31.0.0/16"\nvia = "not an address"\n')
    line = len(good.splitlines()) + 4
    tuned.engine.docker("kill", "-s", "HUP", tuned.name)
    tuned.wait_log(rf"reload of /etc/forwarder-test/router\.toml failed, running config kept: "
                   rf"/etc/forwarder-test/router\.toml:{line}: ")
    prefixes = {r["prefix"] for r in tuned.json("route", "list")}
    assert "10.30.0.0/16" in prefixes and "10.31.0.0/16" not in prefixes
    assert tuned.json("stats")["reloads"]["failed"] == 1


def test_a_broken_config_makes_docker_run_fail(engine: docker.Engine, image: str,
                                               topology: nn.Topology, tmp_path: Path) -> None:
    bad = tmp_path / "router.toml"
    text = CONTAINER_TOML.read_text()
    bad.write_text(text.replace('addresses = ["10.2.0.1/24"]', 'addresses = ["10.2.0.300/24"]'))
    line = 1 + next(i for i, ln in enumerate(bad.read_text().splitlines()) if "10.2.0.300" in ln)
    name = f"{topology.prefix}broken"
    try:
        cp = engine.run(name, image, detach=False,
                        options=[*docker.ROUTER_OPTIONS,
                                 "-v", f"{bad}:/etc/forwarder/router.toml:ro"])
        logs = engine.logs(name)
        state = engine.inspect(name)["State"]
    finally:
        engine.remove(name)
    assert cp.returncode != 0 and state["ExitCode"] == cp.returncode, (cp.returncode, state)
    assert re.search(rf"/etc/forwarder/router\.toml:{line}: .*10\.2\.0\.300", logs), logs


# --- health and stop ----------------------------------------------------------------------

def test_the_health_check_turns_unhealthy_during_a_stall(engine: docker.Engine, lab: Lab,
                                                         router: Router, image: str) -> None:
    test = engine.inspect(router.name)["Config"]["Healthcheck"]["Test"]
    assert test == engine.inspect(image, "image")["Config"]["Healthcheck"]["Test"]
    assert engine.health(router.name) == "healthy"
    router.forwarder("debug", "stall", "30")
    try:
        assert engine.wait_health(router.name, "unhealthy", 15) < 15
        assert lab.ping("h1", "10.2.0.2", count=1, wait=1).returncode != 0
    finally:
        router.forwarder("debug", "resume")
    assert engine.wait_health(router.name, "healthy", 15) < 15
    assert lab.ping("h1", "10.2.0.2", count=1, wait=2).returncode == 0


def test_docker_stop_exits_zero_with_the_final_netstat(engine: docker.Engine, lab: Lab,
                                                       router: Router) -> None:
    t0 = time.monotonic()
    engine.docker("stop", router.name, timeout=60)
    took = time.monotonic() - t0
    state = engine.inspect(router.name)["State"]
    logs = router.logs()
    assert state["ExitCode"] == 0 and not state["OOMKilled"], (state, logs[-2000:])
    assert took < 5
    tail = logs[logs.rindex("mbufs in use"):] if "mbufs in use" in logs else ""
    assert re.search(r"\d+/\d+/\d+ mbufs in use \(current/cache/total\)", logs), logs[-2000:]
    assert "requests for mbufs denied" in tail and "still in use" not in logs


# --- last: nothing left ------------------------------------------------------------------

def test_the_root_namespace_is_as_it_was(engine: docker.Engine,
                                         topology: nn.Topology, root_before: dict) -> None:
    """Everything stopped and removed (what the finalizers would do, done now):
    the root namespace is as the module found it, and the engine left nothing."""
    for name in (f"{topology.prefix}router", f"{topology.prefix}tuned"):
        engine.remove(name)
    proc, tmp = engine.proc, engine.tmp
    assert proc is not None and tmp is not None
    engine.stop()
    topology.close()
    assert proc.poll() is not None
    assert not tmp.exists()
    assert docker._mounts_under(tmp) == []
    assert not any(n.startswith(topology.prefix) for n in nn.list_netns())
    assert docker.state_diff(root_before, docker.root_namespace_state()) == []
    assert not os.path.exists("/sys/class/net/docker0")
