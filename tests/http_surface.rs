//! The gateway's HTTP surface and operations against a real gateway process
//! and real SIP callers (baresip): health, Prometheus metrics, the call API
//! and page, hot reload (HTTP and SIGHUP), graceful shutdown on SIGTERM.

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

static ONE_CALL_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_CALL_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Poll `/api/calls` until `pred` holds for the list; the list.
fn wait_calls(gw: &Gateway, timeout: Duration, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) = gw.get("/api/calls", Some(Gateway::TOKEN));
        assert_eq!(status, 200, "{body}");
        let calls = json(&body)["calls"].as_array().cloned().unwrap_or_default();
        if pred(&calls) {
            return calls;
        }
        assert!(Instant::now() < deadline, "calls never matched: {calls:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn health_metrics_and_the_call_api_follow_a_real_call() {
    let _serial = serial();
    let gw = Gateway::start(|_, _| {});
    let (status, body) = gw.get("/healthz", None);
    assert_eq!((status, json(&body)["status"].clone()), (200, "ok".into()));
    let (_, m) = gw.get("/metrics", None);
    assert_eq!(metric(&m, "voicegate_active_calls "), 0.0);
    // Admin routes want the bearer token.
    assert_eq!(gw.get("/api/calls", None).0, 401);
    assert_eq!(gw.get("/api/calls", Some("wrong-token")).0, 401);
    let (status, body) = gw.get("/api/calls", Some(Gateway::TOKEN));
    assert_eq!(
        (status, json(&body)["calls"].clone()),
        (200, Value::Array(vec![]))
    );
    // The browser caller's page, and its signalling refusing what is not an offer.
    let (status, page) = gw.get("/call", None);
    assert_eq!(status, 200);
    assert!(
        page.contains("id=\"call\"") && page.contains("/call/offer"),
        "{page}"
    );
    assert_eq!(gw.post("/call/offer", None, "hello").0, 400);
    let (status, why) = gw.post("/call/offer", None, "v=0\r\nthis is not SDP\r\n");
    assert_eq!(status, 400, "{why}");
    assert!(why.contains("offer"), "{why}");
    assert_eq!(gw.get("/agent", None).0, 400, "the extension is required");
    assert_eq!(gw.get("/agent?ext=1001", None).0, 200);

    // An angry caller: handed over (nobody answers at the default extension).
    let wav = root().join("tests/calls/angry_words.wav");
    let caller = Caller::dial(&gw, &wav, 20);
    let live = wait_calls(&gw, Duration::from_secs(10), |c| {
        c.first().is_some_and(|c| c["state"] != "ringing")
    });
    assert_eq!(live[0]["channel"], "sip");
    assert_eq!(live[0]["from"], "2001");
    let (_, m) = gw.get("/metrics", None);
    assert_eq!(metric(&m, "voicegate_active_calls "), 1.0, "{m}");
    gw.wait_calls_ended(1, Duration::from_secs(60));
    drop(caller);
    let calls = wait_calls(&gw, Duration::from_secs(10), |c| {
        c.first().is_some_and(|c| c["state"] == "ended")
    });
    let id = calls[0]["id"].as_str().expect("id").to_string();
    assert_eq!(calls[0]["outcome"], "transferred", "{:?}", calls[0]);
    assert_eq!(calls[0]["handover_reason"], "negative_words");

    let (status, body) = gw.get(
        &format!("/api/calls/{}", url_escape(&id)),
        Some(Gateway::TOKEN),
    );
    assert_eq!(status, 200, "{body}");
    let call = json(&body);
    let said: String = call["transcript"]
        .as_array()
        .expect("transcript")
        .iter()
        .filter(|l| l["speaker"] == "caller")
        .map(|l| l["text"].as_str().unwrap_or("").to_lowercase())
        .collect();
    assert!(said.contains("ridiculous"), "{said}");
    assert!(
        call["decisions"]
            .as_array()
            .expect("decisions")
            .iter()
            .any(|d| d["decision"] == "handover" && d["reason"] == "negative_words"),
        "{call}"
    );
    assert!(call["summary"]["text"]
        .as_str()
        .unwrap_or("")
        .contains("negative words"));
    assert_eq!(
        gw.get("/api/calls/no-such-call", Some(Gateway::TOKEN)).0,
        404
    );

    // The call's page: the admin token opens it; nobody else without the key.
    let page_path = format!("/calls/{}", url_escape(&id));
    let (status, page) = gw.get(&page_path, Some(Gateway::TOKEN));
    assert_eq!(status, 200);
    assert!(
        page.contains("negative words") && page.contains("ridiculous"),
        "{page}"
    );
    assert_eq!(gw.get(&page_path, None).0, 404);
    assert_eq!(gw.get(&format!("{page_path}?key=00"), None).0, 404);

    let (_, m) = gw.get("/metrics", None);
    assert_eq!(metric(&m, "voicegate_active_calls "), 0.0);
    assert_eq!(
        metric(&m, "voicegate_calls_total{outcome=\"transferred\"} "),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "voicegate_handovers_total{reason=\"negative_words\"} "),
        1.0
    );
    assert!(
        metric(&m, "voicegate_asr_latency_seconds_count ") >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "voicegate_rtp_packets_received_total ") > 100.0,
        "{m}"
    );
    assert!(m.contains("voicegate_asr_queue_depth"), "{m}");
}

