#!/usr/bin/env bash
# voicegate and rustpbx under the same SIPp load, alternating, in one run.
#
# The same SIPp UAC scenario (benches/load/uac_60s.xml: G.711 A-law from a
# pcap for ~60 s, then BYE) places CALLS concurrent calls at RATE per second
#   - to voicegate, which answers, runs its bot and records both directions;
#   - to rustpbx (crate `rustpbx`, built without default features), which
#     with RP_MODE=ivr (the default) ANSWERS each call itself: a route to its
#     built-in IVR application plays the same greeting WAV as voicegate and
#     waits for a key, recording on (media_proxy = "all"); with
#     RP_MODE=relay it RELAYS each call (B2BUA) to a SIPp UAS that echoes
#     the RTP back (`-rtp_echo`).
# Each server's CPU (user + system, /proc) over a STEADY-second window with
# every call up is divided by the calls: "% of a core per call", and resident
# memory above idle per call. RUNS alternating runs each; medians printed.
# Loopback only; bounded in calls and time. Needs sip-tester (make bootstrap)
# and a rustpbx binary: RUSTPBX=path, or it is built once from crates.io into
# target/rustpbx (a long build). ONLY=rustpbx runs its side alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
# Both sides get the same far end for their RTP to SIPp (far_end.sh): with
# FAR_END=drop both run in one network namespace made for this run.
# shellcheck source=benches/load/far_end.sh
. benches/load/far_end.sh
far_end_enter benches/load/rustpbx_side_by_side.sh "$@"
CALLS=${CALLS:-200}
RATE=${RATE:-40}
STEADY=${STEADY:-30}
RUNS=${RUNS:-3}
BIN=${BIN:-./target/release/voicegate}
RUSTPBX=${RUSTPBX:-target/rustpbx/bin/rustpbx}
RP_MODE=${RP_MODE:-ivr}
case "$RP_MODE" in ivr|relay) ;; *) echo "RP_MODE is ivr or relay" >&2; exit 2 ;; esac
if [ ! -x "$RUSTPBX" ]; then
  cargo install rustpbx --locked --no-default-features --root target/rustpbx
