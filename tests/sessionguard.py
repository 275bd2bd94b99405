"""Guards over the whole test session (a pytest plugin; tests/conftest.py loads it).

* On a machine that can run every test (root and /dev/net/tun), a skipped
  test is a failure: the namespace and TAP tests are the point of the suite,
  and a run that skipped them proved nothing.  Elsewhere skips stay skips and
  are listed at the end.
* Nothing is left behind: once every fixture has been torn down, no network
  namespace carrying a prefix that a Topology of this process handed out
  may remain.

Both turn an otherwise green session into exit status 1 and say why in the
terminal summary.

Under pytest-xdist (the README's test command runs two workers) each worker
checks its own namespaces and hands what it found to the controller in its
``workeroutput``; the controller, which sees every test report, checks the
skips and says it all.
"""
from __future__ import annotations

import pytest

from forwarder import netns as nn
from tests.machine import netns_available

_skipped: list[tuple[str, str]] = []
_problems: list[str] = []


def _reason(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return str(report.longrepr)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append((report.nodeid, _reason(report)))


def leftover_namespaces() -> list[str]:
    prefixes = tuple(nn.Topology.issued)
    return sorted(n for n in nn.list_netns() if prefixes and n.startswith(prefixes))


def _worker(config: pytest.Config) -> bool:
    return hasattr(config, "workeroutput")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """(xdist controller) a worker is done: take what its guard found."""
    _problems.extend(getattr(node, "workeroutput", {}).get("sessionguard", []))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _worker(session.config):
        left = leftover_namespaces() if netns_available() else []
        if left:
            session.config.workeroutput["sessionguard"] = [
                f"network namespaces left behind after teardown: {', '.join(left)}"]
        return
    if _skipped and netns_available():
        _problems.append(f"{len(_skipped)} test(s) skipped on a machine that can run them "
                         f"(root, /dev/net/tun): a skip here is a failure")
        _problems.extend(f"  skipped: {nodeid}: {why}" for nodeid, why in _skipped)
    left = leftover_namespaces() if netns_available() else []
    if left:
        _problems.append(f"network namespaces left behind after teardown: {', '.join(left)}")
    if _problems and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _skipped and not netns_available():
        terminalreporter.write_line(
            f"{len(_skipped)} test(s) skipped: this machine lacks root or /dev/net/tun "
            f"(see the skip summary above)", yellow=True)
    for line in _problems:
        terminalreporter.write_line(("FAILED session: " if not line.startswith(" ") else "")
                                    + line, red=True)
