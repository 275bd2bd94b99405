"""The control socket: a small versioned JSON protocol over a Unix socket.

One request per line, one response per line:

    {"version": 1, "command": "sysctl.set", "args": {"assignments": {"kern.ipc.nmbclusters": 0}}}
    {"version": 1, "ok": true, "result": [["kern.ipc.nmbclusters", 65536, 0]]}
    {"version": 1, "ok": false, "error": "kern.ipc.foo: unknown tunable", "kind": "SysctlError"}

Commands (``args`` in brackets):

    hello                         protocol version, router name, pid
    ping                          "pong"
    health                        {healthy, running, progress_age, stalled, ready, waiting_for}
    sysctl.list [prefix]          every tunable's record (name, value, default, range, ...)
    sysctl.get  [names]           records by name or prefix
    sysctl.set  [assignments]     {name: value}, all or nothing -> [[name, old, new]]
    zones                         vmstat -z rows of the mbuf zones
    stats [describe]              interface counters, drop reasons, ICMP, ARP, reloads;
                                  describe: also {reason: description} as drop_reasons
    route.list | route.add [prefix, via | interface | type] | route.del [prefix]
    arp.list | arp.del [ip, interface]
    ndp.list | ndp.del [ip, interface]   the IPv6 neighbour cache
    reload                        re-read the config file -> [change, ...]
    trace.start [count, interface, filter]   trace the next count packets (of interface,
                                  matching the BPF filter): forwarder/trace.py
    trace.show | trace.stop       the trace so far (rendered) | stop taking packets
    capture [interface, count, timeout, direction, snaplen, filter]
                                  a stream of captured packets (forwarder/capture.py)
    debug.stall [seconds] | debug.resume
                                  stop the forwarding loop for a while (a debug and
                                  test facility: health checks fail meanwhile)

The socket is created mode 0600 (root only): whoever can write to it can
reconfigure the router.

What the socket takes (forwarder/admission.py): at most
net.forwarder.control.max_clients connections at once (the next one is told
``busy`` and closed); a request line of at most MAX_REQUEST bytes, complete
within net.forwarder.control.request_timeout seconds of its first byte (the
first request: of the connection); net.forwarder.control.idle_timeout seconds
between requests; an answer taken by the client within request_timeout.
A request refused before it reaches its command gets an error whose ``kind``
is the reason (REJECTIONS) and is counted under it (`stats`' ``control``); a
line too long or too slow also closes the connection, since what follows
cannot be told apart from it.  A command's own errors (a bad tunable value,
an unknown route) are answers, not rejections.
"""
from __future__ import annotations

import inspect
import ipaddress
import json
import logging
import os
import socket
import socketserver
import stat
import threading
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from forwarder.admission import (AdmissionMixIn, EndpointStats, LineReader, Limits,
                                 RequestTimeout, RequestTooLarge, send_nowait)

if TYPE_CHECKING:
    from forwarder.router import Router

from forwarder import capture, trace
from forwarder.dataplane import DROP_REASONS

log = logging.getLogger("forwarder.control")

PROTOCOL_VERSION = 1
MAX_REQUEST = 1 << 20                   # bytes of one request line, its newline not counted
TUNABLES = "net.forwarder.control"      # .max_clients, .request_timeout, .idle_timeout
# Why a request was refused before its command ran: the reply's kind, and the
# reason it is counted under.  too_large and timeout close the connection.
REJECTIONS = ("too_large", "timeout", "bad_utf8", "bad_json", "not_object", "version",
              "command", "args", "unread")


