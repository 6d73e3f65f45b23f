#!/usr/bin/env bash
# Whole-process peak RSS of `verify`, `apply`, `compress` and `serve` as the input grows:
# inputs are read with positioned reads into small buffers (never memory-mapped), so the
# peak must stay flat across the sizes.
#
# For each size in SIZES_MIB (default "256 1024 4096"): a v1 full diff of that many 1 MiB
# `w` records (each half random bytes from a 64 MiB pool, half zeros), then
#   verify --write-sums FILE; verify --digest FILE (sidecar checked); apply --create;
#   compress FILE; verify FILE.zst; serve FILE and serve FILE.zst (peak after start-up and
#   after nbdcopy of the whole image to null:).
# Prints maxRSS in MiB (/usr/bin/time; for serve the server's VmHWM) and the wall time.
# Each binary in BINS (default: this tree's release build) is measured in the same run,
# e.g. BINS="old=/path/to/rbddiff new=target/release/rbddiff". Needs python3, GNU time and
# nbdcopy/nbdinfo (libnbd-bin) for the serve rows. BENCH_DIR (default $TMPDIR or /tmp).
set -euo pipefail

SIZES_MIB=${SIZES_MIB:-256 1024 4096}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z "${BINS:-}" ]]; then
    (cd "$ROOT" && cargo build --release --quiet)
    BINS="rbddiff=$ROOT/target/release/rbddiff"
fi
WORK=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/rbddiff-rss.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"

synth() { # synth FILE MIB
    python3 - "$1" "$2" <<'PY'
import os, random, struct, sys
path, n = sys.argv[1], int(sys.argv[2])
rec = 1 << 20
random.seed(42)
pool = random.randbytes(64 << 20)
zeros = bytes(rec // 2)
with open(path, "wb") as f:
    f.write(b"rbd diff v1\n")
    f.write(b"t" + struct.pack("<I", 2) + b"s1")
    f.write(b"s" + struct.pack("<Q", n * rec))
    for i in range(n):
        f.write(b"w" + struct.pack("<QQ", i * rec, rec))
        at = (i * 4096) % (len(pool) - rec // 2)
        f.write(pool[at:at + rec // 2])
        f.write(zeros)
    f.write(b"e")
PY
}

# run NAME CMD...: one row, maxRSS and wall time of CMD.
run() {
    local name=$1; shift
    local out
    if ! /usr/bin/time -o time.out -f "%M %e" "$@" >/dev/null 2>err.out; then
        echo "  $name: failed: $(cat err.out)" >&2
        exit 1
    fi
    out=$(tail -1 time.out)
    printf '  %-28s maxRSS %7.1f MiB  %6.2f s\n' "$name" "$(echo "$out" | awk '{print $1 / 1024}')" \
        "$(echo "$out" | awk '{print $2}')"
}

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# serve_rss NAME BIN FILE: the server's peak RSS after start-up and after a full copy.
serve_rss() {
    local name=$1 bin=$2 file=$3 p pid up t0 t1
    p=$(port)
    t0=$(date +%s.%N)
    "$bin" serve -q --listen "127.0.0.1:$p" "$file" >/dev/null </dev/null 2>&1 &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1 600); do
        nbdinfo --size "nbd://127.0.0.1:$p/s1" >/dev/null 2>&1 && break
        sleep 0.1
    done
    t1=$(date +%s.%N)
    up=$(awk '/VmHWM/ {print $2 / 1024}' "/proc/$pid/status")
    nbdcopy "nbd://127.0.0.1:$p/s1" null:
    printf '  %-28s maxRSS %7.1f MiB after start-up (%.2f s), %7.1f MiB after nbdcopy\n' \
        "$name" "$up" "$(echo "$t1 - $t0" | bc)" "$(awk '/VmHWM/ {print $2 / 1024}' "/proc/$pid/status")"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

for size in $SIZES_MIB; do
    synth d.diff "$size"
    echo "== ${size} MiB of 1 MiB records: $(du -m --apparent-size d.diff | cut -f1) MiB diff"
    for b in $BINS; do
        label=${b%%=*}
        bin=${b#*=}
        echo " $label"
        rm -f d.diff.sums img d.diff.zst d.diff.zst.sums
        run "verify --write-sums" "$bin" verify -q --write-sums d.diff
        run "verify --digest (sums)" "$bin" verify -q --digest d.diff
        run "apply --create" "$bin" apply -q --create -o img d.diff
        run "compress" "$bin" compress -q d.diff -o d.diff.zst
        run "verify FILE.zst" "$bin" verify -q d.diff.zst
        if command -v nbdcopy >/dev/null && command -v nbdinfo >/dev/null; then
            serve_rss "serve FILE" "$bin" d.diff
            serve_rss "serve FILE.zst" "$bin" d.diff.zst
        fi
    done
    rm -f d.diff d.diff.sums img d.diff.zst d.diff.zst.sums
done
