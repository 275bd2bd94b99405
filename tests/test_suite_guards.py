"""The suite's own guards hold: a session that skipped namespace tests on a
machine that can run them fails, so does one that left a namespace behind,
and the module-wide topology fixture removes what a failing module made.

Each case runs a small test module in a pytest of its own (a subprocess, in
a temporary directory) with the plugin under test, and reads its exit status.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from forwarder import netns as nn
from tests.topology import requires_netns

ROOT = Path(__file__).resolve().parent.parent

pytestmark = requires_netns


def run_pytest(tmp_path: Path, source: str, *plugins: str,
               extra: list[str] = ()) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as a test module (then the ``extra`` test files) with
    ``plugins`` loaded (-p)."""
    test = tmp_path / "test_inner.py"
    test.write_text(textwrap.dedent(source))
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    for p in plugins:
        argv += ["-p", p]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(argv + [str(test), *extra], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


# The guards hold in one process and under pytest-xdist (the README's command).
WORKERS = pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])


@WORKERS
def test_a_skip_fails_the_session_where_everything_can_run(tmp_path: Path,
                                                           workers: list[str]) -> None:
    cp = run_pytest(tmp_path, """
        import pytest

        def test_runs():
            pass

        def test_skips():
            pytest.skip("pretending to need something")

        @pytest.mark.xfail(reason="expected", strict=True)
        def test_xfails():
            assert False
    """, "tests.sessionguard", extra=workers)
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert "1 passed, 1 skipped, 1 xfailed" in cp.stdout, cp.stdout
    assert "1 test(s) skipped on a machine that can run them" in cp.stdout, cp.stdout
    assert "test_inner.py::test_skips: pretending to need something" in cp.stdout, cp.stdout


def test_elsewhere_a_skip_is_a_skip_and_is_listed(tmp_path: Path) -> None:
    """Without root or /dev/net/tun (pretended here: the guard's probe says
    so) the session passes with its skips, and says why they happened."""
    (tmp_path / "conftest.py").write_text(
        "import tests.sessionguard as guard\nguard.netns_available = lambda: False\n")
    cp = run_pytest(tmp_path, """
        import pytest

        def test_runs():
            pass

        def test_skips():
            pytest.skip("needs root and /dev/net/tun")
    """, "tests.sessionguard")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "1 passed, 1 skipped" in cp.stdout, cp.stdout
    assert "1 test(s) skipped: this machine lacks root or /dev/net/tun" in cp.stdout, cp.stdout
    assert "FAILED session" not in cp.stdout


def test_without_skips_the_session_passes(tmp_path: Path) -> None:
    cp = run_pytest(tmp_path, """
        import pytest

        def test_runs():
            pass

        @pytest.mark.xfail(reason="expected", strict=True)
        def test_xfails():
            assert False
    """, "tests.sessionguard")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "FAILED session" not in cp.stdout


@WORKERS
def test_a_namespace_left_behind_fails_the_session(tmp_path: Path, workers: list[str]) -> None:
    out = tmp_path / "made"
    cp = run_pytest(tmp_path, f"""
        from pathlib import Path
        from forwarder import netns as nn

        def test_leaves_a_namespace():
            topo = nn.Topology()                       # never closed by the test
            Path({str(out)!r}).write_text(topo.netns("left"))
    """, "tests.sessionguard", extra=workers)
    left = out.read_text()
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert f"network namespaces left behind after teardown: {left}" in cp.stdout, cp.stdout
    # The process's exit handler still removed it.
    assert left not in nn.list_netns()


def test_module_topology_is_removed_when_its_module_fails(tmp_path: Path) -> None:
    """The `topology`/`lab` fixtures remove namespaces, TAPs and processes at
    the end of their module, also when its tests failed: a second module,
    run next in the same session, finds nothing of the first (the process's
    exit handler, which would also clean up, has not run yet)."""
    made = tmp_path / "made"
    seen = tmp_path / "seen"
    (tmp_path / "test_b_next.py").write_text(textwrap.dedent(f"""
        import psutil
        from pathlib import Path
        from forwarder import netns as nn

        def test_first_module_left_nothing():
            *names, pid = Path({str(made)!r}).read_text().split()
            alive = psutil.pid_exists(int(pid)) and \\
                psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
            Path({str(seen)!r}).write_text(repr((sorted(set(names) & set(nn.list_netns())), alive)))
    """))
    cp = run_pytest(tmp_path, f"""
        from pathlib import Path
        from tests.topology import lab, topology  # noqa: F401

        def test_fails_after_making_things(lab):
            lab.open_taps()
            proc = lab.topo.popen(lab.router_ns, ["sleep", "60"])
            Path({str(made)!r}).write_text(" ".join(lab.topo.namespaces) + " " + str(proc.pid))
            assert False, "fails on purpose"

        def test_also_fails(lab):
            raise RuntimeError("and this one too")
    """, extra=[str(tmp_path / "test_b_next.py")])
    assert cp.returncode == 1 and "2 failed, 1 passed" in cp.stdout, cp.stdout + cp.stderr
    assert len(made.read_text().split()) == 5            # the router, three hosts, the process
    assert seen.read_text() == "([], False)"
