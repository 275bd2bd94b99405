"""The lab: the router in private network namespaces, driven, loaded and measured.

This package is tooling around the router, not the router: ``forwarder run``
never imports it, and the modules that need the ``lab`` extra (scapy, numpy,
matplotlib, psutil; ``pip install 'mbuma-forwarder[lab]'``) are only
imported once :func:`missing` has found them all.  Its modules, each on those
before it (dependencies run one way)::

    forwarder.netns          namespaces, TAPs, veths (pyroute2)   -- the router's own
    signals.py               Ctrl-C / SIGTERM unwind the stack, in this process only
    process.py               a `forwarder run` process: started, healthy, stopped
    tomlwrite.py             router configs written as TOML (the one writer)
    topology.py              the lab model: router namespace, hosts, their config;
                             lab.toml and lab_up() (build it, run its router, remove it)
    spec.py                  load specs, sizes, IMIX, where the load generator's
                             fields sit in a frame (stdlib only)
    frames.py                scapy-built frame templates, checked by dissection
    path.py                  the path between two lab hosts: links, next hop, counters
    sender.py, receiver.py   the processes that offer and count the load
    report.py                the result's schema, tables and JSON
    plot.py                  PNGs of a run and of a sweep (matplotlib)
    run.py                   one load, and a sweep of them
    bench.py                 the router vs kernel forwarding vs a C copy loop
    daemons.py               FRR and BIRD in namespaces (the control plane's peers)
    demo.py                  `forwarder lab`: ping, traceroute, load, report
    cli.py                   the lab, loadgen and bench subcommands

``cli.py`` and ``spec.py`` import nothing optional, so that `forwarder --help`
lists the lab commands everywhere and a command run without the extra says
which extra to install.
"""
from __future__ import annotations

import importlib.util

EXTRA = "lab"
INSTALL_HINT = "pip install 'mbuma-forwarder[lab]'"
# What the extra provides, by import name (pyproject.toml's [project.optional-dependencies]
# lab; tests/test_lab.py checks that the two lists agree).
MODULES = ("scapy", "numpy", "matplotlib", "psutil")


def missing() -> list[str]:
    """The modules of the lab extra that cannot be imported here."""
    return [name for name in MODULES if importlib.util.find_spec(name) is None]
