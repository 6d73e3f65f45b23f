#!/usr/bin/env bash
# Whole-process benchmark: rbddiff compress/decompress/inspect against the zstd CLI, same
# machine, same run, same data (a synthetic mixed diff: text, random and zero blocks).
#
#   benches/compress-vs-zstd.sh [MIB]      (default 1024; THREADS, LEVEL, RUNS, WORK override)
#
# Wall-clock medians decide the ratios; CPU-time ratios are printed too, since on a busy
# machine wall-clock time depends on how many cores the other processes leave free.
# Both tools write to stdout, which hyperfine discards, so neither pays for writing or
# fsyncing the result; then both write a file (rbddiff fsyncs it before renaming it into
# place, zstd does not). Prints the ratios checked against the targets.
set -euo pipefail
cd "$(dirname "$0")/.."

MIB=${1:-1024}
THREADS=${THREADS:-$(nproc)}
LEVEL=${LEVEL:-3}
RUNS=${RUNS:-3}
WORK=${WORK:-target/bench-compress}
mkdir -p "$WORK"
DIFF=$WORK/mixed-$MIB.diff
OURS=$WORK/ours.zst
THEIRS=$WORK/theirs.zst

cargo build --release --quiet --bin rbddiff
RBD=target/release/rbddiff
if [ ! -s "$DIFF" ]; then
    cargo bench --quiet --bench synth_mixed -- "$DIFF" "$MIB"
fi
$RBD compress "$DIFF" -o "$OURS" --force --threads "$THREADS" --level "$LEVEL"
zstd -q -f -T"$THREADS" -"$LEVEL" "$DIFF" -o "$THEIRS"
cmp <(zstd -dc "$OURS") "$DIFF"

json=$WORK/hyperfine.json
hyperfine -N --style basic --runs "$RUNS" --warmup 1 --export-json "$json" \
    -n ours-compress "$RBD compress $DIFF -o - --threads $THREADS --level $LEVEL" \
    -n zstd-compress "zstd -q -c -T$THREADS -$LEVEL $DIFF" \
    -n ours-compress-file "$RBD compress $DIFF -o $WORK/file.zst --force --threads $THREADS --level $LEVEL" \
    -n zstd-compress-file "zstd -q -f -T$THREADS -$LEVEL $DIFF -o $WORK/file-zstd.zst" \
    -n ours-decompress "$RBD decompress $OURS -o - --threads $THREADS" \
    -n zstd-decompress "zstd -q -dc $THEIRS" \
    -n zstd-decompress-ours "zstd -q -dc $OURS" \
    -n ours-inspect "$RBD inspect $OURS"

python3 - "$json" "$DIFF" "$OURS" "$THEIRS" <<'PY'
import json, os, sys
j = json.load(open(sys.argv[1]))
t = {r["command"]: r["median"] for r in j["results"]}
cpu = {r["command"]: r["user"] + r["system"] for r in j["results"]}
size = os.path.getsize(sys.argv[2])
ours, theirs = os.path.getsize(sys.argv[3]), os.path.getsize(sys.argv[4])
mib = size / 2**20
def row(name, value, target, ok):
    print(f"{name:<44} {value:>8.3f}  target {target:<8} {'ok' if ok else 'MISSED'}")
print(f"input {mib:.0f} MiB; medians: " + ", ".join(f"{k} {v:.3f}s" for k, v in t.items()))
print(f"throughput: ours compress {mib / t['ours-compress']:.0f} MiB/s, zstd {mib / t['zstd-compress']:.0f} MiB/s; "
      f"ours decompress {mib / t['ours-decompress']:.0f} MiB/s, zstd {mib / t['zstd-decompress']:.0f} MiB/s")
r = t["zstd-compress"] / t["ours-compress"]; row("compress throughput vs zstd (x)", r, ">= 1.0", r >= 1.0)
r = t["zstd-compress-file"] / t["ours-compress-file"]; row("compress to a file, throughput vs zstd (x)", r, ">= 1.0", r >= 1.0)
r = ours / theirs; row("compressed size vs zstd (x)", r, "<= 1.02", r <= 1.02)
r = t["zstd-decompress"] / t["ours-decompress"]; row("decompress throughput vs zstd -d (x)", r, ">= 0.9", r >= 0.9)
r = t["ours-inspect"] / t["zstd-decompress-ours"]; row("inspect .zst / zstd -d of it (fraction)", r, "<= 0.01", r <= 0.01)
print("CPU time (user+system), informative on a shared machine:")
r = cpu["zstd-compress"] / cpu["ours-compress"]; print(f"  compress CPU efficiency vs zstd (x)        {r:8.3f}")
r = cpu["zstd-compress-file"] / cpu["ours-compress-file"]; print(f"  the same, to a file (x)                    {r:8.3f}")
r = cpu["zstd-decompress"] / cpu["ours-decompress"]; print(f"  decompress CPU efficiency vs zstd -d (x)   {r:8.3f}")
PY
