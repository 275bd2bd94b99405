"""Running the router in a container: boot options from the environment.

The image's ENTRYPOINT is ``forwarder`` and its CMD ``run -c
/etc/forwarder/router.toml`` (Dockerfile).  Tunables can be changed at boot
without editing the config in two ways:

* extra arguments, by replacing the CMD::

      docker run ... IMAGE run -c /etc/forwarder/router.toml -o kern.ipc.nmbclusters=0

* the environment variable ``FORWARDER_OPTS``, split like a shell would
  (quotes allowed, no expansion)::

      docker run ... -e FORWARDER_OPTS="-o kern.ipc.nmbclusters=0 -o net.inet.ip.ttl=32" IMAGE

``FORWARDER_OPTS`` applies to ``forwarder run`` only.  Its words go right
after ``run``, before the arguments of the command line, so that those win:
``-o NAME=VALUE`` given later overrides the same name given earlier, and a
later ``-c`` replaces an earlier one.

The CLI calls :func:`expand_argv` on its arguments before parsing them.
"""
from __future__ import annotations

import os
import shlex
import sys
from typing import Mapping, Sequence

from forwarder.cli import EXIT_USAGE

ENV_OPTS = "FORWARDER_OPTS"


class ContainerError(ValueError):
    """The environment cannot be used (e.g. unbalanced quotes in FORWARDER_OPTS)."""


def env_options(environ: Mapping[str, str] | None = None) -> list[str]:
    """The words of ``FORWARDER_OPTS`` (empty when unset or blank)."""
    env = os.environ if environ is None else environ
    text = env.get(ENV_OPTS, "")
    try:
        return shlex.split(text, comments=False, posix=True)
    except ValueError as e:
        raise ContainerError(f"{ENV_OPTS}={text!r}: {e}") from None


def _subcommand_index(argv: Sequence[str]) -> int | None:
    """Index of the subcommand: the first word that is not an option."""
    for i, word in enumerate(argv):
        if word == "--":
            return i + 1 if i + 1 < len(argv) else None
        if not word.startswith("-") or word == "-":
            return i
    return None


def expand_argv(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """``argv`` (without the program name) with ``FORWARDER_OPTS`` inserted after ``run``.

    Other subcommands are returned unchanged.  Bad quoting in the variable is a
    usage error: it is reported on stderr and exits with status 2, as argparse does.
    """
    argv = list(argv)
    i = _subcommand_index(argv)
    if i is None or argv[i] != "run":
        return argv
    try:
        extra = env_options(environ)
    except ContainerError as e:
        print(f"forwarder run: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    return argv[:i + 1] + extra + argv[i + 1:]
