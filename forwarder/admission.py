"""What the router's two servers allow their clients: the control socket
(forwarder/control.py) and the Prometheus endpoint (forwarder/metrics.py).

Both take a bounded number of clients at once (``max_clients``): a
connection over the limit is accepted, told why in its protocol, closed and
counted as ``refused``, without a thread of its own; a burst of refusals is
logged twice, when it starts and when a client is let in again, not once a
connection.  Each request must arrive whole within ``request_timeout`` (of
its first byte; a connection's first request, of the connection), and its
answer must be taken by the client within as long again, so a client that
stalls holds its thread for a bounded time only.  What a server rejects is
counted by reason (``EndpointStats``), for `forwarder stats --json` and for
forwarder_<endpoint>_rejected_total.

The limits are tunables, read for each connection, so a change applies to
the next one:

    net.forwarder.control.max_clients        clients of the control socket at once
    net.forwarder.control.request_timeout    seconds a request line may take to arrive
    net.forwarder.control.idle_timeout       seconds a connection may wait between requests
    net.forwarder.metrics.max_clients        clients of the Prometheus endpoint at once
    net.forwarder.metrics.request_timeout    seconds a scrape's request may take to arrive
"""
from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

log = logging.getLogger("forwarder.admission")


class RequestTimeout(TimeoutError):
    """The request (or the wait for one) passed its deadline."""

    def __init__(self, started: bool) -> None:
        super().__init__("deadline passed")
        self.started = started          # part of the request had arrived


class RequestTooLarge(ValueError):
    """More bytes than the request may have, and no end of it yet."""


@dataclass(frozen=True)
class Limits:
    max_clients: int
    request_timeout: float
    idle_timeout: float

    @classmethod
    def read(cls, tunables: Mapping[str, int] | Any, prefix: str) -> "Limits":
        """From the router's SysctlTree: ``prefix``.max_clients and so on
        (an endpoint without idle_timeout waits request_timeout at most)."""
        request = float(tunables[f"{prefix}.request_timeout"])
        idle_name = f"{prefix}.idle_timeout"
        idle = float(tunables[idle_name]) if idle_name in tunables else request
        return cls(int(tunables[f"{prefix}.max_clients"]), request, idle)


class EndpointStats:
    """One server's clients and what it refused and rejected (thread safe).

    ``rejected`` holds every reason the server knows, 0 or not; ``refused``
    counts connections turned away at ``max_clients``."""

    def __init__(self, what: str, tunable_prefix: str, reasons: tuple[str, ...]) -> None:
        self.what = what                            # "control socket", for the log
        self.tunable_prefix = tunable_prefix
        self._lock = threading.Lock()
        self.clients = 0
        self.max_clients = 0                        # the limit at the last admission
        self.refused = 0
        self.rejected: dict[str, int] = dict.fromkeys(reasons, 0)
        self._burst = 0                             # refusals since a client was last let in

    def reject(self, reason: str) -> None:
        with self._lock:
            if reason not in self.rejected:
                raise KeyError(f"{self.what}: no rejection reason {reason!r}")
            self.rejected[reason] += 1

    def admit(self, limit: int) -> bool:
        """Let one more client in, unless ``limit`` are in already."""
        with self._lock:
            self.max_clients = limit
            admitted = self.clients < limit
            if admitted:
                self.clients += 1
                ended, self._burst = self._burst, 0
            else:
                self.refused += 1
                self._burst += 1
                ended = 0
            starts = self._burst == 1
        if starts:
            log.warning("%s: %d clients connected, the limit (%s.max_clients): refusing new "
                        "connections until one leaves", self.what, limit, self.tunable_prefix)
        if ended:
            log.info("%s: taking connections again; %d refused meanwhile", self.what, ended)
        return admitted

    def leave(self) -> None:
        with self._lock:
            self.clients -= 1

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"clients": self.clients, "max_clients": self.max_clients,
                    "refused": self.refused, "rejected": dict(self.rejected)}


class LineReader:
    """Lines from a socket, each bounded in bytes and in time.

    ``readline`` waits at most ``wait`` seconds for the first byte of a line
    and ``request_timeout`` from that byte to its newline; it raises
    RequestTimeout (``started`` tells which wait ran out) or RequestTooLarge,
    and returns None at the end of the stream.  What follows a line stays
    buffered for the next call."""

    def __init__(self, sock: socket.socket, max_line: int) -> None:
        self.sock = sock
        self.max_line = max_line
        self.buf = bytearray()

    def readline(self, wait: float, request_timeout: float) -> bytes | None:
        now = time.monotonic()
        deadline = now + (request_timeout if self.buf else wait)
        while True:
            end = self.buf.find(b"\n", 0, self.max_line + 1)
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[:end + 1]
                return line
            if len(self.buf) > self.max_line:
                raise RequestTooLarge(f"over {self.max_line} bytes")
            left = deadline - time.monotonic()
            if left <= 0:
                raise RequestTimeout(started=bool(self.buf))
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise RequestTimeout(started=bool(self.buf)) from None
            if not chunk:
                return None
            if not self.buf:                 # the line's first byte: its own deadline
                deadline = time.monotonic() + request_timeout
            self.buf += chunk


def send_nowait(sock: socket.socket, data: bytes) -> None:
    """Best effort, never blocking: a refusal or a last word before closing."""
    try:
        sock.setblocking(False)
        sock.send(data)
    except OSError:
        pass


class AdmissionMixIn(socketserver.ThreadingMixIn):
    """A thread per client, for at most ``limits().max_clients`` clients;
    the others get ``refusal()`` (sent without blocking) and are closed."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = socket.SOMAXCONN     # socketserver's 5 makes concurrent connects fail
    endpoint: EndpointStats
    limits: Callable[[], Limits]

    def refusal(self, limit: int) -> bytes:
        raise NotImplementedError

    def process_request(self, request: Any, client_address: Any) -> None:
        limit = self.limits().max_clients
        if not self.endpoint.admit(limit):
            send_nowait(request, self.refusal(limit))
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.endpoint.leave()            # no thread: nobody else will
            self.shutdown_request(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.endpoint.leave()
