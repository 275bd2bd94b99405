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
"""
from __future__ import annotations

import functools
import inspect
import ipaddress
import json
import logging
import os
import socket
import socketserver
import stat
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from forwarder.router import Router

from forwarder import capture, trace
from forwarder.dataplane import DROP_REASONS

log = logging.getLogger("forwarder.control")

PROTOCOL_VERSION = 1
MAX_REQUEST = 1 << 20
IDLE_TIMEOUT = 60.0


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
        "capture": functools.partial(capture.start, router),
    }


class _Handler(socketserver.StreamRequestHandler):
    server: "ControlServer"
    # A connection that sends nothing for this long is dropped (one thread each).
    timeout = IDLE_TIMEOUT

    def handle(self) -> None:
        try:
            while True:
                line = self.rfile.readline(MAX_REQUEST)
                if not line:
                    return
                reply = self.server.dispatch(line)
                stream = reply.get("result")
                if isinstance(stream, capture.CaptureStream):
                    # The connection becomes the capture's stream (forwarder/capture.py).
                    reply["result"] = stream.header
                    self.wfile.write(json.dumps(reply).encode() + b"\n")
                    self.wfile.flush()
                    stream.run(self.connection)
                    return
                self.wfile.write(json.dumps(reply).encode() + b"\n")
        except TimeoutError:
            log.debug("control connection idle for %g s: closed", IDLE_TIMEOUT)
        except OSError as e:
            # The client gave up before the answer (`--timeout` while the
            # dataplane was stalled, a health check killed): not an error here.
            log.debug("control client went away: %s", e)


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, path: Path, router: "Router") -> None:
        self.path = Path(path)
        self.commands = handlers(router)
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

    def dispatch(self, line: bytes) -> dict:
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("request must be a JSON object")
            if req.get("version") != PROTOCOL_VERSION:
                raise ControlError(f"protocol version {req.get('version')!r} not supported "
                                   f"(this router speaks {PROTOCOL_VERSION})", "version")
            fn = self.commands.get(req.get("command"))
            if fn is None:
                raise ControlError(f"unknown command {req.get('command')!r}", "command")
            args = req.get("args") or {}
            if not isinstance(args, dict):
                raise ControlError("args must be a JSON object", "args")
            try:
                _signature(fn).bind(**args)
            except TypeError as e:
                raise ControlError(f"{req['command']}: bad arguments ({e})", "args") from None
            result = fn(**args)
            return {"version": PROTOCOL_VERSION, "ok": True, "result": result}
        except Exception as e:  # noqa: BLE001 - every error goes back to the client
            kind = getattr(e, "kind", type(e).__name__)
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            return {"version": PROTOCOL_VERSION, "ok": False, "error": str(msg), "kind": kind}

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


def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):          # an extension function without one
        return inspect.Signature([inspect.Parameter("kw", inspect.Parameter.VAR_KEYWORD)])


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
                s.sendall(json.dumps(req).encode() + b"\n")
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
