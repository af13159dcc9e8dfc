//! `voicegate replay` decides every public test call as its `.toml` expects:
//! outcome, hand-over reason, the window in which the decision is taken, and
//! the intents recognised.

mod common;

use common::root;
use std::process::Command;

#[test]
fn every_public_call_is_decided_as_expected() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("tests/calls"))
        .expect("calls")
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let spec: toml::Value =
            toml::from_str(&std::fs::read_to_string(&path).expect("toml")).expect("toml");
        let wav = path.with_extension("wav");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_voicegate"));
        cmd.current_dir(root()).args(["replay", "--json"]).arg(&wav);
        if let Some(c) = spec.get("caller").and_then(|c| c.as_str()) {
            cmd.args(["--caller", c]);
        }
        let out = cmd.output().expect("run replay");
        assert!(
            out.status.success(),
            "{}: {}",
            wav.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let expect = &spec["expect"];
        let name = wav
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        checked += 1;
        if got["outcome"] != expect["outcome"].as_str().unwrap_or("") {
            failures.push(format!(
                "{name}: outcome {} (expected {})",
                got["outcome"], expect["outcome"]
            ));
            continue;
        }
        if let Some(reason) = expect.get("reason").and_then(|r| r.as_str()) {
            if got["reason"] != reason {
                failures.push(format!(
                    "{name}: reason {} (expected {reason})",
                    got["reason"]
                ));
            }
            let at = got["transfer_at_s"].as_f64().unwrap_or(-1.0);
            let after = expect
                .get("escalate_after_s")
                .and_then(|v| v.as_float())
                .unwrap_or(0.0);
            let before = expect
                .get("escalate_before_s")
                .and_then(|v| v.as_float())
                .unwrap_or(f64::MAX);
            if !(after..=before).contains(&at) {
                failures.push(format!(
                    "{name}: hand-over at {at} s, outside {after}–{before}"
                ));
            }
            let summary = got["summary"]["text"].as_str().unwrap_or("");
            if summary.is_empty() || summary.split_whitespace().count() > 26 {
                failures.push(format!("{name}: summary {summary:?}"));
            }
        } else if !got["reason"].is_null() {
            failures.push(format!(
                "{name}: reason {} for a call the bot resolves",
                got["reason"]
            ));
        }
        if let Some(intents) = expect.get("intents").and_then(|v| v.as_array()) {
            for i in intents.iter().filter_map(|i| i.as_str()) {
                if !got["intents"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|g| g == i))
                {
                    failures.push(format!(
                        "{name}: intent {i} not recognised ({})",
                        got["intents"]
                    ));
                }
            }
        }
        for key in [
            "file",
            "caller",
            "utterances",
            "decisions",
            "outcome",
            "reason",
            "transfer_at_s",
            "summary",
        ] {
            assert!(got.get(key).is_some(), "{name}: JSON lacks {key}");
        }
        for u in got["utterances"].as_array().into_iter().flatten() {
            for key in ["start_s", "end_s", "text", "words_per_s", "intent"] {
                assert!(u.get(key).is_some(), "{name}: utterance lacks {key}");
            }
        }
    }
    assert_eq!(checked, 10);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
