//! `voicegate config check`: the shipped configuration passes; broken files
//! get `file:line: problem — fix` lines and a non-zero exit; `serve` refuses
//! the same configuration with the same messages.

mod common;

use common::{copy_dir, root};
use std::process::Command;

fn check(dir: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_voicegate"))
        .current_dir(root())
        .args(["config", "check"])
        .arg(dir)
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Replace the first `from` with `to` in `dir/name` (which must hold it).
fn edit_file(dir: &std::path::Path, name: &str, from: &str, to: &str) {
    let p = dir.join(name);
    let text = std::fs::read_to_string(&p).expect("read");
    assert!(text.contains(from), "{name} lacks {from:?}");
    std::fs::write(&p, text.replacen(from, to, 1)).expect("write");
}

#[test]
fn shipped_configuration_passes() {
    let (code, out, err) = check(&root().join("sip-config"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("OK"), "{out}");
}

#[test]
fn broken_files_get_file_line_messages_and_serve_refuses() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cfg");
    copy_dir(&root().join("sip-config"), &dir);
    let edit = |name: &str, from: &str, to: &str| edit_file(&dir, name, from, to);
    edit(
        "gateway.toml",
        "rtp_port_max = 29999",
        "rtp_port_max = 29999\nrtp_prot_min = 3",
    );
    edit("trunks.toml", "\"127.0.0.0/8\"", "\"127.0.0.0/33\"");
    edit("rules.toml", "seconds = 15.0", "seconds = \"fifteen\"");
    edit("lexicons/en.toml", "angry = 1.0", "angry = = 1.0");
    edit(
        "flow.toml",
        "name = \"tracking\"\n",
        "name = \"tracking\"\nwebhook = { url = \"https://crm.example/track\" }\n",
    );
    std::fs::remove_file(dir.join("prompts/greeting.wav")).expect("rm");
    let (code, _, err) = check(&dir);
    assert_eq!(code, 2, "{err}");
    let lines: Vec<&str> = err.lines().collect();
    let has = |file: &str, words: &str| {
        lines.iter().any(|l| {
            l.contains(file)
                && l.split(file).nth(1).is_some_and(|r| {
                    r.starts_with(':')
                        && r[1..]
                            .split(':')
                            .next()
                            .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                && l.contains(words)
                && l.contains(" — ")
        })
    };
    assert!(has("gateway.toml", "unknown field `rtp_prot_min`"), "{err}");
    assert!(has("trunks.toml", "bad address or CIDR"), "{err}");
    assert!(has("rules.toml", "invalid type"), "{err}");
    assert!(has("en.toml", ""), "{err}");
    assert!(
        has(
            "flow.toml",
            "webhook url \"https://crm.example/track\" is not http://"
        ),
        "{err}"
    );
    // The greeting check needs the rest of gateway.toml to parse: fix the key and look again.
    edit("gateway.toml", "\nrtp_prot_min = 3", "");
    let (_, _, err) = check(&dir);
    assert!(
        err.lines().any(|l| l.contains("gateway.toml:")
            && l.contains("greeting.wav")
            && l.contains("cannot be used")),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_voicegate"))
        .current_dir(root())
        .args(["serve", "--config"])
        .arg(&dir)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let serve_err = String::from_utf8_lossy(&out.stderr);
    assert!(serve_err.contains("bad address or CIDR"), "{serve_err}");
}

#[test]
fn http_and_shutdown_settings_are_checked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cfg");
    copy_dir(&root().join("sip-config"), &dir);
    let gateway = std::fs::read_to_string(dir.join("gateway.toml")).expect("read");
    let cases = [
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = \"localhost\"",
            "bad http.listen address",
        ),
        (
            "admin_token = \"change-me-now\"",
            "admin_token = \"short\"",
            "too short",
        ),
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = \"0.0.0.0:8080\"",
            "reachable from other hosts with the shipped admin_token",
        ),
        (
            "# public_url = \"http://10.0.0.5:8080\"",
            "public_url = \"10.0.0.5\"",
            "not an http(s) URL",
        ),
        (
            "grace_s = 30",
            "grace_s = 86400",
            "grace_s 86400 is out of range",
        ),
        (
            "vad_min_voiced_ms = 150",
            "vad_min_voiced_ms = 5000",
            "vad_min_voiced_ms 5000 is out of range",
        ),
        (
            "vad_early_ms = 400",
            "vad_early_ms = 700",
            "vad_early_ms 700 is out of range",
        ),
        (
            "# agent_token = \"agents-only-token\"",
            "agent_token = \"a b&c\"",
            "agent_token is too short or has characters",
        ),
    ];
    for (from, to, message) in cases {
        assert!(gateway.contains(from), "gateway.toml lacks {from:?}");
        std::fs::write(dir.join("gateway.toml"), gateway.replacen(from, to, 1)).expect("write");
        let (code, _, err) = check(&dir);
        assert_eq!(code, 2, "{to}: {err}");
        assert!(
            err.lines()
                .any(|l| l.contains("gateway.toml:") && l.contains(message) && l.contains(" — ")),
            "{to}: {err}"
        );
    }
    // HTTP can be turned off.
    std::fs::write(
        dir.join("gateway.toml"),
        gateway.replacen("listen = \"127.0.0.1:8080\"", "listen = \"\"", 1),
    )
    .expect("write");
    let (code, _, err) = check(&dir);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn semantic_intent_speech_rate_and_recorded_prompt_settings_are_checked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cfg");
    copy_dir(&root().join("sip-config"), &dir);
    let edit = |name: &str, from: &str, to: &str| edit_file(&dir, name, from, to);
    edit(
        "flow.toml",
        "semantic_threshold = 0.86",
        "semantic_threshold = 1.5",
    );
    edit(
        "flow.toml",
        "name = \"billing\"\n",
        "name = \"billing\"\nprompts = { zh = \"prompts/zh/billing.wav\" }\n",
    );
    edit("rules.toml", "rate_alone = 1.6", "rate_alone = 1.2");
    let (code, _, err) = check(&dir);
    assert_eq!(code, 2, "{err}");
    let line_with = |file: &str, words: &str| {
        err.lines()
            .any(|l| l.contains(&format!("{file}:")) && l.contains(words) && l.contains(" — "))
    };
    assert!(line_with("flow.toml", "semantic_threshold 1.5"), "{err}");
    assert!(
        line_with(
            "flow.toml",
            "recorded prompt \"prompts/zh/billing.wav\" (zh) not found"
        ),
        "{err}"
    );
    assert!(
        line_with("rules.toml", "rate_alone 1.2 is not above rate_rise"),
        "{err}"
    );
    // With the recording in place (and the other two mended) it passes.
    edit(
        "flow.toml",
        "semantic_threshold = 1.5",
        "semantic_threshold = 0.86",
    );
    edit("rules.toml", "rate_alone = 1.2", "rate_alone = 1.6");
    std::fs::create_dir_all(dir.join("prompts/zh")).expect("mkdir");
    std::fs::copy(
        dir.join("prompts/greeting.wav"),
        dir.join("prompts/zh/billing.wav"),
    )
    .expect("copy");
    let (code, _, err) = check(&dir);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn proxy_and_nat_settings_are_checked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cfg");
    copy_dir(&root().join("sip-config"), &dir);
    let gateway = std::fs::read_to_string(dir.join("gateway.toml")).expect("read");
    let cases = [
        (
            "trusted_proxies = []",
            "trusted_proxies = [\"kamailio.local\"]",
            "bad sip.trusted_proxies entry",
        ),
        (
            "# advertised_address = \"203.0.113.10\"",
            "advertised_address = \"0.0.0.0\"",
            "bad sip.advertised_address",
        ),
        (
            "proxy_source_header = \"X-Forwarded-For\"",
            "proxy_source_header = \"X Forwarded: For\"",
            "bad sip.proxy_source_header",
        ),
    ];
    for (from, to, message) in cases {
        assert!(gateway.contains(from), "gateway.toml lacks {from:?}");
        std::fs::write(dir.join("gateway.toml"), gateway.replacen(from, to, 1)).expect("write");
        let (code, _, err) = check(&dir);
        assert_eq!(code, 2, "{to}: {err}");
        assert!(
            err.lines()
                .any(|l| l.contains("gateway.toml:") && l.contains(message) && l.contains(" — ")),
            "{to}: {err}"
        );
    }
    // A dispatcher in front, behind NAT: accepted.
    let good = gateway
        .replacen(
            "trusted_proxies = []",
            "trusted_proxies = [\"10.0.0.0/24\", \"192.0.2.5\"]",
            1,
        )
        .replacen(
            "# advertised_address = \"203.0.113.10\"\n# advertised_port = 5060",
            "advertised_address = \"203.0.113.10\"\nadvertised_port = 5060",
            1,
        );
    std::fs::write(dir.join("gateway.toml"), good).expect("write");
    let (code, _, err) = check(&dir);
    assert_eq!(code, 0, "{err}");
}
