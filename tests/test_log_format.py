"""`forwarder run --log-format json`: a real router's log, one JSON object a
line (time in RFC 3339 UTC, level, logger, thread, message; exception text
when there is one), its final netstat -m as one more object; and the text
format staying the default (forwarder/logformat.py).

h1 (10.1.0.2) --tap1-- router --tap2-- h2 (10.2.0.2)
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from forwarder import schemas
from forwarder.lab.process import forwarder_argv
from tests.routerlab import start_router
from tests.topology import make_lab, requires_netns, topology  # noqa: F401

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
KEYS = {"time", "level", "logger", "thread", "message"}


def records(text: str) -> list[dict]:
    """Every line of ``text`` as a JSON object (an AssertionError names a line that is not)."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            rec = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {n} is not JSON: {line!r}\n{text[-3000:]}") from None
        assert isinstance(rec, dict) and KEYS <= set(rec), f"line {n}: {line!r}"
        out.append(rec)
    return out


def utc(stamp: str) -> float:
    assert RFC3339_UTC.match(stamp), stamp
    t = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert t.utcoffset() == timezone.utc.utcoffset(None)
    return t.timestamp()


def find(recs: list[dict], **want: str) -> dict:
    got = [r for r in recs if all(re.search(v, str(r.get(k))) for k, v in want.items())]
    assert got, f"no record with {want} in:\n" + "\n".join(map(json.dumps, recs))
    return got[0]


@pytest.fixture(scope="module")
def lab(topology):  # noqa: F811
    return make_lab(topology, n_hosts=2)


@requires_netns
def test_a_router_run_with_json_logs_writes_one_object_a_line(lab, tmp_path: Path) -> None:
    t0 = time.time()
    r = start_router(lab, tmp_path, extra_argv=("--log-format", "json"))
    try:
        r.cli("route", "add", "198.51.100.0/24", "via", "10.2.0.2")
        r.cli("debug", "stall", "0.2")
        r.wait_log("dataplane resumed after", 5)
        good = r.config.read_text()
        r.config.write_text(good + "\n[router\n")                 # a reload that fails
        assert r.cli("reload", check=False).returncode == 1
        r.config.write_text(good)
    finally:
        code, out = r.stop()
    t1 = time.time()
    assert code == 0, out
    recs = records(out)
    for rec in recs:
        assert t0 - 1 <= utc(rec["time"]) <= t1 + 1, rec
        assert rec["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), rec
        assert "exception" not in rec, rec                   # nothing went wrong here
    find(recs, logger="^forwarder$", level="INFO", thread="MainThread",
         message=r"^router r1 running \(pid \d+, socket ")
    find(recs, logger="^forwarder.router$", level="INFO",
         message=r"^route add 198.51.100.0/24 ")
    find(recs, logger="^forwarder.router$", level="WARNING", thread="^stall$",
         message=r"^dataplane stalled for 0.2 s on request \(debug\)$")
    find(recs, logger="^forwarder.router$", level="ERROR",
         message=r"^reload of .* failed, running config kept: ")
    last = recs[-1]
    assert last["message"] == "netstat -m at exit" and last["logger"] == "forwarder", last
    v = Draft202012Validator(schemas.load("netstat-m"))
    assert not list(v.iter_errors(last["netstat_m"])), last
    assert last["netstat_m"]["mbufs"]["current"] == 0, last       # every mbuf freed
    assert "mbuf clusters in use" not in out                      # no text netstat -m


def test_a_run_that_cannot_start_says_why_in_the_log_format(tmp_path: Path) -> None:
    """The same error, as text (the default) and as one JSON object."""
    def run(*fmt: str) -> subprocess.CompletedProcess:
        cp = subprocess.run(forwarder_argv("run", "-c", str(tmp_path / "missing.toml"), *fmt),
                            capture_output=True, text=True, timeout=30)
        assert cp.returncode == 2 and cp.stdout == "", cp
        return cp
    text = run().stderr
    assert re.fullmatch(r"forwarder: \S+missing.toml: cannot read: No such file or directory\n",
                        text), text
    assert run("--log-format", "text").stderr == text
    [rec] = records(run("--log-format", "json").stderr)
    assert rec["level"] == "ERROR" and rec["logger"] == "forwarder", rec
    assert rec["message"] == text.rstrip("\n"), rec


EXCEPTIONS = """
import logging, threading, warnings
from forwarder.logformat import configure
configure(logging.INFO, "json")
log = logging.getLogger("forwarder.test")
try:
    {}["no such key"]
except KeyError:
    log.exception("lookup failed")
warnings.warn("an old way")
t = threading.Thread(target=lambda: 1 / 0, name="worker")
t.start(); t.join()
raise ValueError("the end")
"""


def test_exceptions_warnings_and_crashes_are_json_with_their_traceback() -> None:
    """The formatter and hooks that `forwarder run --log-format json` installs,
    in a process of their own: a logged exception, a warning, a thread that
    dies and an uncaught exception each become one object."""
    cp = subprocess.run([sys.executable, "-c", EXCEPTIONS], capture_output=True, text=True,
                        timeout=30, cwd=Path(__file__).resolve().parent.parent)
    assert cp.returncode == 1, cp
    recs = records(cp.stderr)
    assert len(recs) == 4, cp.stderr
    logged, warned, thread, main = recs
    assert logged["message"] == "lookup failed" and logged["level"] == "ERROR"
    assert logged["logger"] == "forwarder.test"
    assert logged["exception"].startswith("Traceback") and \
        logged["exception"].endswith("KeyError: 'no such key'"), logged
    assert warned["logger"] == "py.warnings" and "an old way" in warned["message"], warned
    assert thread["level"] == "CRITICAL" and "in thread worker" in thread["message"], thread
    assert "ZeroDivisionError" in thread["exception"], thread
    assert main["level"] == "CRITICAL" and main["message"] == "uncaught ValueError: the end"
    assert main["exception"].endswith("ValueError: the end"), main
