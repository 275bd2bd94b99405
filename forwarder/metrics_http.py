"""The Prometheus endpoint's HTTP server: GET (or HEAD) /metrics, one request
a connection (HTTP/1.0), within the limits of forwarder/admission.py.

What it answers besides the metrics, each counted under its reason
(forwarder_metrics_rejected_total{reason}) and closed after:

    414 too_large     a request line over MAX_REQUEST_LINE bytes
    431 too_large     request line and headers together over MAX_HEAD bytes
    408 timeout       request line and headers not in within net.forwarder.metrics.request_timeout
    400 bad_request   not HTTP (505 for an HTTP version other than 1.x)
    405 method        a method other than GET and HEAD (Allow: GET, HEAD)
    404 not_found     a path other than /metrics
    503               net.forwarder.metrics.max_clients connections already (Retry-After: 1);
                      counted as refused, answered from the accepting thread without blocking
    unread            (no answer) the client took no answer within request_timeout

prometheus_client renders the page (its text format, or OpenMetrics when
the scraper asks for it, gzipped when it accepts that), as its own server did.
"""
from __future__ import annotations

import http.server
import io
import logging
import socket
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import CollectorRegistry

from forwarder.admission import (AdmissionMixIn, EndpointStats, Limits, RequestTimeout,
                                 RequestTooLarge)

log = logging.getLogger("forwarder.metrics")

METRICS_PATH = "/metrics"
MAX_REQUEST_LINE = 8192
MAX_HEAD = 16384                        # the request line and every header
TUNABLES = "net.forwarder.metrics"      # .max_clients, .request_timeout
REJECTIONS = ("too_large", "timeout", "bad_request", "method", "not_found", "unread")
LINGER_SECONDS, LINGER_BYTES = 1.0, 1 << 20    # what finish() reads after an error, at most
_REASON = {400: "bad_request", 404: "not_found", 405: "method", 408: "timeout",
           414: "too_large", 431: "too_large", 501: "method", 505: "bad_request"}


class _HeadReader(io.RawIOBase):
    """The request's bytes from the socket: MAX_HEAD of them at most, each read
    within what is left to the request's deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline
        self.left, self.got = MAX_HEAD, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.left <= 0:
            raise RequestTooLarge(f"over {MAX_HEAD} bytes")
        wait = self.deadline - time.monotonic()
        if wait <= 0:
            raise RequestTimeout(started=self.got > 0)
        self.sock.settimeout(wait)
        try:
            n = self.sock.recv_into(memoryview(b)[:self.left])
        except TimeoutError:
            raise RequestTimeout(started=self.got > 0) from None
        self.got += n
        self.left -= n
        return n


class _SendAll(io.RawIOBase):
    """Writes with sendall: whole, within the socket's timeout in total."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.sock.sendall(b)
        return len(b)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "MetricsServer"
    protocol_version = "HTTP/1.0"
    default_request_version = "HTTP/1.0"     # answers to what is not HTTP carry headers too
    server_version = "forwarder-metrics"

    def setup(self) -> None:
        self.connection = self.request
        self.linger = False                  # finish(): read on before closing
        self.timeout_s = self.server.limits().request_timeout
        self.rfile = io.BufferedReader(_HeadReader(self.connection,
                                                   time.monotonic() + self.timeout_s))
        self.wfile = _SendAll(self.connection)          # type: ignore[assignment]

    def finish(self) -> None:
        """After an error the client may still be sending (a huge line): read
        what comes, a while, before the server closes, so that closing with
        unread bytes (a TCP reset) does not destroy the answer on its way."""
        if not self.linger:
            return
        try:
            self.connection.shutdown(socket.SHUT_WR)
            deadline, left = time.monotonic() + LINGER_SECONDS, LINGER_BYTES
            while left > 0 and (wait := deadline - time.monotonic()) > 0:
                self.connection.settimeout(wait)
                chunk = self.connection.recv(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def handle(self) -> None:
        self.close_connection = True
        self.requestline, self.request_version, self.command = "", "HTTP/1.0", ""
        try:
            try:
                if not self._read_request():
                    return
            except RequestTooLarge:
                self.send_error(431, f"request line and headers over {MAX_HEAD} bytes")
                return
            except RequestTimeout:
                self.send_error(408, f"request not complete within {self.timeout_s:g} s "
                                f"({TUNABLES}.request_timeout)")
                return
            if self.command not in ("GET", "HEAD"):
                self.send_error(405, f"{self.command} {self.path}: only GET and HEAD")
            elif urlsplit(self.path).path != METRICS_PATH:
                self.send_error(404, f"{urlsplit(self.path).path}: the metrics are at "
                                f"{METRICS_PATH}")
            else:
                self._metrics()
        except TimeoutError:
            self.server.endpoint.reject("unread")
            log.debug("metrics client took no answer for %g s: closed", self.timeout_s)
        except OSError as e:
            log.debug("metrics client went away: %s", e)

    def _read_request(self) -> bool:
        """Request line and headers; False when answered already (or no request)."""
        line = self.rfile.readline(MAX_REQUEST_LINE + 1)
        if not line:
            return False
        if len(line) > MAX_REQUEST_LINE:
            self.send_error(414, f"request line over {MAX_REQUEST_LINE} bytes")
            return False
        self.raw_requestline = line
        return self.parse_request()         # answers 400, 431, 505 itself (send_error)

    def _metrics(self) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        registry = self.server.registry
        names = parse_qs(urlsplit(self.path).query).get("name[]")
        try:
            body = encoder(registry.restricted_registry(names) if names else registry)
        except Exception:  # noqa: BLE001 - a collector failed: say so, keep serving
            log.exception("metrics: collecting failed")
            self._answer(500, b"collecting the metrics failed (see the router's log)\n")
            return
        headers = {"Content-Type": content_type}
        if gzip_accepted(self.headers.get("Accept-Encoding", "")):
            import gzip
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        self._answer(200, body, headers)

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """Every error, parse_request's included: plain text saying why, counted."""
        self.server.endpoint.reject(_REASON.get(code, "bad_request"))
        phrase = self.responses.get(code, ("error",))[0]
        body = f"{code} {phrase}: {message or phrase}\n".encode("utf-8", "replace")
        headers = {"Allow": "GET, HEAD"} if code == 405 else {}
        self.close_connection = self.linger = True
        self._answer(code, body, {"Content-Type": "text/plain; charset=utf-8", **headers})

    def _answer(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.connection.settimeout(self.timeout_s)      # the answer: as long again
        self.send_response(code)
        for k, v in (headers or {"Content-Type": "text/plain; charset=utf-8"}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.debug("metrics %s: " + format, self.address_string(), *args)


class MetricsServer(AdmissionMixIn, http.server.HTTPServer):
    def __init__(self, host: str, port: int, registry: CollectorRegistry, tunables: Any,
                 endpoint: EndpointStats) -> None:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                       flags=socket.AI_PASSIVE)[0]
        self.address_family = family
        self.registry, self.tunables, self.endpoint = registry, tunables, endpoint
        super().__init__(sockaddr[:2], _Handler)
        self._thread: threading.Thread | None = None

    def server_bind(self) -> None:
        # HTTPServer's also looks up the host's name (getfqdn): not needed here.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def limits(self) -> Limits:
        return Limits.read(self.tunables, TUNABLES)

    def refusal(self, limit: int) -> bytes:
        body = (f"{limit} metrics clients connected already, the limit "
                f"({TUNABLES}.max_clients): try again later\n").encode()
        return (b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        super().shutdown()
        if self._thread is not None:
            self._thread.join(5)
        self.server_close()