class ControlError(Exception):
    """The router answered with an error (or could not be reached)."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


def _zones() -> list[dict]:
    from forwarder import mbufs
    return mbufs.zone_stats()


def handlers(router: "Router") -> dict[str, Callable[..., Any]]:
    """command -> function(**args) for one router."""
    from forwarder import sysctl as sc

    def sysctl_list(prefix: str = "") -> list[dict]:
        return [router.sysctl.info(n) for n, _ in router.sysctl.all(prefix)]

    def sysctl_get(names: list[str]) -> list[dict]:
        out = []
        for n in names:
            if n in router.sysctl:
                out.append(router.sysctl.info(n))
            else:
                prefix = router.sysctl.all(n)
                if not prefix:
                    sc.lookup(n)            # raises with a "did you mean"
                out += [router.sysctl.info(m) for m, _ in prefix]
        return out

    def sysctl_set(assignments: dict[str, Any]) -> list[list]:
        return [list(t) for t in router.sysctl.set_many(assignments)]

    def stats(describe: bool = False) -> dict:
        s = router.dp.stats()
        ports = router.attached_ports()
        for i in s["interfaces"]:
            p = ports.get(i["name"])
            i["attach"] = None if p is None else {"link": p.link, "joins": p.joins,
                                                  "losses": p.losses}
        if describe:
            s["drop_reasons"] = dict(DROP_REASONS)
        s["reloads"] = {"ok": router.reloads.ok, "failed": router.reloads.failed,
                        "last_error": router.reloads.last_error}
        s["router"] = router.config.router.name
        for name, endpoint in router.endpoints.items():     # control, metrics
            s[name] = endpoint.as_dict()
        if router.importer is not None:
            s["route_import"] = {**router.importer.stats.as_dict(),
                                 "routes": len(router.imported),
                                 "netns": router.config.control_plane.netns}
        return s

    def health() -> dict:
        age = router.dp.progress_age()
        return {"healthy": router.healthy(), "running": router.running,
                "stalled": router.dp.stalled,
                "progress_age": None if age == float("inf") else age,
                "ready": router.ready, "waiting_for": router.waiting_for()}

    def hello() -> dict:
        return {"protocol": PROTOCOL_VERSION, "router": router.config.router.name,
                "pid": os.getpid()}

    def route_add(prefix: str, via: str | None = None, interface: str | None = None,
                  type: str = "unicast") -> dict:
        return router.route_add(prefix, via=via, interface=interface, type_=type)

    def neighbour_delete(version: int, delete: Callable[..., int], what: str
                         ) -> Callable[..., int]:
        """arp.del / ndp.del: check the address and the interface, delete."""
        def run(ip: str, interface: str | None = None) -> int:
            try:
                if ipaddress.ip_address(ip).version != version:
                    raise ValueError
            except ValueError:
                raise ValueError(f"{ip!r} is not an IPv{version} address") from None
            if interface is not None and interface not in router.ifindex:
                raise KeyError(f"no interface {interface!r}")
            n = delete(ip, interface)
            if n == 0:
                raise KeyError(f"no {what} for {ip}")
            return n
        return run

    def trace_start(count: int = trace.DEFAULT_COUNT, interface: str | None = None,
                    filter: str | None = None) -> dict:
        ifindex = -1
        if interface is not None:
            if interface not in router.ifindex:
                raise KeyError(f"no interface {interface!r}")
            ifindex = router.ifindex[interface]
        program = None
        if filter:
            from forwarder import bpf
            program = bpf.compile(filter)
        router.dp.trace_start(trace.check_count(count), ifindex, program)
        return {"count": count, "interface": interface, "filter": filter}

    def capture_start(interface: str, count: int = capture.DEFAULT_COUNT,
                      timeout: float = capture.DEFAULT_TIMEOUT, direction: str = "inout",
                      snaplen: int = capture.CAPTURE_SNAPLEN,
                      filter: str | None = None) -> capture.CaptureStream:
        return capture.start(router, interface, count, timeout, direction, snaplen, filter)

    arp_delete = neighbour_delete(4, router.dp.arp_delete, "ARP entry")
    ndp_delete = neighbour_delete(6, router.dp.nd6_delete, "neighbour cache entry")

    return {
        "hello": hello,
        "ping": lambda: "pong",
        "health": health,
        "sysctl.list": sysctl_list,
        "sysctl.get": sysctl_get,
        "sysctl.set": sysctl_set,
        "zones": _zones,
        "stats": stats,
        "route.list": router.route_list,
        "route.add": route_add,
        "route.del": router.route_delete,
        "arp.list": router.dp.arp_entries,
        "ndp.list": router.dp.nd6_entries,
        "ndp.del": ndp_delete,
        "arp.del": arp_delete,
        "reload": lambda: router.reload(),
        "debug.stall": lambda seconds: router.stall(seconds),
        "debug.resume": router.resume,
        "trace.start": trace_start,
        "trace.show": lambda: trace.render(router.dp.trace_records()),
        "trace.stop": lambda: {"remaining": router.dp.trace_stop()},
        "capture": capture_start,
    }


class Rejected(ControlError):
    """A request refused before its command ran; ``kind`` is one of REJECTIONS."""


class _Handler(socketserver.BaseRequestHandler):
    """One connection: request lines in, a reply line for each."""
    server: "ControlServer"

    def handle(self) -> None:
        srv = self.server
        limits = srv.limits()
        reader = LineReader(self.request, MAX_REQUEST)
        first, wait = True, limits.request_timeout      # the first request: from the connection
        try:
            while True:
                try:
                    line = reader.readline(wait, limits.request_timeout)
                except RequestTooLarge:
                    self._last_word(srv.reject(
                        "too_large", f"request line longer than {MAX_REQUEST} bytes (the "
                        "limit) and no newline: connection closed"))
                    return
                except RequestTimeout as e:
                    if e.started or first:
                        self._last_word(srv.reject("timeout", _timeout_message(e, limits)))
                    else:
                        log.debug("control connection idle for %g s: closed",
                                  limits.idle_timeout)
                    return
                if line is None:
                    return
                reply = srv.dispatch(line)
                stream = reply.get("result")
                if isinstance(stream, capture.CaptureStream):
                    # The connection becomes the capture's stream (forwarder/capture.py).
                    reply["result"] = stream.header
                    if self._send(reply, limits.request_timeout):
                        self.request.settimeout(limits.idle_timeout)
                        stream.run(self.request)
                    else:
                        stream.close()
                    return
                if not self._send(reply, limits.request_timeout):
                    return
                first, wait = False, limits.idle_timeout
        except OSError as e:
            # The client gave up before the answer (`--timeout` while the
            # dataplane was stalled, a health check killed): not an error here.
            log.debug("control client went away: %s", e)

    def _send(self, reply: dict, timeout: float) -> bool:
        """Write one reply within ``timeout`` (sendall's total); False: the
        client does not take its answers (counted as unread) or is gone."""
        try:
            data = json.dumps(reply).encode() + b"\n"
        except (TypeError, ValueError) as e:        # a result that is not JSON
            log.error("control: a reply not JSON-able: %s", e)
            data = json.dumps(_error("internal", f"reply not JSON-able: {e}")).encode() + b"\n"
        self.request.settimeout(timeout)
        try:
            self.request.sendall(data)
            return True
        except TimeoutError:
            self.server.reject("unread", "")
            log.debug("control client took no answer for %g s: closed", timeout)
            return False

    def _last_word(self, reply: dict) -> None:
        send_nowait(self.request, json.dumps(reply).encode() + b"\n")


def _timeout_message(e: RequestTimeout, limits: Limits) -> str:
    t = limits.request_timeout
    if e.started:
        return (f"request line not complete within {t:g} s ({TUNABLES}.request_timeout): "
                "connection closed")
    return (f"no request within {t:g} s of connecting ({TUNABLES}.request_timeout): "
            "connection closed")


def _error(kind: str, message: str) -> dict:
    return {"version": PROTOCOL_VERSION, "ok": False, "error": message, "kind": kind}


class ControlServer(AdmissionMixIn, socketserver.UnixStreamServer):
    allow_reuse_address = False

    def __init__(self, path: Path, router: "Router") -> None:
        self.path = Path(path)
        self.commands = handlers(router)
        self.hints = {name: _hints(fn) for name, fn in self.commands.items()}
        self.tunables = router.sysctl
        self.endpoint = EndpointStats("control socket", TUNABLES, REJECTIONS)
        router.endpoints["control"] = self.endpoint
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _alive(self.path):
                raise ControlError(f"{self.path}: a router is already listening there", "busy")
            self.path.unlink()
        old = os.umask(0o177)
        try:
            super().__init__(str(self.path), _Handler)
        finally:
            os.umask(old)
        os.chmod(self.path, stat.S_IRUSR | stat.S_IWUSR)
        self._thread: threading.Thread | None = None

    def limits(self) -> Limits:
        return Limits.read(self.tunables, TUNABLES)

    def refusal(self, limit: int) -> bytes:
        return json.dumps(_error("busy", f"{limit} control clients connected already, the "
                                 f"limit ({TUNABLES}.max_clients): try again later")
                          ).encode() + b"\n"

    def reject(self, reason: str, message: str) -> dict:
        """Count a rejection; the error reply that says so."""
        self.endpoint.reject(reason)
        return _error(reason, message)

    def dispatch(self, line: bytes) -> dict:
        try:
            command, args = self._parse(line)
            result = self.commands[command](**args)
            return {"version": PROTOCOL_VERSION, "ok": True, "result": result}
        except Rejected as e:
            return self.reject(e.kind, str(e))
        except Exception as e:  # noqa: BLE001 - every error goes back to the client
            kind = getattr(e, "kind", type(e).__name__)
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            return _error(kind, str(msg))

    def _parse(self, line: bytes) -> tuple[str, dict[str, Any]]:
        """A request line -> (command, args), checked against the command's
        signature and its annotations; Rejected says what is wrong."""
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Rejected(f"request is not UTF-8 (byte 0x{line[e.start]:02x} at offset "
                           f"{e.start})", "bad_utf8") from None
        if not text.strip():
            raise Rejected("empty request line: expected a JSON object", "bad_json")
        try:
            req = json.loads(text, parse_constant=_no_constant)
        except json.JSONDecodeError as e:
            raise Rejected(f"request is not JSON: {e.msg} at column {e.colno}",
                           "bad_json") from None
        except RecursionError:
            raise Rejected("request is not JSON this router reads: nested too deeply",
                           "bad_json") from None
        except ValueError as e:
            raise Rejected(f"request is not JSON: {e}", "bad_json") from None
        if not isinstance(req, dict):
            raise Rejected(f"request must be a JSON object, not {_json_type(req)}",
                           "not_object")
        if req.get("version") != PROTOCOL_VERSION:
            raise Rejected(f"protocol version {req.get('version')!r} not supported "
                           f"(this router speaks {PROTOCOL_VERSION})", "version")
        command = req.get("command")
        if not isinstance(command, str) or command not in self.commands:
            raise Rejected(f"unknown command {command!r} (commands: "
                           f"{', '.join(sorted(self.commands))})", "command")
        args = req.get("args")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise Rejected(f"{command}: args must be a JSON object, not {_json_type(args)}",
                           "args")
        _check_args(command, self.commands[command], self.hints[command], args)
        return command, args

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="control", daemon=True)
        self._thread.start()
        log.info("control socket %s", self.path)

    def close(self) -> None:
        # shutdown() waits for serve_forever() to return: never call it when
        # start() was not (a router that failed to start would hang here).
        if self._thread is not None:
            self.shutdown()
            self._thread.join(5)
            self._thread = None
        self.server_close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


# --- arguments: names from the signature, types from the annotations -------------------

def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):          # an extension function without one
        return inspect.Signature([inspect.Parameter("kw", inspect.Parameter.VAR_KEYWORD)])


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """The parameters' annotations, evaluated; none for what has none (a lambda)
    or whose annotations do not evaluate."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - such arguments are just not type-checked
        return {}
    hints.pop("return", None)
    return hints


def _check_args(command: str, fn: Callable[..., Any], hints: dict[str, Any],
                args: dict[str, Any]) -> None:
    sig = _signature(fn)
    params = sig.parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = [a for a in args if a not in params]
        if unknown:
            takes = ", ".join(params) or "no arguments"
            raise Rejected(f"{command}: unknown argument{'s' * (len(unknown) > 1)} "
                           f"{', '.join(map(repr, unknown))} (takes: {takes})", "args")
    try:
        sig.bind(**args)
    except TypeError as e:
        raise Rejected(f"{command}: {e}", "args") from None
    for name, value in args.items():
        hint = hints.get(name)
        if hint is not None and not _conforms(value, hint):
            raise Rejected(f"{command}: argument {name!r} must be {_describe(hint)}, not "
                           f"{_json_type(value)}", "args")


def _conforms(value: Any, hint: Any) -> bool:
    """Is the JSON value ``value`` of the annotated type?  What this does not
    know (a class, a Literal) passes: the command checks it."""
    origin, targs = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in targs)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is list or origin is list:
        return isinstance(value, list) and (not targs or all(_conforms(v, targs[0])
                                                             for v in value))
    if hint is dict or origin is dict:
        return isinstance(value, dict) and (not targs or all(
            _conforms(k, targs[0]) and _conforms(v, targs[1]) for k, v in value.items()))
    return True


