#!/usr/bin/env bash
# The router's container image under a real Docker engine, checked as a user checks it,
# on a machine that must not notice (docs/containers.md, "Under a real Docker engine").
#
#   scripts/container-test.sh              # the checks: ~2 min with a warm cache, ~6 min cold
#   scripts/container-test.sh --bench [N]  # then `forwarder bench --docker --reps N` (default 3):
#                                          # pps and TCP in the image against the same router
#                                          # outside it (benchmarks/README.md), ~4 min more
#
# Run it as root from a source checkout where scripts/install.sh ran (it installs Debian's
# docker.io and debootstrap, and never starts their services).  What it does:
#
#  1. notes the root namespace: links, addresses, routes, rules, iptables/nft rules, the
#     forwarding sysctls; at the end, whatever happened, it must be exactly that again;
#  2. starts a private dockerd (storage overlay2, else vfs): data root in $MBUMA_FORWARDER_CACHE (default
#     /var/cache/mbuma-forwarder, where images stay between runs), everything else in a
#     temporary directory, and --bridge=none --iptables=false --ip6tables=false
#     --ip-forward=false: without those it puts a bridge with an address, NAT rules and IP
#     forwarding into the root namespace;
#  3. makes the stand-in for python:3.11-slim-bookworm (no image registry is reachable here)
#     from Debian's mirror with debootstrap, once per package list
#     (scripts/stand-in-base.packages), and builds the image with the Dockerfile's
#     PYTHON_IMAGE pointing at it;
#  4. checks the image: no compiler; started with --network none it waits for eth1 and eth2,
#     which arrive after it started (veths from two client namespaces moved into its
#     namespace, as containerlab wires a node), and turns healthy; ping, traceroute and
#     iperf3 cross it; `docker exec ... forwarder ...` works; its health check turns
#     unhealthy during `forwarder debug stall`; FORWARDER_OPTS and trailing arguments set
#     tunables; `docker kill -s HUP` reloads a bind-mounted config; a broken one makes
#     `docker run` fail with the file and line in `docker logs`; `docker stop` exits 0 with
#     the final netstat -m in the log;
#  5. runs configs/compose.yaml's topology wired by hand (no Compose needed): its networks
#     are veths in a namespace that a holder container keeps (as a Kubernetes pod's pause
#     container does), carrying the addresses Docker would give, there before the router
#     starts in it (--network container:...), with the service's own capabilities, devices
#     and environment; the clients are namespaces that run the clients' commands;
#  6. stops everything and removes what it made: containers, daemon, namespaces, mounts,
#     temporary files.  The images stay in the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
TREE=$PWD

BENCH=0
REPS=3
while [ $# -gt 0 ]; do
    case $1 in
        --bench) BENCH=1
                 if [[ ${2:-} =~ ^[0-9]+$ ]]; then REPS=$2; shift; fi ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "container-test.sh: unknown argument $1 (--bench [N])" >&2; exit 2 ;;
    esac
    shift
done

