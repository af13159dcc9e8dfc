#!/usr/bin/env bash
# whisper.cpp decode settings measured, not assumed: each setting against the
# shipped one over DIR/*.wav (default tests/calls; each WAV with its .toml
# reference), the two alternating in one script run, RUNS runs each (default
# 3), medians of WER and real-time factor.
#   benches/asr/settings.sh [DIR]
#   SETTINGS="flash tight" benches/asr/settings.sh   # only some
#   MODEL=models/ggml-tiny.en-q8_0.bin THREADS=1 benches/asr/settings.sh
#   MODEL=models/ggml-base.bin LANGUAGE=zh benches/asr/settings.sh tests/calls/zh
# The settings are VOICEGATE_ASR_* / VOICEGATE_FLASH_ATTN environment
# variables read by src/speech/asr.rs for this measurement only.
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=${1:-tests/calls}
RUNS=${RUNS:-3}
THREADS=${THREADS:-2}
MODEL=${MODEL:-models/ggml-tiny.en.bin}
BIN=./target/release/voicegate
[ -x "$BIN" ] || cargo build --release --locked
[ -f "$MODEL" ] || "$BIN" models install >/dev/null
declare -A ENVS=(
  [flash]="VOICEGATE_FLASH_ATTN=1"
  [ctx_full]="VOICEGATE_ASR_AUDIO_CTX=full"
  [ctx_tight]="VOICEGATE_ASR_AUDIO_CTX=tight"
  [ctx_min320]="VOICEGATE_ASR_AUDIO_CTX=pad:128,min:320"
  [ctx_min256]="VOICEGATE_ASR_AUDIO_CTX=pad:128,min:256"
  [ctx_min192]="VOICEGATE_ASR_AUDIO_CTX=pad:128,min:192"
  [ctx_pad64]="VOICEGATE_ASR_AUDIO_CTX=pad:64,min:256"
  [domain_prompt]="VOICEGATE_ASR_PROMPT_FILE=benches/asr/domain_prompt.txt"
  [context]="VOICEGATE_ASR_NO_CONTEXT=0"
  [single_segment]="VOICEGATE_ASR_SINGLE_SEGMENT=1"
  [no_timestamps]="VOICEGATE_ASR_NO_TIMESTAMPS=1"
  [suppress_nst]="VOICEGATE_ASR_SUPPRESS_NST=1"
  [fallback]="VOICEGATE_ASR_TEMPERATURE_FALLBACK=1"
  [no_token_cap]="VOICEGATE_ASR_MAX_TOKENS=0"
)
SETTINGS=${SETTINGS:-flash ctx_full ctx_tight context single_segment no_timestamps suppress_nst fallback no_token_cap}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
files=()
for f in "$DIR"/*.wav; do [ -f "${f%.wav}.toml" ] && files+=("$f"); done
[ "${#files[@]}" -gt 0 ] || { echo "no WAV with a .toml reference in $DIR" >&2; exit 2; }
pass() { # name env-assignment run
  for f in "${files[@]}"; do
    env $2 "$BIN" transcribe --json --threads "$THREADS" --model "$MODEL" ${LANGUAGE:+--language "$LANGUAGE"} "$f" >>"$work/$1.$3.jsonl"
  done
}
for s in $SETTINGS; do
  [ -n "${ENVS[$s]:-}" ] || { echo "unknown setting $s (one of ${!ENVS[*]})" >&2; exit 2; }
  for r in $(seq "$RUNS"); do
    pass "shipped-for-$s" "VOICEGATE_ASR_UNUSED=1" "$r"
    pass "$s" "${ENVS[$s]}" "$r"
  done
done
PYTHONPATH=benches/asr python3 - "$work" "$RUNS" "$MODEL" "$DIR" "$THREADS" $SETTINGS <<'PY'
import sys, pathlib, statistics
from score import score
work, runs, model, folder, threads = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
settings = sys.argv[6:]
print(f"calls: {folder}; model {pathlib.Path(model).name}, {threads} threads; each setting alternating with the shipped one, {runs} runs each, medians")
print("| setting | WER (shipped → setting) | RTF (shipped → setting) | time vs shipped |")
print("|---|---|---|---|")
for s in settings:
    a = [score(open(work / f"shipped-for-{s}.{r}.jsonl")) for r in range(1, runs + 1)]
    b = [score(open(work / f"{s}.{r}.jsonl")) for r in range(1, runs + 1)]
    wa, wb = statistics.median(x[0] for x in a), statistics.median(x[0] for x in b)
    ra, rb = statistics.median(x[1] for x in a), statistics.median(x[1] for x in b)
    print(f"| {s} | {wa*100:.1f} % → {wb*100:.1f} % | {ra:.4f} → {rb:.4f} | {(rb/ra - 1)*100:+.0f} % |")
PY
