#!/usr/bin/env bash
# Whole-process benchmark: merging a chain of compressed archives straight to a compressed
# archive, against merging the same chain uncompressed and then compressing the output
# (same run, same data; the chain is the one benches/merge-vs-cat.sh uses).
#
#   benches/merge-zst.sh [N FULL_MIB INC_MIB IMAGE_MIB]   (default 3 512 170 2048)
#   THREADS, LEVEL, RUNS, WORK override.
#
# Many inputs: merging chains of N = 10 and N = 100 inputs (a 1 GiB full + N - 1 incrementals)
# as .zst archives and as plain files to a plain diff, against `cat` of the output to a new
# file and its fsync; wall time (median of RUNS), peak RSS (/usr/bin/time) and peak RssAnon
# (sampled), which shows the bound on decompressed frames (the archives' mapped pages count in
# the RSS, not in RssAnon). BASE=another rbddiff binary adds its runs, for a comparison.
#
#   benches/merge-zst.sh many            (MANY="10 100" FULL=1024 INC=8 IMAGE=2048, MiB)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = many ]; then
    MANY=${MANY:-10 100} FULL=${FULL:-1024} INC=${INC:-8} IMAGE=${IMAGE:-2048}
    RUNS=${RUNS:-3} WORK=${WORK:-target/bench-merge-zst} BASE=${BASE:-}
    cargo build --release --quiet --bin rbddiff
    RBD=$PWD/target/release/rbddiff
    # "median_seconds max_rss_kib peak_rss_anon_kib" of RUNS runs of a command.
    measure() {
        : > "$WORK/times"
        peak=0 maxrss=0
        for _ in $(seq "$RUNS"); do
            /usr/bin/time -f "%e %M" -o "$WORK/one" "$@" &
            pid=$!
            while kill -0 "$pid" 2>/dev/null; do
                for c in $(pgrep -P "$pid" || true); do
                    v=$(sed -n 's/^RssAnon:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$c/status" 2>/dev/null || true)
                    [ -n "$v" ] && [ "$v" -gt "$peak" ] && peak=$v
                done
                sleep 0.02
            done
            wait "$pid"
            read -r t m < "$WORK/one"
            echo "$t" >> "$WORK/times"
            [ "$m" -gt "$maxrss" ] && maxrss=$m
        done
        med=$(sort -n "$WORK/times" | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
        echo "$med $maxrss $peak"
    }
    printf '%-5s %-28s %9s %8s %12s %14s\n' N run seconds "x cat" "maxRSS MiB" "RssAnon MiB"
    for n in $MANY; do
        dir=$WORK/many-n$n
        if [ ! -s "$dir/d00.diff" ]; then
            cargo bench --quiet --bench synth -- "$dir" "$n" "$FULL" "$INC" "$IMAGE" > /dev/null
        fi
        for d in "$dir"/d*.diff; do
            [ -s "${d%.diff}.zst" ] || "$RBD" compress -q "$d" -o "${d%.diff}.zst" --level 3
        done
        "$RBD" merge -q "$dir"/d*.zst -o "$dir/a.diff" --force
        "$RBD" merge -q "$dir"/d*.diff -o "$dir/b.diff" --force
        cmp "$dir/a.diff" "$dir/b.diff"
        cat_=$(measure sh -c "cat $dir/b.diff > $dir/c.diff && sync $dir/c.diff")
        rm -f "$dir/c.diff"
        tcat=${cat_%% *}
        row() {
            set -- "$1" $2
            printf '%-5s %-28s %9s %8.2f %12.0f %14.1f\n' "$n" "$1" "$2" \
                "$(awk -v a="$2" -v b="$tcat" 'BEGIN { print a / b }')" \
                "$(awk -v k="$3" 'BEGIN { print k / 1024 }')" "$(awk -v k="$4" 'BEGIN { print k / 1024 }')"
        }
        row cat "$cat_"
        row "merge .zst" "$(measure "$RBD" merge -q "$dir"/d*.zst -o "$dir/a.diff" --force)"
        row "merge plain" "$(measure "$RBD" merge -q "$dir"/d*.diff -o "$dir/b.diff" --force)"
        if [ -n "$BASE" ]; then
            row "BASE merge .zst" "$(measure "$BASE" merge -q "$dir"/d*.zst -o "$dir/a.diff" --force)"
            row "BASE merge plain" "$(measure "$BASE" merge -q "$dir"/d*.diff -o "$dir/b.diff" --force)"
        fi
        rm -f "$dir/a.diff" "$dir/b.diff"
    done
    exit 0
fi

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
