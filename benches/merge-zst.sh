#!/usr/bin/env bash
# Whole-process benchmark: merging a chain of compressed archives straight to a compressed
# archive, against merging the same chain uncompressed and then compressing the output
# (same run, same data; the chain is the one benches/merge-vs-cat.sh uses).
#
#   benches/merge-zst.sh [N FULL_MIB INC_MIB IMAGE_MIB]   (default 3 512 170 2048)
#   THREADS, LEVEL, RUNS, WORK override.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${1:-3} FULL=${2:-512} INC=${3:-170} IMAGE=${4:-2048}
THREADS=${THREADS:-$(nproc)}
LEVEL=${LEVEL:-3}
RUNS=${RUNS:-3}
WORK=${WORK:-target/bench-merge-zst}
cargo build --release --quiet --bin rbddiff
RBD=$PWD/target/release/rbddiff
dir=$WORK/n$N
if [ ! -s "$dir/d00.diff" ]; then
    cargo bench --quiet --bench synth -- "$dir" "$N" "$FULL" "$INC" "$IMAGE" > /dev/null
fi
for d in "$dir"/d*.diff; do
    [ -s "${d%.diff}.zst" ] || "$RBD" compress "$d" -o "${d%.diff}.zst" --level "$LEVEL" --threads "$THREADS"
done
Z="--level $LEVEL --threads $THREADS"
# Same result both ways.
"$RBD" merge "$dir"/d*.zst -o "$dir/a.zst" --force $Z
"$RBD" merge "$dir"/d*.diff -o "$dir/b.diff" --force
cmp <(zstd -dc "$dir/a.zst") "$dir/b.diff"

json=$WORK/hyperfine.json
hyperfine --style basic --runs "$RUNS" --warmup 1 --export-json "$json" \
    -n zst-chain-to-zst "$RBD merge $dir/d*.zst -o $dir/a.zst --force $Z" \
    -n plain-merge-then-compress "$RBD merge $dir/d*.diff -o $dir/b.diff --force && $RBD compress $dir/b.diff -o $dir/b.zst --force $Z"

python3 - "$json" <<'PY'
import json, sys
t = {r["command"]: r["median"] for r in json.load(open(sys.argv[1]))["results"]}
r = t["zst-chain-to-zst"] / t["plain-merge-then-compress"]
print(f"merge of .zst chain / (plain merge + compress): {r:.3f}  target <= 1.3  {'ok' if r <= 1.3 else 'MISSED'}")
PY
