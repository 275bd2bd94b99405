"""JSON Schemas (draft 2020-12) of what the commands print with ``--json``.

One file per output in this package (``forwarder/schemas/NAME.json``, shipped in
the wheel), documented in docs/json.md.  :data:`OUTPUTS` says which command
line prints which: every subcommand that takes ``--json`` is in it, and the
tests validate the real output of each entry against its schema.

The schemas are closed (``additionalProperties: false``) except where the
output is an open map (drop counters, route-import skips, drop reasons): a key
the schema does not know fails the tests, so schema, documentation and output
change together.  Readers should still ignore keys they do not know.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

DIALECT = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True)
class Output:
    """A command line (without ``--json``) and the schema of its JSON."""
    argv: tuple[str, ...]
    schema: str


OUTPUTS: tuple[Output, ...] = (
    Output(("sysctl", "-a"), "sysctl"),
    Output(("sysctl", "NAME"), "sysctl"),
    Output(("sysctl", "-d", "NAME"), "sysctl"),
    Output(("sysctl", "NAME=VALUE"), "sysctl-set"),
    Output(("netstat", "-m"), "netstat-m"),
    Output(("vmstat", "-z"), "vmstat-z"),
    Output(("stats",), "stats"),
    Output(("stats", "-v"), "stats"),
    Output(("route", "list"), "route-list"),
    Output(("arp", "-a"), "arp"),
    Output(("ndp", "-a"), "ndp"),
    Output(("health",), "health"),
    Output(("debug", "stall", "SECONDS"), "debug"),
    Output(("debug", "resume"), "debug"),
    Output(("trace", "show"), "trace-show"),
)


def names() -> list[str]:
    """Every schema in the package, by name (the file name without .json)."""
    return sorted(f.name[:-5] for f in resources.files(__package__).iterdir()
                  if f.name.endswith(".json"))


@cache
def _text(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.json").read_text(encoding="utf-8")


def load(name: str) -> dict[str, Any]:
    """The schema ``name`` (a fresh copy); KeyError for an unknown one."""
    try:
        return json.loads(_text(name))
    except FileNotFoundError:
        raise KeyError(f"no JSON schema {name!r} (one of {', '.join(names())})") from None


def for_command(command: str) -> list[str]:
    """The schemas a subcommand's ``--json`` output follows."""
    return sorted({o.schema for o in OUTPUTS if o.argv[0] == command})
