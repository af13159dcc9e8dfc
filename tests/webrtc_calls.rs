//! Browser callers: headless Chromium opens `/call`, its fake microphone
//! plays a public test call, and the call goes through the same bot, emotion
//! and hand-over pipeline as a phone call — up to the baresip agent 1001
//! behind Kamailio, bridged Opus ↔ G.711.

mod common;

use common::*;
use serde_json::Value;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| w.len() > 2)
        .map(str::to_string)
        .collect()
}

#[test]
fn a_browser_caller_is_transcribed_like_the_replay_and_reaches_agent_1001() {
    let pbx = Kamailio::start();
    let agent = Agent::start_with(&pbx, "1001", ";audio_codecs=PCMA");
    let member = format!("sip:1001@127.0.0.1:{}", pbx.port);
    let gw = Gateway::start_with(|_, _| {}, |cfg| agents_at(cfg, &[member], false));

    // The browser's microphone: the angry call, then silence while bridged.
    let dir = tempfile::tempdir().expect("tmp");
    let source = root().join("tests/calls/angry_words.wav");
    let mut audio = wav_mono(&source);
    audio.extend(std::iter::repeat_n(0i16, 8000 * 20));
    let mic = dir.path().join("mic.wav");
    write_wav_8k(&mic, &audio);
    let mut chromium = headless_chromium(&dir.path().join("profile"))
        .args([
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            "--allow-loopback-in-peer-connection",
            "--autoplay-policy=no-user-gesture-required",
        ])
        .arg(format!(
            "--use-file-for-fake-audio-capture={}%noloop",
            mic.display()
        ))
        .arg(format!(
            "http://127.0.0.1:{}/call?autostart=1&raw=1",
            gw.http_port
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium (make test installs it)");

    // Agent 1001's screen-pop, open in a browser before the call comes in.
    let mut pop = Browser::open(&format!("http://127.0.0.1:{}/agent?ext=1001", gw.http_port));

    // Wait for the browser call to be bridged to the agent.
    let deadline = Instant::now() + Duration::from_secs(60);
    let call = loop {
        let (status, body) = gw.get("/api/calls", Some(Gateway::TOKEN));
        assert_eq!(status, 200, "{body}");
        let calls: Value = serde_json::from_str(&body).expect("json");
        let web = calls["calls"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["channel"] == "webrtc").cloned());
        if let Some(c) = web.filter(|c| c["state"] == "bridged") {
            break c;
        }
        if Instant::now() > deadline {
            stop_child(&mut chromium);
            panic!("no bridged browser call: {calls}\n{}", gw.log());
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(call["trunk"], "webrtc");
    assert_eq!(call["handover_reason"], "negative_words", "{call}");
    assert_eq!(call["agent"], "1001");
    // The screen-pop shows it live: who, the reason, the summary, the words.
    let shown = pop.wait_text(
        "document.getElementById('calls').innerText",
        &["negative_words", "bridged", "negative words", "ridiculous"],
        Duration::from_secs(10),
    );
    assert!(shown.contains("Anonymous caller"), "{shown}");
    // Let the bridged call run a little, then the browser hangs up.
    std::thread::sleep(Duration::from_secs(2));
    stop_child(&mut chromium);
    let dirs = gw.wait_calls_ended(1, Duration::from_secs(40));
    let all = events(&dirs[0]);

    // The decision and the transcript are the offline replay's.
    let replay = replay_json(&source, &gw.dir.path().join("config"), &[]);
    assert_eq!(replay["outcome"], "transferred");
    assert_eq!(replay["reason"], "negative_words");
    let live_decision = all
        .iter()
        .find(|e| e["kind"] == "decision" && e["decision"] == "handover")
        .expect("live hand-over decision");
    assert_eq!(live_decision["reason"], replay["reason"]);
    let offline: Vec<String> = replay["utterances"]
        .as_array()
        .expect("utterances")
        .iter()
        .flat_map(|u| words(u["text"].as_str().unwrap_or("")))
        .collect();
    let live: Vec<String> = all
        .iter()
        .filter(|e| e["kind"] == "utterance")
        .flat_map(|e| words(e["text"].as_str().unwrap_or("")))
        .collect();
    eprintln!("live: {live:?}\nreplay: {offline:?}");
    let shared = offline.iter().filter(|w| live.contains(w)).count();
    assert!(
        shared * 10 >= offline.len() * 7,
        "live {live:?} vs replay {offline:?}"
    );

    // The hand-over reached the agent through the PBX, with the summary.
    let invites = pbx.invites();
    assert_eq!(invites.len(), 1, "{}", pbx.log());
    assert_eq!(invites[0].0, "1001");
    assert_eq!(invites[0].2, "negative_words");
    assert!(all.iter().any(|e| e["kind"] == "transfer.bridged"));
    let answered = all
        .iter()
        .find(|e| e["kind"] == "call.answered")
        .expect("answered");
    assert_eq!(answered["channel"], "webrtc");
    assert_eq!(answered["codec"], "opus");
    let ended = all
        .iter()
        .find(|e| e["kind"] == "call.ended")
        .expect("ended");
    assert!(
        ended["media"]["jitter"]["received"].as_u64().unwrap_or(0) > 200,
        "{ended}"
    );
    // The agent (A-law) heard the whisper: Opus in, G.711 out.
    let heard = agent.heard();
    assert!(!heard.is_empty(), "agent recorded nothing");
    let text = transcribe(&heard[0]);
    assert!(text.contains("negative"), "{text:?}");
    // The screen-pop marks the call as ended.
    pop.wait_text(
        "document.querySelector('.call.ended') ? 'ended' : ''",
        &["ended"],
        Duration::from_secs(10),
    );
}

/// A real WebRTC offer (webrtc crate: one audio transceiver, Opus, host
/// candidates gathered) from a peer that never completes ICE.
fn offer() -> String {
    use webrtc::api::media_engine::MediaEngine;
    use webrtc::api::APIBuilder;
    use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut media = MediaEngine::default();
        media.register_default_codecs().expect("codecs");
        let api = APIBuilder::new().with_media_engine(media).build();
        let pc = api
            .new_peer_connection(Default::default())
            .await
            .expect("peer connection");
        pc.add_transceiver_from_kind(RTPCodecType::Audio, None)
            .await
            .expect("audio");
        let offer = pc.create_offer(None).await.expect("offer");
        let mut gathered = pc.gathering_complete_promise().await;
        pc.set_local_description(offer).await.expect("local");
        let _ = tokio::time::timeout(Duration::from_secs(3), gathered.recv()).await;
        let sdp = pc.local_description().await.expect("sdp").sdp;
        let _ = pc.close().await;
        sdp
    })
}

#[test]
fn a_flood_of_browser_offers_is_refused_beyond_the_set_up_limit() {
    let gw = Gateway::start(|_, _| {});
    let sdp = offer();
    assert!(sdp.contains("m=audio"), "{sdp}");
    // 32 offers answered (calls that will never connect), then 503.
    // Browser media stays inside the configured RTP port range.
    let gateway_toml =
        std::fs::read_to_string(gw.dir.path().join("config/gateway.toml")).expect("gateway.toml");
    let setting = |key: &str| -> u16 {
        gateway_toml
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_start_matches('=').trim().parse().ok())
            .unwrap_or_else(|| panic!("{key} in {gateway_toml}"))
    };
    let range = setting("rtp_port_min")..=setting("rtp_port_max");
    for n in 0..32 {
        let (status, answer) = gw.post("/call/offer", None, &sdp);
        assert_eq!(status, 200, "offer {n}: {answer}");
        assert!(
            answer.contains("a=fingerprint") && answer.contains("opus"),
            "{answer}"
        );
        let ports: Vec<u16> = answer
            .lines()
            .filter(|l| l.starts_with("a=candidate:"))
            .filter_map(|l| l.split_whitespace().nth(5)?.parse().ok())
            .collect();
        assert!(!ports.is_empty(), "{answer}");
        assert!(
            ports.iter().all(|p| range.contains(p)),
            "{ports:?} outside {range:?}"
        );
    }
    let (status, why) = gw.post("/call/offer", None, &sdp);
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("being set up"), "{why}");
    // The gateway serves on: SIP callers and health are unaffected.
    assert_eq!(gw.get("/healthz", None).0, 200);
    let (_, metrics) = gw.get("/metrics", None);
    assert!(metrics.contains("voicegate_active_calls 0"), "{metrics}");
    // Calls still being set up do not hold a shutdown up.
    let mut gw = gw;
    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(8)).expect("exited");
    assert!(status.success(), "{status}");
}
