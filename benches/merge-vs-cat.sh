#!/bin/sh
# Whole-process benchmark of `rbddiff merge` against, in the same run:
#   - `cat` writing the same number of bytes (the merged output) to a new file, plain and
#     followed by an fsync (`sync FILE`), since rbddiff fsyncs its output before renaming it;
#   - `rbd merge-diff` chained over the same inputs (when `rbd` is installed), as users compact
#     a chain today: one run per input, each rewriting everything merged so far.
# It also samples the peak RssAnon of the merge process.
#
# usage: benches/merge-vs-cat.sh [WORKDIR]   (default target/bench-merge; needs ~3 GB free)
# Sizes (MiB) can be changed with N3_FULL N3_INC N3_IMAGE N30_FULL N30_INC N30_IMAGE and the
# number of timed runs with RUNS (medians are reported).
set -eu

cd "$(dirname "$0")/.."
WORK=${1:-target/bench-merge}
RUNS=${RUNS:-9}
N3_FULL=${N3_FULL:-512} N3_INC=${N3_INC:-170} N3_IMAGE=${N3_IMAGE:-2048}
N30_FULL=${N30_FULL:-300} N30_INC=${N30_INC:-13} N30_IMAGE=${N30_IMAGE:-1024}

cargo build --release --quiet --bin rbddiff
BIN=$PWD/target/release/rbddiff
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
HAVE_RBD=0
command -v rbd >/dev/null 2>&1 && HAVE_RBD=1

# Wall time in seconds of one run of command $2, after running $1 (untimed).
time1() {
    sh -c "$1"
    t0=$(date +%s.%N)
    sh -c "$2"
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", b - a }'
}

median() {
    sort -n "$1" | awk '{ v[NR] = $1 } END { if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.3f", m }'
}

# Peak RssAnon (KiB) of one run of the merge.
peak_rss_anon() {
    rm -f "$WORK/out.diff"
    "$@" &
    pid=$!
    peak=0
    while kill -0 "$pid" 2>/dev/null; do
        v=$(sed -n 's/^RssAnon:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$pid/status" 2>/dev/null || true)
        [ -n "$v" ] && [ "$v" -gt "$peak" ] && peak=$v
        sleep 0.005
    done
    wait "$pid"
    echo "$peak"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

scenario() {
    n=$1 full=$2 inc=$3 image=$4
    dir=$WORK/n$n
    rm -rf "$dir"
    cargo bench --quiet --bench synth -- "$dir" "$n" "$full" "$inc" "$image" >/dev/null
    inputs=$(ls "$dir"/d*.diff | tr "\n" " ")
    in_bytes=$(cat $inputs | wc -c)
    "$BIN" merge $inputs -o "$dir/ref.diff" --force --json > "$dir/stats.json"
    out_bytes=$(wc -c < "$dir/ref.diff")
    # Warm the page cache for everyone.
    cat $inputs "$dir/ref.diff" > /dev/null
    # Interleaved runs (merge, cat, cat + fsync in turn) so that all three see the same
    # machine load; the medians are compared. Dirty pages are flushed before each run.
    : > "$WORK/t_merge"; : > "$WORK/t_cat"; : > "$WORK/t_catsync"
    r=0
    while [ "$r" -lt "$RUNS" ]; do
        time1 "rm -f $dir/out.diff; sync" "$BIN merge $inputs -o $dir/out.diff" >> "$WORK/t_merge"
        time1 "rm -f $dir/cat.out; sync" "cat $dir/ref.diff > $dir/cat.out" >> "$WORK/t_cat"
        time1 "rm -f $dir/cat.out; sync" "cat $dir/ref.diff > $dir/cat.out && sync $dir/cat.out" >> "$WORK/t_catsync"
        r=$((r + 1))
    done
    t_merge=$(median "$WORK/t_merge")
    t_cat=$(median "$WORK/t_cat")
    t_catsync=$(median "$WORK/t_catsync")
    cmp -s "$dir/out.diff" "$dir/ref.diff"
    rss=$(peak_rss_anon "$BIN" merge $inputs -o "$dir/out.diff" --force)
    extents=$(sed -n 's/.*"extents": *\([0-9]*\).*/\1/p' "$dir/stats.json")
    echo "== N=$n: full $full MiB + $((n - 1)) x ~$inc MiB; inputs $in_bytes B -> output $out_bytes B, $extents extents"
    echo "   rbddiff merge        $t_merge s"
    echo "   cat (same bytes)     $t_cat s    merge/cat       = $(ratio "$t_merge" "$t_cat")"
    echo "   cat + fsync          $t_catsync s    merge/cat+fsync = $(ratio "$t_merge" "$t_catsync")"
    echo "   merge peak RssAnon   $rss KiB"
    if [ "$HAVE_RBD" = 1 ]; then
        chain="set -e; cd $dir; rm -f m*.rbd; prev=d00.diff; i=1; for d in \$(ls d*.diff | tail -n +2); do rbd -c /dev/null merge-diff --no-progress \$prev \$d m\$i.rbd; [ \$prev = d00.diff ] || rm -f \$prev; prev=m\$i.rbd; i=\$((i+1)); done"
        t_rbd=$(time1 "sync" "$chain" | awk '{ printf "%.3f", $1 }')
        echo "   chained rbd merge-diff $t_rbd s    rbd/merge       = $(ratio "$t_rbd" "$t_merge")  (target >= $((n - 1)))"
        rm -f "$dir"/m*.rbd
    fi
    rm -f "$dir/out.diff" "$dir/cat.out"
}

scenario 3 "$N3_FULL" "$N3_INC" "$N3_IMAGE"
scenario 30 "$N30_FULL" "$N30_INC" "$N30_IMAGE"
