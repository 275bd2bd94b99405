"""What this machine lets the tests do, asked without importing the router.

The session's guards (tests/sessionguard.py, loaded by conftest.py) need only
this, so a test session still starts, and says what failed, when an extension
of the router does not import.
"""
from __future__ import annotations

import os

import pytest


def netns_available() -> bool:
    """Root and /dev/net/tun: namespaces, veths and TAPs can be made."""
    return os.geteuid() == 0 and os.path.exists("/dev/net/tun")


requires_netns = pytest.mark.skipif(not netns_available(),
                                    reason="needs root and /dev/net/tun")
