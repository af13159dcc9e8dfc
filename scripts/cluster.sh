#!/usr/bin/env bash
# `make cluster`: voicegate as an operator runs it at scale, on one machine.
#
#   Kamailio (deploy/kamailio/kamailio.cfg, dispatcher) on 127.0.0.1:5080
#     ├── node1  SIP 127.0.0.2:5060  HTTP 127.0.0.2:8081
#     ├── node2  SIP 127.0.0.3:5060  HTTP 127.0.0.3:8082
#     └── node3  SIP 127.0.0.4:5060  HTTP 127.0.0.4:8083
#
# Any 127.x address works on Linux without set-up. Each node keeps its state
# under cluster/nodeN/ (config/, recordings/, voicegate.log); Kamailio logs to
# cluster/kamailio.log. Agents are reached through the PBX of
# ../shared/harness (Kamailio on 127.0.0.1:5070, started here when it is not
# already running). A node that crashes is restarted after a second (as
# systemd's Restart=on-failure would) and repairs its recordings on start; a
# node that drained and exited cleanly is not. Ctrl-C or SIGTERM: every node
# drains (its calls finish, up to [shutdown] grace_s), then Kamailio stops.
#
# Knobs (environment): CLUSTER_DIR (cluster), CLUSTER_CONFIG (sip-config),
# CLUSTER_LISTEN (127.0.0.1:5080), CLUSTER_NODES ("127.0.0.2 127.0.0.3
# 127.0.0.4"), CLUSTER_SIP_PORT (5060), CLUSTER_HTTP_BASE (8080: node N gets
# base+N), CLUSTER_RTP_BASE (20000), CLUSTER_PING (probe interval, 2 s),
# CLUSTER_MAX_CALLS ("N1 N2 N3": each node's [sip] max_calls), CLUSTER_PBX
# (auto|0), CLUSTER_TRUNK_NETS (127.0.0.0/8), CLUSTER_RESTART_S (1: a crashed
# node's restart delay), CLUSTER_PIKE (40: requests per 2 s one source may
# send the edge; load tests raise it), CLUSTER_ASR_THREADS (1: Whisper
# threads per node), VOICEGATE (the binary).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=${VOICEGATE:-$ROOT/target/release/voicegate}
DIR=${CLUSTER_DIR:-cluster}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
CONFIG=${CLUSTER_CONFIG:-sip-config}
LISTEN=${CLUSTER_LISTEN:-127.0.0.1:5080}
PROXY_IP=${LISTEN%:*}
read -r -a NODES <<<"${CLUSTER_NODES:-127.0.0.2 127.0.0.3 127.0.0.4}"
read -r -a MAX_CALLS <<<"${CLUSTER_MAX_CALLS:-}"
SIP_PORT=${CLUSTER_SIP_PORT:-5060}
HTTP_BASE=${CLUSTER_HTTP_BASE:-8080}
RTP_BASE=${CLUSTER_RTP_BASE:-20000}
PING=${CLUSTER_PING:-2}
TRUNK_NETS=${CLUSTER_TRUNK_NETS:-127.0.0.0/8}
RESTART_S=${CLUSTER_RESTART_S:-1}
PIKE=${CLUSTER_PIKE:-40}
# Several nodes share this machine's cores: one Whisper thread per node by
# default (whisper.cpp's threads spin while they wait for each other, and
# oversubscribed spinning threads starve every node). Real nodes on their
# own machines keep gateway.toml's settings.
ASR_THREADS=${CLUSTER_ASR_THREADS:-1}
HARNESS=$ROOT/../shared/harness/kamailio.cfg

say() { echo "cluster: $*" >&2; }
die() { say "$*"; exit 1; }

[ -x "$BIN" ] || die "$BIN is missing: run \`make build\` (or \`make cluster\`, which builds)"
command -v kamailio >/dev/null || die "kamailio is not installed (scripts/bootstrap.sh installs it)"
[ -f "$CONFIG/gateway.toml" ] || die "$CONFIG/gateway.toml not found (CLUSTER_CONFIG)"
udp_busy() { ss -Hulnp 2>/dev/null | awk '{print $4}' | grep -qx "$1"; }
tcp_busy() { ss -Htlnp 2>/dev/null | awk '{print $4}' | grep -qx "$1"; }
udp_busy "$LISTEN" && die "udp $LISTEN is already in use (another cluster running? CLUSTER_LISTEN)"

rm -f "$DIR/.stopping"
pids=()
: >"$DIR/dispatcher.list"
echo "# Written by scripts/cluster.sh: setid uri flags priority attrs" >>"$DIR/dispatcher.list"

