"""A host namespace (a container) going away takes its TAP with it; the
router keeps forwarding between the others, does not spin on the dead
descriptor, and says what happened."""
from __future__ import annotations

import time

import pytest

from forwarder import netns as nn
from tests.routerlab import start_router
from tests.topology import make_lab, requires_netns, topology  # noqa: F401

pytestmark = requires_netns


@pytest.fixture(scope="module")
def lab(topology):  # noqa: F811
    return make_lab(topology)


def test_router_survives_a_host_namespace_being_destroyed(lab, tmp_path):
    router = start_router(lab, tmp_path / "router")
    try:
        assert lab.ping("h1", "10.3.0.2", count=1, wait=2).returncode == 0
        nn.remove_netns(lab.host("h3").netns)          # the "container" of h3 dies
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            tap3 = next(i for i in router.stats()["interfaces"] if i["name"] == "tap3")
            if tap3["link"] != "up":
                break
            time.sleep(0.1)
        assert tap3["link"].startswith("lost"), tap3
        # Still forwarding between the others, still healthy.
        cp = lab.ping("h1", "10.2.0.2", count=2, wait=2)
        assert cp.returncode == 0, cp.stdout
        assert router.cli("health", check=False).returncode == 0
        # Not spinning on the dead descriptor: the loop idles at its 50 ms tick.
        loops0 = router.stats()["loops"]
        time.sleep(1.0)
        assert router.stats()["loops"] - loops0 < 200
        assert "tap3: device lost" in router.cli("stats").stdout
    finally:
        code, out = router.stop()
    assert code == 0, out
    assert "interface tap3: device lost" in out
