"""Namespace fixtures for tests, on the lab's own model (forwarder.lab.topology).

    from tests.topology import lab, topology, requires_netns   # noqa: F401

    pytestmark = requires_netns

    def test_something(lab):                      # h1, h2, h3 on 10.1/24, 10.2/24, 10.3/24
        router = start_router(lab, tmp_path)      # tests/routerlab.py: the router opens and
        assert lab.ping("h1", lab.host("h3").address.ip).returncode == 0   # moves the TAPs

``RouterLab`` and ``Host`` are :class:`forwarder.lab.topology.Lab` and
:class:`~forwarder.lab.topology.LabHost`, ``make_lab`` is the lab's: one model
of a router and its hosts, for the lab, the bench and the tests.  Every
namespace carries a random prefix (``fw1a2b3c-r``, ``fw1a2b3c-h1``) so parallel
runs never collide; everything is removed by the fixtures' finalizers, on
failures too.  Only namespaces made here are ever configured or sent to.
"""
from __future__ import annotations

from typing import Iterator

import pytest

from forwarder import netns as nn
from forwarder.lab.topology import Lab as RouterLab
from forwarder.lab.topology import LabHost as Host
from forwarder.lab.topology import make_lab
from tests.machine import netns_available, requires_netns

__all__ = ["Host", "RouterLab", "make_lab", "netns_available", "requires_netns", "topology",
           "lab"]


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
