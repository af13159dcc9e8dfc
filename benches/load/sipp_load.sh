#!/usr/bin/env bash
# Bounded load test on loopback: CALLS concurrent SIPp calls, each sending
# G.711 audio for ~60 s, against a release voicegate with recording on.
# PEER=voicegate uses `voicegate call` instead of SIPp as the caller (a peer
# that listens on its RTP port, so no ICMP port-unreachable per packet).
# MEDIA_RT=N runs the media threads at SCHED_FIFO priority N (root only; a measurement knob).
# Reports the gateway's CPU per call-second, resident memory per call and
# packet loss (and packets dropped late). Stops by itself; touches only 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=benches/load/far_end.sh
. benches/load/far_end.sh
[ "${PEER:-sipp}" = voicegate ] || far_end_enter benches/load/sipp_load.sh "$@"
CALLS=${CALLS:-200}
RATE=${RATE:-40}
STEADY=${STEADY:-30}
PORT=${PORT:-15060}
HTTP_PORT=${HTTP_PORT:-18080}
BIN=${BIN:-./target/release/voicegate}
[ -x "$BIN" ] || cargo build --release --locked
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/sipp/pcap"
cp -r sip-config "$work/config"
sed -e "s/127.0.0.1:5060/127.0.0.1:$PORT/g" -e 's/rtp_port_min = 20000/rtp_port_min = 40000/' \
    -e 's/rtp_port_max = 29999/rtp_port_max = 44999/' -e "s#dir = \"recordings\"#dir = \"$work/rec\"#" \
    -e "s/^enabled = true/enabled = ${SPEECH:-false}/" -e "s/^listen = \"127.0.0.1:8080\"/listen = \"127.0.0.1:$HTTP_PORT\"/" \
    sip-config/gateway.toml > "$work/gateway.toml"
mv "$work/gateway.toml" "$work/config/gateway.toml"
# The media path is what is measured: without speech a silent caller would be
# handed over at 15 s (wait_timeout) and every call would ring an agent.
# HANDOVER=1 keeps the rule (then each call also runs a hand-over).
if [ -z "${HANDOVER:-}" ]; then
  sed -i 's/^seconds = 15.0 .*/&\nenabled = false/' "$work/config/rules.toml"
fi
cp /usr/share/sip-tester/*.pcap "$work/sipp/pcap/"
cp benches/load/uac_60s.xml "$work/sipp/"
RUST_LOG=warn "$BIN" serve --config "$work/config" 2>"$work/gateway.log" &
GW=$!
sleep 1
if [ -n "${MEDIA_RT:-}" ]; then
  for t in /proc/$GW/task/*; do
    if [ "$(cat "$t/comm")" = voicegate-media ]; then
      chrt -f -p "$MEDIA_RT" "${t##*/}"
      echo "media thread ${t##*/} at SCHED_FIFO $MEDIA_RT"
    fi
  done
