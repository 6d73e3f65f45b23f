#!/usr/bin/env bash
# Whole-process benchmark of `rbddiff serve`: `nbdcopy` of a snapshot served from its diff
# chain (a full diff and 9 incrementals, plain and zstd-compressed) vs `nbdcopy` from
# `nbdkit file` serving the applied raw image (goal: >= 0.8x the throughput), and the
# server's peak RSS. Both copies go to /dev/null, so the client's writes cost nothing.
# Needs hyperfine, nbdkit and libnbd-bin (nbdcopy). Environment: SIZE_MIB (default 1024),
# DATA_PCT (default 50), RUNS (default 5), BENCH_DIR (default $TMPDIR or /tmp).
set -euo pipefail

SIZE_MIB=${SIZE_MIB:-1024}
DATA_PCT=${DATA_PCT:-50}
RUNS=${RUNS:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

(cd "$ROOT" && cargo build --release --quiet)
BIN=$ROOT/target/release/rbddiff
WORK=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/rbddiff-bench.XXXXXX")
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; rm -rf "$WORK"' EXIT
cd "$WORK"

echo "== a ${SIZE_MIB} MiB image, ~${DATA_PCT}% data, then 9 rounds of 16 random 1 MiB writes"
head -c $((64 << 20)) /dev/urandom > pool
truncate -s "${SIZE_MIB}M" raw.img
awk -v n="$SIZE_MIB" -v p="$DATA_PCT" 'BEGIN { srand(7); for (i = 0; i < n; i++) if (rand() * 100 < p) print i }' |
    while read -r mib; do
        dd if=pool of=raw.img bs=1M count=1 skip=$((mib % 64)) seek="$mib" conv=notrunc status=none
    done
"$BIN" create -q --from raw.img --to-snap s0 -o s0.diff
chain=(s0.diff)
for k in 1 2 3 4 5 6 7 8 9; do
    cp --sparse=always raw.img prev.img
    awk -v n="$SIZE_MIB" -v k="$k" 'BEGIN { srand(100 + k); for (i = 0; i < 16; i++) print int(rand() * n) }' |
        while read -r mib; do
            dd if=pool of=raw.img bs=1M count=1 skip=$(((mib + k) % 64)) seek="$mib" conv=notrunc status=none
        done
    "$BIN" create -q --from raw.img --base prev.img --from-snap "s$((k - 1))" --to-snap "s$k" -o "s$k.diff"
    chain+=("s$k.diff")
done
zchain=()
for f in "${chain[@]}"; do "$BIN" compress -q "$f" -o "$f.zst"; zchain+=("$f.zst"); done
rm -f applied.img
"$BIN" apply -q --create --to applied.img "${chain[@]}"
cmp raw.img applied.img
echo "chain: $(du -ch "${chain[@]}" | tail -1 | cut -f1) plain, $(du -ch "${zchain[@]}" | tail -1 | cut -f1) compressed"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
serve() { # serve PORT FILES...: starts rbddiff serve, prints its pid
    local p=$1; shift
    # Its stdout must not be the command substitution's pipe, or $(serve ...) never returns.
    "$BIN" serve -q --listen "127.0.0.1:$p" "$@" >/dev/null </dev/null & echo $!
}
P1=$(port); S1=$(serve "$P1" "${chain[@]}"); PIDS+=("$S1")
P2=$(port); S2=$(serve "$P2" "${zchain[@]}"); PIDS+=("$S2")
P3=$(port); nbdkit -r -f -i 127.0.0.1 -p "$P3" file file=applied.img & PIDS+=($!)
sleep 1

echo "== nbdcopy to /dev/null: rbddiff serve (plain chain, zstd chain) vs nbdkit file (raw image)"
hyperfine -N --warmup 1 --runs "$RUNS" --export-json nbd.json \
    -n "nbdkit file" "nbdcopy nbd://127.0.0.1:$P3 null:" \
    -n "rbddiff serve (plain)" "nbdcopy nbd://127.0.0.1:$P1/s9 null:" \
    -n "rbddiff serve (zstd)" "nbdcopy nbd://127.0.0.1:$P2/s9 null:"
python3 - nbd.json <<'PY'
import json, sys
r = {x["command"]: x["mean"] for x in json.load(open(sys.argv[1]))["results"]}
base = r["nbdkit file"]
for k, v in r.items():
    print(f"{k}: {v:.3f} s, throughput {base / v:.2f}x nbdkit file")
PY
for pid in "$S1" "$S2"; do
    echo "rbddiff serve pid $pid peak RSS: $(grep VmHWM /proc/"$pid"/status | awk '{print $2, $3}')"
done
