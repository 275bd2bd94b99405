"""The `forwarder` command: one entry point, one subcommand per job."""
from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("forwarder")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forwarder", description=__doc__)
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True
    vz = sub.add_parser("vmstat", help="UMA zone statistics of this process's allocator")
    vz.add_argument("-z", action="store_true", help="zone table (the default)")
    vz.add_argument("--json", action="store_true")
    return p


def cmd_vmstat(args: argparse.Namespace) -> int:
    import json

    from allocator_pyx import uma
    rows = uma.vmstat()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['name'] + ':':<20}{r['size']:>6},{r['limit']:>8},{r['used']:>8},"
                  f"{r['free']:>8},{r['requests']:>8},{r['fails']:>4},{r['sleeps']:>4}")
    return 0


COMMANDS = {"vmstat": cmd_vmstat}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return COMMANDS[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