fi
cpu() { awk '{print $14+$15}' /proc/$GW/stat; }
split() { awk '{print "user", $14, "sys", $15}' /proc/$GW/stat; }
rss_kib() { awk '/VmRSS/{print $2}' /proc/$GW/status; }
tick=$(getconf CLK_TCK)
rss0=$(rss_kib)
if [ "${PEER:-sipp}" = voicegate ]; then
  # 60 s of speech-like audio: the ten public calls back to back, trimmed.
  sox tests/calls/*.wav "$work/long.wav" trim 0 60
  "$BIN" call "sip:bot@127.0.0.1:$PORT" --play "$work/long.wav" --calls "$CALLS" --rate "$RATE" \
     --no-listen >"$work/sipp.out" 2>&1 &
else
  # SIPp binds no socket on the media ports its SDP names: see far_end.sh.
  far_end_start $((4 * CALLS + 8))
  (cd "$work/sipp" && sipp 127.0.0.1:$PORT -sf uac_60s.xml -m "$CALLS" -l "$CALLS" -r "$RATE" \
     -i 127.0.0.1 -mi 127.0.0.1 -mp $MEDIA_PORT -p $((PORT+1)) -nostdin -timeout 150s -timeout_error \
     -trace_stat -fd 5 >"$work/sipp.out" 2>&1) &
fi
SIPP=$!
sleep $(( CALLS / RATE + 3 ))
ticks() { curl -s "http://127.0.0.1:$HTTP_PORT/metrics" | grep '^voicegate_media_tick_lateness_distribution_seconds_bucket' || true; }
ticks >"$work/ticks1"
c1=$(cpu); t1=$(date +%s.%N)
peak=0
for _ in $(seq "$STEADY"); do
  r=$(rss_kib); [ "$r" -gt "$peak" ] && peak=$r
  sleep 1
done
c2=$(cpu); t2=$(date +%s.%N)
ticks >"$work/ticks2"
active=$(ls -d "$work"/rec/*/* 2>/dev/null | wc -l)
wait $SIPP || echo "sipp reported failed calls (see below)"
sleep 2
kill -TERM $GW; wait $GW || true
python3 - "$work/rec" "$c1" "$c2" "$t1" "$t2" "$tick" "$CALLS" "$rss0" "$peak" "$active" "$work/ticks1" "$work/ticks2" <<'PY'
import json, sys, glob, re
rec, c1, c2, t1, t2, tick, calls, rss0, peak, active, ticks1, ticks2 = sys.argv[1:]
c1, c2, t1, t2, tick, calls = float(c1), float(c2), float(t1), float(t2), float(tick), int(calls)
lost = recv = ended = late = skipped = restarts = 0
for f in glob.glob(rec + "/*/*/events.jsonl"):
    for line in open(f):
        e = json.loads(line)
        if e.get("kind") == "call.ended":
            ended += 1
            j = e.get("media", {}).get("jitter", {})
            lost += j.get("lost", 0); recv += j.get("received", 0)
            late += j.get("late", 0); skipped += j.get("skipped", 0)
            restarts += j.get("restarts", 0)
cpu_s = (c2 - c1) / tick
wall = t2 - t1
pct = 100.0 * cpu_s / (wall * calls)
rss = (int(peak) - int(rss0)) / calls
loss = 100.0 * lost / max(1, lost + recv)
print(f"calls: {calls} concurrent ({active} recorded, {ended} ended cleanly), steady window {wall:.1f} s")
print(f"CPU: {cpu_s:.2f} CPU-s over {wall:.1f} s = {pct:.4f} % of a core per call")
print(f"memory: {rss:.1f} KiB resident per call (peak {int(peak)/1024:.1f} MiB, idle {int(rss0)/1024:.1f} MiB)")
print(f"packet loss: {loss:.4f} % ({lost} of {lost+recv})")
# Packets that arrived but were not played: a gateway that drops audio as
# late is not doing the work the load asks for.
print(f"packets accepted: {recv}; late (dropped): {late}; skipped to catch up: {skipped}; "
      f"numbering restarts: {restarts}")
def buckets(path):
    out = {}
    for line in open(path):
        m = re.search(r'le="([^"]+)"\} (\d+)', line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out
b1, b2 = buckets(ticks1), buckets(ticks2)
if b2:
    window = [(le, b2[le] - b1.get(le, 0)) for le in b2]
    total = window[-1][1]
    def pct(q):
        for le, n in window:
            if n >= q * total:
                return "over 100" if le == "+Inf" else f"<= {float(le) * 1000:g}"
        return "?"
    print(f"tick lateness: {total} ticks in the window; p50 {pct(0.5)} ms, p99 {pct(0.99)} ms, p99.9 {pct(0.999)} ms")
PY
[ "${PEER:-sipp}" = voicegate ] || far_end_report
tail -5 "$work/sipp.out" | grep -iE 'fail|success|answered' || true
# Calls the gateway refused (503 + Retry-After), by cause.
grep -o 'refusing a new call: 503.*' "$work/gateway.log" | grep -oE 'cause="?[a-z_]+' | sort | uniq -c | sed 's/^/refused: /' || true
