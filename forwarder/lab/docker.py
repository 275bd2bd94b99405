"""The router's image under a real Docker engine, on a machine that must not notice.

    with Engine() as engine:                          # a private dockerd
        image = build_image(engine, tree)             # cached between runs
        with running(engine, "router", image):        # --network none
            path = engine.netns("router")             # /proc/PID/ns/net: wire it

The tests (tests/test_docker.py) and ``forwarder bench --docker`` use it;
scripts/container-test.sh does the same steps with the docker command line.

**The engine.**  Debian's ``dockerd`` (package docker.io), started with its
data root in a cache directory that outlives the run (:data:`CACHE`, where
the images stay between runs) and everything else in a temporary directory:
exec root, pid file, socket, its identity key (20.10 writes one to /etc/docker
by default) and a daemon config of its own (/etc/docker/daemon.json is not
read).  Its network flags keep it out of the root namespace's networking:
``--bridge=none`` (no docker0 bridge with an address), ``--iptables=false``
and ``--ip6tables=false`` (no NAT or filter rules), ``--ip-forward=false``
(IP forwarding left as it is).  Storage: overlay2, else vfs
(:data:`STORAGE_DRIVERS`).  Containers get ``--network none`` and are
wired by moving veths into their namespaces, as containerlab does.  One
engine at a time owns the data root: :class:`Engine` takes a lock file next
to it and waits for it (bounded) when another run holds it.  At stop it
removes the containers it ran, stops the daemon (its containerd with it),
unmounts what is left under its directories and removes its temporary
directory.

**The client** is the docker.io package's own (``/usr/bin/docker``, 20.10):
its ``docker build`` has BuildKit built in (``DOCKER_BUILDKIT=1``); a newer
client elsewhere on PATH (Docker 23 and later) needs the buildx plugin for
that.  Its config directory is temporary too.

**The base image.**  No registry but Debian's mirror and PyPI is reachable
here, so ``python:3.11-slim-bookworm`` cannot be pulled.  A stand-in is made
from the mirror (:func:`stand_in_base`): ``debootstrap --variant=minbase``
bookworm with the packages of ``scripts/stand-in-base.packages`` (Python, pip,
venv, the headers, CA certificates), the host's CA bundle, the Debian sources
of the real image, ``python``/``pip`` links and no ``EXTERNALLY-MANAGED``
marker (the real image has a Python of its own, where pip installs freely);
``docker import`` makes it an image tagged with a hash of that file, and the
Dockerfile's ``ARG PYTHON_IMAGE`` takes it.  The default stays the real image.

**The router's image** (:func:`build_image`) is tagged with a hash of what it
is made of (:func:`image_key`): the Dockerfile, .dockerignore, every file of
the build context (.dockerignore applied) and the base image's tag.  Any
change to one of them builds a new image (BuildKit's own cache, in the same
data root, makes that quick for changes that leave the build stage alone);
an unchanged tree finds its image and builds nothing.  Older images of the
router are removed, keeping the last :data:`KEEP_IMAGES`, and BuildKit's cache
is kept under :data:`BUILD_CACHE`.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from pyroute2 import IPRoute

log = logging.getLogger(__name__)

CACHE = Path(os.environ.get("MBUMA_FORWARDER_CACHE", "/var/cache/mbuma-forwarder"))
DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"
# Required: without them dockerd puts a bridge with an address, NAT rules and
# IP forwarding into the root namespace.
NETWORK_FLAGS = ("--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-forward=false")
# overlay2 first: a container's root is an overlay mount, made in a blink.  vfs, which
# works on any filesystem, copies the whole image for every container (seconds to
# tens of seconds for this image on a busy disk); used where overlay2 cannot be.
STORAGE_DRIVERS = tuple(os.environ.get("MBUMA_DOCKER_STORAGE", "overlay2,vfs").split(","))
IMAGE_REPO = "mbuma-forwarder"
BASE_REPO = "mbuma-stand-in/python"
PACKAGES_FILE = Path("scripts") / "stand-in-base.packages"
LABEL_TREE = "org.mbuma-forwarder.tree"        # the image's key (image_key)
KEEP_IMAGES = 3
BUILD_CACHE = "4GB"          # docker builder prune --keep-storage: one wheel build is ~0.2 GB
LOCK_TIMEOUT = 1200.0        # a cold build by another run takes a few minutes
DEBIAN_MIRROR = os.environ.get("MBUMA_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
# The sources of the real python:3.11-slim-bookworm image (deb822).
DEBIAN_SOURCES = """\
Types: deb
URIs: {mirror}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