CACHE=${MBUMA_FORWARDER_CACHE:-/var/cache/mbuma-forwarder}
MIRROR=${MBUMA_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Debian's client (docker.io): BuildKit built in.  A newer client elsewhere on PATH
# (Docker 23 and later) would need the buildx plugin for the build.
DOCKER=/usr/bin/docker
DOCKERD=/usr/sbin/dockerd
PACKAGES=scripts/stand-in-base.packages
IMG=mbuma-forwarder:latest
P="mbct$$-"                      # the prefix of every namespace and container of this run
ROUTER_OPTS=(--network none --cap-add NET_ADMIN --device /dev/net/tun
             --device-cgroup-rule 'c 10:200 rwm')
# Docker's health timing, shortened (the image's 10 s interval and 3 retries would take
# half a minute to notice a stall); the command stays the image's.
HEALTH_OPTS=(--health-interval 1s --health-timeout 3s --health-retries 2)

say()  { printf '%s  %s\n' "$(date +%T)" "$*"; }
ok()   { say "ok: $*"; }
fail() { say "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || { echo "container-test.sh: run as root" >&2; exit 2; }
[ -c /dev/net/tun ] || { echo "container-test.sh: no /dev/net/tun" >&2; exit 2; }
for tool in "$DOCKER" "$DOCKERD" debootstrap flock ip ping traceroute iperf3 python3 nsenter; do
    command -v "$tool" >/dev/null ||
        { echo "container-test.sh: $tool is missing (scripts/install.sh installs it)" >&2; exit 2; }
done

WORK=$(mktemp -d /tmp/mbuma-container-test.XXXXXX)
DPID=

root_state() {
    # What the engine could change in the root namespace, without counters or timers.
    echo "# links"
    ip -o link show | sed -E 's/^[0-9]+: ([^:]+):.* mtu ([0-9]+) .*link\/([a-z]+) ([0-9a-f:]+).*/\1 \2 \3 \4/'
    echo "# addresses"
    ip -o addr show | awk '{print $2, $3, $4}'
    echo "# routes"
    { ip route show table all; ip -6 route show table all; } | sed -E 's/ expires [0-9]+sec//'
    echo "# rules"
    ip rule show; ip -6 rule show
    local t
    for t in iptables-save ip6tables-save iptables-legacy-save ip6tables-legacy-save; do
        if command -v $t >/dev/null; then
            echo "# $t"; { $t 2>&1 || true; } | sed -E '/^#/d; s/\[[0-9]+:[0-9]+\]//'
        fi
    done
    if command -v nft >/dev/null; then echo "# nft"; nft list ruleset 2>&1; fi
    echo "# sysctl"
    for t in net.ipv4.ip_forward net.ipv4.conf.all.forwarding net.ipv6.conf.all.forwarding \
             net.ipv4.conf.all.route_localnet; do
        echo "$t = $(cat /proc/sys/${t//.//})"
    done
}

docker() { "$DOCKER" "$@"; }

stop_engine() {
    [ -n "$DPID" ] || return 0
    local ids
    ids=$(docker ps -aq 2>/dev/null || true)
    [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
    kill -TERM "$DPID" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DPID" 2>/dev/null || true
    wait "$DPID" 2>/dev/null || true
    kill -KILL -- "-$DPID" 2>/dev/null || true      # its session: containerd, shims
    DPID=
    # mounts left below the temporary directory or in the data root (deepest first)
    awk -v w="$WORK/" -v d="$CACHE/docker/" 'index($5, w) == 1 || index($5, d) == 1 {print $5}' \
        /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" || true; done
    exec 9>&-                                       # the data root is free for another run
}

cleanup() {
    local rc=$? ns
    set +e
    trap - EXIT INT TERM
    stop_engine
    for ns in $(ip netns list | awk '{print $1}' | grep "^$P"); do ip netns del "$ns"; done
    if [ -f "$WORK/root.before" ]; then
        root_state > "$WORK/root.after"
        if ! diff -u "$WORK/root.before" "$WORK/root.after" > "$WORK/root.diff"; then
            say "FAILED: the root namespace changed:"; cat "$WORK/root.diff"; rc=1
        else
            ok "the root namespace is as it was (links, addresses, routes, rules, filter rules, sysctls)"
        fi
    fi
    [ -z "$(ip netns list | awk '{print $1}' | grep "^$P")" ] || { say "FAILED: namespaces left"; rc=1; }
    rm -rf "$WORK"
    [ $rc = 0 ] && say "container-test.sh: all checks passed" || say "container-test.sh: exit $rc"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

root_state > "$WORK/root.before"

# --- 2. the engine ---------------------------------------------------------------------
mkdir -p "$CACHE/docker"
exec 9>>"$CACHE/engine.lock"
if ! flock -n 9; then
    say "waiting for $CACHE/engine.lock (one engine at a time on the data root)"
    flock -w 1200 9 || fail "another engine holds $CACHE/engine.lock"
fi
# its identity key (20.10 keeps it in /etc/docker by default) in the temporary directory too
echo "{\"deprecated-key-path\": \"$WORK/key.json\"}" > "$WORK/daemon.json"
export DOCKER_HOST="unix://$WORK/docker.sock" DOCKER_BUILDKIT=1 DOCKER_CONFIG="$WORK/client"
start_dockerd() {   # storage driver $1; 0 when it answers, 1 when it exits first
    setsid "$DOCKERD" --data-root "$CACHE/docker" --exec-root "$WORK/exec" \
        --pidfile "$WORK/dockerd.pid" -H "$DOCKER_HOST" --config-file "$WORK/daemon.json" \
        --storage-driver "$1" --bridge=none --iptables=false --ip6tables=false \
        --ip-forward=false >> "$WORK/dockerd.log" 2>&1 < /dev/null 9>&- &
    DPID=$!
    for _ in $(seq 300); do
        docker version --format '{{.Server.Version}}' >/dev/null 2>&1 && return 0
        kill -0 "$DPID" 2>/dev/null || { wait "$DPID" || true; DPID=; return 1; }
        sleep 0.2
    done
    tail -20 "$WORK/dockerd.log"; fail "dockerd did not answer in 60 s"
}
# overlay2 where it works (a container's root is a mount); vfs copies the whole image
# for each container, but works on any filesystem
for DRIVER in overlay2 vfs; do
    start_dockerd $DRIVER && break
    [ $DRIVER = vfs ] && { tail -20 "$WORK/dockerd.log"; fail "dockerd exited"; }
    say "dockerd cannot use $DRIVER: $(tail -1 "$WORK/dockerd.log" | cut -c1-200)"
done
left=$(docker ps -aq)
[ -z "$left" ] || docker rm -f $left >/dev/null           # from a run that was killed
ok "dockerd $(docker version --format '{{.Server.Version}}') (pid $DPID, $DRIVER), data root $CACHE/docker"
[ ! -e /sys/class/net/docker0 ] || fail "a docker0 bridge exists"

# --- 3. the images -----------------------------------------------------------------------
key=$({ printf 'stand-in recipe 1\0bookworm\0%s\0%s\0' "$PACKAGES" "$(stat -c %s "$PACKAGES")"
        cat "$PACKAGES"; } | sha256sum | cut -c1-16)
BASE="mbuma-stand-in/python:3.11-slim-bookworm-$key"
if docker image inspect "$BASE" >/dev/null 2>&1; then
    ok "stand-in base $BASE (cached)"
else
    say "making the stand-in base $BASE with debootstrap from $MIRROR (a few minutes)"
    root=$(mktemp -d "$CACHE/stand-in-sh.XXXXXX")
    debootstrap --variant=minbase \
        --include="$(grep -v '^#' "$PACKAGES" | awk 'NF {print $1}' | paste -sd,)" \
        bookworm "$root/fs" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 ||
        { tail -20 "$WORK/debootstrap.log"; rm -rf "$root"; fail "debootstrap"; }
    cp /etc/ssl/certs/ca-certificates.crt "$root/fs/etc/ssl/certs/ca-certificates.crt"
    rm -f "$root/fs/etc/apt/sources.list" "$root"/fs/usr/lib/python3*/EXTERNALLY-MANAGED
    cat > "$root/fs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    ln -sf python3 "$root/fs/usr/bin/python"
    ln -sf pip3 "$root/fs/usr/bin/pip"
    rm -rf "$root"/fs/var/cache/apt/archives/*.deb "$root"/fs/var/lib/apt/lists/*_*
    tar --numeric-owner -C "$root/fs" -c . |
        docker import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' - "$BASE" >/dev/null
    rm -rf "$root"
    ok "stand-in base $BASE made"
fi
t0=$SECONDS
docker build --network host --progress plain --build-arg "PYTHON_IMAGE=$BASE" -t "$IMG" . \
    > "$WORK/build.log" 2>&1 || { grep -v '━' "$WORK/build.log" | tail -30; fail "docker build"; }
ok "docker build: $IMG in $((SECONDS - t0)) s (BuildKit's cache in the data root)"

# --- 4. the image, as a user runs it ------------------------------------------------------
found=$(docker run --rm --network none --entrypoint sh "$IMG" -c \
        'for c in gcc cc c++ g++ clang cython; do command -v $c; done; true')
[ -z "$found" ] || fail "compilers in the image: $found"
ok "no compiler in the image"

R=${P}router
docker run -d --name "$R" "${ROUTER_OPTS[@]}" "${HEALTH_OPTS[@]}" "$IMG" >/dev/null
for i in $(seq 150); do
    out=$(docker exec "$R" forwarder health 2>&1 || true)
    [[ $out == *"not ready: waiting for eth1, eth2 (0 of 2 attached"* ]] && break
    [ "$i" -lt 150 ] || { docker logs "$R" 2>&1 | tail; fail "health while waiting: $out"; }
    sleep 0.2
done
ok "started with --network none: $out"

hand_over() {      # client namespace $1 on 10.$2.0.2/24, its veth moved into pid $3 as eth$2
    local ns=$1 k=$2 pid=$3
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" link add eth0 type veth peer name "r$k"
    ip -n "$ns" link set "r$k" netns "$pid" name "eth$k"    # one request, as runtimes do it
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1
    ip -n "$ns" addr add "10.$k.0.2/24" dev eth0
    ip -n "$ns" link set eth0 up
}
wait_health() {    # container $1 until its health is $2, at most $3 s
    local s
    for _ in $(seq $(($3 * 5))); do
        s=$(docker inspect -f '{{.State.Health.Status}}' "$1")
        [ "$s" = "$2" ] && return 0
        sleep 0.2
    done
    fail "$1: health $s, not $2, after $3 s"
}

RPID=$(docker inspect -f '{{.State.Pid}}' "$R")
for k in 1 2; do
    hand_over "${P}c$k" $k "$RPID"
    ip -n "${P}c$k" route add default via "10.$k.0.1"
done
t0=$SECONDS
wait_health "$R" healthy 30
ok "eth1 and eth2 handed over after the start: healthy in $((SECONDS - t0)) s"

ip netns exec "${P}c1" ping -n -c 3 -i 0.2 -W 2 10.2.0.2 > "$WORK/ping" ||
    { cat "$WORK/ping"; fail "ping c1 -> c2"; }
ok "ping c1 -> c2 through the container: $(grep -o '[0-9]* received' "$WORK/ping")"
hops=$(ip netns exec "${P}c1" traceroute -n -q 1 -w 2 -m 4 10.2.0.2 | awk 'NR > 1 {print $2}' | paste -sd' ')
[ "$hops" = "10.1.0.1 10.2.0.2" ] || fail "traceroute hops: $hops"
ok "traceroute: $hops"
ip netns exec "${P}c2" iperf3 -s -1 -p 5201 > /dev/null 2>&1 &
srv=$!
sleep 0.5
gbps=$(ip netns exec "${P}c1" iperf3 -c 10.2.0.2 -p 5201 -t 2 -J |
       python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))')
wait $srv || true
ok "iperf3 c1 -> c2: $gbps Gbit/s"

out=$(docker exec "$R" forwarder netstat -m)
[[ $out == *"mbufs in use (current/cache/total)"* ]] || fail "netstat -m: $out"
[[ $(docker exec "$R" forwarder sysctl -a) == *"kern.ipc.nmbclusters: "* ]] || fail "sysctl -a"
[[ $(docker exec "$R" forwarder stats) == *eth1* ]] || fail "stats"
[[ $(docker exec "$R" forwarder route list) == *10.2.0.0/24* ]] || fail "route list"
[[ $(docker exec "$R" forwarder arp -a) == *10.2.0.2* ]] || fail "arp -a"
ok "docker exec $R forwarder netstat -m / sysctl -a / stats / route list / arp -a"

docker exec "$R" forwarder debug stall 30 > /dev/null
t0=$SECONDS
wait_health "$R" unhealthy 15
ok "unhealthy $((SECONDS - t0)) s into forwarder debug stall"
docker exec "$R" forwarder debug resume > /dev/null
wait_health "$R" healthy 15
ok "healthy again after forwarder debug resume"

# boot tunables and reload, with a config of our own
T=${P}tuned
mkdir "$WORK/etc"
sed 's/^attach_timeout = 300/attach_timeout = 0/' configs/container.toml > "$WORK/etc/router.toml"
docker run -d --name "$T" "${ROUTER_OPTS[@]}" -v "$WORK/etc:/etc/forwarder-test:ro" \
    -e FORWARDER_OPTS="-o net.inet.ip.ttl=40 -o net.inet.icmp.icmplim=150" \
    "$IMG" run -c /etc/forwarder-test/router.toml -o net.inet.ip.ttl=50 > /dev/null
for i in $(seq 150); do
    ttl=$(docker exec "$T" forwarder sysctl -n net.inet.ip.ttl 2>/dev/null) && break
    [ "$i" -lt 150 ] || { docker logs "$T" 2>&1 | tail; fail "$T does not answer"; }
    sleep 0.2
done
lim=$(docker exec "$T" forwarder sysctl -n net.inet.icmp.icmplim)
[ "$ttl/$lim" = "50/150" ] || fail "tunables: ttl $ttl (want 50), icmplim $lim (want 150)"
ok "FORWARDER_OPTS and trailing arguments: ttl $ttl (the arguments win), icmplim $lim"
printf '\n[[route]]\nprefix = "10.30.0.0/16"\ntype = "blackhole"\n' >> "$WORK/etc/router.toml"
docker kill -s HUP "$T" > /dev/null
for i in $(seq 50); do
    [[ $(docker exec "$T" forwarder route list) == *10.30.0.0/16* ]] && break
    [ "$i" -lt 50 ] || fail "SIGHUP: 10.30.0.0/16 not in the routes"
    sleep 0.2
done
ok "docker kill -s HUP: $(docker logs "$T" 2>&1 | grep -o 'reload of .* ok: .*' | tail -1)"
docker rm -f "$T" > /dev/null

B=${P}broken
sed 's|10.2.0.1/24|10.2.0.300/24|' configs/container.toml > "$WORK/broken.toml"
line=$(grep -n '10.2.0.300' "$WORK/broken.toml" | cut -d: -f1)
rc=0
docker run --name "$B" "${ROUTER_OPTS[@]}" -v "$WORK/broken.toml:/etc/forwarder/router.toml:ro" \
    "$IMG" > /dev/null 2>&1 || rc=$?
[ $rc != 0 ] || fail "docker run with a broken config exited 0"
out=$(docker logs "$B" 2>&1)
[[ $out == *"/etc/forwarder/router.toml:$line: "* ]] ||
    { echo "$out"; fail "the log does not name router.toml:$line"; }
ok "a broken config: docker run exits $rc; ${out%%$'\n'*}"
docker rm -f "$B" > /dev/null

t0=${EPOCHREALTIME/./}
docker stop "$R" > /dev/null || fail "docker stop"
ms=$(( (${EPOCHREALTIME/./} - t0) / 1000 ))
[ $ms -lt 5000 ] || fail "docker stop took $ms ms"
code=$(docker inspect -f '{{.State.ExitCode}}' "$R")
[ "$code" = 0 ] || { docker logs "$R" 2>&1 | tail; fail "exit status $code after docker stop"; }
[[ $(docker logs "$R" 2>&1) == *"mbufs in use (current/cache/total)"* ]] || fail "no final netstat -m"
ok "docker stop: exit 0 in $ms ms, the final netstat -m in the log"
docker rm -f "$R" > /dev/null
for k in 1 2; do ip netns del "${P}c$k"; done

# --- 5. configs/compose.yaml, wired by hand -------------------------------------------------
eval "$(python3 - configs/compose.yaml <<'EOF'
import shlex, sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
svc, nets = doc["services"], doc["networks"]
router = svc["router"]
q = shlex.quote
print("C_OPTS=(" + " ".join(
    [f"--cap-add {q(c)}" for c in router.get("cap_add", [])]
    + [f"--device {q(d)}" for d in router.get("devices", [])]
    + [f"--device-cgroup-rule {q(r)}" for r in router.get("device_cgroup_rules", [])]
    + [f"-e {q(k + '=' + v)}" for k, v in router.get("environment", {}).items()]
    + ([f"--stop-timeout {int(router['stop_grace_period'].rstrip('s'))}"]
       if "stop_grace_period" in router else [])) + ")")
links = []
for net, ep in router["networks"].items():
    prefix = nets[net]["ipam"]["config"][0]["subnet"].split("/")[1]
    for name, client in svc.items():
        if name != "router" and net in client.get("networks", {}):
            cmd = client["command"][-1].split(" && exec ")[0]
            links.append(" ".join(q(x) for x in (ep["interface_name"], f"{ep['ipv4_address']}/{prefix}",
                         name, f"{client['networks'][net]['ipv4_address']}/{prefix}", cmd)))
print("C_LINKS=(" + " ".join(q(ln) for ln in links) + ")")
EOF
)"
N=${P}compose-net
CR=${P}compose-router
docker run -d --name "$N" --network none --entrypoint sleep "$IMG" infinity > /dev/null
NPID=$(docker inspect -f '{{.State.Pid}}' "$N")
clients=()
for link in "${C_LINKS[@]}"; do
    eval "set -- $link"                 # ifname, Docker's address, client, its address, command
    ns="${P}$3"
    ip netns add "$ns"; ip -n "$ns" link set lo up
    ip -n "$ns" link add eth0 type veth peer name "r-$1"
    ip -n "$ns" link set "r-$1" netns "$NPID" name "$1"
    nsenter -t "$NPID" -n ip addr add "$2" dev "$1"        # what Docker puts there
    nsenter -t "$NPID" -n ip link set "$1" up
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1
    ip -n "$ns" addr add "$4" dev eth0; ip -n "$ns" link set eth0 up
    clients+=("$ns|$5|${4%/*}")
done
# (the client warns that IP forwarding is off in the root namespace: the router needs none)
docker run -d --name "$CR" --network "container:$N" "${C_OPTS[@]}" "${HEALTH_OPTS[@]}" \
    "$IMG" > /dev/null 2> "$WORK/compose-run.err" || { cat "$WORK/compose-run.err"; fail "compose: docker run"; }
wait_health "$CR" healthy 30                          # depends_on: service_healthy
for c in "${clients[@]}"; do
    IFS='|' read -r ns cmd _ <<< "$c"
    ip netns exec "$ns" sh -c "$cmd" || fail "client command in $ns: $cmd"
done
IFS='|' read -r c1 _ a1 <<< "${clients[0]}"
IFS='|' read -r c2 _ a2 <<< "${clients[1]}"
ip netns exec "$c1" ping -n -c 2 -i 0.2 -W 2 "$a2" > /dev/null || fail "compose: ping $a1 -> $a2"
hops=$(ip netns exec "$c1" traceroute -n -q 1 -w 2 -m 4 "$a2" | awk 'NR > 1 {print $2}' | paste -sd' ')
removed=$(docker logs "$CR" 2>&1 | grep -o 'removed [0-9./]* from eth[0-9]' | paste -sd';')
[[ $removed == *"removed 10.1.0.253/24 from eth1"* ]] || fail "compose: removed: $removed"
[ -z "$(nsenter -t "$NPID" -n ip -4 -o addr show dev eth1)" ] || fail "compose: eth1 kept an address"
opts=$(docker exec "$CR" forwarder sysctl -n kern.ipc.nmbclusters)
ok "compose.yaml: ping $a1 -> $a2, traceroute $hops; $removed; FORWARDER_OPTS: nmbclusters=$opts"
docker stop "$CR" > /dev/null
[ "$(docker inspect -f '{{.State.ExitCode}}' "$CR")" = 0 ] || fail "compose: router exit status"
docker rm -f "$CR" "$N" > /dev/null
ok "compose.yaml: the router stopped with exit 0"

# --- 6. stop; the measurement --------------------------------------------------------------
stop_engine
ok "dockerd stopped"
if [ $BENCH = 1 ]; then
    say "forwarder bench --docker --reps $REPS"
    python3 -m forwarder.cli bench --docker --reps "$REPS" || fail "forwarder bench --docker"
fi
