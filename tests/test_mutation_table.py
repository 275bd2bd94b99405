"""The mutation tables (tests/mutations/*.toml) still fit the code: each
change applies to exactly one place, and each test it must fail names a test
that exists.  A refactor that moves the code updates the table with it, so
`scripts/mutation_check.py` keeps proving what the tests claim."""
from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_tool():
    spec = importlib.util.spec_from_file_location("mutation_check",
                                                  ROOT / "scripts" / "mutation_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["mutation_check"] = mod             # its dataclasses look themselves up
    spec.loader.exec_module(mod)   # type: ignore[union-attr]
    return mod


TOOL = _load_tool()
TABLE = TOOL.load_tables([TOOL.TABLES])


def test_there_are_tables() -> None:
    assert len(TABLE) >= 30


@pytest.mark.parametrize("m", TABLE, ids=[m.name for m in TABLE])
def test_mutation_applies_once_and_names_real_tests(m) -> None:
    text = (ROOT / m.file).read_text()
    assert text.count(m.find) == 1, f"{m.file}: {m.find!r} occurs {text.count(m.find)} times"
    assert m.replace != m.find
    for node in m.tests:
        path, _, name = node.partition("::")
        assert (ROOT / path).is_file(), f"{node}: no such file"
        if not name:                                # a whole module
            continue
        name = name.split("[")[0]
        tree = ast.parse((ROOT / path).read_text())
        functions = {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
        assert name in functions, f"{node}: no such test"


def test_a_header_change_rebuilds_the_extensions_declaring_it() -> None:
    """A mutation of a C header rebuilds the extensions whose .pyx or .pxd
    (cdef extern from) declare it, through the cimports."""
    assert TOOL.extensions_of(ROOT, "forwarder/dp_drop.h") == [Path("forwarder/dataplane")]
    assert Path("forwarder/inet_test") in TOOL.extensions_of(ROOT, "forwarder/net/bpf_filter.h")
    assert TOOL.extensions_of(ROOT, "forwarder/bpf.py") == []
