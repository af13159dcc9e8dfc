//! Hand-over latency against the real PBX and agent phone (Kamailio +
//! baresip on loopback): decision → agent INVITE at the PBX, agent answer →
//! first whisper packet, and the jitter hold each bridged direction adds.
//! `cargo bench --bench handover` (needs kamailio, baresip: `make bootstrap`).

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::time::Duration;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let calls: usize = std::env::var("CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let pbx = Kamailio::start();
    let _agent = Agent::start(&pbx, "1001");
    let member = format!("sip:1001@127.0.0.1:{}", pbx.port);
    let gw = Gateway::start_with(
        |_, _| {},
        |cfg| {
            let text = std::fs::read_to_string(cfg.join("agents.toml"))
                .expect("agents.toml")
                .replace("sip:1001@127.0.0.1:5070", &member);
            std::fs::write(cfg.join("agents.toml"), text).expect("write");
        },
    );
    let dir = tempfile::tempdir().expect("tmp");
    let wav = dir.path().join("quiet.wav");
    write_wav_8k(&wav, &vec![0i16; 8000 * 14]);
    let (mut to_invite, mut to_whisper, mut hold_in, mut hold_out) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..calls {
        let caller = Caller::dial_as(&gw, &wav, 16, "+15550199");
        let dirs = gw.wait_calls_ended(i + 1, Duration::from_secs(60));
        drop(caller);
        let dir = dirs
            .iter()
            .max_by_key(|d| std::fs::metadata(d).and_then(|m| m.modified()).ok())
            .expect("call");
        let all = events(dir);
        let find = |k: &str| all.iter().find(|e| e["kind"] == k).cloned();
        let decided = find("handover").and_then(|e| e["unix_ms"].as_f64());
        let at_pbx = pbx.invite_times().get(i).map(|s| s * 1000.0);
        if let (Some(d), Some(p)) = (decided, at_pbx) {
            to_invite.push(p - d);
        }
        if let Some(ms) =
            find("transfer.whisper_started").and_then(|e| e["ms_after_answer"].as_f64())
        {
            to_whisper.push(ms);
        }
        if let Some(b) = find("bridge.latency") {
            hold_in.push(b["caller_to_agent_hold_ms"].as_f64().unwrap_or(f64::NAN));
            hold_out.push(b["agent_to_caller_hold_ms"].as_f64().unwrap_or(f64::NAN));
        }
    }
    let report = |name: &str, v: &mut Vec<f64>, target: &str| {
        if v.is_empty() {
            println!("{name:<44} no samples");
            return;
        }
        let n = v.len();
        println!(
            "{name:<44} n={n:<3} p50 {:>7.2} ms  p95 {:>7.2} ms  max {:>7.2} ms   target {target}",
            percentile(v, 0.5),
            percentile(v, 0.95),
            percentile(v, 1.0)
        );
    };
    println!("hand-over latency, {calls} VIP calls through Kamailio to baresip 1001:");
    report(
        "decision → INVITE received by the PBX",
        &mut to_invite,
        "≤ 50 ms",
    );
    report(
        "agent 200 OK → first whisper packet",
        &mut to_whisper,
        "≤ 200 ms",
    );
    report(
        "bridge hold caller → agent (+0–20 ms clock)",
        &mut hold_in,
        "≤ 40 ms",
    );
    report(
        "bridge hold agent → caller (+0–20 ms clock)",
        &mut hold_out,
        "≤ 40 ms",
    );
}
