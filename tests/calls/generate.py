#!/usr/bin/env python3
"""Make the regression calls in tests/calls/generated/: wordings the flow was
not written from, spoken by flite, festival and espeak-ng voices, through
8 kHz mono and G.711 mu-law like a phone line, each with the .toml that says
what must happen (the format of ../shared/calls, see docs/expectations.md).

    python3 tests/calls/generate.py            # needs flite, festival, espeak-ng, sox

Each call: one second of silence, the caller's sentences with the gaps in
which the bot answers, then silence. The hand-over window is the end of the
sentence that must trigger it plus 2.5 s.
"""
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "generated")
RATE = 8000
GAP_S = 3.0
TAIL_S = 6.0

# name, voice, caller, sentences [(text, speed)], expectation
# voice: "flite:VOICE", "festival:VOICE", "espeak:VOICE"; speed: 1.0 = the
# voice's normal pace, 1.7 = 70 % faster.
CALLS = [
    ("pay_system_wont_let_me", "flite:slt", None,
     [("Hi. The system won't let me pay, my transaction keeps failing.", 1.0)],
     {"outcome": "transferred", "reason": "urgent_intent", "trigger": 0}),
    ("pay_card_rejected", "espeak:en-us+f3", None,
     [("Your website keeps rejecting my credit card when I try to pay.", 1.0)],
     {"outcome": "transferred", "reason": "urgent_intent", "trigger": 0}),
    ("pay_direct_debit", "flite:rms", None,
     [("Hello. My direct debit bounced and now I cannot pay at all.", 1.0)],
     {"outcome": "transferred", "reason": "urgent_intent", "trigger": 0}),
    ("billing_read_balance", "flite:awb", None,
     [("Hello, could you read me my current balance, please?", 1.0)],
     {"outcome": "bot_resolved", "intents": ["billing"]}),
    ("billing_outstanding", "festival:kal_diphone", None,
     [("How much money is outstanding on my account this month?", 1.0)],
     {"outcome": "bot_resolved", "intents": ["billing"]}),
    ("billing_overcharged", "espeak:en-gb", None,
     [("I think I was overcharged on my last invoice.", 1.0)],
     {"outcome": "bot_resolved", "intents": ["billing"]}),
    ("tracking_box_not_here", "flite:slt", None,
     [("The box I ordered last week still hasn't shown up.", 1.0)],
     {"outcome": "bot_resolved", "intents": ["tracking"]}),
    ("tracking_courier", "flite:kal16", None,
     [("Any news on when the courier is coming with my parcel?", 1.0)],
     {"outcome": "bot_resolved", "intents": ["tracking"]}),
    # Whisper may mishear the first sentence; the bot then asks "your bill,
    # or an order?" and the second answers it.
    ("tracking_shipped_yet", "festival:kal_diphone", None,
     [("Has my order shipped yet?", 1.0), ("About my order.", 1.0)],
     {"outcome": "bot_resolved", "intents": ["tracking"]}),
    ("address_relocated", "espeak:en-us", None,
     [("We just relocated to a new house and need to update our details.", 1.0)],
     {"outcome": "bot_resolved", "intents": ["address_change"]}),
    ("address_fast_and_calm", "espeak:en-us+m3", None,
     [("I need to update the address on my account.", 1.5),
      ("The new one is forty two Elm Road in Riverside.", 1.5)],
     {"outcome": "bot_resolved", "intents": ["address_change"]}),
    ("human_actual_person", "flite:rms", None,
     [("Stop. Get me an actual human being, please.", 1.0)],
     {"outcome": "transferred", "reason": "requested", "trigger": 0}),
    ("human_put_me_through", "espeak:en-gb+f4", None,
     [("Can you put me through to a person?", 1.0)],
     {"outcome": "transferred", "reason": "requested", "trigger": 0}),
    ("human_rather_somebody", "festival:kal_diphone", None,
     [("I would rather speak to somebody. Please transfer me.", 1.0)],
     {"outcome": "transferred", "reason": "requested", "trigger": 0}),
    ("complaint_engineer", "flite:awb", None,
     [("I want to file a formal complaint about your engineer.", 1.0)],
     {"outcome": "transferred", "reason": "urgent_intent", "trigger": 0}),
    ("angry_billed_twice", "espeak:en-us", None,
     [("I was billed twice for the same thing.", 1.0),
      ("This is absolutely unacceptable. I am furious.", 1.0)],
     {"outcome": "transferred", "reason": "negative_words", "trigger": 1}),
    ("done_after_balance", "flite:slt", None,
     [("What is my balance?", 1.0),
      ("No, that's everything. Thanks, bye.", 1.0)],
     {"outcome": "bot_resolved", "intents": ["billing"]}),
    ("offtopic_three_times", "flite:kal16", None,
     [("My neighbour painted his fence green.", 1.0),
      ("We are going to the beach this weekend.", 1.0),
      ("The coffee here is very good.", 1.0)],
     {"outcome": "transferred", "reason": "unrecognized", "trigger": 2}),
    ("silent_after_hello", "espeak:en-gb", None,
     [("Hello? Is anybody there?", 1.0)],
     {"outcome": "transferred", "reason": "wait_timeout", "window": (14.9, 15.6)}),
    ("vip_order_question", "flite:rms", "+15550199",
     [("Hello, I have a question about my order.", 1.0)],
     {"outcome": "transferred", "reason": "vip", "window": (0.0, 3.0)}),
    ("rate_speeds_up_alone", "flite:slt", None,
     [("Hello, I am calling about an order I placed last week.", 1.0),
      ("I have been waiting for ten days and I still have nothing, "
       "so please tell me exactly where my order is today.", 1.9)],
     {"outcome": "transferred", "reason": "frustration", "trigger": 1}),
]


