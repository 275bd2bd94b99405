"""Real routing daemons in namespaces, for the lab and the tests: FRR (zebra +
bgpd or ospfd) and BIRD 2, from Debian's packages (scripts/install.sh).

    with frr(cp_ns, tmp, bgpd_conf) as f, bird(peer_ns, tmp, bird_conf) as b:
        b.wait_established("up")

Each runs with its config, pid files and control sockets in a directory of
its own, is stopped (SIGTERM, then SIGKILL) when the block ends, also when
the test fails, and leaves nothing running.  FRR runs as the Debian package's
``frr`` user (its vty group is frrvty): the directory is made writable for it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from forwarder import netns as nn

FRR_LIB = Path("/usr/lib/frr")


def bgpd_conf(router_id: str, local_as: int, neighbor: str, peer_as: int,
              neighbor6: str | None = None) -> str:
    """FRR bgpd: one eBGP neighbour, everything it announces accepted (a lab,
    not the Internet: no policy), short timers.  With ``neighbor6`` (the
    peer's global IPv6 address on the same link) a second session to it
    carries IPv6 unicast only, as dual-stack peerings usually run: one session
    per address family over that family's own transport (an IXP's or a
    transit's v4 and v6 sessions), so each fails with its own family's
    forwarding and no IPv6 next hop has to ride an IPv4 session."""
    both = [neighbor, *([neighbor6] if neighbor6 else [])]
    peers = "".join(f" neighbor {n} remote-as {peer_as}\n neighbor {n} timers 3 9\n"
                    for n in both)
    v6 = (f"  no neighbor {neighbor6} activate\n exit-address-family\n"
          f" address-family ipv6 unicast\n  neighbor {neighbor6} activate\n"
          if neighbor6 else "")
    return f"""hostname {router_id}
router bgp {local_as}
 bgp router-id {router_id}
 no bgp ebgp-requires-policy
{peers} address-family ipv4 unicast
{v6} exit-address-family
"""


def bird_bgp_conf(router_id: str, local_as: int, neighbor: str, peer_as: int,
                  prefixes: Sequence[str], local6: str | None = None,
                  neighbor6: str | None = None, prefixes6: Sequence[str] = ()) -> str:
    """BIRD announcing ``prefixes`` (static, blackhole here: the router must
    only learn them) to one eBGP neighbour, next hop itself; with ``local6``
    and ``neighbor6`` also ``prefixes6`` over an IPv6 session of its own
    (protocols ``announced6`` and ``up6``: see :func:`bgpd_conf`)."""
    routes = "\n".join(f"  route {p} blackhole;" for p in prefixes)
    six = ""
    if neighbor6:
        routes6 = "\n".join(f"  route {p} blackhole;" for p in prefixes6)
        six = f"""protocol static announced6 {{
  ipv6;
{routes6}
}}
protocol bgp up6 {{
  local {local6} as {local_as};
  neighbor {neighbor6} as {peer_as};
  hold time 9;
  ipv6 {{ import none; export all; next hop self; }};
}}
"""
    return f"""router id {router_id};
protocol device {{}}
protocol static announced {{
  ipv4;
{routes}
}}
protocol bgp up {{
  local {router_id} as {local_as};
  neighbor {neighbor} as {peer_as};
  hold time 9;
  ipv4 {{ import none; export all; next hop self; }};
}}
{six}"""


def have_frr() -> bool:
    return (FRR_LIB / "zebra").exists() and (FRR_LIB / "bgpd").exists()


def have_bird() -> bool:
    return shutil.which("bird") is not None and shutil.which("birdc") is not None


def _stop(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@dataclass
class Frr:
    netns: str
    dir: Path

    def vtysh(self, *commands: str) -> str:
        argv = ["vtysh", "--vty_socket", str(self.dir)]
        for c in commands:
            argv += ["-c", c]
        return nn.run_in_netns(self.netns, argv, timeout=20).stdout


@contextlib.contextmanager
def frr(netns: str, workdir: Path, bgpd_conf: str, daemons: tuple[str, ...] = ("bgpd",)
        ) -> Iterator[Frr]:
    """zebra and the given FRR daemons in ``netns``, configured by ``bgpd_conf``
    (the text every daemon reads: its own stanzas apply).  Their directory is
    a fresh one under /tmp (``workdir``'s parents are root's only: the frr
    user could not reach it), removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="fwfrr-"))
    os.chmod(d, 0o777)
    started: list[Path] = []
    try:
        for name in ("zebra", *daemons):
            conf = d / f"{name}.conf"
            conf.write_text(bgpd_conf if name != "zebra" else "hostname cp\n")
            os.chmod(conf, 0o644)
            pid = d / f"{name}.pid"
            cp = subprocess.run(nn.ns_argv(netns, [
                str(FRR_LIB / name), "-d", "-u", "frr", "-g", "frr", "--vty_socket", str(d),
                "-z", str(d / "zserv.api"), "-f", str(conf), "-i", str(pid)]),
                capture_output=True, text=True, timeout=30)
            started.append(pid)
            if cp.returncode != 0:
                raise RuntimeError(f"FRR {name} did not start: {cp.stderr[-1000:]}")
        yield Frr(netns, d)
    finally:
        for pid in reversed(started):
            _stop(pid)
        shutil.rmtree(d, ignore_errors=True)


@dataclass
class Bird:
    netns: str
    socket: Path

    def birdc(self, *words: str) -> str:
        return subprocess.run(["birdc", "-s", str(self.socket), *words], capture_output=True,
                              text=True, timeout=20).stdout

    def state(self, protocol: str) -> str:
        for line in self.birdc("show", "protocols").splitlines():
            parts = line.split()
            if parts and parts[0] == protocol:
                return " ".join(parts[3:4] + parts[5:6])
        return ""

    def wait_established(self, protocol: str, timeout: float = 30) -> float:
        """Seconds until the BGP session ``protocol`` is Established (bounded)."""
        t0 = time.monotonic()
        while "Established" not in self.state(protocol):
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"BGP {protocol} not established within {timeout} s: "
                                     + self.birdc("show", "protocols", "all", protocol))
            time.sleep(0.2)
        return time.monotonic() - t0


@contextlib.contextmanager
def bird(netns: str, workdir: Path, conf: str) -> Iterator[Bird]:
    d = workdir / "bird"
    d.mkdir(parents=True, exist_ok=True)
    (d / "bird.conf").write_text(conf)
    pid, sock = d / "bird.pid", d / "bird.ctl"
    try:
        cp = subprocess.run(nn.ns_argv(netns, ["bird", "-c", str(d / "bird.conf"), "-s", str(sock),
                                                "-P", str(pid)]),
                            capture_output=True, text=True, timeout=30)
        if cp.returncode != 0:
            raise RuntimeError(f"BIRD did not start: {cp.stderr[-1000:]}")
        yield Bird(netns, sock)
    finally:
        _stop(pid)
