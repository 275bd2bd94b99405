"""Bad input to a real router's control socket and Prometheus endpoint:
each bad request gets its error (kind and message naming the problem and the
limit) and its counter, slow clients are cut at their deadline, the
connection limits refuse and count, and meanwhile well-behaved clients are
answered and the dataplane forwards.

h1 (10.1.0.2) --tap1-- router --tap3-- h3 (10.3.0.2)
                         |--tap2-- h2 (10.2.0.2)

The router boots with 2 s request deadlines (net.forwarder.*.request_timeout)
so that the slow clients are cut quickly; every wait here is bounded.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from contextlib import ExitStack
from typing import Any, Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from forwarder import netns as nn
from forwarder.control import MAX_REQUEST, Client, ControlError
from tests.routerlab import RunningRouter, start_router
from tests.topology import lab, requires_netns, topology  # noqa: F401

pytestmark = requires_netns

METRICS_PORT = 9477
DEADLINE = 2                     # seconds: both endpoints' request_timeout here
IDLE = 4                         # net.forwarder.control.idle_timeout here
BOOT = {"net.forwarder.control.request_timeout": DEADLINE,
        "net.forwarder.control.idle_timeout": IDLE,
        "net.forwarder.metrics.request_timeout": DEADLINE}
CONTROL_REASONS = {"too_large", "timeout", "bad_utf8", "bad_json", "not_object", "version",
                   "command", "args", "unread"}
METRICS_REASONS = {"too_large", "timeout", "bad_request", "method", "not_found", "unread"}


@pytest.fixture(scope="module")
def router(lab, tmp_path_factory) -> Iterator[RunningRouter]:  # noqa: F811
    r = start_router(lab, tmp_path_factory.mktemp("abuse"), sysctl=BOOT,
                     metrics=f"127.0.0.1:{METRICS_PORT}")
    yield r
    code, out = r.stop()
    assert code == 0, out
    assert "Traceback" not in out


# --- raw clients ----------------------------------------------------------------------

class Raw:
    """A connection to the control socket that sends what it is told."""

    def __init__(self, router: RunningRouter) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(str(router.socket))
        self.buf = b""

    def send(self, data: bytes) -> bool:
        """False when the router has closed its end already."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def reply(self, timeout: float = 5) -> dict:
        """The next reply line (within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            assert chunk, f"closed without a reply (after {self.buf[:200]!r})"
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def closed(self, timeout: float) -> bool:
        """True once the router closes the connection (within ``timeout``)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except ConnectionResetError:
            return True
        except TimeoutError:
            pass
        return False

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)     # wakes a thread blocked sending
        except OSError:
            pass
        self.sock.close()


def request(command: str, version: int = 1, **args: Any) -> bytes:
    return json.dumps({"version": version, "command": command, "args": args}).encode() + b"\n"


def rejected(r: RunningRouter) -> dict[str, int]:
    return r.call("stats")["control"]["rejected"]


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


@pytest.fixture
def raws(router: RunningRouter) -> Iterator[Callable[[], Raw]]:
    """Opens raw connections; each is closed at the end, failing or not."""
    with ExitStack() as stack:
        def open_one() -> Raw:
            c = Raw(router)
            stack.callback(c.close)
            return c
        yield open_one


def send_big_line(conn: Raw, size: int) -> threading.Thread:
    """Send ``size`` bytes and a newline from a thread (the router stops
    reading at its limit; the send then fails, which is expected)."""
    t = threading.Thread(target=conn.send, args=(b"x" * size + b"\n",), daemon=True)
    t.start()
    return t


# --- metrics over TCP, inside the router's namespace -----------------------------------

def http_connect(r: RunningRouter) -> socket.socket:
    with nn.enter_netns(r.lab.router_ns):
        return socket.create_connection(("127.0.0.1", METRICS_PORT), timeout=5)


