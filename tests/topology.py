"""Reusable namespace fixtures for tests (import them into a test module).

    from tests.topology import lab, topology, requires_netns   # noqa: F401

    pytestmark = requires_netns

    def test_something(lab):
        lab.write_config(tmp_path / "r.toml")
        router = lab.popen_router([...])          # the router opens and moves the TAPs
        lab.configure_hosts()                      # then the hosts get addresses
        assert lab.ping("h1", lab.host("h3").address).returncode == 0

Every namespace carries a random prefix (``fw1a2b3c-r``, ``fw1a2b3c-h1``) so
parallel runs never collide; everything is removed by the fixtures' finalizers,
on failures too.  Only namespaces made here are ever configured or sent to.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Iterator, Sequence

import pytest

from forwarder import netns as nn


def netns_available() -> bool:
    return os.geteuid() == 0 and os.path.exists("/dev/net/tun")


requires_netns = pytest.mark.skipif(not netns_available(),
                                    reason="needs root and /dev/net/tun")


@dataclass
class Host:
    """One host namespace plugged into the router through TAP ``ifname``."""
    name: str                 # short name, "h1"
    netns: str                # full namespace name
    ifname: str               # TAP name (same in the router and the host)
    router: IPv4Interface     # the router's address on the link (10.k.0.1/24)
    address: IPv4Interface    # the host's address (10.k.0.2/24)
    mtu: int = 1500


@dataclass
class RouterLab:
    """A router namespace and N host namespaces, 10.k.0.0/24 on link k."""
    topo: nn.Topology
    router_ns: str
    hosts: list[Host] = field(default_factory=list)
    name: str = "r1"

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def config_text(self, sysctl: dict[str, int] | None = None,
                    routes: Sequence[dict[str, str]] = (), extra: str = "") -> str:
        """A forwarder config for this lab (TAPs moved into the host namespaces)."""
        lines = ["[router]", f'name = "{self.name}"', 'log_level = "debug"', ""]
        if sysctl:
            lines.append("[sysctl]")
            lines += [f'"{k}" = {v}' for k, v in sysctl.items()]
            lines.append("")
        for h in self.hosts:
            lines += ["[[interface]]", f'name = "{h.ifname}"', f'addresses = ["{h.router}"]',
                      f"mtu = {h.mtu}", f'netns = "{h.netns}"', ""]
        for r in routes:
            lines.append("[[route]]")
            lines += [f'{k} = "{v}"' for k, v in r.items()]
            lines.append("")
        return "\n".join(lines) + extra

    def write_config(self, path: Path, **kwargs: object) -> Path:
        path.write_text(self.config_text(**kwargs))  # type: ignore[arg-type]
        return path

    def popen_router(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen:
        """Start the router inside the router namespace; stopped on teardown."""
        return self.topo.popen(self.router_ns, argv, **kwargs)

    def configure_hosts(self, timeout: float = 10.0) -> None:
        """Once the router moved each TAP into its host: address, up, default route."""
        for h in self.hosts:
            nn.wait_link(h.ifname, h.netns, timeout)
            nn.configure_host(h.ifname, h.netns, [h.address], gateway=h.router.ip)

    def open_taps(self) -> dict[str, nn.Tap]:
        """Play the router from Python: open the TAPs here and plug in the hosts."""
        return {h.name: self.topo.tap(h.ifname, self.router_ns, host_ns=h.netns,
                                      host_addresses=[str(h.address)],
                                      gateway=str(h.router.ip), mtu=h.mtu)
                for h in self.hosts}

    def run(self, host: str, argv: Sequence[str], **kwargs: object
            ) -> subprocess.CompletedProcess[str]:
        return nn.run_in_netns(self.host(host).netns, argv, **kwargs)  # type: ignore[arg-type]

    def ping(self, host: str, dst: object, *, count: int = 1, wait: float = 1.0,
             extra: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
        return self.run(host, ["ping", "-n", "-c", str(count), "-W", str(wait), *extra,
                               str(dst)], timeout=count * wait + 10)


def make_lab(topo: nn.Topology, n_hosts: int = 3, mtus: Sequence[int] = ()) -> RouterLab:
    """Create the router and host namespaces (no TAP yet: the router opens them)."""
    lab = RouterLab(topo=topo, router_ns=topo.netns("r"))
    for k in range(1, n_hosts + 1):
        mtu = mtus[k - 1] if k - 1 < len(mtus) else 1500
        lab.hosts.append(Host(name=f"h{k}", netns=topo.netns(f"h{k}"), ifname=f"tap{k}",
                              router=IPv4Interface(f"10.{k}.0.1/24"),
                              address=IPv4Interface(f"10.{k}.0.2/24"), mtu=mtu))
    return lab


@pytest.fixture(scope="module")
def topology(request: pytest.FixtureRequest) -> Iterator[nn.Topology]:
    """A Topology for the whole module; removed even when tests fail."""
    if not netns_available():
        pytest.skip("needs root and /dev/net/tun")
    topo = nn.Topology()
    request.addfinalizer(topo.close)
    yield topo


@pytest.fixture(scope="module")
def lab(topology: nn.Topology) -> RouterLab:
    """Router namespace + h1, h2, h3 on 10.1/24, 10.2/24, 10.3/24 (router .1, hosts .2)."""
    return make_lab(topology)
