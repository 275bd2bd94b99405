"""Router configs written as TOML: the one writer the lab and its tests use.

A router config has two shapes of table: tables of values (``[router]``,
``[sysctl]``, ``[metrics]``) and arrays of tables (``[[interface]]``,
``[[route]]``).  Values are strings, integers, floats, booleans and flat arrays
of those.  :func:`to_toml` writes exactly that, arrays of tables always as
``[[name]]`` sections (an empty one as ``name = []``) and arrays inline, so that
the file reads like the commented examples in configs/ and TOML appended to it
(a further ``[[route]]``) extends it.  Anything else is a TypeError, not a guess.
``tomllib.loads`` of the result gives the document back (tests/test_lab.py
checks it).
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def _string(s: str) -> str:
    out = []
    for c in s:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else _string(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (list, tuple)):
        if any(isinstance(x, (list, tuple, dict)) for x in v):
            raise TypeError("to_toml: arrays hold plain values only")
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"to_toml: cannot write a {type(v).__name__}")


def _body(table: Mapping[str, Any]) -> list[str]:
    lines = []
    for k, v in table.items():
        if isinstance(v, dict):
            raise TypeError(f"to_toml: {k}: tables inside tables are not written")
        lines.append(f"{_key(k)} = {_value(v)}")
    return lines


def to_toml(doc: Mapping[str, Mapping[str, Any] | list[Mapping[str, Any]]],
            header: str = "") -> str:
    """``doc`` ({table: {key: value}} or {array: [{key: value}, ...]}) as TOML text;
    ``header`` becomes comment lines at the top."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    # an empty array of tables has no sections: a plain `name = []`, before any table
    empty = [name for name, part in doc.items() if isinstance(part, (list, tuple)) and not part]
    lines += [f"{_key(name)} = []" for name in empty]
    for name, part in doc.items():
        if name in empty:
            continue
        if isinstance(part, dict):
            sections = [(f"[{_key(name)}]", part)]
        elif isinstance(part, (list, tuple)) and all(isinstance(t, dict) for t in part):
            sections = [(f"[[{_key(name)}]]", t) for t in part]
        else:
            raise TypeError(f"to_toml: {name}: top-level entries are tables or arrays of tables")
        for head, table in sections:
            if lines:
                lines.append("")
            lines += [head, *_body(table)]
    return "\n".join(lines) + "\n"
