//! End-to-end calls from baresip, a real softphone, playing WAV files.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One call at a time: each test runs a gateway with Whisper, and on a 2-core
/// machine parallel calls starve each other's recognition.
static ONE_CALL_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_CALL_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn baresip_call_is_recorded_and_its_rfc4733_digits_logged_and_hash_ends_it() {
    let _serial = serial();
    let gw = Gateway::start(|_, _| {});
    let wav = root().join("tests/calls/angry_words.wav");
    let caller = Caller::dial(&gw, &wav, 30);
    std::thread::sleep(Duration::from_secs(4));
    caller.send_digit('5');
    // '#' once the gateway has decided the hand-over (the angry words end
    // at ~9.7 s; on a busy machine their transcript comes late): waiting on
    // the gateway's own state, not on a guess at Whisper's speed.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = gw.get("/api/calls", Some(Gateway::TOKEN));
        let decided = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["calls"].as_array().cloned())
            .is_some_and(|calls| calls.iter().any(|c| !c["handover_reason"].is_null()));
        if decided || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    caller.send_digit('#');
    let dirs = gw.wait_calls_ended(1, Duration::from_secs(15));
    drop(caller);
    let all = events(&dirs[0]);
    let digits: Vec<_> = all
        .iter()
        .filter(|e| e["kind"] == "dtmf")
        .map(|e| {
            (
                e["digit"].as_str().unwrap_or("").to_string(),
                e["source"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        digits,
        vec![
            ("5".to_string(), "rfc4733".to_string()),
            ("#".to_string(), "rfc4733".to_string())
        ]
    );
    let hangup = all
        .iter()
        .find(|e| e["kind"] == "call.hangup")
        .expect("hangup");
    assert_eq!(hangup["by"], "gateway");

    // The caller's words were recognised live and logged.
    let said: Vec<String> = all
        .iter()
        .filter(|e| e["kind"] == "utterance")
        .map(|e| e["text"].as_str().unwrap_or("").to_lowercase())
        .collect();
    assert_eq!(said.len(), 2, "two utterances: {said:?}");
    assert!(said[0].contains("order"), "{said:?}");
    assert!(
        said[1].contains("ridiculous") && said[1].contains("angry"),
        "{said:?}"
    );
    let second = all
        .iter()
        .filter(|e| e["kind"] == "utterance")
        .nth(1)
        .expect("second");
    assert!(second["words_per_s"].as_f64().unwrap_or(0.0) > 2.0);
    assert!(second["latency_ms"].as_u64().is_some());
    assert!(
        all.iter().any(|e| e["kind"] == "transcript.partial"),
        "partial results of long utterances"
    );

    // The live decision core handed the angry caller over, when replay would.
    let handover = all
        .iter()
        .find(|e| e["kind"] == "decision" && e["decision"] == "handover")
        .unwrap_or_else(|| panic!("no hand-over decision: {all:?}"));
    assert_eq!(handover["reason"], "negative_words");
    let at = handover["at_s"].as_f64().unwrap_or(-1.0);
    assert!((9.6..=11.6).contains(&at), "hand-over decided at {at} s");
    let ho = all
        .iter()
        .find(|e| e["kind"] == "handover")
        .expect("handover event");
    let summary = ho["summary"]["text"].as_str().unwrap_or("");
    assert!(
        summary.contains("negative words") && summary.contains("2001"),
        "{summary}"
    );

    // The bot answered the first request out loud (espeak-ng) on the right
    // channel, and stopped when the caller talked over it.
    let (left, right) = stereo(&dirs[0]);
    let said_at = all
        .iter()
        .find(|e| e["kind"] == "bot.say" && e["text"].as_str().unwrap_or("").contains("balance"))
        .and_then(|e| e["t_s"].as_f64())
        .expect("bot reply logged: \"charged twice\" is a billing request");
    // Synthesis takes a moment (longer on a busy machine): start where the
    // bot's audio does.
    let mut from = (said_at * 8000.0) as usize;
    while from + 160 < right.len()
        && right[from..from + 160]
            .iter()
            .all(|s| s.unsigned_abs() < 300)
    {
        from += 160;
    }
    let bot: Vec<f32> = right[from..(from + 8000 * 3).min(right.len())]
        .iter()
        .map(|s| f32::from(*s) / 32768.0)
        .collect();
    let bot16 = voicegate::media::resample::resample(&bot, 8000, 16000).expect("resample");
    let model = voicegate::speech::asr::WhisperModel::load(&root().join("models/ggml-tiny.en.bin"))
        .expect("model");
    let mut rec = voicegate::speech::asr::Recognizer::new(&model, 1, None).expect("state");
    let heard = rec.recognize(&bot16).expect("asr").text.to_lowercase();
    assert!(
        // tiny.en on espeak-ng is rough: any word of the billing reply,
        // none of another reply.
        ["balance", "forty", "dollars", "cents", "due", "month"]
            .iter()
            .any(|w| heard.contains(*w))
            && !heard.contains("shipped")
            && !heard.contains("address"),
        "bot said: {heard:?}"
    );
    assert!(
        all.iter().any(|e| e["kind"] == "bot.interrupted"),
        "barge-in"
    );
    let spoken = wav_mono(&wav);
    // The caller's first sentence (1.0 s – 3.6 s in the file).
    let probe = &spoken[8000..8000 * 3];
    let (lag, r) = best_correlation(&left, probe, 8000 * 6);
    assert!(
        r > 0.9,
        "left channel must carry the caller's WAV (r = {r:.3}, lag {lag})"
    );
}

#[test]
fn inband_dtmf_is_detected_when_no_rfc4733_is_sent() {
    let _serial = serial();
    let gw = Gateway::start(|_, _| {});
    // Two seconds of speech, then a '#' tone in the audio itself.
    let dir = tempfile::tempdir().expect("tempdir");
    let wav = dir.path().join("speech_then_hash.wav");
    let spoken = wav_mono(&root().join("tests/calls/calm_billing.wav"));
    let mut samples: Vec<i16> = spoken[..8000 * 3].to_vec();
    samples.extend(voicegate::media::dtmf::tone('#', 200));
    samples.extend(vec![0i16; 8000 * 3]);
    write_wav_8k(&wav, &samples);
    let caller = Caller::dial(&gw, &wav, 20);
    let dirs = gw.wait_calls_ended(1, Duration::from_secs(20));
    drop(caller);
    let all = events(&dirs[0]);
    let dtmf: Vec<_> = all.iter().filter(|e| e["kind"] == "dtmf").collect();
    assert_eq!(dtmf.len(), 1, "{all:?}");
    assert_eq!(dtmf[0]["digit"], "#");
    assert_eq!(dtmf[0]["source"], "inband");
    let hangup = all
        .iter()
        .find(|e| e["kind"] == "call.hangup")
        .expect("hangup");
    assert_eq!(hangup["reason"], "caller_pressed_hash");
}

#[test]
fn a_served_caller_who_stays_silent_hears_goodbye_and_the_bot_hangs_up() {
    let _serial = serial();
    let gw = Gateway::start(|_, _| {});
    let dir = tempfile::tempdir().expect("tempdir");
    let wav = dir.path().join("billing_then_silence.wav");
    let mut samples = wav_mono(&root().join("tests/calls/calm_billing.wav"));
    samples.extend(vec![0i16; 8000 * 12]);
    write_wav_8k(&wav, &samples);
    let caller = Caller::dial(&gw, &wav, 40);
    let dirs = gw.wait_calls_ended(1, Duration::from_secs(35));
    drop(caller);
    let all = events(&dirs[0]);
    let intent = all
        .iter()
        .find(|e| e["kind"] == "decision" && e["decision"] == "intent")
        .expect("intent");
    assert_eq!(intent["reason"], "billing");
    let bye = all
        .iter()
        .find(|e| e["kind"] == "bot.goodbye")
        .expect("goodbye");
    assert_eq!(bye["reason"], "caller_silent");
    let hangup = all
        .iter()
        .find(|e| e["kind"] == "call.hangup")
        .expect("hangup");
    assert_eq!(hangup["by"], "gateway");
    assert_eq!(hangup["reason"], "caller_silent");
    let t = hangup["t_s"].as_f64().unwrap_or(0.0);
    let served = intent["at_s"].as_f64().unwrap_or(0.0);
    // Goodbye comes after 8 s of silence and after the bot has finished
    // speaking (reply, "anything else?", goodbye): allow for a busy machine.
    assert!(
        t >= served + 8.0 && t < served + 25.0,
        "hung up at {t} s, served at {served} s"
    );
    assert!(
        !all.iter().any(|e| e["kind"] == "handover"),
        "a served caller is not handed over"
    );
}

// ---------------------------------------------------------------------------
// Hand-over to a human: Kamailio as the PBX, baresip (or SIPp) as the agent.
// ---------------------------------------------------------------------------

fn kinds(all: &[serde_json::Value], prefix: &str) -> Vec<serde_json::Value> {
    all.iter()
        .filter(|e| e["kind"].as_str().is_some_and(|k| k.starts_with(prefix)))
        .cloned()
        .collect()
}

/// A SIPp agent phone on its own port running `scenario`; its exit status
/// tells whether it saw what the scenario expects.
fn sipp_agent(scenario: &str) -> (std::process::Child, u16) {
    let port = free_port();
    let child = Command::new("sipp")
        .arg("-sf")
        .arg(root().join("tests/sipp").join(scenario))
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-m",
            "1",
            "-timeout",
            "60s",
        ])
        .args(["-nostdin"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp");
    std::thread::sleep(Duration::from_millis(500));
    (child, port)
}

#[test]
fn an_angry_caller_reaches_agent_1001_who_hears_the_whisper_then_the_caller() {
    let _serial = serial();
    let pbx = Kamailio::start();
    // The agent's phone speaks only A-law; the caller's μ-law: the bridge transcodes.
    // Once bridged, the agent calms the caller down.
    let agent = Agent::start_speaking(
        &pbx,
        "1001",
        ";audio_codecs=PCMA",
        &[
            (
                13.0,
                "I am so sorry about that. I will fix it for you right away.",
            ),
            (
                20.0,
                "I am so sorry about that. I will fix it for you right away.",
            ),
        ],
    );
    let member = format!("sip:1001@127.0.0.1:{}", pbx.port);
    let gw = Gateway::start_with(|_, _| {}, |cfg| agents_at(cfg, &[member], false));
    // The angry words, a pause while the agent hears the whisper, then a
    // request the agent (not the bot) must hear.
    let dir = tempfile::tempdir().expect("tmp");
    let mut audio = wav_mono(&root().join("tests/calls/angry_words.wav"));
    audio.extend(std::iter::repeat_n(0i16, 8000 * 10));
    audio.extend(wav_mono(&root().join("tests/calls/calm_tracking.wav")));
    let wav = dir.path().join("caller.wav");
    write_wav_8k(&wav, &audio);
    let seconds = (audio.len() / 8000) as u32 + 2;
    // Agent 1001's screen-pop is open before the call comes in.
    let pops = screen_pop(&gw, "1001");
    let caller = Caller::dial(&gw, &wav, seconds);
    let dirs = gw.wait_calls_ended(1, Duration::from_secs(u64::from(seconds) + 40));
    drop(caller);
    let all = events(&dirs[0]);

    // The screen-pop showed the call as it was handed over, then bridged,
    // with the summary, the reason and the caller's words.
    let pops = pops.join().expect("screen-pop reader");
    let states: Vec<&str> = pops.iter().filter_map(|p| p["state"].as_str()).collect();
    assert!(states.contains(&"handing_over"), "{states:?}");
    assert!(states.contains(&"bridged"), "{states:?}");
    let first = &pops[0];
    assert_eq!(first["handover_reason"], "negative_words", "{first}");
    assert!(
        first["summary"]["text"]
            .as_str()
            .unwrap_or("")
            .contains("negative words"),
        "{first}"
    );
    assert!(
        first["transcript"]
            .to_string()
            .to_lowercase()
            .contains("ridiculous"),
        "{first}"
    );
    // The agent's INVITE linked the call's page (Call-Info); the link opens
    // it with the summary, the link without its key does not.
    let info = pbx.call_infos();
    let url = info[0]
        .trim()
        .strip_prefix('<')
        .and_then(|u| u.split_once('>'))
        .map(|(u, rest)| {
            assert!(rest.contains("purpose=info"), "{rest}");
            u.to_string()
        })
        .unwrap_or_else(|| panic!("Call-Info {info:?}"));
    let (status, page) = http("GET", &url, None, None);
    assert_eq!(status, 200, "{url}: {page}");
    assert!(
        page.contains("negative words") && page.contains("ridiculous"),
        "{page}"
    );
    let keyless = url.split('?').next().unwrap_or("");
    assert_eq!(http("GET", keyless, None, None).0, 404);

    // The agent INVITE carried the summary as data, as the PBX saw it.
    let invites = pbx.invites();
    assert_eq!(invites.len(), 1, "{}", pbx.log());
    let (ruri, uui, reason, summary) = &invites[0];
    assert_eq!(ruri, "1001");
    assert_eq!(reason, "negative_words");
    assert!(summary.contains("negative words"), "{summary}");
    let (hexed, params) = uui.split_once(';').expect("UUI params");
    assert!(
        params.contains("encoding=hex") && params.contains("purpose=call-center"),
        "{uui}"
    );
    let data: serde_json::Value =
        serde_json::from_slice(&hex::decode(hexed).expect("hex UUI")).expect("UUI JSON");
    assert_eq!(data["reason"], "negative_words");
    assert_eq!(data["caller"], "2001");
    assert!(
        data["words"]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
            .contains("ridiculous"),
        "{data}"
    );

    // Every step is in the event log, in order.
    let steps: Vec<String> = kinds(&all, "transfer.")
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("").to_string())
        .collect();
    let order = [
        "transfer.started",
        "transfer.dial",
        "transfer.invite_sent",
        "transfer.answered",
        "transfer.whisper_started",
        "transfer.whisper_finished",
        "transfer.bridged",
    ];
    let mut at = 0;
    for want in order {
        at += steps[at..]
            .iter()
            .position(|k| k == want)
            .unwrap_or_else(|| panic!("no {want} after {:?}: {steps:?}", &steps[..at]));
    }
    let hangup = all
        .iter()
        .find(|e| e["kind"] == "call.hangup")
        .expect("hangup");
    assert_eq!(hangup["by"], "caller", "{hangup}");
    let invite = all
        .iter()
        .find(|e| e["kind"] == "call.invite")
        .expect("invite");
    assert_eq!(invite["codec"], "PCMU");
    assert!(
        pbx.log().contains("VG-BYE"),
        "the caller's BYE ended the agent leg too:\n{}",
        pbx.log()
    );
    let agent_media = kinds(&all, "transfer.agent_media");
    assert_eq!(
        agent_media.first().map(|m| m["codec"].clone()),
        Some("PCMA".into()),
        "{all:?}"
    );
    // The caller's later words are still transcribed after the bridge.
    assert!(
        all.iter().any(|e| e["kind"] == "utterance"
            && e["text"]
                .as_str()
                .unwrap_or("")
                .to_lowercase()
                .contains("order")
            && e["start_s"].as_f64().unwrap_or(0.0) > 20.0),
        "transcription goes on while bridged"
    );

    // The agent heard the whisper (reason and the caller's words) and then the caller.
    let heard = agent.heard();
    assert!(!heard.is_empty(), "agent recorded nothing");
    let text = transcribe(&heard[0]);
    let whisper_at = text
        .find("negative")
        .unwrap_or_else(|| panic!("no reason in {text:?}"));
    assert!(
        text.contains("angry"),
        "caller's words in the whisper: {text:?}"
    );
    let caller_at = text
        .find("my order")
        .unwrap_or_else(|| panic!("agent never heard the caller: {text:?}"));
    assert!(whisper_at < caller_at, "{text:?}");

    // The caller never heard the whisper: only the bot's words, hold music and the agent.
    let (_, to_caller) = stereo(&dirs[0]);
    let heard_by_caller = dir.path().join("caller-heard.wav");
    write_wav_8k(&heard_by_caller, &to_caller);
    let text = transcribe(&heard_by_caller);
    assert!(text.contains("connecting"), "{text:?}");
    assert!(
        text.contains("fix it"),
        "the caller heard the agent: {text:?}"
    );
    assert!(
        !text.contains("negative") && !text.contains("upset"),
        "whisper leaked to the caller: {text:?}"
    );

    // QA mines the handled call: the agent's calming words come back as a snippet.
    let snippet = mine_snippet(&gw.dir.path().join("config"), &gw.recordings());
    assert!(snippet.contains("1 with an agent bridged"), "{snippet}");
    assert!(
        snippet.contains("[calming]") && snippet.contains("sorry"),
        "{snippet}"
    );
    toml::from_str::<toml::Value>(&snippet).expect("the snippet is valid TOML");

    // Replayed from its recording, the call decides as it did live up to the
    // hand-over (after it, the agent has the caller).
    let replayed = replay_json(
        &dirs[0].join("call.wav"),
        &gw.dir.path().join("config"),
        &[],
    );
    assert_eq!(replayed["outcome"], "transferred", "{replayed}");
    assert_eq!(replayed["reason"], "negative_words", "{replayed}");
    let live_decisions: Vec<(String, String)> = all
        .iter()
        .filter(|e| e["kind"] == "decision")
        .map(|e| {
            (
                e["decision"].as_str().unwrap_or("").to_string(),
                e["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .take_while(|(k, _)| k != "handover")
        .collect();
    let replayed_decisions: Vec<(String, String)> = replayed["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or("").to_string(),
                d["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .take_while(|(k, _)| k != "handover")
        .collect();
    assert_eq!(live_decisions, replayed_decisions);
}

#[test]
fn a_busy_first_agent_fails_over_to_the_second() {
    let _serial = serial();
    let pbx = Kamailio::start();
    let _agent = Agent::start(&pbx, "1001");
    let (mut busy, busy_port) = sipp_agent("agent_busy.xml");
    let members = vec![
        format!("sip:2222@127.0.0.1:{busy_port}"),
        format!("sip:1001@127.0.0.1:{}", pbx.port),
    ];
    let gw = Gateway::start_with(|_, _| {}, |cfg| agents_at(cfg, &members, false));
    // The demo VIP goes to a human the moment the call is answered; the
    // caller stays 12 s.
    let (caller, _dir) = quiet_call(&gw, 12, "+15550199");
    let dirs = gw.wait_calls_ended(1, Duration::from_secs(40));
    drop(caller);
    assert!(
        busy.wait().expect("sipp").success(),
        "the busy agent saw an INVITE and its ACK"
    );
    let all = events(&dirs[0]);
    let failed = kinds(&all, "transfer.attempt_failed");
    assert_eq!(failed.len(), 1, "{all:?}");
    assert_eq!(failed[0]["status"], 486);
    assert_eq!(failed[0]["why"], "busy");
    let bridged = kinds(&all, "transfer.bridged");
    assert_eq!(bridged.len(), 1, "{all:?}");
    assert!(bridged[0]["uri"].as_str().unwrap_or("").contains("1001"));
    let handover = all
        .iter()
        .find(|e| e["kind"] == "handover")
        .expect("handover");
    assert_eq!(handover["reason"], "vip");
}

#[test]
fn with_no_agent_registered_the_caller_stays_with_the_bot_and_leaves_a_callback_number() {
    let _serial = serial();
    let pbx = Kamailio::start(); // nobody registered: 404
    let member = format!("sip:1001@127.0.0.1:{}", pbx.port);
    let gw = Gateway::start_with(|_, _| {}, |cfg| agents_at(cfg, &[member], false));
    let (caller, dir) = quiet_call(&gw, 20, "+15550199");
    std::thread::sleep(Duration::from_secs(8));
    for d in "5550123#".chars() {
        caller.send_digit(d);
        std::thread::sleep(Duration::from_millis(400));
    }
    let dirs = gw.wait_calls_ended(1, Duration::from_secs(45));
    drop(caller);
    let all = events(&dirs[0]);
    let failed = kinds(&all, "transfer.attempt_failed");
    assert_eq!(
        failed.first().map(|f| f["status"].clone()),
        Some(404.into()),
        "{all:?}"
    );
    assert!(!kinds(&all, "transfer.failed").is_empty(), "{all:?}");
    let said: Vec<String> = all
        .iter()
        .filter(|e| e["kind"] == "bot.say")
        .map(|e| e["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(said.iter().any(|t| t.contains("busy")), "{said:?}");
    assert!(said.iter().any(|t| t.contains("call you back")), "{said:?}");
    let callback = all
        .iter()
        .find(|e| e["kind"] == "decision" && e["decision"] == "callback")
        .unwrap_or_else(|| panic!("no callback number: {all:?}"));
    assert_eq!(callback["reason"], "5550123");
    // Never dropped: the caller ended the call, not the gateway.
    let hangup = all
        .iter()
        .find(|e| e["kind"] == "call.hangup")
        .expect("hangup");
    assert_eq!(hangup["by"], "caller", "{hangup}");
    // And the caller heard it said.
    let (_, to_caller) = stereo(&dirs[0]);
    let heard = dir.path().join("heard.wav");
    write_wav_8k(&heard, &to_caller);
    assert!(transcribe(&heard).contains("call you back"));
}

#[test]
fn a_caller_hanging_up_while_the_agent_rings_cancels_the_agent() {
    let _serial = serial();
    let (mut ringing, port) = sipp_agent("agent_ring_cancel.xml");
    let member = format!("sip:3333@127.0.0.1:{port}");
    let gw = Gateway::start_with(|_, _| {}, |cfg| agents_at(cfg, &[member], false));
    // baresip hangs up when its 4 s file ends, while the agent still rings.
    let (caller, _dir) = quiet_call(&gw, 4, "+15550199");
    let dirs = gw.wait_calls_ended(1, Duration::from_secs(30));
    drop(caller);
    assert!(
        ringing.wait().expect("sipp").success(),
        "the ringing agent got a CANCEL"
    );
    let all = events(&dirs[0]);
    let abandoned = kinds(&all, "transfer.abandoned");
    assert_eq!(abandoned.len(), 1, "{all:?}");
    assert_eq!(abandoned[0]["while"], "ringing");
}

#[test]
fn an_agent_declining_with_2_passes_the_caller_to_the_next_who_accepts_with_1() {
    let _serial = serial();
    let pbx = Kamailio::start();
    let first = Agent::start(&pbx, "1001");
    let second = Agent::start(&pbx, "1002");
    let members = vec![
        format!("sip:1001@127.0.0.1:{}", pbx.port),
        format!("sip:1002@127.0.0.1:{}", pbx.port),
    ];
    let gw = Gateway::start_with(|_, _| {}, |cfg| agents_at(cfg, &members, true));
    let (caller, _dir) = quiet_call(&gw, 20, "+15550199");
    // Each agent presses a key once their phone is answered (the gateway
    // takes the key during the whisper too), however slow the box.
    gw.wait_event("transfer.answered", "1001", Duration::from_secs(15));
    first.send_digit('2');
    gw.wait_event("transfer.answered", "1002", Duration::from_secs(15));
    second.send_digit('1');
    let dirs = gw.wait_calls_ended(1, Duration::from_secs(40));
    drop(caller);
    let all = events(&dirs[0]);
    let declined = kinds(&all, "transfer.declined");
    assert_eq!(declined.len(), 1, "{all:?}");
    assert!(declined[0]["uri"].as_str().unwrap_or("").contains("1001"));
    let bridged = kinds(&all, "transfer.bridged");
    assert_eq!(bridged.len(), 1, "{all:?}");
    assert!(bridged[0]["uri"].as_str().unwrap_or("").contains("1002"));
}

#[test]
fn parallel_agents_through_an_authenticating_proxy_and_the_agent_hanging_up_ends_the_call() {
    let _serial = serial();
    let pbx = Kamailio::start_with_password(Some("s3cret"));
    // The phones ring until told to answer: an auto-answering phone may take
    // the call before the other dial has got through the challenge, and the
    // gateway then rightly stops that dial (seen on a loaded CI box).
    let first = Agent::start_with(&pbx, "1001", ";answermode=manual");
    let second = Agent::start_with(&pbx, "1002", ";answermode=manual");
    let port = pbx.port;
    let gw = Gateway::start_with(
        |_, _| {},
        |cfg| {
            std::fs::write(
                cfg.join("agents.toml"),
                format!(
                    "[pbx]\noutbound_proxy = \"127.0.0.1:{port}\"\nusername = \"voicegate\"\npassword = \"s3cret\"\n\
                     [whisper]\nenabled = false\n\
                     [[group]]\nname = \"all\"\nstrategy = \"parallel\"\nring_timeout_s = 30.0\n\
                     members = [\"sip:1001@127.0.0.1\", \"sip:1002@127.0.0.1\"]\n"
                ),
            )
            .expect("agents.toml");
        },
    );
    let (caller, _dir) = quiet_call(&gw, 40, "+15550199");
    // Both phones ring (each INVITE got through the proxy's challenge)
    // before the first one answers.
    let deadline = Instant::now() + Duration::from_secs(25);
    while !(pbx.log().contains("VG-INVITE ruri=1001") && pbx.log().contains("VG-INVITE ruri=1002"))
    {
        assert!(
            Instant::now() < deadline,
            "both phones rung:\n{}",
            pbx.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    first.accept();
    std::thread::sleep(Duration::from_secs(3));
    // Whoever took the call hangs up; the other phone was released already.
    first.hang_up();
    second.hang_up();
    let dirs = gw.wait_calls_ended(1, Duration::from_secs(30));
    drop(caller);
    let all = events(&dirs[0]);
    let log = pbx.log();
    assert!(
        log.contains("VG-CHALLENGE"),
        "the PBX asked for credentials:\n{log}"
    );
    assert_eq!(log.matches("VG-AUTHORIZED voicegate").count(), 2, "{log}");
    let dials = kinds(&all, "transfer.dial");
    assert_eq!(dials.len(), 2, "both rung at once: {all:?}");
    let bridged = kinds(&all, "transfer.bridged");
    assert_eq!(bridged.len(), 1, "{all:?}");
    let hangup = all
        .iter()
        .find(|e| e["kind"] == "call.hangup")
        .expect("hangup");
    assert_eq!(hangup["by"], "gateway", "{all:?}\n{log}");
    assert_eq!(hangup["reason"], "agent_bye", "{hangup}");
    let ended = kinds(&all, "transfer.ended");
    assert_eq!(
        ended.first().map(|e| e["by"].clone()),
        Some("agent".into()),
        "{all:?}"
    );
    // The phone that never answered was CANCELled through the proxy (the
    // INVITE's path), not at its Request-URI's host.
    assert!(
        log.contains("VG-CANCEL 1002"),
        "{log}\n{all:?}\n{}",
        gw.log()
    );
}

#[test]
fn replaying_live_recordings_gives_the_live_utterances_decisions_and_outcomes() {
    let _serial = serial();
    // No agent anywhere: the live hand-over is decided (and fails over to
    // the callback); what is compared is the decision, as replay makes it.
    let gw = Gateway::start(|_, _| {});
    // Barge-in (the caller talks over the bot's "sorry"), hand-overs, and a
    // caller who picks the billing menu with key 1, is served, stays silent
    // and hears the bot say goodbye and hang up.
    let calls = ["calm_billing", "angry_words", "unrecognized", "silent_wait"];
    for (n, name) in calls.iter().enumerate() {
        let wav = root().join(format!("tests/calls/{name}.wav"));
        let seconds = (wav_mono(&wav).len() / 8000) as u32 + 1;
        let caller = Caller::dial(&gw, &wav, seconds);
        if *name == "silent_wait" {
            std::thread::sleep(Duration::from_secs(5));
            caller.send_digit('1');
        }
        gw.wait_calls_ended(n + 1, Duration::from_secs(u64::from(seconds) + 40));
        drop(caller);
    }
    let cfg = gw.dir.path().join("config");
    let mut dirs = gw.call_dirs();
    dirs.sort_by_key(|d| {
        std::fs::metadata(d.join("events.jsonl"))
            .and_then(|m| m.modified())
            .ok()
    });
    assert_eq!(dirs.len(), calls.len());
    for dir in &dirs {
        let live = events(dir);
        let replayed = replay_json(&dir.join("call.wav"), &cfg, &[]);
        // Decisions: the same kinds and reasons, in order, within one VAD frame.
        let handover_at = live
            .iter()
            .find(|e| e["kind"] == "decision" && e["decision"] == "handover")
            .and_then(|e| e["at_s"].as_f64());
        let live_decisions: Vec<(String, String, f64)> = live
            .iter()
            .filter(|e| e["kind"] == "decision")
            .filter(|e| !matches!(e["decision"].as_str(), Some("transfer_failed" | "callback")))
            .map(|e| {
                (
                    e["decision"].as_str().unwrap_or("").to_string(),
                    e["reason"].as_str().unwrap_or("").to_string(),
                    e["at_s"].as_f64().unwrap_or(-1.0),
                )
            })
            .collect();
        let replay_decisions: Vec<(String, String, f64)> = replayed["decisions"]
            .as_array()
            .expect("decisions")
            .iter()
            .map(|d| {
                (
                    d["kind"].as_str().unwrap_or("").to_string(),
                    d["reason"].as_str().unwrap_or("").to_string(),
                    d["t_s"].as_f64().unwrap_or(-1.0),
                )
            })
            .collect();
        let kinds = |v: &[(String, String, f64)]| -> Vec<(String, String)> {
            v.iter().map(|(k, r, _)| (k.clone(), r.clone())).collect()
        };
        assert_eq!(
            kinds(&live_decisions),
            kinds(&replay_decisions),
            "{}: live vs replay decisions; live events:\n{}",
            dir.display(),
            live.iter()
                .filter(|e| e["kind"] != "dtmf")
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
        // Decided on an utterance: the VAD's own time, the same within one
        // frame. Decided on the clock (a key, a silence): the live tick is on
        // the wall clock, the replay's on the audio, 20 ms apart at most
        // (more on a loaded machine, hence the margin).
        // Decided on a key or on the clock (a silence, a wait): the live
        // tick runs on the wall clock, the replay's on the audio — 20 ms
        // apart, more on a loaded machine, hence the margin.
        let clocked: Vec<bool> = live
            .iter()
            .filter(|e| e["kind"] == "decision")
            .filter(|e| !matches!(e["decision"].as_str(), Some("transfer_failed" | "callback")))
            .map(|e| {
                e["decision"] == "goodbye"
                    || e["reason"] == "wait_timeout"
                    || e["evidence"].as_array().is_some_and(|ev| {
                        ev.iter()
                            .any(|x| x.as_str().is_some_and(|x| x.starts_with("pressed")))
                    })
            })
            .collect();
        for ((l, r), clocked) in live_decisions.iter().zip(&replay_decisions).zip(clocked) {
            let tolerance = if clocked { 0.25 } else { 0.021 };
            assert!(
                (l.2 - r.2).abs() <= tolerance,
                "{}: {} at {} live, {} replayed",
                dir.display(),
                l.0,
                l.2,
                r.2
            );
        }
        // Utterances up to the hand-over: same text, same boundaries.
        let live_utts: Vec<&serde_json::Value> = live
            .iter()
            .filter(|e| e["kind"] == "utterance")
            .filter(|e| handover_at.is_none_or(|h| e["end_s"].as_f64().unwrap_or(0.0) <= h))
            .collect();
        let replay_utts = replayed["utterances"].as_array().expect("utterances");
        assert_eq!(live_utts.len(), replay_utts.len(), "{}", dir.display());
        for (l, r) in live_utts.iter().zip(replay_utts) {
            assert_eq!(l["text"], r["text"], "{}", dir.display());
            for key in ["start_s", "end_s"] {
                let (a, b) = (
                    l[key].as_f64().unwrap_or(-1.0),
                    r[key].as_f64().unwrap_or(-2.0),
                );
                assert!(
                    (a - b).abs() <= 0.021,
                    "{}: {key}: {a} live, {b} replayed",
                    dir.display()
                );
            }
        }
        let live_outcome = if handover_at.is_some() {
            "transferred"
        } else if live
            .iter()
            .any(|e| e["kind"] == "decision" && e["decision"] == "intent")
        {
            "bot_resolved"
        } else {
            "caller_hung_up"
        };
        assert_eq!(replayed["outcome"], live_outcome, "{}", dir.display());
        // What the shell used to decide on its own is replayed too: the bot
        // interrupted by the caller, the goodbye, the gateway's hang-up.
        let replay_events = replayed["events"].as_array().expect("events");
        let of = |all: &[serde_json::Value], kind: &str, upto: f64| -> Vec<String> {
            all.iter()
                .filter(|e| e["kind"] == kind)
                .filter(|e| e["t_s"].as_f64().unwrap_or(0.0) <= upto)
                .map(|e| e["reason"].as_str().unwrap_or("").to_string())
                .collect()
        };
        let upto = handover_at.unwrap_or(f64::MAX);
        for kind in ["bot.interrupted", "bot.goodbye"] {
            assert_eq!(
                of(&live, kind, upto),
                of(replay_events, kind, upto),
                "{}: {kind} live vs replayed",
                dir.display()
            );
        }
        let gateway_hangup = |all: &[serde_json::Value]| {
            all.iter()
                .find(|e| e["kind"] == "call.hangup" && e["by"] == "gateway")
                .map(|e| e["reason"].clone())
        };
        if handover_at.is_none() {
            assert_eq!(
                gateway_hangup(&live),
                gateway_hangup(replay_events),
                "{}",
                dir.display()
            );
        }
    }
    // The menu call: key 1 chose billing, the served caller stayed silent,
    // the bot said goodbye and hung up — live, and replayed from the recording.
    let menu = events(dirs.last().expect("menu call"));
    assert!(
        menu.iter().any(|e| e["kind"] == "decision"
            && e["decision"] == "intent"
            && e["reason"] == "billing"),
        "{menu:?}"
    );
    assert!(
        menu.iter().any(|e| e["kind"] == "call.hangup"
            && e["by"] == "gateway"
            && e["reason"] == "caller_silent"),
        "{menu:?}"
    );
    let interrupted: usize = dirs
        .iter()
        .map(|d| {
            events(d)
                .iter()
                .filter(|e| e["kind"] == "bot.interrupted")
                .count()
        })
        .sum();
    assert!(interrupted >= 2, "the set has barge-ins: {interrupted}");
    // The requests the bot did not understand, mined for the administrator.
    let snippet = mine_snippet(&cfg, &gw.recordings());
    assert!(
        snippet.contains("4 calls, 2 handed to a person"),
        "{snippet}"
    );
    assert!(
        snippet.contains("[[suggestion]]") && snippet.contains("tuesday"),
        "{snippet}"
    );
    toml::from_str::<toml::Value>(&snippet).expect("the snippet is valid TOML");
}

#[test]
fn voicegate_call_replays_the_public_calls_over_the_wire_with_the_offline_outcomes() {
    let _serial = serial();
    // Numbers dialled as "zh" are Mandarin callers (the trunk's per-number
    // language), transcribed by the multilingual model.
    let gw = Gateway::start(|gateway, trunks| {
        *trunks = trunks.replacen(
            "routes = { \"*\" = \"default\" }",
            "routes = { \"*\" = \"default\" }\nlanguages = { \"zh\" = \"zh\" }",
            1,
        );
        // Several Mandarin callers at once on the base model can fill the
        // default queue of 8 on a loaded 2-core box (seen in CI: one call
        // handed over for asr_unavailable). The replay would decide that
        // call as live did (it reads the recorded overload), but this test
        // is about the public calls' own outcomes: room for every utterance.
        *gateway = gateway.replace("queue = 8", "queue = 64");
    });
    // The English calls (tests/calls/*.wav with their .toml) and, dialled
    // to the Mandarin number, tests/calls/zh.
    let english = tempfile::tempdir().expect("tmp");
    for entry in std::fs::read_dir(root().join("tests/calls"))
        .expect("calls")
        .flatten()
    {
        let p = entry.path();
        if p.is_file() {
            std::fs::copy(&p, english.path().join(entry.file_name())).expect("copy");
        }
    }
    let back = tempfile::tempdir().expect("tmp");
    let mut placed: Vec<serde_json::Value> = Vec::new();
    let mut expected: Vec<(String, toml::Value)> = Vec::new();
    for (dialled, dir) in [
        ("bot", english.path().to_path_buf()),
        ("zh", root().join("tests/calls/zh")),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_voicegate"))
            .current_dir(root())
            .arg("call")
            .arg(format!("sip:{dialled}@127.0.0.1:{}", gw.sip_port))
            .arg("--play")
            .arg(&dir)
            .args(["--rate", "0.25", "--linger", "6", "--json", "--record"])
            .arg(back.path())
            .output()
            .expect("voicegate call");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        placed.extend(
            stdout
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line")),
        );
        for entry in std::fs::read_dir(&dir).expect("calls").flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "toml") {
                let spec: toml::Value =
                    toml::from_str(&std::fs::read_to_string(&p).expect("toml")).expect("toml");
                let name = p.file_stem().map(|n| n.to_string_lossy().to_string());
                expected.push((name.unwrap_or_default(), spec));
            }
        }
    }
    let all = format!("{placed:#?}");
    assert_eq!(placed.len(), 18, "{all}");
    assert!(placed
        .iter()
        .all(|c| c["answered"] == true && c["setup_ms"].as_f64().is_some()));
    assert!(
        placed
            .iter()
            .all(|c| c["audio_received_s"].as_f64().unwrap_or(0.0) > 1.0),
        "the bot's greeting and answers came back: {all}"
    );
    // What the caller heard (the connecting phrase, read by Whisper over hold
    // music) is reported, not asserted: the gateway's events below decide.
    let heard = placed.iter().filter(|c| c["handed_over"] == true).count();
    println!(
        "hand-overs heard by the caller side: {heard} of {}",
        placed.len()
    );

    let dirs = gw.wait_calls_ended(18, Duration::from_secs(90));
    let mut mismatches = Vec::new();
    let mut reasons = std::collections::BTreeSet::new();
    for dir in &dirs {
        let live = events(dir);
        let from = live
            .iter()
            .find(|e| e["kind"] == "call.invite")
            .and_then(|e| e["from"].as_str())
            .unwrap_or("")
            .to_string();
        let handover = live
            .iter()
            .find(|e| e["kind"] == "decision" && e["decision"] == "handover");
        let live_outcome = if handover.is_some() {
            "transferred"
        } else if live
            .iter()
            .any(|e| e["kind"] == "decision" && e["decision"] == "intent")
        {
            "bot_resolved"
        } else {
            "caller_hung_up"
        };
        let live_reason = handover.map(|h| h["reason"].clone()).unwrap_or_default();
        if let Some(r) = live_reason.as_str() {
            reasons.insert(r.to_string());
        }
        // The recording replayed offline decides as the live call did.
        let replayed = replay_json(&dir.join("call.wav"), &gw.dir.path().join("config"), &[]);
        if replayed["outcome"] != live_outcome || replayed["reason"] != live_reason {
            // With what the live call's recogniser reported, so a failure
            // shows its cause.
            let asr: Vec<&serde_json::Value> = live
                .iter()
                .filter(|e| e["kind"].as_str().is_some_and(|k| k.starts_with("asr")))
                .collect();
            mismatches.push(format!(
                "{from}: live {live_outcome} {live_reason}, replay {} {}; live ASR events: {asr:?}",
                replayed["outcome"], replayed["reason"]
            ));
        }
        // Which public call this was: its words, as the live call heard them.
        let language = live
            .iter()
            .find(|e| e["kind"] == "call.answered")
            .and_then(|e| e["language"].as_str())
            .unwrap_or("")
            .to_string();
        let transcript: String = live
            .iter()
            .filter(|e| e["kind"] == "utterance")
            .filter_map(|e| e["text"].as_str())
            .collect::<Vec<_>>()
            .join(" ");
        println!("{language} {from}: {live_outcome} {live_reason} — {transcript}");
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    // Every calm call stays with the bot and every reason of the public sets
    // is decided live (the gateway's own events, not what the caller heard).
    let resolved_expected = expected
        .iter()
        .filter(|(_, s)| {
            s.get("expect")
                .and_then(|e| e.get("outcome"))
                .and_then(|o| o.as_str())
                == Some("bot_resolved")
        })
        .count();
    let resolved_live = dirs
        .iter()
        .filter(|d| {
            !events(d)
                .iter()
                .any(|e| e["kind"] == "decision" && e["decision"] == "handover")
        })
        .count();
    assert_eq!(
        resolved_live, resolved_expected,
        "calls kept by the bot live vs expected"
    );
    let want: std::collections::BTreeSet<String> = expected
        .iter()
        .filter_map(|(_, s)| {
            s.get("expect")
                .and_then(|e| e.get("reason"))
                .and_then(|r| r.as_str())
                .map(str::to_string)
        })
        .collect();
    assert_eq!(reasons, want, "hand-over reasons decided live");
    let zh_calls = dirs
        .iter()
        .filter(|d| {
            events(d)
                .iter()
                .any(|e| e["kind"] == "call.answered" && e["language"] == "zh")
        })
        .count();
    assert_eq!(
        zh_calls, 8,
        "the Mandarin number's calls were taken as Mandarin"
    );
}

/// Read `/agent/events?ext=EXT` (server-sent events) for 45 s: every call
/// update pushed to that extension.
fn screen_pop(gw: &Gateway, ext: &str) -> std::thread::JoinHandle<Vec<serde_json::Value>> {
    use std::io::BufRead;
    let url = format!("http://127.0.0.1:{}/agent/events?ext={ext}", gw.http_port);
    let reader = ureq::get(&url)
        .call()
        .expect("screen-pop stream")
        .into_reader();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(45);
        for line in std::io::BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if let Some(data) = line.strip_prefix("data:") {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(data.trim()) {
                    let ended = v["state"] == "ended";
                    out.push(v);
                    if ended {
                        break;
                    }
                }
            }
            if Instant::now() > deadline {
                break;
            }
        }
        out
    })
}

#[test]
fn a_trunk_in_auto_takes_each_callers_language_from_their_first_words() {
    let _serial = serial();
    // One trunk, no per-number language: each caller is heard in whatever
    // language they speak, by the multilingual model.
    let gw = Gateway::start(|_, trunks| {
        *trunks = trunks.replacen("# language = \"auto\"", "language = \"auto\"", 1);
    });
    let calls = [
        ("zh", root().join("tests/calls/zh/zh_calm_billing.wav")),
        ("en", root().join("tests/calls/calm_billing.wav")),
    ];
    for (n, (_, wav)) in calls.iter().enumerate() {
        let out = Command::new(env!("CARGO_BIN_EXE_voicegate"))
            .current_dir(root())
            .arg("call")
            .arg(format!("sip:bot@127.0.0.1:{}", gw.sip_port))
            .arg("--play")
            .arg(wav)
            .args(["--linger", "5", "--json", "--no-listen"])
            .output()
            .expect("voicegate call");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        gw.wait_calls_ended(n + 1, Duration::from_secs(30));
    }
    let mut dirs = gw.call_dirs();
    dirs.sort_by_key(|d| {
        std::fs::metadata(d.join("events.jsonl"))
            .and_then(|m| m.modified())
            .ok()
    });
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    let cjk = |s: &str| s.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c));
    for ((language, wav), dir) in calls.iter().zip(&dirs) {
        let all = events(dir);
        let answered = all
            .iter()
            .find(|e| e["kind"] == "call.answered")
            .expect("answered");
        assert_eq!(answered["language"], "auto", "{}", wav.display());
        let adopted: Vec<&str> = all
            .iter()
            .filter(|e| e["kind"] == "decision" && e["decision"] == "language")
            .filter_map(|e| e["reason"].as_str())
            .collect();
        assert_eq!(adopted, [*language], "{}: {all:?}", wav.display());
        let intents: Vec<&str> = all
            .iter()
            .filter(|e| e["kind"] == "decision" && e["decision"] == "intent")
            .filter_map(|e| e["reason"].as_str())
            .collect();
        assert!(intents.contains(&"billing"), "{}: {all:?}", wav.display());
        // The bot answered in the caller's language.
        let reply = all
            .iter()
            .filter(|e| e["kind"] == "bot.say")
            .filter_map(|e| e["text"].as_str())
            .find(|t| t.contains("42") || t.contains("forty") || t.contains("余额") || cjk(t))
            .unwrap_or_else(|| panic!("{}: no reply: {all:?}", wav.display()));
        assert_eq!(cjk(reply), *language == "zh", "{}: {reply}", wav.display());
    }
}
