#!/bin/sh
# The Cython extensions built with AddressSanitizer, and the fuzz and the
# forwarding tests run on them.
#
#   scripts/asan.sh                 # build in /tmp/mbuma-asan, run, report
#   scripts/asan.sh --frames 1M     # a longer in-process fuzz (default 200k)
#   ASAN_DIR=/var/tmp/x scripts/asan.sh
#
# The tree is copied (git ls-files) to $ASAN_DIR and built there with
# MBUMA_SANITIZE=address (setup.py: -fsanitize=address -O1 -g), so the
# checkout's own extensions stay as they are.  The interpreter is not
# instrumented, so libasan is preloaded (LD_PRELOAD) into it and into every
# process the tests start: the routers they run load the same extensions.
# Leak detection is off (ASAN_OPTIONS=detect_leaks=0): CPython keeps its
# interned objects to exit, and the allocator's zones keep their slabs
# cached by design.  Any report ASan writes (log_path) fails the run; so does
# a test failure.  Needs root (namespaces, TAPs), gcc and libasan (gcc's).
set -eu

HERE=$(cd "$(dirname "$0")/.." && pwd)
ASAN_DIR=${ASAN_DIR:-/tmp/mbuma-asan}
FRAMES=200k
while [ $# -gt 0 ]; do
    case "$1" in
        --frames) FRAMES=$2; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "asan.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

LIBASAN=$(gcc -print-file-name=libasan.so)
if [ ! -e "$LIBASAN" ]; then
    echo "asan.sh: no libasan.so for gcc ($LIBASAN): apt-get install libasan8" >&2
    exit 2
fi
LIBASAN=$(readlink -f "$LIBASAN")

echo "asan.sh: copying the tree to $ASAN_DIR"
rm -rf "$ASAN_DIR"
mkdir -p "$ASAN_DIR"
(cd "$HERE" && git ls-files -z | xargs -0 cp --parents -t "$ASAN_DIR")
cd "$ASAN_DIR"
echo "asan.sh: building with MBUMA_SANITIZE=address (a few minutes)"
start=$(date +%s)
MBUMA_SANITIZE=address python3 setup.py -q build_ext --inplace > build.log 2>&1 || {
    tail -40 build.log >&2; echo "asan.sh: the build failed (build.log)" >&2; exit 1; }
echo "asan.sh: built in $(( $(date +%s) - start )) s"
for so in forwarder/*.so allocator_pyx/*.so; do
    if ! nm -D "$so" | grep -q " U __asan_init"; then
        echo "asan.sh: $so is not instrumented" >&2
        exit 1
    fi
done

LOGS=$ASAN_DIR/asan-logs
mkdir -p "$LOGS"
export LD_PRELOAD=$LIBASAN
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$LOGS/asan"
export PYTHONPATH=$ASAN_DIR
status=0
echo "asan.sh: fuzzing the dataplane in process ($FRAMES frames)"
python3 scripts/fuzz.py --target dataplane --frames "$FRAMES" --check-every 100k \
    --out "$LOGS" --json "$LOGS/fuzz-dataplane.json" || status=1
echo "asan.sh: fuzzing a router through a TAP (100k frames)"
python3 scripts/fuzz.py --frames 100k --check-every 50k --out "$LOGS" \
    --json "$LOGS/fuzz-lab.json" || status=1
echo "asan.sh: tests/test_fuzz.py tests/test_forwarding.py"
python3 -m pytest -q -p no:cacheprovider tests/test_fuzz.py tests/test_forwarding.py || status=1
unset LD_PRELOAD

if ls "$LOGS"/asan.* > /dev/null 2>&1; then
    echo "asan.sh: AddressSanitizer reports:" >&2
    for f in "$LOGS"/asan.*; do echo "== $f" >&2; head -60 "$f" >&2; done
    status=1
fi
if [ $status -eq 0 ]; then
    echo "asan.sh: ok: no AddressSanitizer report, every test passed ($ASAN_DIR)"
else
    echo "asan.sh: FAILED (logs in $LOGS)" >&2
fi
exit $status
