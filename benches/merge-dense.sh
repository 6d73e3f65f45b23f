#!/bin/sh
# Whole-process benchmark of `rbddiff merge` on record-dense chains: N = 2 and 10 inputs holding
# 10^6, 10^7 and 10^8 small records in all (benches/synth_dense.rs: 16-byte `w` and `z` records,
# `z` records only at 10^8; each input clipping the one before), against, in the same run:
#   - `cat` of the merged output to a new file;
#   - chained `rbd merge-diff` over the same inputs (when `rbd` is installed; only up to
#     RBD_MAX records, 10^7 by default: at 10^8 it would run for hours).
# Reports wall time, peak RSS (/usr/bin/time -v, which counts mapped file pages) and peak
# RssAnon (sampled from /proc) of each merge.
#
# usage: benches/merge-dense.sh [WORKDIR]   (default target/bench-dense; needs ~4 GB free)
# SIZES="2:1000000 10:1000000 2:10000000 10:10000000 2:100000000:z 10:100000000:z" by default
# (N:RECORDS, with :z for `z` records only).
set -eu

cd "$(dirname "$0")/.."
WORK=${1:-target/bench-dense}
SIZES=${SIZES:-"2:1000000 10:1000000 2:10000000 10:10000000 2:100000000:z 10:100000000:z"}
RBD_MAX=${RBD_MAX:-10000000}
cargo build --release --quiet --bin rbddiff --bench synth_dense
BIN=$PWD/target/release/rbddiff
SYNTH=$(ls -t target/release/deps/synth_dense-* | grep -v '\.d$' | head -n 1)
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
HAVE_RBD=0
command -v rbd >/dev/null 2>&1 && HAVE_RBD=1
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 2; }

# "seconds maxrss_kib" of one run of "$@" (stdout and stderr of the command discarded).
timed() {
    /usr/bin/time -f "%e %M" -o "$WORK/time.out" "$@" >/dev/null 2>&1
    cat "$WORK/time.out"
}

# Peak RssAnon (KiB) of one run of "$@".
peak_anon() {
    "$@" >/dev/null 2>&1 &
    pid=$!
    peak=0
    while kill -0 "$pid" 2>/dev/null; do
        v=$(sed -n 's/^RssAnon:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$pid/status" 2>/dev/null || true)
        [ -n "$v" ] && [ "$v" -gt "$peak" ] && peak=$v
        sleep 0.01
    done
    wait "$pid"
    echo "$peak"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }

printf '%-4s %-11s %9s %9s %10s %9s %9s %9s %9s %9s\n' N records merge_s rss_MiB anon_MiB cat_s rbd_s rbd_MiB rbd/merge merge/cat
for spec in $SIZES; do
    n=${spec%%:*} rest=${spec#*:}
    recs=${rest%%:*} mix=
    [ "$rest" = "$recs" ] || mix=${rest#*:}
    dir=$WORK/n${n}_r$recs$mix
    rm -rf "$dir"
    "$SYNTH" "$dir" "$n" "$recs" $mix >/dev/null
    set -- "$dir"/d*.diff
    rm -f "$dir/out.diff"
    sync
    m=$(timed "$BIN" merge --quiet --no-progress "$@" -o "$dir/out.diff")
    ms=${m% *} mk=${m#* }
    rm -f "$dir/out.diff"
    anon=$(peak_anon "$BIN" merge --quiet --no-progress "$@" -o "$dir/out.diff")
    c=$(timed sh -c "cat '$dir/out.diff' > '$dir/cat.out'")
    cs=${c% *}
    rm -f "$dir/cat.out"
    rs=- rk=-
    if [ "$HAVE_RBD" = 1 ] && [ "$recs" -le "$RBD_MAX" ]; then
        t0=$(date +%s.%N)
        prev=$1
        shift
        rk=0 i=0
        for f in "$@"; do
            i=$((i + 1))
            r=$(timed rbd merge-diff --no-progress "$prev" "$f" "$dir/rbd$i.diff")
            k=${r#* }
            [ "$k" -gt "$rk" ] && rk=$k
            [ "$prev" = "$dir/d00.diff" ] || rm -f "$prev"
            prev=$dir/rbd$i.diff
        done
        t1=$(date +%s.%N)
        rs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
        cmp -s "$prev" "$dir/out.diff" || echo "note: rbd merge-diff output differs in bytes (record cuts)" >&2
        rm -f "$prev"
        rk=$((rk / 1024))
    fi
    printf '%-4s %-11s %9s %9s %10s %9s %9s %9s %9s %9s\n' "$n" "$recs$mix" "$ms" "$((mk / 1024))" \
        "$((anon / 1024))" "$cs" "$rs" "$rk" "$(ratio "$rs" "$ms")" "$(ratio "$ms" "$cs")"
    rm -rf "$dir"
done
