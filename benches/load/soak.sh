#!/usr/bin/env bash
# Soak (make soak): LIMIT concurrent SIPp calls (default 100) with churn —
# each call talks G.711 for ~60 s and hangs up, a new one starts at once —
# for DURATION seconds (default 600), once with speech recognition off and
# once on (PHASES="false true"). Per phase it reports failed calls,
# recordings that are not complete (marker left, no call.ended, WAV header
# disagreeing with its size) and the gateway's resident memory: start, end,
# peak and the least-squares slope after warm-up in MiB/h. Loopback only;
# stops by itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
LIMIT=${LIMIT:-100}
DURATION=${DURATION:-600}
CALL_S=${CALL_S:-60}
PHASES=${PHASES:-false true}
PORT=${PORT:-16060}
BIN=./target/release/voicegate
[ -x "$BIN" ] || cargo build --release --locked
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
for speech in $PHASES; do
  rm -rf "$work/config" "$work/rec" "$work/sipp"
  mkdir -p "$work/sipp/pcap"
  cp -r sip-config "$work/config"
  sed -e "s/127.0.0.1:5060/127.0.0.1:$PORT/g" -e 's/rtp_port_min = 20000/rtp_port_min = 46000/' \
      -e 's/rtp_port_max = 29999/rtp_port_max = 49999/' -e "s#dir = \"recordings\"#dir = \"$work/rec\"#" \
      -e "s/^enabled = true/enabled = $speech/" sip-config/gateway.toml > "$work/config/gateway.toml"
  # Callers stay with the bot (no agent is registered): the waiting rule
  # would otherwise ring one for every call at 15 s.
  sed -i 's/^seconds = 15.0 .*/&\nenabled = false/' "$work/config/rules.toml"
  cp /usr/share/sip-tester/*.pcap "$work/sipp/pcap/"
  cp benches/load/uac_60s.xml "$work/sipp/"
  RUST_LOG=warn "$BIN" serve --config "$work/config" 2>"$work/gateway.log" &
  GW=$!
  for _ in $(seq 50); do grep -q "voicegate ready" "$work/gateway.log" 2>/dev/null && break; sleep 0.2; done
  rate=$(python3 -c "print(round($LIMIT / $CALL_S, 3))")
  total=$(( LIMIT * DURATION / CALL_S ))
  (cd "$work/sipp" && sipp 127.0.0.1:$PORT -sf uac_60s.xml -m "$total" -l "$LIMIT" -r "$rate" -rp 1000 \
     -i 127.0.0.1 -mi 127.0.0.1 -mp 52000 -p $((PORT+1)) -nostdin -timeout $((DURATION + 300))s \
     -trace_stat -fd 10 -stf stats.csv >"$work/sipp.out" 2>&1) &
  SIPP=$!
  start=$(date +%s)
  : > "$work/rss.tsv"
  while kill -0 $SIPP 2>/dev/null; do
    echo -e "$(( $(date +%s) - start ))\t$(awk '/VmRSS/{print $2}' /proc/$GW/status)\t$(ls /proc/$GW/fd | wc -l)" >> "$work/rss.tsv"
    sleep 10
  done
  wait $SIPP && sipp_rc=0 || sipp_rc=$?
  sleep 3
  echo -e "$(( $(date +%s) - start ))\t$(awk '/VmRSS/{print $2}' /proc/$GW/status)\t$(ls /proc/$GW/fd | wc -l)" >> "$work/rss.tsv"
  kill -TERM $GW; wait $GW || true
  python3 - "$work" "$speech" "$CALL_S" "$sipp_rc" <<'PY'
import csv, glob, json, os, sys
work, speech, call_s, rc = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
rows = list(csv.reader(open(f"{work}/sipp/stats.csv"), delimiter=";"))
head, last = rows[0], rows[-1]
col = lambda name: int(last[head.index(name)])
ok, failed = col("SuccessfulCall(C)"), col("FailedCall(C)")
dirs = glob.glob(f"{work}/rec/*/*")
bad = []
for d in dirs:
    events = [json.loads(l) for l in open(f"{d}/events.jsonl") if l.strip()]
    wav = f"{d}/call.wav" if os.path.exists(f"{d}/call.wav") else (glob.glob(f"{d}/*.wav") or [""])[0]
    size = os.path.getsize(wav) if wav else 0
    with open(wav, "rb") as f:
        hdr = f.read(44) if wav else b""
    data_len = int.from_bytes(hdr[40:44], "little") if len(hdr) == 44 else -1
    if os.path.exists(f"{d}/.recording") or not any(e.get("kind") == "call.ended" for e in events) \
            or data_len + 44 != size:
        bad.append(os.path.basename(d))
samples = [tuple(map(int, l.split())) for l in open(f"{work}/rss.tsv") if l.strip()]
warm = [s for s in samples if s[0] >= call_s + 30] or samples
n = len(warm)
mt = sum(s[0] for s in warm) / n; mr = sum(s[1] for s in warm) / n
var = sum((s[0] - mt) ** 2 for s in warm) or 1
slope = sum((s[0] - mt) * (s[1] - mr) for s in warm) / var  # KiB/s
print(f"soak speech={speech}: {ok} calls succeeded, {failed} failed (SIPp exit {rc}); "
      f"{len(dirs)} recordings, {len(bad)} incomplete {bad[:5]}")
print(f"  RSS start {samples[0][1]/1024:.1f} MiB, end {samples[-1][1]/1024:.1f} MiB, "
      f"peak {max(s[1] for s in samples)/1024:.1f} MiB; slope after warm-up {slope*3600/1024:+.1f} MiB/h "
      f"over {warm[-1][0]-warm[0][0]} s; fds start {samples[0][2]}, end {samples[-1][2]}")
PY
done