/// flow.toml with the billing reply changed to `reply`.
fn billing_reply(cfg: &std::path::Path, reply: &str) {
    let path = cfg.join("flow.toml");
    let text = std::fs::read_to_string(&path).expect("flow.toml");
    let old =
        "Your current balance is forty two dollars and ten cents, due on the first of next month.";
    assert!(text.contains(old));
    std::fs::write(&path, text.replace(old, reply)).expect("write flow.toml");
}

fn bot_said(dir: &std::path::Path) -> String {
    events(dir)
        .iter()
        .filter(|e| e["kind"] == "bot.say")
        .map(|e| e["text"].as_str().unwrap_or("").to_string())
        .collect::<Vec<_>>()
        .join(" | ")
}

#[test]
fn reload_applies_to_new_calls_only_and_refuses_a_broken_config() {
    let _serial = serial();
    let gw = Gateway::start(|_, _| {});
    let cfg = gw.dir.path().join("config");
    // A call in progress before the reload: 4 s of silence, then a billing question.
    let dir = tempfile::tempdir().expect("tmp");
    let mut audio = vec![0i16; 8000 * 4];
    audio.extend(wav_mono(&root().join("tests/calls/calm_billing.wav")));
    audio.extend(std::iter::repeat_n(0i16, 8000 * 4));
    let wav = dir.path().join("late_billing.wav");
    write_wav_8k(&wav, &audio);
    let seconds = (audio.len() / 8000) as u32;
    let before = Caller::dial(&gw, &wav, seconds);
    wait_calls(&gw, Duration::from_secs(10), |c| {
        c.first().is_some_and(|c| c["state"] == "bot")
    });

    // A broken configuration is refused with config check's messages.
    let flow = std::fs::read_to_string(cfg.join("flow.toml")).expect("flow");
    std::fs::write(
        cfg.join("flow.toml"),
        format!("{flow}\n[[intent]]\nname = \n"),
    )
    .expect("w");
    assert_eq!(gw.post("/api/reload", None, "").0, 401);
    let (status, body) = gw.post("/api/reload", Some(Gateway::TOKEN), "");
    assert_eq!(status, 422, "{body}");
    let refused = json(&body);
    assert_eq!(refused["reloaded"], false);
    assert!(
        refused["problems"].to_string().contains("flow.toml"),
        "{body}"
    );

    // A good one is taken (by SIGHUP this time) for calls that start after it.
    std::fs::write(cfg.join("flow.toml"), flow).expect("w");
    billing_reply(&cfg, "Your balance is ninety nine dollars.");
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gw.log().contains("configuration reloaded") {
        assert!(Instant::now() < deadline, "no reload:\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let first = gw.wait_calls_ended(1, Duration::from_secs(u64::from(seconds) + 30));
    drop(before);
    let after = Caller::dial(&gw, &root().join("tests/calls/calm_billing.wav"), 12);
    let both = gw.wait_calls_ended(2, Duration::from_secs(40));
    drop(after);
    let second: Vec<_> = both.iter().filter(|d| !first.contains(d)).collect();
    let old = bot_said(&first[0]);
    let new = bot_said(second[0]);
    assert!(
        old.contains("forty two dollars"),
        "the call in progress kept its config: {old}"
    );
    assert!(!old.contains("ninety nine"), "{old}");
    assert!(
        new.contains("ninety nine dollars"),
        "the new call got the new config: {new}"
    );

    // An HTTP reload of a valid configuration says so.
    let (status, body) = gw.post("/api/reload", Some(Gateway::TOKEN), "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["reloaded"], true);
}

#[test]
fn sigterm_refuses_new_calls_lets_calls_finish_then_ends_them_with_bye() {
    let _serial = serial();
    let mut gw = Gateway::start(|g, _| *g = g.replace("grace_s = 2", "grace_s = 5"));
    let wav = root().join("tests/calls/calm_tracking.wav");
    // A long call: still talking when the grace period ends.
    let dir = tempfile::tempdir().expect("tmp");
    let mut audio = wav_mono(&wav);
    audio.extend(std::iter::repeat_n(0i16, 8000 * 30));
    let long = dir.path().join("long.wav");
    write_wav_8k(&long, &audio);
    let caller = Caller::dial(&gw, &long, 40);
    wait_calls(&gw, Duration::from_secs(10), |c| {
        c.first().is_some_and(|c| c["state"] == "bot")
    });
    let term_at = Instant::now();
    gw.signal("TERM");
    std::thread::sleep(Duration::from_millis(500));
    // Draining: health says so, a new caller gets 503, the call goes on.
    let (status, body) = gw.get("/healthz", None);
    assert_eq!(
        (status, json(&body)["status"].clone()),
        (503, "draining".into())
    );
    assert_eq!(
        gw.post("/call/offer", None, "v=0\r\n").0,
        503,
        "no browser calls either"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_voicegate"))
        .args([
            "call",
            &format!("sip:bot@127.0.0.1:{}", gw.sip_port),
            "--play",
        ])
        .arg(&wav)
        .args(["--json", "--no-listen"])
        .output()
        .expect("voicegate call");
    let refused: Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(refused["answered"], false, "{refused}");
    assert_eq!(refused["status"], 503, "{refused}");
    assert!(gw.alive(), "the gateway waits for the call in progress");
    // After the grace period the call ends with BYE and the process exits.
    let status = gw.wait_exit(Duration::from_secs(20)).expect("exited");
    let took = term_at.elapsed();
    assert!(status.success(), "{status}:\n{}", gw.log());
    assert!(
        took >= Duration::from_secs(5),
        "ended before the grace: {took:?}"
    );
    drop(caller);
    let dirs = gw.call_dirs();
    assert_eq!(dirs.len(), 1);
    let all = events(&dirs[0]);
    let hangup = event_of(&all, "call.hangup");
    assert_eq!(hangup["reason"], "gateway_shutdown");
    assert_eq!(hangup["by"], "gateway");
    assert!(all.iter().any(|e| e["kind"] == "call.ended"));
    // The recording is whole: readable, as long as the call.
    let (left, _) = stereo(&dirs[0]);
    assert!(left.len() >= 8000 * 5, "{} samples", left.len());
}

#[test]
fn sigterm_with_no_calls_exits_at_once_and_a_call_ending_early_ends_the_wait() {
    let _serial = serial();
    let mut gw = Gateway::start(|g, _| *g = g.replace("grace_s = 2", "grace_s = 60"));
    let caller = Caller::dial(&gw, &root().join("tests/calls/calm_tracking.wav"), 4);
    wait_calls(&gw, Duration::from_secs(10), |c| {
        c.first().is_some_and(|c| c["state"] == "bot")
    });
    let term_at = Instant::now();
    gw.signal("TERM");
    // The caller hangs up after 4 s: the gateway exits then, not after 60 s.
    let status = gw.wait_exit(Duration::from_secs(30)).expect("exited");
    assert!(status.success());
    assert!(term_at.elapsed() < Duration::from_secs(30));
    drop(caller);
    let all = events(&gw.call_dirs()[0]);
    let hangup = event_of(&all, "call.hangup");
    assert_eq!(hangup["by"], "caller", "{hangup}");
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn the_screen_pop_wants_the_agent_token_when_one_is_set() {
    let gw = Gateway::start(|g, _| {
        *g = g.replace(
            "# agent_token = \"agents-only-token\"",
            "agent_token = \"agents-only-token\"",
        )
    });
    assert_eq!(gw.get("/agent?ext=1001", None).0, 401);
    assert_eq!(gw.get("/agent?ext=1001&token=wrong-token", None).0, 401);
    let (status, page) = gw.get("/agent?ext=1001&token=agents-only-token", None);
    assert_eq!(status, 200);
    assert!(
        page.contains("encodeURIComponent('agents-only-token')"),
        "{page}"
    );
    let url = |query: &str| format!("http://127.0.0.1:{}/agent/events?{query}", gw.http_port);
    match ureq::get(&url("ext=1001"))
        .timeout(Duration::from_secs(5))
        .call()
    {
        Err(ureq::Error::Status(code, _)) => assert_eq!(code, 401),
        other => panic!("{:?}", other.map(|r| r.status())),
    }
    // The stream opens (headers only: it stays open for updates).
    let stream = ureq::get(&url("ext=1001&token=agents-only-token"))
        .call()
        .expect("stream");
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.content_type(), "text/event-stream");
}
