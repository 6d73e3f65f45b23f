#!/bin/sh
# Whole-process benchmark of the per-record commands on record-dense diffs (benches/synth_dense.rs:
# 16-byte `w` records with every 16th a `z`, and `z` records only), 10^7 records by default:
#   - `inspect` vs `cat FILE > /dev/null` (page cache warm);
#   - `verify --write-sums` and `verify` vs `cat`, with the sidecar's size;
#   - `compress` vs `zstd -3 -T2` (time and size), and `inspect` of the archive;
#   - then RECORDS/25 records at random places (`z` of random lengths, and 512-byte `w`):
#     archive size vs `zstd -3`, `inspect` of the diff and of the archive vs `cat`.
# Reports wall time and peak RssAnon / RssFile (sampled from /proc) of each command.
#
# usage: benches/dense-records.sh [WORKDIR]   (default target/bench-records; ~1 GB free)
# RECORDS=10000000 by default.
set -eu

cd "$(dirname "$0")/.."
WORK=${1:-target/bench-records}
RECORDS=${RECORDS:-10000000}
cargo build --release --quiet --bin rbddiff --bench synth_dense
BIN=$PWD/target/release/rbddiff
SYNTH=$(ls -t target/release/deps/synth_dense-* | grep -v '\.d$' | head -n 1)
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

# "seconds anon_KiB file_KiB" of one run of "$@" (output discarded).
run() {
    t0=$(date +%s.%N)
    "$@" >/dev/null 2>&1 &
    pid=$!
    anon=0 file=0
    while kill -0 "$pid" 2>/dev/null; do
        a=$(sed -n 's/^RssAnon:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$pid/status" 2>/dev/null || true)
        f=$(sed -n 's/^RssFile:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$pid/status" 2>/dev/null || true)
        [ -n "$a" ] && [ "$a" -gt "$anon" ] && anon=$a
        [ -n "$f" ] && [ "$f" -gt "$file" ] && file=$f
        sleep 0.005
    done
    wait "$pid" || true
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" -v x="$anon" -v y="$file" 'BEGIN { printf "%.3f %d %d", b - a, x, y }'
}

# Best wall time of three runs of "$@" (output discarded).
best() {
    b=
    for _ in 1 2 3; do
        t0=$(date +%s.%N)
        "$@" >/dev/null 2>&1 || true
        t1=$(date +%s.%N)
        b=$(awk -v a="$t0" -v c="$t1" -v b="$b" 'BEGIN { t = c - a; if (b == "" || t < b) b = t; printf "%.3f", b }')
    done
    echo "$b"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.2f", a / b }'; }

printf '%-6s %-22s %8s %8s %9s %9s %s\n' mix command time_s x_cat anon_KiB file_KiB note
for mix in w z; do
    dir=$WORK/$mix
    rm -rf "$dir"
    if [ "$mix" = z ]; then "$SYNTH" "$dir" 1 "$RECORDS" z >/dev/null; else "$SYNTH" "$dir" 1 "$RECORDS" >/dev/null; fi
    f=$dir/d00.diff
    size=$(stat -c %s "$f")
    cat "$f" >/dev/null
    cat_s=$(best sh -c "cat '$f' > /dev/null")
    printf '%-6s %-22s %8s %8s %9s %9s %s\n' "$mix" cat "$cat_s" 1.00 - - "$size bytes"
    line() { # name, then the command
        name=$1
        shift
        best_s=$(best "$@")
        set -- $(run "$@")
        printf '%-6s %-22s %8s %8s %9s %9s %s\n' "$mix" "$name" "$best_s" "$(ratio "$best_s" "$cat_s")" "$2" "$3" "$note"
    }
    note=
    line inspect "$BIN" inspect "$f"
    rm -f "$f.sums"
    "$BIN" verify --quiet --write-sums "$f" >/dev/null
    note="sidecar $(stat -c %s "$f.sums") bytes ($(ratio "$(stat -c %s "$f.sums")00" "$size") %)"
    line "verify --write-sums" "$BIN" verify --quiet --write-sums "$f"
    note=
    line verify "$BIN" verify --quiet "$f"
    zstd_s=$(best zstd -3 -T2 -q -f "$f" -o "$dir/ref.zst")
    printf '%-6s %-22s %8s %8s %9s %9s %s\n' "$mix" "zstd -3 -T2" "$zstd_s" "$(ratio "$zstd_s" "$cat_s")" - - "$(stat -c %s "$dir/ref.zst") bytes"
    "$BIN" compress --quiet --no-progress -f "$f" -o "$dir/a.zst"
    note="$(stat -c %s "$dir/a.zst") bytes, $(ratio "$(stat -c %s "$dir/a.zst")" "$(stat -c %s "$dir/ref.zst")")x zstd; time $(ratio "$(best "$BIN" compress --quiet --no-progress -f "$f" -o "$dir/a.zst")" "$zstd_s")x zstd"
    line compress "$BIN" compress --quiet --no-progress -f "$f" -o "$dir/a.zst"
    note=
    line "inspect .zst" "$BIN" inspect "$dir/a.zst"
    rm -rf "$dir"
done

# Heads at random places (index blocks that compress badly are left out of the archive's
# index): archive size vs `zstd -3`, and `inspect` of the archive vs of the diff.
for mix in scattered scattered-w; do
    dir=$WORK/$mix
    rm -rf "$dir"
    n=$((RECORDS / 25))
    "$SYNTH" "$dir" 1 "$n" "$mix" >/dev/null
    f=$dir/d00.diff
    cat "$f" >/dev/null
    zstd -3 -T2 -q -f "$f" -o "$dir/ref.zst"
    "$BIN" compress --quiet --no-progress -f "$f" -o "$dir/a.zst"
    printf '%-12s %-22s %s\n' "$mix" "$n records" "$(stat -c %s "$f") bytes; zstd -3 $(stat -c %s "$dir/ref.zst"); archive $(stat -c %s "$dir/a.zst") ($(ratio "$(stat -c %s "$dir/a.zst")" "$(stat -c %s "$dir/ref.zst")")x zstd)"
    note=
    cat_s=$(best sh -c "cat '$f' > /dev/null")
    line inspect "$BIN" inspect "$f"
    line "inspect .zst" "$BIN" inspect "$dir/a.zst"
    rm -rf "$dir"
done
