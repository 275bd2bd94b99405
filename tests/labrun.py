"""`forwarder lab` run as a command (for tests): where its namespaces are, and what
it could have left behind.

    out = subprocess.run([..., "lab", ...], ...).stdout
    prefix = lab_prefix(out)           # fw1a2b3c-: every namespace of that lab
    assert leftovers(prefix) == []

Only names with the lab's own random prefix are looked at: other test runs may
have namespaces of their own on the same machine.
"""
from __future__ import annotations

import glob
import os
import re
import tempfile
from typing import Sequence

import psutil

from forwarder import netns as nn


def lab_prefix(output: str) -> str:
    """The namespace prefix a lab announced in its first step."""
    m = re.search(r"\[1/6\] namespaces\s+(fw[0-9a-f]{6}-)r ", output)
    assert m, output
    return m.group(1)


def leftovers(prefix: str, pids: Sequence[psutil.Process] = ()) -> list[str]:
    """Everything a lab with ``prefix`` could leave behind: namespaces, its work
    directory, processes naming it (its router's config is in that directory),
    and any of ``pids`` still alive."""
    left = [f"netns {n}" for n in nn.list_netns() if n.startswith(prefix)]
    left += [f"workdir {d}" for d in glob.glob(os.path.join(tempfile.gettempdir(),
                                                            prefix + "lab-*"))]
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any(prefix in a for a in (p.info["cmdline"] or [])):
            left.append(f"process {p.info['pid']} {' '.join(p.info['cmdline'])}")
    for p in pids:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"process {p.pid} {' '.join(p.cmdline())}")
        except psutil.NoSuchProcess:
            pass
    return left
