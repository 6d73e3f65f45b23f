#!/usr/bin/env bash
# Whole-process benchmarks for `rbddiff apply` and `rbddiff verify`, in the same run as their
# yardsticks:
#   1. `rbddiff apply --create FULL.diff` vs `cp --sparse=always RAW` of the same image
#      (target: <= 1.2x), and the restored image must stay as sparse as the original;
#   2. checksum `rbddiff verify FILE` (sidecar present) vs a page-cache read `cat FILE`
#      (target: <= 1.5x).
# Needs hyperfine and python3. Environment: SIZE_MIB (default 1024), DATA_PCT (default 30),
# RUNS (default 5), BENCH_DIR (default $TMPDIR or /tmp).
set -euo pipefail

SIZE_MIB=${SIZE_MIB:-1024}
DATA_PCT=${DATA_PCT:-30}
RUNS=${RUNS:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

(cd "$ROOT" && cargo build --release --quiet)
BIN=$ROOT/target/release/rbddiff
WORK=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/rbddiff-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

echo "== synthesizing a ${SIZE_MIB} MiB raw image, ~${DATA_PCT}% data (random 1 MiB extents, some all-zero)"
head -c $((64 << 20)) /dev/urandom > pool
truncate -s "${SIZE_MIB}M" raw.img
# Deterministic choice of data extents; every 10th data extent is written zeros (allocated but
# zero: both cp --sparse=always and rbddiff must skip it).
awk -v n="$SIZE_MIB" -v p="$DATA_PCT" 'BEGIN { srand(42); for (i = 0; i < n; i++) if (rand() * 100 < p) print i }' > extents
k=0
while read -r mib; do
    if (( k % 10 == 9 )); then
        dd if=/dev/zero of=raw.img bs=1M count=1 seek="$mib" conv=notrunc status=none
    else
        dd if=pool of=raw.img bs=1M count=1 skip=$((k % 64)) seek="$mib" conv=notrunc status=none
    fi
    k=$((k + 1))
done < extents
sync raw.img
echo "raw image: $(du -k --apparent-size raw.img | cut -f1) KiB apparent, $(du -k raw.img | cut -f1) KiB allocated"

"$BIN" create --from raw.img --to-snap bench -o full.diff
"$BIN" verify --write-sums full.diff > /dev/null

echo "== apply --create vs cp --sparse=always"
hyperfine -N --warmup 1 --runs "$RUNS" --export-json apply.json \
    --prepare 'rm -f out.img out.img.rbddiff-state cp.img cpsync.img' \
    -n "rbddiff apply --create" "$BIN apply full.diff --create --to out.img" \
    -n "cp --sparse=always" "cp --sparse=always raw.img cp.img" \
    -n "cp --sparse=always + fsync" "sh -c 'cp --sparse=always raw.img cpsync.img && sync cpsync.img'"

# hyperfine's last --prepare removed the outputs: make them once more and compare.
rm -f out.img out.img.rbddiff-state
"$BIN" apply full.diff --create --to out.img > /dev/null
cmp raw.img out.img
cp --sparse=always raw.img cp.img
RAW_K=$(du -k raw.img | cut -f1)
OUT_K=$(du -k out.img | cut -f1)
CP_K=$(du -k cp.img | cut -f1)
echo "allocated KiB: raw $RAW_K, rbddiff apply $OUT_K, cp --sparse=always $CP_K"
if (( OUT_K > CP_K + 1024 )); then
    echo "FAIL: restored image is less sparse than cp's copy" >&2
    exit 1
fi

echo "== checksum verify vs page-cache read"
hyperfine -N --warmup 2 --runs $((RUNS * 2)) --export-json verify.json \
    -n "rbddiff verify (sums)" "$BIN verify full.diff" \
    -n "cat > /dev/null" "cat full.diff"

python3 - <<'PY'
import json
def load(f):
    return {r["command"]: r for r in json.load(open(f))["results"]}
a, v = load("apply.json"), load("verify.json")
def ratio(d, x, y, k):
    return d[x][k] / d[y][k]
# Medians (and minimums) resist the noise of a shared machine better than means.
for k in ("median", "min"):
    print(f"[{k}] apply / cp --sparse=always:         {ratio(a, 'rbddiff apply --create', 'cp --sparse=always', k):.2f}x (target <= 1.2x)")
    print(f"[{k}] apply / cp --sparse=always + fsync: {ratio(a, 'rbddiff apply --create', 'cp --sparse=always + fsync', k):.2f}x (apply fsyncs its target)")
    print(f"[{k}] verify with sums / cat:             {ratio(v, 'rbddiff verify (sums)', 'cat > /dev/null', k):.2f}x (target <= 1.5x)")
PY
