#!/usr/bin/env bash
# Install everything the router, its lab and its tests need (run as root on Debian).
#   Debian tools: iproute2, ping, traceroute, iperf3, ndisc6, tcpdump (libpcap), frr, bird2,
#   gcc, pip, venv,
#   Python headers (only those missing).  frr and bird2 are the routing daemons the
#   control-plane tests run in namespaces; their packages' services are not started here.
#   docker.io and debootstrap: tests/test_docker.py and scripts/container-test.sh run the
#   image under a private dockerd of their own; the package's docker and containerd
#   services are masked before it is installed, so that no daemon ever starts in this
#   namespace (which would add a docker0 bridge, NAT rules and IP forwarding).
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
engine=()                        # Debian's engine and client (another docker on PATH is not used)
{ [ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ]; } || engine+=(docker.io)
command -v debootstrap >/dev/null || engine+=(debootstrap)
# the container tests install the wheel into a fresh venv (Debian splits ensurepip out)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
python3 -c 'import sysconfig,os,sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"],"Python.h")))' \
                                 || need+=(python3-dev)
if [ $((${#need[@]} + ${#engine[@]})) -gt 0 ]; then
    echo "install.sh: installing Debian packages: ${need[*]} ${engine[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # no daemon of these packages may start in this (root) namespace: policy-rc.d says no
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    [ ${#need[@]} -eq 0 ] || apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ${#engine[@]} -gt 0 ]; then
    # docker.io's units masked first (systemd reads /etc/systemd/system before the
    # package's own): neither its postinst nor a later boot nor socket activation can
    # start dockerd or containerd; `systemctl unmask docker.service docker.socket
    # containerd.service` undoes it.  Without recommends (needrestart would restart
    # services).  Its SysV links are disabled too.
    mkdir -p /etc/systemd/system
    for unit in docker.service docker.socket containerd.service; do
        [ -e "/etc/systemd/system/$unit" ] || ln -s /dev/null "/etc/systemd/system/$unit"
    done
    # (its postinst says it cannot preset the masked units: that is the point)
    log=$(mktemp)
    if ! apt-get install -y -qq --no-install-recommends "${engine[@]}" >"$log" 2>&1; then
        cat "$log" >&2; rm -f "$log"; exit 1
    fi
    rm -f "$log"
    [ ! -e /etc/init.d/docker ] || update-rc.d docker disable >/dev/null 2>&1 || true
    # A daemon of the package: dockerd without the network flags the tests give theirs,
    # containerd without the config file dockerd gives its own.
    if pgrep -a -x dockerd | grep -qv -- '--bridge=none' ||
       pgrep -a -x containerd | grep -qv -- '--config'; then
        echo "install.sh: docker.io's daemon runs after its install; stop it (it configures" \
             "the root namespace: a docker0 bridge, NAT rules, IP forwarding)" >&2
        exit 1
    fi
    if [ -e /sys/class/net/docker0 ]; then
        echo "install.sh: a docker0 bridge exists after the install of docker.io" >&2
        exit 1
    fi
fi

pip_flags=(--quiet --disable-pip-version-check --root-user-action=ignore)
# Debian's own python3 refuses system-wide pip installs (PEP 668); this is a
# dedicated router/lab machine, so install anyway.
if python3 -c 'import sysconfig,os,sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["stdlib"],"EXTERNALLY-MANAGED")))'; then
    pip_flags+=(--break-system-packages)
fi
echo "install.sh: pip install -e '.[lab,test]' (builds the Cython extensions)"
python3 -m pip install "${pip_flags[@]}" -e '.[lab,test]'
