#!/usr/bin/env bash
# ceph-cluster.sh start DIR | rgw DIR | stop DIR | env DIR
#
# A throw-away single-node Ceph cluster for live tests: 1 mon + 1 memstore OSD,
# bound to 127.0.0.1 only, auth none, pool `rbd`. All state lives under DIR.
#
#   start  bring the cluster up (or find it already up) and print
#          `export CEPH_CONF=...` on stdout; progress goes to stderr
#   rgw    on a started cluster, start an S3 gateway (radosgw, 127.0.0.1 only)
#          with one user, and print its `export AWS_...=...` lines (endpoint,
#          keys, region, AWS_ALLOW_HTTP=true)
#   env    print the export lines again (exit 1 if the cluster is not up)
#   stop   stop the daemons (gateway, OSD, then mon) and wipe the cluster
#          state in DIR, keeping DIR/log
#
# Only PIDs this script recorded in DIR/pids/ are ever signalled, and only if
# /proc/PID/exe is still a ceph daemon. Knobs: CEPH_START_TIMEOUT (s, default
# 90); CEPH_CLUSTER_OWNER=PID makes start leave a watchdog that stops the
# cluster once process PID is gone (so a killed test run leaks no daemons).
set -euo pipefail

usage() { echo "usage: $0 start|rgw|stop|env DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
CMD=$1
mkdir -p "$2"
DIR=$(cd "$2" && pwd)
TIMEOUT=${CEPH_START_TIMEOUT:-90}
POOL=rbd

log() { echo "[ceph-cluster $(date +%T.%3N)] $*" >&2; }

# A recorded daemon counts as running if its process exists and is not a
# zombie: the daemons end up reparented to PID 1, which may reap them late.
pid_of() { [ -f "$DIR/pids/$1.pid" ] && cat "$DIR/pids/$1.pid"; }
running() {
  local st
  [ -n "${1:-}" ] && st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ "$st" != Z ]
}
daemon_up() { running "$(pid_of "$1" || true)"; }
is_up() { [ -f "$DIR/READY" ] && daemon_up mon.a && daemon_up osd.0; }

print_env() {
  echo "export CEPH_CONF=$DIR/ceph.conf"
  [ -f "$DIR/rgw.env" ] && cat "$DIR/rgw.env"
  return 0
}

stop_one() {
  local name=$1 pid exe i
  pid=$(pid_of "$name" || true)
  running "$pid" || return 0
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
  case "$exe" in
    */ceph-mon | */ceph-osd | */radosgw) ;;
    *) log "pid $pid ($name) runs '$exe', not a ceph daemon: leaving it alone"; return 0 ;;
  esac
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 100); do running "$pid" || return 0; sleep 0.05; done
  log "$name (pid $pid) ignored TERM for 5 s: KILL"
  kill -KILL "$pid" 2>/dev/null || true
  for i in $(seq 40); do running "$pid" || return 0; sleep 0.05; done
  log "$name (pid $pid) still present after KILL"
  return 1
}

wipe() {
  rm -rf "$DIR/mon.a" "$DIR/osd.0" "$DIR/run" "$DIR/pids" "$DIR/ceph.conf" \
    "$DIR/keyring" "$DIR/monmap" "$DIR/READY" "$DIR/rgw.a" "$DIR/rgw.env"
}

do_stop() {
  local t0=$SECONDS rc=0
  # The gateway first, then the OSD: an OSD whose mon is already gone waits 5 s
  # for a shutdown ack.
  stop_one rgw.a || rc=1
  stop_one osd.0 || rc=1
  stop_one mon.a || rc=1
  [ $rc -eq 0 ] && wipe
  log "stopped (${DIR})"
  return $rc
}