def synth(voice, text, speed, wav):
    engine, name = voice.split(":", 1)
    if engine == "flite":
        stretch = f"{1.0 / speed:.3f}"
        subprocess.run(["flite", "-voice", name, "--setf", f"duration_stretch={stretch}",
                        "-t", text, "-o", wav], check=True)
    elif engine == "festival":
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write(text)
        try:
            subprocess.run(["text2wave", "-eval", f"(voice_{name})", "-eval",
                            f"(Parameter.set 'Duration_Stretch {1.0 / speed:.3f})",
                            f.name, "-o", wav], check=True)
        finally:
            os.unlink(f.name)
    elif engine == "espeak":
        subprocess.run(["espeak-ng", "-v", name, "-s", str(int(160 * speed)),
                        "-w", wav, text], check=True)
    else:
        raise SystemExit(f"unknown voice {voice}")


def duration(wav):
    out = subprocess.run(["soxi", "-D", wav], check=True, capture_output=True, text=True)
    return float(out.stdout.strip())


def make(call, tmp):
    name, voice, caller, sentences, expect = call
    parts, speech, t = [], [], 1.0
    silence = lambda s, path: subprocess.run(
        ["sox", "-n", "-r", str(RATE), "-c", "1", "-b", "16", path, "trim", "0", f"{s:.3f}"],
        check=True)
    lead = os.path.join(tmp, f"{name}-lead.wav")
    silence(1.0, lead)
    parts.append(lead)
    for i, (text, speed) in enumerate(sentences):
        raw = os.path.join(tmp, f"{name}-{i}-raw.wav")
        synth(voice, text, speed, raw)
        # Phone band: 8 kHz mono, trimmed of the engine's own silence.
        seg = os.path.join(tmp, f"{name}-{i}.wav")
        subprocess.run(["sox", raw, "-r", str(RATE), "-c", "1", "-b", "16", seg,
                        "silence", "1", "0.02", "0.5%", "reverse", "silence", "1", "0.02",
                        "0.5%", "reverse", "norm", "-3"], check=True)
        d = duration(seg)
        speech.append((round(t, 2), round(t + d, 2), text))
        parts.append(seg)
        t += d
        gap = os.path.join(tmp, f"{name}-{i}-gap.wav")
        silence(GAP_S if i + 1 < len(sentences) else TAIL_S, gap)
        parts.append(gap)
        t += GAP_S if i + 1 < len(sentences) else TAIL_S
    if expect.get("reason") == "wait_timeout":
        pad = os.path.join(tmp, f"{name}-pad.wav")
        silence(max(0.0, 21.0 - t), pad)
        parts.append(pad)
        t = max(t, 21.0)
    joined = os.path.join(tmp, f"{name}-joined.wav")
    subprocess.run(["sox", *parts, joined], check=True)
    # Through G.711 mu-law and back, as a trunk delivers it.
    ulaw = os.path.join(tmp, f"{name}.ul")
    subprocess.run(["sox", joined, "-e", "u-law", "-t", "raw", ulaw], check=True)
    out = os.path.join(OUT, f"{name}.wav")
    subprocess.run(["sox", "-t", "raw", "-r", str(RATE), "-e", "u-law", "-c", "1", ulaw,
                    "-e", "signed-integer", "-b", "16", out], check=True)
    lines = [f'file = "{name}.wav"', f"duration_s = {duration(out):.2f}", f'voice = "{voice}"']
    if caller:
        lines.append(f'caller = "{caller}"')
    lines += ["", "[expect]", f'outcome = "{expect["outcome"]}"']
    if "reason" in expect:
        lines.append(f'reason = "{expect["reason"]}"')
        if "window" in expect:
            after, before = expect["window"]
        else:
            end = speech[expect["trigger"]][1]
            after, before = end, end + 2.5
        lines += [f"escalate_after_s = {after:.2f}", f"escalate_before_s = {before:.2f}"]
    if "intents" in expect:
        lines.append("intents = [" + ", ".join(f'"{i}"' for i in expect["intents"]) + "]")
    for start, end, text in speech:
        lines += ["", "[[speech]]", f"start = {start}", f"end = {end}",
                  'text = "' + text.replace('"', '\\"') + '"']
    with open(os.path.join(OUT, f"{name}.toml"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    only = set(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        for call in CALLS:
            if not only or call[0] in only:
                make(call, tmp)
                print(call[0])


if __name__ == "__main__":
    main()