# One configuration per node: the shared one with this node's addresses.
n=0
for ip in "${NODES[@]}"; do
  n=$((n + 1))
  node=$DIR/node$n
  mkdir -p "$node/recordings"
  rm -rf "$node/config"
  cp -r "$CONFIG" "$node/config"
  http=$((HTTP_BASE + n))
  lo=$((RTP_BASE + (n - 1) * 2000))
  hi=$((lo + 1999))
  max=${MAX_CALLS[$((n - 1))]:-}
  udp_busy "$ip:$SIP_PORT" && die "udp $ip:$SIP_PORT is already in use (node$n)"
  sed -i -E \
    -e "s|^udp = .*|udp = [\"$ip:$SIP_PORT\"]|" \
    -e "s|^tcp = .*|tcp = [\"$ip:$SIP_PORT\"]|" \
    -e "s|^sdp_address = .*|sdp_address = \"$ip\"|" \
    -e "s|^rtp_port_min = .*|rtp_port_min = $lo|" \
    -e "s|^rtp_port_max = .*|rtp_port_max = $hi|" \
    -e "s|^dir = .*|dir = \"$node/recordings\"|" \
    -e "s|^listen = .*|listen = \"$ip:$http\"|" \
    -e "s|^trusted_proxies = .*|trusted_proxies = [\"$PROXY_IP/32\"]|" \
    -e "s|^threads_per_worker = .*|threads_per_worker = $ASR_THREADS|" \
    -e "s|^workers = .*|workers = 1|" \
    "$node/config/gateway.toml"
  grep -q '^trusted_proxies' "$node/config/gateway.toml" ||
    sed -i "s|^\[sip\]|[sip]\ntrusted_proxies = [\"$PROXY_IP/32\"]|" "$node/config/gateway.toml"
  if [ -n "$max" ]; then
    sed -i -E "s|^max_calls = .*|max_calls = $max|" "$node/config/gateway.toml"
  fi
  "$BIN" config check "$node/config" >/dev/null || die "node$n: configuration refused (see above)"
  for set in 1 2; do
    # Set 1 probed (flag 8), set 2 the unprobed overflow (kamailio.cfg).
    echo "$set sip:$ip:$SIP_PORT $([ $set = 1 ] && echo 8 || echo 0) 0 duid=node$n;maxload=${max:-0}" |
      sed 's/;maxload=0$//' >>"$DIR/dispatcher.list"
  done
done

KAM=
stop() {
  trap '' INT TERM
  touch "$DIR/.stopping"
  say "stopping: nodes drain first"
  local n=0
  for _ in "${NODES[@]}"; do
    n=$((n + 1))
    [ -f "$DIR/node$n/pid" ] && kill -TERM "$(cat "$DIR/node$n/pid")" 2>/dev/null || true
  done
  # Each node ends when its calls have (grace_s at most); then the rest.
  n=0
  for _ in "${NODES[@]}"; do
    n=$((n + 1))
    local pid
    pid=$(cat "$DIR/node$n/pid" 2>/dev/null || echo)
    while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  done
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  say "stopped"
  exit 0
}
trap stop INT TERM

# The agents' PBX of ../shared/harness, unless one already runs.
if [ "${CLUSTER_PBX:-auto}" != 0 ] && [ -f "$HARNESS" ] && ! udp_busy 127.0.0.1:5070; then
  mkdir -p "$DIR/pbx"
  kamailio -f "$HARNESS" -DD -E -Y "$DIR/pbx" >"$DIR/pbx.log" 2>&1 &
  pids+=($!)
  say "agents' PBX (../shared/harness) on udp 127.0.0.1:5070, log $DIR/pbx.log"
fi

# A node under supervision: restarted when it dies, not when it drained.
supervise() {
  local n=$1 node=$DIR/node$1 rc
  while :; do
    (cd "$ROOT" && exec "$BIN" serve --config "$node/config") >>"$node/voicegate.log" 2>&1 &
    echo $! >"$node/pid"
    rc=0
    wait $! || rc=$?
    [ -e "$DIR/.stopping" ] && break
    if [ "$rc" -eq 0 ]; then
      say "node$n drained and exited: not restarted"
      break
    fi
    say "node$n died (exit $rc): restarting in ${RESTART_S} s"
    sleep "$RESTART_S"
  done
}

n=0
for ip in "${NODES[@]}"; do
  n=$((n + 1))
  supervise "$n" &
  pids+=($!)
done

mkdir -p "$DIR/kamailio"
kamailio -f deploy/kamailio/kamailio.cfg -DD -E -Y "$DIR/kamailio" \
  -A "LISTEN=udp:$LISTEN" -A "DS_LIST=\"$DIR/dispatcher.list\"" -A "DS_PING_INTERVAL=$PING" -A "PIKE_DENSITY=$PIKE" \
  -A "TRUNK_NETS=\"$TRUNK_NETS\"" -A "CTL_SOCKET=\"unix:$DIR/kamailio/kamailio_ctl\"" \
  >"$DIR/kamailio.log" 2>&1 &
KAM=$!
pids+=($KAM)


# Ready when Kamailio and every node listen.
for _ in $(seq 150); do
  kill -0 "$KAM" 2>/dev/null || die "kamailio exited: see $DIR/kamailio.log"
  ready=1
  n=0
  for ip in "${NODES[@]}"; do
    n=$((n + 1))
    # Ready: SIP and HTTP bound (whatever RUST_LOG lets the log say).
    udp_busy "$ip:$SIP_PORT" || ready=0
    tcp_busy "$ip:$((HTTP_BASE + n))" || ready=0
  done
  udp_busy "$LISTEN" || ready=0
  [ "$ready" = 1 ] && break
  sleep 0.2
done
[ "${ready:-0}" = 1 ] || { say "the cluster did not come up: see $DIR/*.log"; stop; }

echo "voicegate cluster up — calls to sip:bot@$LISTEN"
echo "  dispatcher  udp $LISTEN  (OPTIONS probe every ${PING}s)  log $DIR/kamailio.log"
n=0
for ip in "${NODES[@]}"; do
  n=$((n + 1))
  echo "  node$n       SIP $ip:$SIP_PORT  HTTP http://$ip:$((HTTP_BASE + n))  state $DIR/node$n/"
done
echo "Ctrl-C (or SIGTERM) drains the nodes and stops."
# Until a signal (the trap stops everything) or Kamailio dies.
while kill -0 "$KAM" 2>/dev/null; do
  wait "$KAM" || true
done
say "kamailio exited: see $DIR/kamailio.log"
stop
