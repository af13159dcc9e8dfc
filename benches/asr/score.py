"""Word error rate (character error rate for Chinese) and real-time factor
of a run of transcripts against the .toml references beside the WAVs: shared
by benches/asr/compare.sh and benches/asr/settings.sh."""
import json
import pathlib
import re
import tomllib


def norm(t):
    """Tokens to compare: one per Chinese character, words for the rest."""
    t = t.lower().replace("-", " ")
    return [c for c in t if '\u4e00' <= c <= '\u9fff'] + re.sub(r"[^a-z0-9' ]", " ", t).split()


def ed(a, b):
    """Edit distance between two token lists."""
    d = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        p = d[:]
        d[0] = i
        for j in range(1, len(b) + 1):
            d[j] = min(p[j] + 1, d[j - 1] + 1, p[j - 1] + (a[i - 1] != b[j - 1]))
    return d[len(b)]


def score(lines, key_proc="processing_s", key_audio="duration_s"):
    """(error rate, real-time factor, processing s, audio s) of JSON lines
    each naming its `file` and holding `text` and the two timing keys."""
    err = words = 0
    proc = audio = 0.0
    for line in lines:
        r = json.loads(line)
        spec = tomllib.load(open(pathlib.Path(r["file"]).with_suffix(".toml"), "rb"))
        ref = norm(" ".join(s["text"] for s in spec["speech"]))
        err += ed(ref, norm(r["text"]))
        words += len(ref)
        proc += r[key_proc]
        audio += r[key_audio]
    return err / words, proc / audio, proc, audio
