#!/usr/bin/env bash
# Install everything the router, its lab and its tests need (run as root on Debian).
#   Debian tools: iproute2, ping, traceroute, iperf3, ndisc6, tcpdump (libpcap), frr, bird2,
#   gcc, pip, venv,
#   Python headers (only those missing).  frr and bird2 are the routing daemons the
#   control-plane tests run in namespaces; their packages' services are not started here.
#   Python: this package, built in place with its Cython extensions, plus the lab extra
#   (scapy, numpy, matplotlib, psutil: `forwarder lab`) and the test extra (pytest,
#   hypothesis, jsonschema, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v ip >/dev/null         || need+=(iproute2)
command -v ping >/dev/null       || need+=(iputils-ping)
command -v traceroute >/dev/null || need+=(traceroute)
command -v iperf3 >/dev/null     || need+=(iperf3)
command -v rdisc6 >/dev/null     || need+=(ndisc6)
command -v tcpdump >/dev/null    || need+=(tcpdump)   # and libpcap: BPF filters (forwarder/bpf.py)
[ -x /usr/lib/frr/bgpd ]         || need+=(frr)
command -v bird >/dev/null       || need+=(bird2)
command -v gcc >/dev/null        || need+=(gcc)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
# the container tests install the wheel into a fresh venv (Debian splits ensurepip out)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
python3 -c 'import sysconfig,os,sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"],"Python.h")))' \
                                 || need+=(python3-dev)
if [ ${#need[@]} -gt 0 ]; then
    echo "install.sh: installing Debian packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # no daemon of these packages may start in this (root) namespace: policy-rc.d says no
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

pip_flags=(--quiet --disable-pip-version-check --root-user-action=ignore)
# Debian's own python3 refuses system-wide pip installs (PEP 668); this is a
# dedicated router/lab machine, so install anyway.
if python3 -c 'import sysconfig,os,sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["stdlib"],"EXTERNALLY-MANAGED")))'; then
    pip_flags+=(--break-system-packages)
fi
echo "install.sh: pip install -e '.[lab,test]' (builds the Cython extensions)"
python3 -m pip install "${pip_flags[@]}" -e '.[lab,test]'
