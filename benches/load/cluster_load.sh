#!/usr/bin/env bash
# `make load-cluster`: `make load` through Kamailio's dispatcher. SIPp offers
# CALLS concurrent 60-second G.711 calls (3 × the single-node figure by
# default) to the edge of a three-node `scripts/cluster.sh` cluster, and, in
# the same script run, CALLS/3 straight to one node: RUNS of each,
# alternating. Reports throughput (calls answered, failed), INVITE → 200 OK
# p95 through the proxy and direct (the difference is what the proxy adds),
# and CPU per call per node (and Kamailio's). Speech off: the media path and
# signalling are what is measured. Touches only 127.x addresses; bounded.
set -euo pipefail
cd "$(dirname "$0")/../.."
CALLS=${CALLS:-600}
RATE=${RATE:-60}
STEADY=${STEADY:-30}
RUNS=${RUNS:-3}
BIN=$(pwd)/target/release/voicegate
[ -x "$BIN" ] || cargo build --release --locked
work=$(mktemp -d)
cleanup() {
  [ -n "${CL:-}" ] && kill -TERM "$CL" 2>/dev/null && wait "$CL" 2>/dev/null
  [ -n "${KEEP:-}" ] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT
cp -r sip-config "$work/config"
sed -i -e 's/^enabled = true/enabled = false/' -e 's/^max_calls = .*/max_calls = 0/' "$work/config/gateway.toml"
# Without speech a silent caller would be handed over at 15 s (wait_timeout).
sed -i 's/^seconds = 15.0 .*/&\nenabled = false/' "$work/config/rules.toml"
mkdir -p "$work/sipp/pcap"
cp /usr/share/sip-tester/*.pcap "$work/sipp/pcap/"
cp benches/load/uac_60s_proxy.xml benches/load/uac_60s.xml "$work/sipp/"

CLUSTER_DIR=$work/cluster CLUSTER_CONFIG=$work/config CLUSTER_LISTEN=127.0.0.1:15080 \
  CLUSTER_NODES="127.0.30.2 127.0.30.3 127.0.30.4" CLUSTER_HTTP_BASE=28080 CLUSTER_RTP_BASE=40000 \
  CLUSTER_PBX=0 CLUSTER_PIKE=1000000 RUST_LOG=warn VOICEGATE=$BIN \
  ./scripts/cluster.sh >"$work/cluster.out" 2>&1 &
CL=$!
for _ in $(seq 300); do grep -q "cluster up" "$work/cluster.out" && break; sleep 0.2; done
grep -q "cluster up" "$work/cluster.out" || { cat "$work/cluster.out"; exit 1; }
sleep 3
tick=$(getconf CLK_TCK)
cpu_of() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' /proc/"$p"/stat 2>/dev/null || echo 0))); done; echo $t; }
node_pids() { cat "$work"/cluster/node{1,2,3}/pid; }
recorded() { for n in 1 2 3; do find "$work/cluster/node$n/recordings" -mindepth 2 -maxdepth 2 -type d 2>/dev/null | wc -l; done | paste -sd' '; }
kam_pids() { pgrep -f -- "-Y $work/cluster/kamailio" | tr '\n' ' '; }

# One measured run: $1 = proxy|direct. Prints one result line.
run() {
  local mode=$1 target scenario calls rate
  if [ "$mode" = proxy ]; then
    target=127.0.0.1:15080 scenario=uac_60s_proxy.xml calls=$CALLS rate=$RATE
  else
    target=127.0.30.2:5060 scenario=uac_60s.xml calls=$((CALLS / 3)) rate=$((RATE / 3))
  fi
  local before; before=$(recorded)
  rm -f "$work"/sipp/*_rtt.csv
  (cd "$work/sipp" && sipp "$target" -sf "$scenario" -m "$calls" -l "$calls" -r "$rate" \
     -i 127.0.0.1 -mi 127.0.0.1 -mp 50000 -p 15081 -nostdin -timeout 150s -timeout_error \
     -trace_rtt -rtt_freq 1 -trace_stat -fd 5 -trace_err >"$work/sipp.out" 2>&1) &
  local sipp=$!
  sleep $((calls / rate + 3))
  local pids; pids=$(node_pids)
  local c1 k1 t1; c1=$(for p in $pids; do cpu_of "$p"; done | paste -sd' '); k1=$(cpu_of $(kam_pids)); t1=$(date +%s.%N)
  sleep "$STEADY"
  local c2 k2 t2; c2=$(for p in $pids; do cpu_of "$p"; done | paste -sd' '); k2=$(cpu_of $(kam_pids)); t2=$(date +%s.%N)
  local active; active=$(recorded)
  wait $sipp || true
  python3 - "$mode" "$calls" "$tick" "$t1" "$t2" "$c1" "$c2" "$k1" "$k2" "$before" "$active" "$work/sipp" <<'PY'
import sys, glob, csv
mode, calls, tick, t1, t2, c1, c2, k1, k2, before, active, sippdir = sys.argv[1:]
calls, tick, wall = int(calls), float(tick), float(t2) - float(t1)
c1 = [int(x) for x in c1.split()]; c2 = [int(x) for x in c2.split()]
b = [int(x) for x in before.split()]; a = [int(x) for x in active.split()]
per_node = [x - y for x, y in zip(a, b)]
rtts = []
for f in glob.glob(sippdir + "/*_rtt.csv"):
    for row in csv.reader(open(f), delimiter=";"):
        try: rtts.append(float(row[1]))
        except (ValueError, IndexError): pass
rtts.sort()
p95 = rtts[int(0.95 * (len(rtts) - 1))] if rtts else float("nan")
ok = fail = 0
for f in glob.glob(sippdir + "/*_.csv"):
    rows = list(csv.reader(open(f), delimiter=";"))
    if len(rows) > 1:
        h = rows[0]; last = rows[-1]
        ok = int(last[h.index("SuccessfulCall(C)")]); fail = int(last[h.index("FailedCall(C)")])
cpu = []
for n, (x, y) in enumerate(zip(c1, c2)):
    if per_node[n]:
        cpu.append(100.0 * (y - x) / tick / wall / per_node[n])
kam = 100.0 * (int(k2) - int(k1)) / tick / wall / max(1, calls)
print(f"{mode}: calls {calls} ok {ok} failed {fail} per-node {per_node} setup p95 {p95:.2f} ms "
      f"cpu/call/node {' '.join(f'{c:.4f}%' for c in cpu)} kamailio/call {kam:.4f}%")
PY
  [ -n "${KEEP:-}" ] && cp "$work"/sipp/*_errors.log "$work"/sipp/*_.csv "$work/" 2>/dev/null
  rm -f "$work"/sipp/*_.csv
  sleep 5
}

for i in $(seq "$RUNS"); do
  for mode in ${MODES:-proxy direct}; do run "$mode"; done
done
