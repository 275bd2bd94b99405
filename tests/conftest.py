"""Shared pytest fixtures.  Each group of fixtures is in its own section."""
from __future__ import annotations

import gc

import pytest


# --- mbufs: leak check and limits ---------------------------------------------------

MBUF_TEST_MODULES = ("test_mbuf", "test_netstat")


def _mbuf_used() -> dict[str, int]:
    """USED of every mbuf zone, with this thread's caches drained first: a
    Packet item cached in the Packet zone keeps its cluster, which the
    cluster zone counts as used until the pair is taken apart."""
    from allocator_pyx import mbuf
    gc.collect()           # handles dropped by a failing test free their chains
    mbuf.drain()
    return {name: row["used"] for name, row in mbuf.zone_stats().items()}


@pytest.fixture(autouse=True)
def mbuf_leak_check(request):
    """For the mbuf test modules (or any module setting MBUF_LEAK_CHECK =
    True): after each test every mbuf zone's USED is back where it was."""
    module = request.module
    name = module.__name__.rpartition(".")[2]
    if not (name.startswith(MBUF_TEST_MODULES) or getattr(module, "MBUF_LEAK_CHECK", False)):
        yield
        return
    before = _mbuf_used()
    yield
    after = _mbuf_used()
    leaked = {z: after[z] - before[z] for z in before if after[z] != before[z]}
    assert not leaked, f"mbuf zones' USED changed across the test: {leaked}"


@pytest.fixture
def mbuf_limits():
    """Save the mbuf limits and drain the zones' caches before the test;
    restore the limits after it.  Yields the mbuf module."""
    from allocator_pyx import mbuf
    saved = mbuf.get_limits()
    mbuf.drain()
    try:
        yield mbuf
    finally:
        gc.collect()
        mbuf.set_limits(**saved)


# --- the session: no skips where everything can run, nothing left behind ------------

from tests.sessionguard import (pytest_runtest_logreport, pytest_sessionfinish,  # noqa: E402,F401
                                pytest_terminal_summary, pytest_testnodedown)