class EngineError(RuntimeError):
    """The engine cannot be started, or a docker command failed."""


def missing_tools() -> list[str]:
    """What this machine lacks to run the engine and build the base ([] if nothing)."""
    need = []
    for path, package in ((DOCKERD, "docker.io"), (DOCKER, "docker.io"),
                          ("/usr/sbin/debootstrap", "debootstrap")):
        if not os.access(path, os.X_OK):
            need.append(f"{path} (Debian package {package})")
    return need


# --- the root namespace, before and after --------------------------------------------

def _sysctl(name: str) -> str | None:
    try:
        with open("/proc/sys/" + name.replace(".", "/"), encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


SYSCTLS = ("net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding",
           "net.ipv6.conf.all.forwarding", "net.ipv4.conf.all.route_localnet",
           "net.bridge.bridge-nf-call-iptables")


def _rules_text(argv: Sequence[str]) -> str | None:
    """A ruleset dump (iptables-save, nft list ruleset) without its counters and
    comments, or None when the tool is not installed."""
    if shutil.which(argv[0]) is None:
        return None
    cp = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    lines = [re.sub(r"\[\d+:\d+\]", "", ln).rstrip() for ln in cp.stdout.splitlines()
             if not ln.startswith("#")]
    return "\n".join(lines) + (f"\n(exit {cp.returncode}: {cp.stderr.strip()})"
                               if cp.returncode else "")


def root_namespace_state() -> dict[str, object]:
    """What the engine could change in the namespace this process is in: links,
    addresses, routes and rules (over netlink), packet filter rules, forwarding
    sysctls.  Two states compare equal when nothing changed."""
    def kind(link) -> str | None:
        info = link.get_attr("IFLA_LINKINFO")
        return info.get_attr("IFLA_INFO_KIND") if info is not None else None

    with IPRoute() as ipr:
        got = ipr.get_links()
        names = {ln["index"]: ln.get_attr("IFLA_IFNAME") for ln in got}
        links = [(ln.get_attr("IFLA_IFNAME"), ln.get_attr("IFLA_ADDRESS"),
                  ln.get_attr("IFLA_MTU"), kind(ln)) for ln in got]
        addrs = [(names.get(a["index"], a["index"]), a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                 for a in ipr.get_addr()]
        routes = [(r["family"], r.get_attr("RTA_TABLE"), r.get_attr("RTA_DST"), r["dst_len"],
                   r.get_attr("RTA_GATEWAY"), names.get(r.get_attr("RTA_OIF")), r["type"],
                   r["proto"])
                  for fam in (2, 10) for r in ipr.route("dump", family=fam)]
        rules = [(r["family"], r.get_attr("FRA_PRIORITY"), r.get_attr("FRA_TABLE"), r["action"])
                 for fam in (2, 10) for r in ipr.get_rules(family=fam)]
    filters = {tool: _rules_text([tool]) for tool in
               ("iptables-save", "ip6tables-save", "iptables-legacy-save",
                "ip6tables-legacy-save")}
    filters["nft"] = _rules_text(["nft", "list", "ruleset"])
    return {"links": sorted(links, key=repr), "addresses": sorted(addrs, key=repr),
            "routes": sorted(routes, key=repr), "rules": sorted(rules, key=repr),
            "filters": filters, "sysctl": {n: _sysctl(n) for n in SYSCTLS}}


def state_diff(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """What differs between two :func:`root_namespace_state` results, one line each."""
    out = []
    for key in before:
        a, b = before[key], after.get(key)
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list):
            out += [f"{key}: gone: {x}" for x in a if x not in b]
            out += [f"{key}: new: {x}" for x in b if x not in a]
        elif isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}: {k}: {a.get(k)!r} -> {b.get(k)!r}"
                    for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


# --- the engine ----------------------------------------------------------------------

def _mounts_under(*dirs: Path) -> list[str]:
    """Mount points at or below ``dirs``, deepest first (from /proc/self/mountinfo)."""
    roots = [os.path.realpath(d) for d in dirs]
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if any(point == r or point.startswith(r + "/") for r in roots):
                found.append(point)
    return sorted(set(found), key=lambda p: -p.count("/"))


@dataclass
class Engine:
    """A private dockerd (see the module's docstring).  ``with Engine() as e:``
    starts it and stops it, removing everything it made but the cache."""
    cache: Path = CACHE
    start_timeout: float = 60.0
    lock_timeout: float = LOCK_TIMEOUT
    tmp: Path | None = None
    proc: subprocess.Popen | None = None
    driver: str | None = None                  # the storage driver it runs with
    containers: list[str] = field(default_factory=list)
    _lock_fd: int | None = None

    @property
    def data_root(self) -> Path:
        return self.cache / "docker"

    @property
    def socket(self) -> Path:
        assert self.tmp is not None, "the engine is not started"
        return self.tmp / "docker.sock"

    def env(self) -> dict[str, str]:
        """The client's environment: this engine, BuildKit, a private config."""
        assert self.tmp is not None, "the engine is not started"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.update(DOCKER_HOST=f"unix://{self.socket}", DOCKER_BUILDKIT="1",
                   DOCKER_CONFIG=str(self.tmp / "client"))
        return env

    # --- start and stop ------------------------------------------------------------

    def _lock(self) -> None:
        self.cache.mkdir(parents=True, exist_ok=True)
        path = self.cache / "engine.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + self.lock_timeout
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
            if time.monotonic() > deadline:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                os.close(fd)
                raise EngineError(f"{path}: held by another engine ({holder}) for more than "
                                  f"{self.lock_timeout:.0f} s")
            if not said:
                log.info("waiting for %s (another engine uses %s)", path, self.data_root)
                said = True
            time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)             # releases the flock
            self._lock_fd = None

    def start(self) -> "Engine":
        need = missing_tools()
        if need:
            raise EngineError("missing: " + ", ".join(need) + " (scripts/install.sh)")
        self._lock()
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix="mbuma-dockerd-"))
            # Its identity key too (20.10 keeps it in /etc/docker by default).
            (self.tmp / "daemon.json").write_text(json.dumps(
                {"deprecated-key-path": str(self.tmp / "key.json")}) + "\n")
            (self.tmp / "client").mkdir()
            self.data_root.mkdir(parents=True, exist_ok=True)
            for driver in STORAGE_DRIVERS:
                try:
                    self._start_daemon(driver)
                    break
                except EngineError as e:
                    if driver == STORAGE_DRIVERS[-1] or "driver" not in str(e):
                        raise
                    log.info("dockerd cannot use storage driver %s, trying the next: %s",
                             driver, str(e).splitlines()[-1][-300:])
            # Containers of an earlier run that did not stop its engine.
            stale = self.docker("ps", "-aq").stdout.split()
            if stale:
                log.info("removing %d container(s) left from an earlier run", len(stale))
                self.docker("rm", "-f", *stale, check=False)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_daemon(self, driver: str) -> None:
        assert self.tmp is not None
        argv = [DOCKERD, "--data-root", str(self.data_root),
                "--exec-root", str(self.tmp / "exec"),
                "--pidfile", str(self.tmp / "dockerd.pid"),
                "-H", f"unix://{self.socket}",
                "--config-file", str(self.tmp / "daemon.json"),
                "--storage-driver", driver, *NETWORK_FLAGS]
        with open(self.tmp / "dockerd.log", "ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        log.info("dockerd pid %d, storage driver %s (%s)", self.proc.pid, driver, self.tmp)
        self.driver = driver
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise EngineError(f"dockerd exited ({self.proc.returncode}):\n"
                                  + self.daemon_log()[-3000:])
            if self.socket.exists() and self.docker(
                    "version", "--format", "{{.Server.Version}}", check=False,
                    timeout=10).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise EngineError(f"dockerd did not answer within {self.start_timeout:.0f} "
                                  "s:\n" + self.daemon_log()[-3000:])
            time.sleep(0.2)

    def daemon_log(self) -> str:
        if self.tmp is None or not (self.tmp / "dockerd.log").exists():
            return ""
        return (self.tmp / "dockerd.log").read_text(errors="replace")

    def stop(self) -> None:
        """Remove the containers, stop dockerd (and its containerd), unmount and
        remove the temporary directory, release the lock.  Idempotent."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                left = self.docker("ps", "-aq", check=False, timeout=30).stdout.split()
                if left:
                    self.docker("rm", "-f", *left, check=False, timeout=60)
                self.proc.terminate()
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    log.warning("dockerd did not stop within 30 s: killing it")
                    self.proc.kill()
                    self.proc.wait(10)
            if self.proc is not None:
                # Its session: containerd and shims it started, if any survived it.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            if self.tmp is not None:
                for point in _mounts_under(self.tmp, self.data_root):
                    if point != os.path.realpath(self.data_root):
                        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)
                shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            self.proc = None
            self.tmp = None
            self.containers.clear()
            self._unlock()

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the client ----------------------------------------------------------------

    def docker(self, *args: str, check: bool = True, timeout: float = 120,
               input: bytes | str | None = None, text: bool = True
               ) -> subprocess.CompletedProcess:
        """``docker ARGS`` against this engine, output captured."""
        cp = subprocess.run([DOCKER, *args], env=self.env(), capture_output=True, text=text,
                            timeout=timeout, input=input)
        if check and cp.returncode != 0:
            err = cp.stderr if text else cp.stderr.decode(errors="replace")
            raise EngineError(f"docker {' '.join(args[:3])} ... exited {cp.returncode}: "
                              f"{err.strip()[-2000:]}")
        return cp

    def remove(self, *names: str) -> None:
        """``docker rm -f NAMES`` while the engine runs (after it stopped, nothing is left)."""
        if self.proc is not None and self.proc.poll() is None and names:
            self.docker("rm", "-f", *names, check=False, timeout=60)

    def inspect(self, what: str, kind: str = "container") -> dict:
        return json.loads(self.docker(kind, "inspect", what).stdout)[0]

    def image_exists(self, ref: str) -> bool:
        return self.docker("image", "inspect", ref, check=False).returncode == 0

    def run(self, name: str, image: str, *args: str, options: Sequence[str] = (),
            detach: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        """``docker run --name NAME OPTIONS IMAGE ARGS`` (detached unless not);
        the container is removed when the engine stops.  (With vfs, making the
        container's root copies the image: tens of seconds on a busy disk.)"""
        self.containers.append(name)
        return self.docker("run", *(["-d"] if detach else []), "--name", name, *options,
                           image, *args, check=detach, timeout=timeout)

    def pid(self, name: str) -> int:
        pid = self.inspect(name)["State"]["Pid"]
        if not pid:
            raise EngineError(f"container {name} is not running")
        return int(pid)

    def netns(self, name: str) -> str:
        """The running container's network namespace, as a path for forwarder.netns."""
        return f"/proc/{self.pid(name)}/ns/net"

    def health(self, name: str) -> str | None:
        """The container's health status (starting, healthy, unhealthy), or None."""
        state = self.inspect(name)["State"]
        return (state.get("Health") or {}).get("Status")

    def wait_health(self, name: str, status: str, timeout: float) -> float:
        """Poll until the container's health is ``status``; the seconds it took."""
        t0 = time.monotonic()
        while True:
            now = self.health(name)
            if now == status:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                log_tail = self.docker("logs", "--tail", "20", name, check=False)
                raise EngineError(f"container {name}: health {now!r}, not {status!r} after "
                                  f"{timeout:.0f} s; its last health checks: "
                                  f"{self.inspect(name)['State'].get('Health')}\n"
                                  f"{log_tail.stdout}{log_tail.stderr}")
            time.sleep(0.25)

    def logs(self, name: str) -> str:
        cp = self.docker("logs", name, check=False)
        return cp.stdout + cp.stderr


# --- the images ----------------------------------------------------------------------

def _hash_files(h: "hashlib._Hash", root: Path, rels: Sequence[str]) -> None:
    for rel in rels:
        data = (root / rel).read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)


def base_tag(tree: Path) -> str:
    """The stand-in base image's tag: a hash of its package list (and recipe)."""
    h = hashlib.sha256(b"stand-in recipe 1\0" + SUITE.encode() + b"\0")
    _hash_files(h, tree, [PACKAGES_FILE.as_posix()])
    return f"{BASE_REPO}:3.11-slim-bookworm-{h.hexdigest()[:16]}"


def base_packages(tree: Path) -> list[str]:
    text = (tree / PACKAGES_FILE).read_text()
    return [w for ln in text.splitlines() for w in ln.split("#", 1)[0].split()]


def stand_in_base(engine: Engine, tree: Path) -> str:
    """The base image for the Dockerfile's PYTHON_IMAGE: made once per package list."""
    tag = base_tag(tree)
    if engine.image_exists(tag):
        return tag
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="stand-in-", dir=engine.cache))
    root = work / "root"
    try:
        log.info("building the stand-in base %s: debootstrap %s from %s", tag, SUITE,
                 DEBIAN_MIRROR)
        cp = subprocess.run(["debootstrap", "--variant=minbase",
                             "--include=" + ",".join(base_packages(tree)), SUITE, str(root),
                             DEBIAN_MIRROR], capture_output=True, text=True, timeout=1800)
        if cp.returncode != 0:
            raise EngineError(f"debootstrap exited {cp.returncode}:\n{cp.stdout[-2000:]}"
                              f"{cp.stderr[-2000:]}")
        for mounted in _mounts_under(root):     # debootstrap unmounts /proc and /sys itself
            subprocess.run(["umount", "-l", mounted], capture_output=True, timeout=30)
        shutil.copy2("/etc/ssl/certs/ca-certificates.crt",
                     root / "etc/ssl/certs/ca-certificates.crt")
        (root / "etc/apt/sources.list").unlink(missing_ok=True)
        (root / "etc/apt/sources.list.d/debian.sources").write_text(
            DEBIAN_SOURCES.format(mirror=DEBIAN_MIRROR))
        for marker in (root / "usr/lib").glob("python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        for link, target in (("python", "python3"), ("pip", "pip3")):
            dest = root / "usr/bin" / link
            if not dest.exists():
                dest.symlink_to(target)
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        (root / "var/cache/apt/archives/partial").mkdir(parents=True)
        shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
        (root / "var/lib/apt/lists/partial").mkdir(parents=True)
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(root), "-c", "."],
                               stdout=subprocess.PIPE)
        try:
            imp = subprocess.run([DOCKER, "import", "--change", 'CMD ["python3"]',
                                  "--change", "ENV LANG=C.UTF-8", "-", tag], stdin=tar.stdout,
                                 env=engine.env(), capture_output=True, text=True, timeout=900)
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait(60)
        if imp.returncode != 0 or tar.returncode != 0:
            raise EngineError(f"docker import exited {imp.returncode} (tar {tar.returncode}): "
                              f"{imp.stderr[-2000:]}")
    finally:
        for mounted in _mounts_under(work):
            subprocess.run(["umount", "-l", mounted], capture_output=True, timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    log.info("stand-in base %s made in %.0f s", tag, time.monotonic() - t0)
    return tag


# .dockerignore, as docker build reads it (Go's filepath.Match patterns plus **;
# the last pattern matching a path or one of its parents decides; ! re-includes).

def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif c == "*":
            out, i = out + "[^/]*", i + 1
        elif c == "?":
            out, i = out + "[^/]", i + 1
        elif c == "[":
            j = pattern.index("]", i)
            out, i = out + "[" + pattern[i + 1:j].replace("!", "^", 1) + "]", j + 1
        else:
            out, i = out + re.escape(c), i + 1
    return re.compile(out + r"\Z")


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """The patterns of a .dockerignore: (re-include?, regex) in file order."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = os.path.normpath(line[1:].strip() if include else line).lstrip("/")
        rules.append((include, _pattern_regex(pattern)))
    return rules


def ignored(rel: str, rules: Sequence[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether ``docker build`` leaves the file ``rel`` out of the context."""
    parts = rel.split("/")
    candidates = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    result = False
    for include, regex in rules:
        if any(regex.match(c) for c in candidates):
            result = not include
    return result


def context_files(tree: Path) -> list[str]:
    """The files of the build context of ``tree``, sorted (paths relative to it)."""
    ignore = tree / ".dockerignore"
    rules = dockerignore_rules(ignore.read_text()) if ignore.exists() else []
    files = []
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(tree).as_posix()
            if path.is_file() and not ignored(rel, rules):
                files.append(rel)
    return sorted(files)


def image_key(tree: Path, base: str) -> str:
    """What the router's image is made of, hashed: the Dockerfile, .dockerignore,
    the context's files and the base image."""
    h = hashlib.sha256(f"base {base}\0".encode())
    _hash_files(h, tree, [f for f in ("Dockerfile", ".dockerignore") if (tree / f).exists()])
    _hash_files(h, tree, context_files(tree))
    return h.hexdigest()


def build_image(engine: Engine, tree: Path, timeout: float = 1800) -> str:
    """The router's image for source tree ``tree`` (its Dockerfile's default
    target), built unless an image of the same key exists; returns its tag."""
    base = stand_in_base(engine, tree)
    key = image_key(tree, base)
    tag = f"{IMAGE_REPO}:tree-{key[:16]}"
    if engine.image_exists(tag):
        log.info("image %s: cached", tag)
        return tag
    t0 = time.monotonic()
    log.info("building %s from %s (base %s)", tag, tree, base)
    logfile = engine.cache / "last-build.log"
    with open(logfile, "w") as out:
        cp = subprocess.run([DOCKER, "build", "--network", "host", "--progress", "plain",
                             "--build-arg", f"PYTHON_IMAGE={base}", "--label",
                             f"{LABEL_TREE}={key}", "-t", tag, str(tree)], env=engine.env(),
                            stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    if cp.returncode != 0:
        raise EngineError(f"docker build exited {cp.returncode}:\n"
                          + logfile.read_text(errors="replace")[-4000:])
    log.info("image %s built in %.0f s", tag, time.monotonic() - t0)
    prune_images(engine, keep=tag)
    return tag


def prune_images(engine: Engine, keep: str) -> None:
    """Remove the router's older images (all but the newest KEEP_IMAGES, ``keep``
    always among them) and what no image needs any more."""
    rows = engine.docker("images", IMAGE_REPO, "--format",
                         "{{.CreatedAt}}\t{{.Repository}}:{{.Tag}}").stdout.splitlines()
    tags = [r.split("\t")[1] for r in sorted(rows, reverse=True) if "\t" in r]
    old = [t for t in tags if t != keep][KEEP_IMAGES - 1:]
    if old:
        engine.docker("rmi", *old, check=False)
    engine.docker("image", "prune", "-f", check=False)
    engine.docker("builder", "prune", "-f", "--keep-storage", BUILD_CACHE, check=False,
                  timeout=300)


def source_tree(start: Path | None = None) -> Path:
    """The source checkout to build from: ``start``, or the one this package runs from."""
    from forwarder.lab.process import package_root
    tree = Path(start) if start is not None else Path(package_root())
    if not (tree / "Dockerfile").is_file() or not (tree / PACKAGES_FILE).is_file():
        raise EngineError(f"{tree}: not a source checkout of mbuma-forwarder (no Dockerfile "
                          f"or {PACKAGES_FILE}): the image is built from one")
    return tree


# --- running the router --------------------------------------------------------------

ROUTER_OPTIONS = ("--network", "none", "--cap-add", "NET_ADMIN", "--device", "/dev/net/tun",
                  "--device-cgroup-rule", "c 10:200 rwm")


@contextlib.contextmanager
def running(engine: Engine, name: str, image: str, *args: str,
            options: Sequence[str] = ()) -> Iterator[str]:
    """The router's container, run as docs/containers.md says (``--network none``:
    nothing wired yet); removed afterwards."""
    engine.run(name, image, *args, options=[*ROUTER_OPTIONS, *options])
    try:
        yield name
    finally:
        engine.remove(name)


def control_socket(pid: int, name: str = "router") -> Path:
    """The control socket of the router that is PID ``pid`` (on this host's PIDs),
    reached through its root: /proc/PID/root/run/forwarder/NAME.sock."""
    return Path(f"/proc/{pid}/root/run/forwarder/{name}.sock")


def wait_ready(sock: Path, timeout: float) -> None:
    """Poll the router's control socket until its health says ready."""
    from forwarder.control import Client, ControlError
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = Client(sock, timeout=2).call("health")
            if last.get("healthy"):
                return
        except (ControlError, OSError) as e:
            last = e
        if time.monotonic() > deadline:
            raise EngineError(f"{sock}: not healthy within {timeout:.0f} s: {last}")
        time.sleep(0.1)


def container_lab(topo, netns: str, n_hosts: int = 2):
    """The lab of the image's default config (configs/container.toml) around a
    router container whose namespace is ``netns``: hosts h1, h2 of ``topo`` on
    10.K.0.0/24 (the router .1, the host .2), each link a veth that
    :meth:`~forwarder.lab.topology.Lab.hand_over` moves into the container as
    ``ethK``."""
    from ipaddress import IPv4Interface

    from forwarder.lab.topology import Lab, LabHost
    lab = Lab(topo=topo, router_ns=netns, name="router")
    for k in range(1, n_hosts + 1):
        lab.hosts.append(LabHost(name=f"h{k}", netns=topo.netns(f"h{k}"), ifname=f"eth{k}",
                                 router=IPv4Interface(f"10.{k}.0.1/24"),
                                 address=IPv4Interface(f"10.{k}.0.2/24"), attach=True))
    return lab