_NAMES = {bool: ("true or false", "booleans"), int: ("an integer", "integers"),
          float: ("a number", "numbers"), str: ("a string", "strings"),
          type(None): ("null", "nulls")}


def _describe(hint: Any, plural: bool = False) -> str:
    origin, targs = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a, plural) for a in targs)
    if hint in _NAMES:
        return _NAMES[hint][plural]
    if hint is list or origin is list:
        return ("lists" if plural else "a list") + (f" of {_describe(targs[0], True)}"
                                                   if targs and targs[0] is not Any else "")
    if hint is dict or origin is dict:
        inner = f" of {_describe(targs[1], True)}" if targs and targs[1] is not Any else ""
        return ("objects" if plural else "an object") + inner
    return "anything" if hint is Any else getattr(hint, "__name__", str(hint))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _alive(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


class Client:
    """Talks to one router's control socket."""

    def __init__(self, path: str | Path, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def call(self, command: str, **args: Any) -> Any:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            try:
                s.connect(str(self.path))
            except FileNotFoundError:
                raise ControlError(f"{self.path}: no such socket (is the router running?)",
                                   "unreachable") from None
            except OSError as e:
                raise ControlError(f"{self.path}: {e.strerror}", "unreachable") from None
            req = {"version": PROTOCOL_VERSION, "command": command, "args": args}
            buf = b""
            try:
                try:
                    s.sendall(json.dumps(req).encode() + b"\n")
                except (ConnectionResetError, BrokenPipeError):
                    pass        # refused (busy) and closed before the request went: read why
                while not buf.endswith(b"\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        raise ControlError(f"{self.path}: the router closed the connection "
                                           "without answering", "unreachable")
                    buf += chunk
            except (ConnectionResetError, BrokenPipeError):
                raise ControlError(f"{self.path}: the router closed the connection "
                                   "without answering", "unreachable") from None
            except TimeoutError:
                raise ControlError(f"{self.path}: no answer within {self.timeout:g} s",
                                   "unreachable") from None
            except OSError as e:
                raise ControlError(f"{self.path}: {e.strerror or e}", "unreachable") from None
        finally:
            s.close()
        try:
            reply = json.loads(buf)
            if not isinstance(reply, dict) or ("result" not in reply and "error" not in reply):
                raise ValueError("not a reply object")
        except ValueError:
            raise ControlError(f"{self.path}: not a forwarder control socket "
                               f"(unreadable reply {buf[:60]!r})", "unreachable") from None
        if not reply.get("ok"):
            raise ControlError(reply.get("error", "error"), reply.get("kind", "error"))
        return reply["result"]
