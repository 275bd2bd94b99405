# mbuma forwarder as a container image (docs/containers.md).
#
#   docker build -t mbuma-forwarder .
#   docker run -d --name router --cap-add NET_ADMIN --device /dev/net/tun \
#       --device-cgroup-rule 'c 10:200 rwm' mbuma-forwarder
#
# Its default config attaches the router's ports to the container's eth1 and
# eth2: give it two networks with those interface names (configs/compose.yaml,
# configs/containerlab.clab.yml, docs/containers.md); until then it waits for them.
#
# Stages: `build` compiles the Cython extensions into a wheel (and collects the
# wheels of the runtime dependencies beside it); `runtime` installs those wheels
# offline and has no compiler, and is what `docker build` builds (the empty
# `FROM runtime` at the end); `frr` adds FRR's daemons next to the router:
#
#   docker build --target frr -t mbuma-forwarder:frr .
#   docker run -d --name router --cap-add NET_ADMIN --cap-add SYS_ADMIN \
#       --device /dev/net/tun --device-cgroup-rule 'c 10:200 rwm' mbuma-forwarder:frr
#
# tests/test_container.py parses this file and runs its build commands, its
# install command, and each image's ENTRYPOINT + CMD and HEALTHCHECK inside
# throw-away namespaces, so keep them plain.  tests/test_docker.py and
# scripts/container-test.sh build it and run the image under a real engine.

# The base of both stages.  Where no registry is reachable, the tests build on a
# stand-in made from Debian's mirror (--build-arg PYTHON_IMAGE=..., docs/containers.md).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
# gcc and the libc headers for the extensions; Python.h comes with the image.
# Debian packages are not pinned (DL3008): bookworm's updates are fixes only, and
# exact versions vanish from the mirror when the next one lands.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# .dockerignore lets only the package sources through (no build/, *.so or
# generated *.c from an in-place build).
COPY . .
# pip builds our wheel in an isolated environment with the [build-system]
# requirements of pyproject.toml (setuptools, wheel, Cython) and puts the wheels
# of every runtime dependency next to it.
RUN pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels .

# --- runtime -------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="mbuma-forwarder" \
      org.opencontainers.image.description="Userspace IPv4/IPv6 router on FreeBSD-style mbufs"
# iproute2: not needed by the router, which talks netlink itself (its ports attach
# to eth1/eth2 with tc filters it adds through pyroute2), but kept for looking
# around with `docker exec`: `ip -br link` (which interfaces the runtime handed
# over), `tc filter show dev eth1 ingress` (the router's redirect).  Not pinned,
# as above.
# libpcap: the BPF compiler of `forwarder trace/capture --filter` (forwarder/bpf.py).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 libpcap0.8 \
 && rm -rf /var/lib/apt/lists/*
# Wheels only, from the build stage, no index: nothing is compiled here.  The package
# without extras: the router and its commands, not the lab's scapy/numpy/matplotlib.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --disable-pip-version-check --no-index --find-links /wheels \
        /wheels/mbuma_forwarder-*.whl
# The default config: two ports attached to the container's eth1 and eth2, the
# interfaces Compose, containerlab or Multus hand it.  Replace it with a bind mount
# (-v ./router.toml:/etc/forwarder/router.toml:ro).
COPY configs/container.toml /etc/forwarder/router.toml
ENV PYTHONUNBUFFERED=1
# The router is PID 1: it installs handlers for SIGTERM/SIGINT (stop, exit 0)
# and SIGHUP (reload), and stops within a second, well inside `docker stop`'s 10 s.
STOPSIGNAL SIGTERM
# `forwarder health` finds the only control socket in /run/forwarder and exits 0
# when the dataplane went round in the last 2 s; 1, "not ready: waiting for ...",
# while attached interfaces are still missing (until [router] attach_timeout).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["forwarder", "health"]
ENTRYPOINT ["forwarder"]
CMD ["run", "-c", "/etc/forwarder/router.toml"]

# --- frr: the router and FRR (docker build --target frr) --------------------------------
FROM runtime AS frr
LABEL org.opencontainers.image.title="mbuma-forwarder-frr" \
      org.opencontainers.image.description="Userspace IPv4/IPv6 router on FreeBSD-style mbufs, with FRR"
# Debian's FRR: zebra, staticd, bgpd, ospfd, ... and vtysh.  Its init script never
# runs (no init in a container): `forwarder run --frr` starts the daemons named in
# /etc/frr/daemons once the ports' mirrors exist, as its own children, and stops
# them first (forwarder/frr.py).  Not pinned, as above.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends frr \
 && rm -rf /var/lib/apt/lists/*
# The ports attach to eth1 and eth2 as port1 and port2, whose mirrors stay in the
# container's own namespace (configs/container-frr.toml); FRR's daemons list and
# its config name those mirrors.  Replace any of them with bind mounts.
COPY configs/container-frr.toml /etc/forwarder/router.toml
COPY --chown=frr:frr configs/frr/daemons configs/frr/frr.conf /etc/frr/
# FRR needs CAP_SYS_ADMIN besides the router's CAP_NET_ADMIN (docs/containers.md).
CMD ["run", "-c", "/etc/forwarder/router.toml", "--frr"]

# --- the default target: the router alone ----------------------------------------------
FROM runtime