fail() {
  log "ERROR: $*"
  local f
  for f in "$DIR"/log/*; do
    [ -f "$f" ] && { echo "--- tail $f" >&2; tail -n 20 "$f" >&2; }
  done
  do_stop || true
  exit 1
}

# spawn NAME CMD...: start a daemon in the foreground mode, detached from our
# stdio (a caller that captures our output must see EOF when we exit).
spawn() {
  local name=$1; shift
  nohup "$@" </dev/null >>"$DIR/log/$name.out" 2>&1 &
  echo $! >"$DIR/pids/$name.pid"
}

# wait_for PID WHAT: wait for our own background command PID, failing early
# if a daemon dies.
wait_for() {
  local pid=$1 what=$2
  while running "$pid"; do
    daemon_up mon.a || { kill "$pid" 2>/dev/null; fail "mon.a died during $what"; }
    if [ -f "$DIR/pids/osd.0.pid" ] && ! daemon_up osd.0; then
      kill "$pid" 2>/dev/null; fail "osd.0 died during $what"
    fi
    sleep 0.1
  done
  wait "$pid" || fail "$what failed or timed out"
}

do_start() {
  if is_up; then
    log "already running in $DIR"
    print_env
    return 0
  fi
  for b in ceph-mon ceph-osd ceph-authtool monmaptool ceph rbd; do
    command -v "$b" >/dev/null || { log "ERROR: $b not found (install ceph-mon ceph-osd ceph-common)"; exit 1; }
  done
  [ -d "$DIR/pids" ] && { log "stale state in $DIR: stopping it"; do_stop || exit 1; }
  wipe
  mkdir -p "$DIR/run" "$DIR/log" "$DIR/pids" "$DIR/mon.a" "$DIR/osd.0"
  local t0 port fsid uuid
  t0=$(date +%s%N)
  port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  fsid=$(cat /proc/sys/kernel/random/uuid)

  cat >"$DIR/ceph.conf" <<CONF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$port]
mon initial members = a
public addr = 127.0.0.1
public network = 127.0.0.0/8
ms bind msgr1 = false
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
keyring = $DIR/keyring
run dir = $DIR/run
crash dir = $DIR/run
log file = $DIR/log/\$name.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
mon osd nearfull ratio = .98
mon osd backfillfull ratio = .985
mon osd full ratio = .99
osd failsafe full ratio = .995
rbd cache = false

[mon]
mon data = $DIR/mon.\$id
# commit map changes at once instead of batching them for up to 1 s: every
# snapshot create/remove (a new OSD map epoch) would otherwise take 1 s
paxos propose interval = 0.01
paxos min wait = 0.01

[osd]
osd data = $DIR/osd.\$id
osd objectstore = memstore
memstore device bytes = 2147483648
osd op num shards = 1
osd op num threads per shard = 2
osd class load list = *
osd class default list = *
CONF
  export CEPH_CONF=$DIR/ceph.conf
  unset CEPH_ARGS

  # mon (its mkfs wants a keyring holding mon. even with auth none)
  ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port]" "$DIR/monmap" >/dev/null
  ceph-mon --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/keyring" >"$DIR/log/mon.a.mkfs" 2>&1 \
    || fail "ceph-mon --mkfs"
  spawn mon.a ceph-mon -f -i a
  log "mon.a on 127.0.0.1:$port"

  # osd: `ceph osd new` is also the wait for the mon's quorum
  uuid=$(cat /proc/sys/kernel/random/uuid)
  timeout "$TIMEOUT" ceph --connect-timeout "$TIMEOUT" osd new "$uuid" >"$DIR/osd.0/id" 2>"$DIR/log/osd-new.err" &
  wait_for $! "ceph osd new"
  [ "$(cat "$DIR/osd.0/id")" = 0 ] || fail "ceph osd new gave id '$(cat "$DIR/osd.0/id")', expected 0"
  ceph-osd -i 0 --mkfs --osd-uuid "$uuid" >"$DIR/log/osd.0.mkfs" 2>&1 || fail "ceph-osd --mkfs"
  spawn osd.0 ceph-osd -f -i 0
  log "osd.0 started"

  # pool; `rbd pool init` blocks until the PGs are active: that is the
  # readiness check, confirmed by a probe image create + remove
  timeout "$TIMEOUT" ceph osd pool create "$POOL" 8 8 replicated >/dev/null 2>"$DIR/log/pool-create.err" &
  wait_for $! "ceph osd pool create"
  timeout "$TIMEOUT" rbd pool init "$POOL" 2>"$DIR/log/pool-init.err" &
  wait_for $! "rbd pool init"
  timeout "$TIMEOUT" rbd create --size 1M "$POOL/probe-$$" 2>"$DIR/log/probe.err" &
  wait_for $! "probe rbd create"
  timeout "$TIMEOUT" rbd rm --no-progress "$POOL/probe-$$" 2>>"$DIR/log/probe.err" &
  wait_for $! "probe rbd rm"

  touch "$DIR/READY"
  if [ -n "${CEPH_CLUSTER_OWNER:-}" ]; then
    local self
    self=$(readlink -f "${BASH_SOURCE[0]}")
    nohup bash -c '
      running() { local st; st=$(awk "{print \$3}" "/proc/$1/stat" 2>/dev/null) && [ "$st" != Z ]; }
      while [ -f "$2/READY" ] && running "$3"; do sleep 1; done
      if [ -f "$2/READY" ]; then exec "$1" stop "$2"; fi' _ "$self" "$DIR" "$CEPH_CLUSTER_OWNER" \
      </dev/null >>"$DIR/log/watchdog.out" 2>&1 &
  fi
  log "ready in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  print_env
}

# The S3 gateway on the running cluster. With `auth none` its section needs
# `ms mon client mode = crc`: otherwise it asks the mon for secure mode only
# and retries authentication forever. It creates its pools on start and
# answers about 9 s after the cluster is up.
do_rgw() {
  is_up || { log "ERROR: no running cluster in $DIR (run start first)"; exit 1; }
  export CEPH_CONF=$DIR/ceph.conf
  unset CEPH_ARGS
  if [ -f "$DIR/rgw.env" ] && daemon_up rgw.a; then
    log "gateway already running"
    print_env
    return 0
  fi
  for b in radosgw radosgw-admin curl; do
    command -v "$b" >/dev/null || { log "ERROR: $b not found (install radosgw curl)"; exit 1; }
  done
  local port t0 i
  t0=$(date +%s%N)
  port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$DIR/rgw.a"
  cat >>"$DIR/ceph.conf" <<CONF

[client.rgw.a]
rgw data = $DIR/rgw.a
rgw frontends = beast endpoint=127.0.0.1:$port
rgw enable usage log = false
rgw dns name = 127.0.0.1
ms mon client mode = crc
CONF
  spawn rgw.a radosgw -f -n client.rgw.a
  for i in $(seq $((TIMEOUT * 5))); do
    daemon_up rgw.a || fail "radosgw died on start"
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.2
  done
  curl -s -o /dev/null "http://127.0.0.1:$port/" || fail "radosgw did not answer in ${TIMEOUT} s"
  timeout "$TIMEOUT" radosgw-admin user create --uid=rbddiff-test --display-name=rbddiff-test \
    --access-key=RBDDIFFTESTKEY --secret-key=rbddiff-test-secret >/dev/null 2>"$DIR/log/rgw-user.err" &
  wait_for $! "radosgw-admin user create"
  cat >"$DIR/rgw.env" <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
export AWS_ACCESS_KEY_ID=RBDDIFFTESTKEY
export AWS_SECRET_ACCESS_KEY=rbddiff-test-secret
export AWS_REGION=us-east-1
export AWS_ALLOW_HTTP=true
ENV
  log "gateway on 127.0.0.1:$port ready in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  print_env
}

case "$CMD" in
  start) do_start ;;
  rgw) do_rgw ;;
  stop) do_stop ;;
  env) is_up || { log "no running cluster in $DIR"; exit 1; }; print_env ;;
  *) usage ;;
esac