fi
[ -x "$BIN" ] || cargo build --release --locked
RUSTPBX=$(realpath "$RUSTPBX")
RP_SIP=15062
UAS_SIP=15070
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# One rustpbx run: prints "CPU: … % of a core per call" and "memory: …".
rustpbx_run() {
  local dir="$work/rp.$1"
  mkdir -p "$dir/sipp/pcap" "$dir/rec" "$dir/config"
  cp /usr/share/sip-tester/*.pcap "$dir/sipp/pcap/"
  cp benches/load/uac_60s.xml "$dir/sipp/"
  local route
  if [ "$RP_MODE" = ivr ]; then
    # Answered by rustpbx's own IVR: the greeting, then waiting for a key
    # (longer than the call), like voicegate's bot listening.
    mkdir -p "$dir/config/ivr"
    cp sip-config/prompts/greeting.wav "$dir/greeting.wav"
    cat >"$dir/config/ivr/bench.toml" <<EOF
[ivr]
name = "bench"

[ivr.root]
greeting = "$dir/greeting.wav"
timeout_ms = 120000
max_retries = 1

[[ivr.root.entries]]
key = "1"
action = { type = "hangup" }
EOF
    route="[[proxy.routes]]
name = \"to-ivr\"
priority = 1
app = \"ivr\"
auto_answer = true

[proxy.routes.app_params]
file = \"$dir/config/ivr/bench.toml\"

[proxy.routes.match]
\"to.user\" = \".*\""
  else
    route="[proxy.trunks.uas]
dest = \"sip:127.0.0.1:$UAS_SIP\"

[[proxy.routes]]
name = \"to-uas\"
priority = 1
dest = \"uas\"

[proxy.routes.match]
\"to.user\" = \".*\""
  fi
  cat >"$dir/config.toml" <<EOF
http_addr = "127.0.0.1:18083"
log_level = "warn"
database_url = "sqlite://$dir/rustpbx.sqlite3"
rtp_start_port = 40000
rtp_end_port = 44999

[proxy]
modules = ["acl", "call"]
addr = "127.0.0.1"
udp_port = $RP_SIP
media_proxy = "all"
generated_dir = "$dir/config"
routes_files = []
trunks_files = []
acl_rules = ["allow all"]

$route

[recording]
enabled = true
auto_start = true
type = "local"
path = "$dir/rec"
EOF
  (cd "$dir" && exec "$RUSTPBX" --conf "$dir/config.toml" >"$dir/rustpbx.log" 2>&1) &
  local rp=$!
  sleep 3
  kill -0 $rp 2>/dev/null || { echo "rustpbx did not start:"; tail -20 "$dir/rustpbx.log"; return 1; }
  if [ "$RP_MODE" = relay ]; then
    # The callee: answers every INVITE and echoes its RTP.
    (cd "$dir/sipp" && sipp -sn uas -i 127.0.0.1 -p $UAS_SIP -mi 127.0.0.1 -mp 46000 -rtp_echo \
       -nostdin -bg >/dev/null 2>&1) || true
  fi
  sleep 1
  local cpu0 rss0 peak=0 c1 c2 t1 t2 r
  rss0=$(awk '/VmRSS/{print $2}' /proc/$rp/status)
  # As in sipp_load.sh: the same far end for both sides (far_end.sh).
  far_end_start $((4 * CALLS + 8))
  (cd "$dir/sipp" && sipp 127.0.0.1:$RP_SIP -sf uac_60s.xml -m "$CALLS" -l "$CALLS" -r "$RATE" \
     -i 127.0.0.1 -mi 127.0.0.1 -mp $MEDIA_PORT -p $((RP_SIP+100)) -nostdin -timeout 150s -timeout_error \
     -trace_stat -fd 5 -s bot >"$dir/sipp.out" 2>&1) &
  local uac=$!
  sleep $(( CALLS / RATE + 3 ))
  c1=$(awk '{print $14+$15}' /proc/$rp/stat); t1=$(date +%s.%N)
  for _ in $(seq "$STEADY"); do
    r=$(awk '/VmRSS/{print $2}' /proc/$rp/status); [ "$r" -gt "$peak" ] && peak=$r
    sleep 1
  done
  c2=$(awk '{print $14+$15}' /proc/$rp/stat); t2=$(date +%s.%N)
  wait $uac && ok=ok || ok="sipp reported failed calls"
  pkill -f "sipp -sn uas -i 127.0.0.1 -p $UAS_SIP" || true
  far_end_stop
  kill -TERM $rp; wait $rp 2>/dev/null || true
  local recorded
  recorded=$(find "$dir/rec" -name '*.wav' 2>/dev/null | wc -l)
  python3 - "$c1" "$c2" "$t1" "$t2" "$(getconf CLK_TCK)" "$CALLS" "$rss0" "$peak" <<'PY'
import sys
c1, c2, t1, t2, tick, calls, rss0, peak = map(float, sys.argv[1:])
cpu = (c2 - c1) / tick
print(f"CPU: {cpu:.2f} CPU-s over {t2-t1:.1f} s = {100*cpu/((t2-t1)*calls):.4f} % of a core per call")
print(f"memory: {(peak-rss0)/calls:.1f} KiB resident per call (peak {peak/1024:.1f} MiB, idle {rss0/1024:.1f} MiB)")
PY
  echo "sipp: $ok; recordings: $recorded; $(grep -E 'Successful call|Failed call' "$dir/sipp/"*_.csv 2>/dev/null | head -2 | tr '\n' ' ')"
}

declare -a VG RP
for i in $(seq "$RUNS"); do
  if [ "${ONLY:-}" != rustpbx ]; then
    echo "== run $i: voicegate (answers, bot, records)"
    out=$(BIN=$BIN CALLS=$CALLS RATE=$RATE STEADY=$STEADY ./benches/load/sipp_load.sh 2>&1)
    echo "$out" | grep -E "^(calls|CPU|memory|packet)"
    VG+=("$(echo "$out" | sed -n 's/.*= \([0-9.]*\) % of a core per call/\1/p')")
  fi
  if [ "$RP_MODE" = ivr ]; then
    echo "== run $i: rustpbx (answers: its IVR plays the greeting and waits for a key, records)"
  else
    echo "== run $i: rustpbx (relays to a SIPp UAS that echoes, media proxied, records)"
  fi
  rustpbx_run "$i" 2>&1 | tee "$work/rp.out" || true
  RP+=("$(sed -n 's/.*= \([0-9.]*\) % of a core per call/\1/p' "$work/rp.out")")
done
python3 - "${VG[*]}" "${RP[*]}" "$RP_MODE" <<'PY'
import statistics, sys
vg = [float(x) for x in sys.argv[1].split() if x]
rp = [float(x) for x in sys.argv[2].split() if x]
if vg:
    print(f"voicegate % of a core per call: {vg} median {statistics.median(vg):.4f}")
if rp:
    print(f"rustpbx ({sys.argv[3]}) % of a core per call: {rp} median {statistics.median(rp):.4f}")
if vg and rp:
    print(f"ratio rustpbx / voicegate: {statistics.median(rp) / statistics.median(vg):.2f}x")
PY
