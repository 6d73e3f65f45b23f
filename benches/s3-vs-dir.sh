#!/usr/bin/env bash
# Whole-process benchmark of archives on object storage: `backup` into a real radosgw
# (s3://BUCKET/PREFIX) vs the same backup into a local directory, and `restore` from each,
# with the client's peak RSS; `rbd export-diff` into a file and `rbd import-diff` of it are
# the yardsticks. A throw-away cluster and gateway come from tests/harness/ceph-cluster.sh
# (memstore OSD, 127.0.0.1), so the gateway's storage is memory and the directory is the
# page cache: the ratios measure the client and the protocol, not a disk.
#
# Each row runs RUNS times (default 3), every run a full backup into a new directory or
# prefix (plain, then --compress), and its restore into a new image; prints the median wall
# time, the largest maxRSS (GNU time) and the ratios. Environment: SIZE_MIB (default 512),
# DATA_PCT (default 50), RUNS, BENCH_DIR (default $TMPDIR or /tmp). Needs ceph-mon,
# ceph-osd, ceph-common, radosgw, curl, python3 and GNU time.
set -euo pipefail

SIZE_MIB=${SIZE_MIB:-512}
DATA_PCT=${DATA_PCT:-50}
RUNS=${RUNS:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
(cd "$ROOT" && cargo build --release --quiet)
BIN=$ROOT/target/release/rbddiff
HARNESS=$ROOT/tests/harness/ceph-cluster.sh
WORK=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/rbddiff-s3.XXXXXX")
cleanup() {
    bash "$HARNESS" stop "$WORK/ceph" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"

echo "== cluster and gateway"
eval "$(bash "$HARNESS" start "$WORK/ceph")"
eval "$(bash "$HARNESS" rgw "$WORK/ceph")"
export CEPH_CONF AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_ENDPOINT_URL AWS_REGION AWS_ALLOW_HTTP
BUCKET=bench
curl -s -S -f -X PUT --aws-sigv4 "aws:amz:$AWS_REGION:s3" \
    --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
    -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$AWS_ENDPOINT_URL/$BUCKET" >/dev/null

echo "== a ${SIZE_MIB} MiB image, ~${DATA_PCT}% data in 4 MiB extents"
head -c $((64 << 20)) /dev/urandom > pool
truncate -s "${SIZE_MIB}M" raw.img
awk -v n=$((SIZE_MIB / 4)) -v p="$DATA_PCT" \
    'BEGIN { srand(7); for (i = 0; i < n; i++) if (rand() * 100 < p) print i }' > extents
k=0
while read -r blk; do
    dd if=pool of=raw.img bs=4M count=1 skip=$((k % 16)) seek="$blk" conv=notrunc status=none
    k=$((k + 1))
done < extents
rbd import --no-progress raw.img rbd/src
rm -f raw.img pool
rbd snap create rbd/src@base

: > rows
# rmimg SPEC: removes an image and its snapshots (import-diff leaves the end snapshot).
rmimg() {
    rbd snap purge --no-progress "$1" >/dev/null 2>&1 || true
    rbd rm --no-progress "$1" >/dev/null
}
# measure LABEL CMD...: one run; wall seconds, the peak RSS (KiB) of the process itself
# (its VmHWM, polled every 20 ms: rbd's own memory, a child's, is not in it) and that of the
# whole tree (GNU time: the largest of the process and its children, rbd included) are
# appended to `rows`.
measure() {
    local label=$1 pid hwm=0 v
    shift
    /usr/bin/time -f '%e %M' -o t.txt "$@" >/dev/null &
    local timer=$! i
    pid=
    for i in $(seq 200); do
        pid=$(pgrep -P "$timer" | head -1 || true)
        [ -n "$pid" ] && break
        sleep 0.005
    done
    while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; do
        v=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        [ -n "$v" ] && hwm=$v
        sleep 0.02
    done
    wait
    echo "$label $(cat t.txt) $hwm" >> rows
}
for i in $(seq "$RUNS"); do
    echo "== run $i of $RUNS"
    measure "rbd-export-diff" rbd export-diff --no-progress rbd/src@base "ref$i.diff"
    measure "rbd-import-diff" sh -c "rbd create --size ${SIZE_MIB}M rbd/ref$i && rbd import-diff --no-progress ref$i.diff rbd/ref$i"
    rm -f "ref$i.diff"
    rmimg "rbd/ref$i"
    for z in plain zst; do
        flag=()
        [ "$z" = zst ] && flag=(--compress)
        measure "backup-dir-$z" "$BIN" backup rbd/src "dir-$z-$i" --snap "d$z$i" "${flag[@]}"
        measure "backup-s3-$z" "$BIN" backup rbd/src "s3://$BUCKET/p-$z-$i" --snap "s$z$i" "${flag[@]}"
        measure "restore-dir-$z" "$BIN" restore "dir-$z-$i" "rbd/rd$z$i" --create
        measure "restore-s3-$z" "$BIN" restore "s3://$BUCKET/p-$z-$i" "rbd/rs$z$i" --create
        a=$(rbd export --no-progress "rbd/rd$z$i" - | sha256sum)
        b=$(rbd export --no-progress "rbd/rs$z$i" - | sha256sum)
        c=$(rbd export --no-progress "rbd/src@d$z$i" - | sha256sum)
        if [ "$a" != "$c" ] || [ "$b" != "$c" ]; then
            echo "FAIL: a restored image differs from the source" >&2
            exit 1
        fi
        rmimg "rbd/rd$z$i"
        rmimg "rbd/rs$z$i"
        rm -rf "dir-$z-$i"
    done
done

python3 - "$SIZE_MIB" <<'PY'
import statistics, sys
size = int(sys.argv[1])
rows = {}
for line in open("rows"):
    label, secs, tree, own = line.split()
    rows.setdefault(label, []).append((float(secs), int(tree), int(own)))
med = {k: statistics.median(s for s, _, _ in v) for k, v in rows.items()}
tree = {k: max(r for _, r, _ in v) / 1024 for k, v in rows.items()}
own = {k: max(r for _, _, r in v) / 1024 for k, v in rows.items()}
print(f"\n{'':18} {'median s':>9} {'MiB/s':>7} {'own peak MiB':>13} {'tree peak MiB':>14}")
for k in rows:
    print(f"{k:18} {med[k]:9.2f} {size / med[k]:7.0f} {own[k]:13.1f} {tree[k]:14.1f}")
print()
for z in ("plain", "zst"):
    print(f"backup  s3 / dir ({z}):  {med[f'backup-s3-{z}'] / med[f'backup-dir-{z}']:.2f}x")
    print(f"restore s3 / dir ({z}):  {med[f'restore-s3-{z}'] / med[f'restore-dir-{z}']:.2f}x")
print(f"backup dir / rbd export-diff:  {med['backup-dir-plain'] / med['rbd-export-diff']:.2f}x")
print(f"backup s3 / rbd export-diff:   {med['backup-s3-plain'] / med['rbd-export-diff']:.2f}x")
print(f"restore s3 / rbd import-diff:  {med['restore-s3-plain'] / med['rbd-import-diff']:.2f}x")
PY
