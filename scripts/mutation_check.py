#!/usr/bin/env python3
"""Mutation check: does each test fail when the behaviour it is named after is broken?

    python3 scripts/mutation_check.py                  # every mutation in tests/mutations/*.toml
    python3 scripts/mutation_check.py echo_source ...  # only these
    python3 scripts/mutation_check.py control_abuse    # a table's (tests/mutations/NAME.toml)
    python3 scripts/mutation_check.py --list

Each entry of the tables in ``tests/mutations/`` is a one-line change to the code
(``find`` -> ``replace``, the text must occur exactly once in ``file``) and
the tests that must fail with it.  The check copies the working tree (with
its built extensions) to a temporary directory, and for each entry applies
the change there, rebuilds the extensions it reaches (a .pyx, .pxi, .pxd, or
a C header one of them declares), runs the tests from the copy (so the
router processes they start import the copy's code, not the installed one),
and restores the file and the extension.

Verdicts: ``killed`` (the tests failed: good), ``survived`` (they passed: the
tests do not prove what they claim), ``error`` (the change did not apply, the
build failed, or pytest could not run the tests).  Exit status 0 only when
every mutation was killed.  Needs root and /dev/net/tun like the tests; runs
one mutation at a time (a rebuild of dataplane.pyx takes about 30 s).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLES = ROOT / "tests" / "mutations"
log = logging.getLogger("mutation_check")


@dataclass
class Mutation:
    name: str
    file: str
    find: str
    replace: str
    tests: list[str]
    why: str = ""
    isolate: bool = False     # run the tests in a network namespace of their own


@dataclass
class Outcome:
    name: str
    verdict: str          # killed | survived | error
    seconds: float
    detail: str = ""


def load_tables(paths: list[Path]) -> list[Mutation]:
    """The mutations of every table (a file, or a directory of .toml files)."""
    files = [f for p in paths for f in (sorted(p.glob("*.toml")) if p.is_dir() else [p])]
    out = [m for f in files for m in load_table(f)]
    names = [m.name for m in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SystemExit(f"duplicate mutation names: {', '.join(sorted(dup))}")
    return out


def load_table(path: Path) -> list[Mutation]:
    doc = tomllib.loads(path.read_text())
    out = []
    for i, row in enumerate(doc.get("mutation", [])):
        missing = {"name", "file", "find", "replace", "tests"} - set(row)
        unknown = set(row) - set(Mutation.__dataclass_fields__)
        if missing or unknown:
            raise SystemExit(f"{path}: mutation #{i + 1}: missing {sorted(missing)}, "
                             f"unknown {sorted(unknown)}")
        out.append(Mutation(**row))
    return out


def expand_tables(names: list[str], paths: list[Path]) -> list[str]:
    """Mutation names, a table's name (its file's stem) standing for its entries."""
    files = {f.stem: f for p in paths for f in (sorted(p.glob("*.toml")) if p.is_dir() else [p])}
    out: list[str] = []
    for n in names:
        out += [m.name for m in load_table(files[n])] if n in files else [n]
    return list(dict.fromkeys(out))


def copy_tree(dest: Path) -> None:
    """The working tree as it is (edits and built extensions included), without .git."""
    shutil.copytree(ROOT, dest, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", "build", "__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis"))


def _cimports(text: str, module: str) -> bool:
    m = re.escape(module)
    return re.search(rf"^\s*(from\s+{m}\s+cimport|cimport\s+{m}\b)", text, re.M) is not None


def _includes(pyx: Path, pxi: Path) -> bool:
    """pyx includes pxi (a path relative to the .pyx's directory)."""
    for m in re.finditer(r'^include\s+"([^"]+)"', pyx.read_text(), re.M):
        if (pyx.parent / m.group(1)).resolve() == pxi.resolve():
            return True
    return False


def _externs(path: Path, header: Path) -> bool:
    """``cdef extern from "h"`` in path names header (relative to path's directory)."""
    for m in re.finditer(r'^\s*cdef\s+extern\s+from\s+"([^"]+)"', path.read_text(), re.M):
        if (path.parent / m.group(1)).resolve() == header.resolve():
            return True
    return False


def extensions_of(tree: Path, rel: str) -> list[Path]:
    """The extensions a change to ``rel`` reaches: a .pyx's own; a .pxi's
    includer; for a .pxd,
    its .pyx and every .pyx that cimports it, directly or through another
    .pxd (Cython inlines what a .pxd declares into each user); for a C
    header, those of each .pyx or .pxd declaring it (cdef extern from; a
    header included by another header is not followed)."""
    if rel.endswith(".pyx"):
        return [Path(rel[:-len(".pyx")])]
    if rel.endswith(".h"):
        users = [p.relative_to(tree).as_posix() for p in
                 sorted(tree.glob("*/*.pyx")) + sorted(tree.glob("*/*.pxd"))
                 if _externs(p, tree / rel)]
        return sorted({m for u in users for m in extensions_of(tree, u)})
    if rel.endswith(".pxi"):                # include "net/x.pxi": part of the including .pyx
        return sorted(p.relative_to(tree).with_suffix("")
                      for p in tree.glob("*/*.pyx") if _includes(p, tree / rel))
    if not rel.endswith(".pxd"):
        return []
    sources: dict[Path, str] = {}           # module -> its .pyx and .pxd text
    for p in sorted(tree.glob("*/*.pyx")) + sorted(tree.glob("*/*.pxd")):
        mod = p.relative_to(tree).with_suffix("")
        sources[mod] = sources.get(mod, "") + p.read_text()
    affected = {Path(rel[:-len(".pxd")])}
    grown = True
    while grown:
        grown = False
        for mod, text in sources.items():
            if mod not in affected and any(_cimports(text, ".".join(a.parts)) for a in affected):
                affected.add(mod)
                grown = True
    return sorted(m for m in affected if (tree / m).with_suffix(".pyx").exists())


def built_so(tree: Path, module: Path) -> Path:
    found = sorted(tree.glob(str(module) + ".cpython-*.so"))
    if not found:
        raise FileNotFoundError(f"{module}: not built in {tree} (run scripts/install.sh first)")
    return found[0]


def rebuild(tree: Path, modules: list[Path]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MBUMA_EXT": ",".join(".".join(m.parts) for m in modules)}
    return subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=900)


def run_tests(tree: Path, tests: list[str], timeout: float,
              isolate: bool = False) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    if isolate:
        # A namespace that dies with the run: what the mutated code does to
        # "its own" namespace stays there.
        argv = ["unshare", "--net", "--", *argv]
    return subprocess.run(argv, cwd=tree, capture_output=True, text=True, timeout=timeout)


def baseline_runs(tests: list[str]) -> list[list[str]]:
    """pytest argument lists running ``tests`` (node ids, or whole files) in
    the files' own order: one run for the whole files, one with -k for the rest."""
    whole = list(dict.fromkeys(t for t in tests if "::" not in t))
    files: dict[str, set[str]] = {}
    for t in tests:
        path, _, name = t.partition("::")
        if name and path not in whole:
            files.setdefault(path, set()).add(name.split("[")[0])
    runs = [whole] if whole else []
    if files:
        names = sorted({n for ns in files.values() for n in ns})
        runs.append([*files, "-k", " or ".join(names)])
    return runs


def check(tree: Path, m: Mutation, timeout: float) -> Outcome:
    t0 = time.monotonic()
    path = tree / m.file
    original = path.read_text()
    n = original.count(m.find)
    if n != 1:
        return Outcome(m.name, "error", 0.0, f"{m.file}: the text to change occurs {n} times")
    modules = extensions_of(tree, m.file)
    saved: dict[Path, Path] = {}            # built extension -> its copy
    try:
        path.write_text(original.replace(m.find, m.replace))
        if modules:
            for mod in modules:
                so = built_so(tree, mod)
                saved[so] = so.with_name(so.name + ".orig")
                shutil.copy2(so, saved[so])
            cp = rebuild(tree, modules)
            if cp.returncode != 0:
                return Outcome(m.name, "error", time.monotonic() - t0,
                               "build failed: " + (cp.stderr or cp.stdout)[-2000:])
        try:
            cp = run_tests(tree, m.tests, timeout, m.isolate)
        except subprocess.TimeoutExpired:
            return Outcome(m.name, "killed", time.monotonic() - t0, f"tests timed out ({timeout} s)")
        # The failure summary lines say why (pytest -q -x: the FAILED line and the total).
        tail = "\n".join(ln for ln in (cp.stdout or "").strip().splitlines()
                         if ln.startswith(("FAILED", "ERROR", "E  "))
                         or " passed" in ln or " failed" in ln)[-1500:]
        if cp.returncode == 1:
            return Outcome(m.name, "killed", time.monotonic() - t0, tail)
        if cp.returncode == 0:
            return Outcome(m.name, "survived", time.monotonic() - t0, tail)
        return Outcome(m.name, "error", time.monotonic() - t0,
                       f"pytest exit {cp.returncode}: {tail}\n{cp.stderr[-1000:]}")
    finally:
        path.write_text(original)
        for so, copy in saved.items():
            os.replace(copy, so)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*",
                    help="mutations, or tables (a file's stem), to check (default: all)")
    ap.add_argument("--table", type=Path, action="append",
                    help="a table or a directory of them (default: tests/mutations/)")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per test run")
    ap.add_argument("--json", type=Path, help="write the outcomes here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")
    paths = args.table or [TABLES]
    table = load_tables(paths)
    args.names = expand_tables(args.names, paths)
    if args.list:
        for m in table:
            sys.stdout.write(f"{m.name:28} {m.file}: {m.find!r} -> {m.replace!r}\n")
        return 0
    unknown = set(args.names) - {m.name for m in table}
    if unknown:
        ap.error(f"unknown mutation(s): {', '.join(sorted(unknown))} (see --list)")
    todo = [m for m in table if not args.names or m.name in args.names]
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        tree = Path(tmp) / "tree"
        log.info("copying the working tree to %s", tree)
        copy_tree(tree)
        where = subprocess.run([sys.executable, "-c", "import forwarder.dataplane as d; "
                                "print(d.__file__)"], cwd=tree, capture_output=True, text=True)
        if not where.stdout.startswith(str(tree)):
            log.error("the copy does not import its own code: %s", where.stdout + where.stderr)
            return 2
        # The tests must pass on the unchanged copy, or a "killed" means nothing.
        # Run as the suite runs them: each file's tests in file order (-k), as
        # some depend on what an earlier one left (a host's path MTU).
        plain = [t for m in todo if not m.isolate for t in m.tests]
        isolated = [t for m in todo if m.isolate for t in m.tests]
        log.info("baseline: %d test(s) on the unchanged copy", len(set(plain + isolated)))
        for group, iso in ((plain, False), (isolated, True)):
            if not group:
                continue
            for run in baseline_runs(group):
                cp = run_tests(tree, run, args.timeout * 4, iso)
                if cp.returncode != 0:
                    log.error("baseline failed (exit %d): fix the tests first\n%s",
                              cp.returncode, "\n".join(cp.stdout.strip().splitlines()[-15:]))
                    return 2
        for i, m in enumerate(todo, start=1):
            log.info("[%d/%d] %s: %s", i, len(todo), m.name, m.file)
            o = check(tree, m, args.timeout)
            outcomes.append(o)
            log.info("        %s in %.0f s\n%s", o.verdict, o.seconds,
                     "\n".join("          " + ln for ln in o.detail.splitlines()))
    width = max(len(o.name) for o in outcomes) if outcomes else 4
    for o in outcomes:
        sys.stdout.write(f"{o.name:{width}}  {o.verdict:8}  {o.seconds:5.0f} s\n")
    killed = sum(o.verdict == "killed" for o in outcomes)
    sys.stdout.write(f"{killed}/{len(outcomes)} mutations killed\n")
    if args.json:
        args.json.write_text(json.dumps([o.__dict__ for o in outcomes], indent=2))
    return 0 if killed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