def http_read(s: socket.socket, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Everything until the server closes: (status, headers, body)."""
    data, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1."), f"not an HTTP answer: {data[:200]!r}"
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def http_exchange(r: RunningRouter, data: bytes) -> tuple[int, dict[str, str], bytes]:
    s = http_connect(r)
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass                      # answered and closed before it all went
        return http_read(s)
    finally:
        s.close()


def metric_values(r: RunningRouter) -> dict[tuple[str, frozenset], float]:
    status, _, body = http_exchange(r, b"GET /metrics HTTP/1.0\r\n\r\n")
    assert status == 200, body[:300]
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def series(values: dict, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in values.items() if n == name}


# --- the dataplane meanwhile ------------------------------------------------------------

class Pings:
    """h1 pings h3 through the router, 10 echoes 0.2 s apart, from a thread."""

    def __init__(self, r: RunningRouter, count: int = 10) -> None:
        self.count, self.r = count, r
        self.result: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.result = self.r.lab.ping("h1", "10.3.0.2", count=self.count, wait=2,
                                      extra=["-i", "0.2"])

    def __enter__(self) -> "Pings":
        self.forwarded = self.r.call("stats")["forwarded"]
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(self.count * 2 + 10)

    def check(self) -> None:
        assert not self.thread.is_alive(), "ping did not end"
        out = self.result.stdout
        assert self.result.returncode == 0 and f"{self.count} received" in out, out
        # each echo and each reply crossed the router
        assert self.r.call("stats")["forwarded"] >= self.forwarded + 2 * self.count


# --- the control socket ---------------------------------------------------------------------

BAD_LINES = [
    # (request line, kind, what the message says)
    (b'{"version": 1, "command": "p\xffng"}\n', "bad_utf8", ["not UTF-8", "0xff", "offset 28"]),
    (b"{not json\n", "bad_json", ["not JSON", "column 2"]),
    (b"\n", "bad_json", ["empty request line"]),
    (b'{"version": 1, "command": "ping", "args": {"n": NaN}}\n', "bad_json", ["NaN"]),
    (b"[1, 2]\n", "not_object", ["must be a JSON object, not a list"]),
    (b'"ping"\n', "not_object", ["must be a JSON object, not a string"]),
    (request("ping", version=2), "version", ["version 2 not supported", "speaks 1"]),
    (b'{"command": "ping"}\n', "version", ["version None not supported"]),
    (request("frob"), "command", ["unknown command 'frob'", "sysctl.get"]),
    (b'{"version": 1, "command": ["ping"]}\n', "command", ["unknown command ['ping']"]),
    (request("sysctl.list", prefx="net"), "args", ["sysctl.list: unknown argument 'prefx'",
                                                   "takes: prefix"]),
    (request("sysctl.get", names="net.inet.ip.ttl"), "args",
     ["sysctl.get: argument 'names' must be a list of strings, not a string"]),
    (request("sysctl.get", names=[1]), "args", ["'names' must be a list of strings"]),
    (request("stats", describe="yes"), "args", ["'describe' must be true or false"]),
    (request("route.add", prefix=10), "args", ["'prefix' must be a string, not an integer"]),
    (request("sysctl.get"), "args", ["missing a required argument: 'names'"]),
    (b'{"version": 1, "command": "ping", "args": [1]}\n', "args",
     ["ping: args must be a JSON object, not a list"]),
]


def test_each_bad_request_gets_its_error_and_its_counter_and_the_line_after_it_is_served(
        router, raws):
    before = rejected(router)
    assert set(before) == CONTROL_REASONS
    conn = raws()
    for line, kind, words in BAD_LINES:
        assert conn.send(line)
        reply = conn.reply()
        assert reply["ok"] is False and reply["kind"] == kind, (line, reply)
        for w in words:
            assert w in reply["error"], (line, reply)
        assert conn.send(request("ping"))            # the protocol resyncs at the newline
        assert conn.reply() == {"version": 1, "ok": True, "result": "pong"}, line
    # A command's own refusal is an answer, not a rejection.
    assert conn.send(request("sysctl.set", assignments={"net.inet.ip.ttl": 0}))
    reply = conn.reply()
    assert reply["kind"] == "SysctlError" and "out of range" in reply["error"]

    # A line over the limit: told so, with the limit, and cut off (what
    # follows cannot be told apart from the rest of the line).
    big = raws()
    sender = send_big_line(big, 2 << 20)
    reply = big.reply()
    assert reply["kind"] == "too_large", reply
    assert f"longer than {MAX_REQUEST} bytes" in reply["error"] and "closed" in reply["error"]
    assert big.closed(5)
    sender.join(5)

    expected = Counter(kind for _, kind, _ in BAD_LINES) + Counter(too_large=1)
    after = rejected(router)
    assert delta(after, before) == dict(expected)
    assert router.call("stats")["control"]["max_clients"] == 64
    # The same numbers in Prometheus, every reason present.
    exported = series(metric_values(router), "forwarder_control_rejected_total", "reason")
    assert exported == {k: float(v) for k, v in rejected(router).items()}


def test_fifty_clients_are_answered_while_one_stalls_mid_line_and_one_sends_2_mib(router, raws):
    """Meanwhile h1 pings h3 through the router: every echo comes back."""
    pid = router.proc.pid
    n_clients, results, failures = 50, [], []
    lock = threading.Lock()
    start = threading.Barrier(n_clients, timeout=20)

    def client() -> None:
        try:
            start.wait()
            c = Client(router.socket, timeout=20)
            got = (c.call("hello")["pid"], c.call("ping"),
                   c.call("sysctl.get", names=["net.inet.ip.ttl"])[0]["value"],
                   c.call("health")["healthy"], len(c.call("stats")["interfaces"]))
            with lock:
                results.append(got)
        except (ControlError, threading.BrokenBarrierError) as e:
            with lock:
                failures.append(repr(e))

    before = rejected(router)
    with Pings(router) as pings:
        stalled = raws()
        t_stall = time.monotonic()
        assert stalled.send(b'{"version": 1, "command": "sta')
        big = raws()
        sender = send_big_line(big, 2 << 20)
        threads = [threading.Thread(target=client, daemon=True) for _ in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "clients still waiting"
        assert not failures, failures[:5]
        assert results == [(pid, "pong", 64, True, 3)] * n_clients
        assert big.reply()["kind"] == "too_large"
        sender.join(5)
        # The stalled client: cut at its deadline, with a reply saying so.
        reply = stalled.reply(timeout=DEADLINE + 8)
        assert time.monotonic() - t_stall >= DEADLINE
        assert reply["kind"] == "timeout", reply
        assert f"not complete within {DEADLINE} s" in reply["error"]
        assert "net.forwarder.control.request_timeout" in reply["error"]
        assert stalled.closed(5)
    pings.check()
    assert delta(rejected(router), before) == {"too_large": 1, "timeout": 1}


def test_slow_clients_are_cut_at_their_deadline_and_give_their_threads_back(router, raws):
    """A client that sends nothing, one that drips a byte every 0.25 s (an
    idle timer alone would never fire), one that sends requests and never
    reads the answers: each is closed after DEADLINE, told why where it
    listens, and counted."""
    before = rejected(router)
    cut: dict[str, float] = {}
    t0 = time.monotonic()
    silent, dripping, deaf = raws(), raws(), raws()

    def wait_silent() -> None:
        if silent.closed(DEADLINE + 10):
            cut["silent"] = time.monotonic() - t0

    def drip() -> None:
        data = b'{"version": 1,'
        for _ in range(int((DEADLINE + 10) / 0.25)):
            if not dripping.send(data):
                cut["dripping"] = time.monotonic() - t0
                return
            data = b" "
            time.sleep(0.25)

    def deafen() -> None:
        # Many complete requests in one blocking send: the router stops
        # reading once it is stuck writing answers nobody takes.
        deaf.sock.settimeout(None)
        for _ in range(50):
            if not deaf.send(request("stats") * 5000):
                cut["deaf"] = time.monotonic() - t0
                return

    threads = [threading.Thread(target=f, daemon=True) for f in (wait_silent, drip, deafen)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE + 15)
    assert set(cut) == {"silent", "dripping", "deaf"}, cut
    assert min(cut.values()) >= DEADLINE, cut
    reply = json.loads(silent.buf.partition(b"\n")[0])
    assert reply["kind"] == "timeout"
    assert f"no request within {DEADLINE} s of connecting" in reply["error"]
    assert dripping.closed(2)
    reply = json.loads(dripping.buf.partition(b"\n")[0])
    assert reply["kind"] == "timeout" and "not complete within" in reply["error"]
    assert delta(rejected(router), before) == {"timeout": 2, "unread": 1}
    # Their threads are gone: only this call's own connection is being served.
    router.wait_for(lambda: router.call("stats")["control"]["clients"] == 1, 5,
                    what="the slow clients' connections ended")


def test_an_idle_connection_is_closed_after_idle_timeout_without_a_rejection(router, raws):
    before = rejected(router)
    conn = raws()
    assert conn.send(request("ping"))
    assert conn.reply()["result"] == "pong"
    t0 = time.monotonic()
    assert conn.closed(IDLE + 8)
    assert time.monotonic() - t0 >= IDLE - 0.1
    assert conn.buf == b""                  # closed without a word: it asked for nothing
    assert delta(rejected(router), before) == {}


def _settle(router: RunningRouter, settings: dict[str, int], timeout: float = 10) -> int:
    """Set tunables, retrying while the socket is full; the refusals met."""
    busy, deadline = 0, time.monotonic() + timeout
    while True:
        try:
            router.call("sysctl.set", assignments=settings)
            return busy
        except ControlError as e:
            if e.kind != "busy" or time.monotonic() > deadline:
                raise
            busy += 1
            time.sleep(0.05)


def test_the_connection_limit_refuses_counts_and_logs_once_per_burst(router, raws):
    limit, extra = 4, 10
    refused0 = router.call("stats")["control"]["refused"]
    mark = len(router.log_text())
    router.call("sysctl.set", assignments={"net.forwarder.control.max_clients": limit,
                                           "net.forwarder.control.idle_timeout": 60})
    busy_met = 0
    try:
        held: list[Raw] = []
        # Each answered: it has its slot.  A slot is given back when the
        # router sees the end of a connection, a moment after the client
        # closed it: the refusals met meanwhile are counted too.
        for _ in range(limit * 20):
            if len(held) == limit:
                break
            c = raws()
            c.send(request("ping"))
            reply = c.reply()
            if reply.get("kind") == "busy":
                busy_met += 1
                continue
            assert reply["result"] == "pong", reply
            held.append(c)
        assert len(held) == limit
        for _ in range(extra):
            c = raws()
            reply = c.reply()
            assert reply["kind"] == "busy", reply
            assert f"{limit} control clients connected already" in reply["error"]
            assert "net.forwarder.control.max_clients" in reply["error"]
            assert c.closed(5)
        cp = router.cli("health", check=False)          # the CLI: refused, exit 1
        assert cp.returncode == 1 and "max_clients" in cp.stderr, cp.stderr
        for c in held:                         # still served, limit or not
            assert c.send(request("ping")) and c.reply()["result"] == "pong"
            c.close()
    finally:
        busy_met += _settle(router, {"net.forwarder.control.max_clients": 64,
                                     "net.forwarder.control.idle_timeout": IDLE})
    refused = extra + 1 + busy_met
    assert router.call("stats")["control"]["refused"] == refused0 + refused
    log = router.log_text()[mark:]
    assert log.count("control socket: 4 clients connected, the limit "
                     "(net.forwarder.control.max_clients): refusing new connections") == 1, log
    assert log.count(f"control socket: taking connections again; {refused} refused") == 1, log
    exported = metric_values(router)
    assert exported[("forwarder_control_refused_connections_total",
                     frozenset({"router": router.lab.name}.items()))] == refused0 + refused


# --- the Prometheus endpoint --------------------------------------------------------------

HTTP_CASES = [
    # (request, status, reason, what the body says)
    (b"GET /nope HTTP/1.0\r\n\r\n", 404, "not_found", "/nope: the metrics are at /metrics"),
    (b"POST /metrics HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc", 405, "method",
     "POST /metrics: only GET and HEAD"),
    (b"GET /" + b"a" * (1 << 20) + b" HTTP/1.0\r\n\r\n", 414, "too_large",
     "request line over 8192 bytes"),
    (b"GET /metrics HTTP/1.0\r\n" + b"X-Pad: " + b"b" * 4000 + b"\r\n" * 1 + (
        b"X-More: " + b"c" * 4000 + b"\r\n") * 4 + b"\r\n", 431, "too_large",
     "request line and headers over 16384 bytes"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, "bad_request",
     "Bad request"),
    (b"GET /metrics HTTP/2.0\r\n\r\n", 505, "bad_request", "Invalid HTTP version (2.0)"),
]


def metrics_rejected(r: RunningRouter) -> dict[str, int]:
    return r.call("stats")["metrics"]["rejected"]


def test_the_metrics_endpoint_answers_bad_requests_with_their_status_and_counts_them(router):
    before = metrics_rejected(router)
    assert set(before) == METRICS_REASONS
    for data, status, _, words in HTTP_CASES:
        got, headers, body = http_exchange(router, data)
        assert got == status, (data[:60], got, body[:200])
        assert words in body.decode(), (data[:60], body[:200])
        if status == 405:
            assert headers.get("Allow") == "GET, HEAD"
    got, headers, body = http_exchange(router, b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert got == 200 and body == b"" and int(headers["Content-Length"]) > 0
    expected = Counter(reason for _, _, reason, _ in HTTP_CASES)
    assert delta(metrics_rejected(router), before) == dict(expected)
    exported = series(metric_values(router), "forwarder_metrics_rejected_total", "reason")
    assert exported == {k: float(v) for k, v in metrics_rejected(router).items()}


def test_scrapes_are_answered_during_a_slowloris_and_a_huge_line_and_the_slowloris_is_cut(
        router):
    n_scrapes = 50
    before = metrics_rejected(router)
    with ExitStack() as stack, Pings(router) as pings:
        slow = http_connect(router)
        stack.callback(slow.close)
        t_slow = time.monotonic()
        slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: r1\r\n")
        huge = http_connect(router)
        stack.callback(huge.close)
        huge_sender = threading.Thread(target=lambda: _send_quietly(
            huge, b"GET /" + b"z" * (4 << 20) + b" HTTP/1.0\r\n\r\n"), daemon=True)
        huge_sender.start()

        socks = [http_connect(router) for _ in range(n_scrapes)]
        for s in socks:
            stack.callback(s.close)
        answers: list[Any] = [None] * n_scrapes

        def scrape(i: int) -> None:
            try:
                socks[i].sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                answers[i] = http_read(socks[i], timeout=20)
            except (OSError, AssertionError) as e:
                answers[i] = e

        threads = [threading.Thread(target=scrape, args=(i,), daemon=True)
                   for i in range(n_scrapes)]
        for t in threads:
            t.start()
        # The slowloris drips a header every 0.3 s meanwhile.
        cut = None
        while cut is None and time.monotonic() - t_slow < DEADLINE + 10:
            try:
                slow.sendall(b"X-Drip: 1\r\n")
            except (BrokenPipeError, ConnectionResetError):
                cut = time.monotonic() - t_slow
                break
            slow.settimeout(0.3)
            try:
                if slow.recv(1, socket.MSG_PEEK):
                    cut = time.monotonic() - t_slow
            except TimeoutError:
                pass
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
        bad = [a for a in answers if not (isinstance(a, tuple) and a[0] == 200)]
        assert not bad, bad[:3]
        for _, _, body in answers:
            up = [s for fam in text_string_to_metric_families(body.decode())
                  if fam.name == "forwarder_dataplane_up" for s in fam.samples]
            assert [s.value for s in up] == [1.0]
        # (the server's clock starts at its accept, ours when connect() returned)
        assert cut is not None and cut >= DEADLINE - 0.05, cut
        status, _, body = http_read(slow)
        assert status == 408, body
        assert f"not complete within {DEADLINE} s (net.forwarder.metrics.request_timeout)" \
            in body.decode()
        status, _, body = http_read(huge)
        assert status == 414, body
        huge_sender.join(10)
    pings.check()
    assert delta(metrics_rejected(router), before) == {"timeout": 1, "too_large": 1}
    router.wait_for(lambda: router.call("stats")["metrics"]["clients"] == 0, 5,
                    what="every metrics connection ended")


def _send_quietly(s: socket.socket, data: bytes) -> None:
    try:
        s.sendall(data)
    except OSError:
        pass                                # cut off at the limit, as it should be


def test_the_metrics_connection_limit_answers_503_and_counts(router):
    router.call("sysctl.set", assignments={"net.forwarder.metrics.max_clients": 2,
                                           "net.forwarder.metrics.request_timeout": 30})
    refused0 = router.call("stats")["metrics"]["refused"]
    held: list[socket.socket] = []
    try:
        held = [http_connect(router) for _ in range(2)]
        router.wait_for(lambda: router.call("stats")["metrics"]["clients"] == 2, 5,
                        what="both connections taken")
        status, headers, body = http_exchange(router, b"GET /metrics HTTP/1.0\r\n\r\n")
        assert status == 503 and headers.get("Retry-After") == "1", (status, headers)
        assert b"2 metrics clients connected already" in body
        assert b"net.forwarder.metrics.max_clients" in body
        assert router.call("stats")["metrics"]["refused"] == refused0 + 1
        held[0].sendall(b"GET /metrics HTTP/1.0\r\n\r\n")      # the ones let in: served
        assert http_read(held[0])[0] == 200
    finally:
        for s in held:
            s.close()
        router.call("sysctl.set", assignments={"net.forwarder.metrics.max_clients": 64,
                                               "net.forwarder.metrics.request_timeout":
                                                   DEADLINE})
    assert metric_values(router)[("forwarder_metrics_refused_connections_total",
                                  frozenset({"router": router.lab.name}.items()))] \
        == refused0 + 1
