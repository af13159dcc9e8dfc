//! Replay in batch for QA: a file or a directory (recursive) of WAVs, the
//! caller ID taken from where it is known, expectations checked from the
//! `.toml` beside each WAV, and a summary a person can read.

use super::ReplayReport;
use crate::call::event::{parse_events, Recorded};
use crate::call::CallEvent;
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a call's `.toml` expects (the format of the public test calls;
/// see `docs/expectations.md`). Unknown keys (`[[speech]]`, `voice`, …) are
/// allowed: they document the call.
#[derive(Debug, Clone, Deserialize)]
pub struct Expectation {
    /// Caller ID to present.
    #[serde(default)]
    pub caller: Option<String>,
    /// What must happen.
    pub expect: Expect,
}

/// The `[expect]` table.
#[derive(Debug, Clone, Deserialize)]
pub struct Expect {
    /// `bot_resolved`, `transferred` or `caller_hung_up`.
    pub outcome: String,
    /// The hand-over reason, when transferred.
    #[serde(default)]
    pub reason: Option<String>,
    /// The hand-over may not be decided before this (seconds from answer).
    #[serde(default)]
    pub escalate_after_s: Option<f64>,
    /// … nor after this.
    #[serde(default)]
    pub escalate_before_s: Option<f64>,
    /// Intents the bot must recognise.
    #[serde(default)]
    pub intents: Vec<String>,
    /// Words the transcript must contain (case-insensitive).
    #[serde(default)]
    pub transcript_contains: Vec<String>,
}

/// The callers' language of a call: what its `.toml` states
/// (`language = "zh"`), or for a gateway recording what the live call used
/// (`call.answered` in `events.jsonl`).
pub fn call_language(wav: &Path) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(wav.with_extension("toml")) {
        let value: toml::Value = toml::from_str(&text).ok()?;
        return value
            .get("language")
            .and_then(|l| l.as_str())
            .map(str::to_string);
    }
    recorded_events(wav)
        .into_iter()
        .find_map(|e| match e.event {
            CallEvent::Answered(a) if !a.language.is_empty() => Some(a.language),
            _ => None,
        })
}

impl Expectation {
    /// The `.toml` beside `wav`, if there is one.
    pub fn beside(wav: &Path) -> Option<Result<Expectation, String>> {
        let path = wav.with_extension("toml");
        let text = std::fs::read_to_string(&path).ok()?;
        Some(toml::from_str(&text).map_err(|e| {
            format!(
                "{}: {}",
                path.display(),
                e.message().trim().replace('\n', " ")
            )
        }))
    }

    /// Every way `report` (the replay JSON) misses this expectation.
    pub fn check(&self, report: &Value) -> Vec<String> {
        let e = &self.expect;
        let mut misses = Vec::new();
        if report["outcome"] != e.outcome.as_str() {
            misses.push(format!(
                "outcome {} (expected {})",
                report["outcome"], e.outcome
            ));
        }
        match &e.reason {
            Some(reason) if report["reason"] != reason.as_str() => {
                misses.push(format!("reason {} (expected {reason})", report["reason"]))
            }
            None if !report["reason"].is_null() && e.outcome != "transferred" => misses.push(
                format!("reason {} for a call the bot resolves", report["reason"]),
            ),
            _ => {}
        }
        if e.outcome == "transferred" {
            let at = report["transfer_at_s"].as_f64();
            let after = e.escalate_after_s.unwrap_or(0.0);
            let before = e.escalate_before_s.unwrap_or(f64::MAX);
            match at {
                Some(t) if (after..=before).contains(&t) => {}
                Some(t) => {
                    misses.push(format!("hand-over at {t:.2} s, outside {after}–{before} s"))
                }
                None => {}
            }
        }
        let intents: Vec<&str> = report["intents"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for want in &e.intents {
            if !intents.contains(&want.as_str()) {
                misses.push(format!("intent {want} not recognised (got {intents:?})"));
            }
        }
        let transcript: String = report["utterances"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|u| u["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase()
            })
            .unwrap_or_default();
        for word in &e.transcript_contains {
            if !transcript.contains(&word.to_lowercase()) {
                misses.push(format!("transcript lacks {word:?}"));
            }
        }
        misses
    }
}

/// The WAV files under `path` (itself when it is a file), sorted.
pub fn inputs(path: &Path) -> Result<Vec<PathBuf>, String> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        return Err(format!("{}: no such file or directory", path.display()));
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x.eq_ignore_ascii_case("wav")) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A gateway recording's events (its `events.jsonl`, beside `call.wav`);
/// empty for a plain WAV.
fn recorded_events(wav: &Path) -> Vec<Recorded> {
    wav.parent()
        .and_then(|d| std::fs::read_to_string(d.join("events.jsonl")).ok())
        .map(|text| parse_events(&text))
        .unwrap_or_default()
}

/// The keys the caller pressed on a gateway recording (its `dtmf` events),
/// with the time since answer: RFC 4733 and SIP INFO keys are not in the
/// audio, so a replay takes them from here. Empty for a plain WAV.
pub fn recorded_keys(wav: &Path) -> Vec<(Duration, char, &'static str)> {
    recorded_events(wav)
        .into_iter()
        .filter_map(|e| {
            let CallEvent::Dtmf(key) = e.event else {
                return None;
            };
            let t = Some(e.t_s).filter(|t| t.is_finite() && *t >= 0.0)?;
            let digit = key.digit.chars().next()?;
            let source = match key.source.as_str() {
                "inband" => "inband",
                "sip_info" => "sip_info",
                _ => "rfc4733",
            };
            Some((Duration::from_secs_f64(t), digit, source))
        })
        .collect()
}

/// The utterances the live call's Whisper pool could not take (its
/// `asr_overloaded` events: a full queue, a job that waited past
/// `max_latency_ms`), by start (s) with the reason. Overload is the live
/// box's load, not in the audio: a replay answers those utterances as the
/// pool did, so it decides as the live call did. Empty for a plain WAV.
pub fn recorded_refusals(wav: &Path) -> Vec<(f64, String)> {
    recorded_events(wav)
        .into_iter()
        .filter_map(|e| match e.event {
            CallEvent::AsrOverloaded {
                reason, start_s, ..
            } if start_s.is_finite() => Some((start_s, reason)),
            _ => None,
        })
        .collect()
}

/// The caller ID of a gateway recording.
pub fn recorded_caller(wav: &Path) -> Option<String> {
    recorded_events(wav)
        .into_iter()
        .find_map(|e| match e.event {
            CallEvent::Invite(invite) => Some(invite.from),
            _ => None,
        })
        .filter(|c| !c.is_empty() && c != "anonymous")
}

/// One call of a batch: its report, or why it could not be replayed.
#[derive(Debug)]
pub struct BatchItem {
    /// The WAV.
    pub file: PathBuf,
    /// The replay, or the error for this file.
    pub result: Result<ReplayReport, String>,
    /// Audio seconds.
    pub audio_s: f64,
    /// Processing seconds.
    pub cpu_s: f64,
    /// Expectation misses (`None`: not checked).
    pub misses: Option<Vec<String>>,
}

fn p95(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * 0.95).round() as usize]
}

/// The summary table of a batch, as text.
pub fn summary(items: &[BatchItem]) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    let mut out = String::new();
    let ok: Vec<&ReplayReport> = items
        .iter()
        .filter_map(|i| i.result.as_ref().ok())
        .collect();
    let failed = items.len() - ok.len();
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut waits = Vec::new();
    for r in &ok {
        *outcomes.entry(r.outcome).or_default() += 1;
        if let (Some(reason), Some(at)) = (&r.reason, r.transfer_at_s) {
            *reasons.entry(reason.clone()).or_default() += 1;
            waits.push(at);
        }
    }
    let _ = writeln!(out, "calls        {} ({} unreadable)", items.len(), failed);
    for (o, n) in &outcomes {
        let _ = writeln!(
            out,
            "  {o:<20} {n:>4}  {:>5.1} %",
            100.0 * *n as f64 / ok.len().max(1) as f64
        );
    }
    if !reasons.is_empty() {
        let _ = writeln!(out, "transfers by reason");
        for (r, n) in &reasons {
            let _ = writeln!(
                out,
                "  {r:<20} {n:>4}  {:>5.1} % of calls",
                100.0 * *n as f64 / ok.len().max(1) as f64
            );
        }
        let mean = waits.iter().sum::<f64>() / waits.len() as f64;
        let _ = writeln!(
            out,
            "wait before hand-over   mean {mean:.1} s   p95 {:.1} s",
            p95(&mut waits)
        );
    }
    let audio: f64 = items.iter().map(|i| i.audio_s).sum();
    let cpu: f64 = items.iter().map(|i| i.cpu_s).sum();
    if audio > 0.0 {
        let _ = writeln!(
            out,
            "ASR real-time factor    {:.4} ({cpu:.1} s for {audio:.1} s of audio)",
            cpu / audio
        );
    }
    if items.iter().any(|i| i.misses.is_some()) {
        let _ = writeln!(out, "\nexpectations");
        for i in items {
            let name = i.file.display();
            match (&i.result, &i.misses) {
                (Err(e), _) => {
                    let _ = writeln!(out, "  FAIL  {name}: {e}");
                }
                (Ok(_), Some(m)) if m.is_empty() => {
                    let _ = writeln!(out, "  pass  {name}");
                }
                (Ok(_), Some(m)) => {
                    let _ = writeln!(out, "  FAIL  {name}: {}", m.join("; "));
                }
                (Ok(_), None) => {
                    let _ = writeln!(out, "  ----  {name}: no .toml beside it");
                }
            }
        }
    } else {
        for i in items {
            if let Err(e) = &i.result {
                let _ = writeln!(out, "  unreadable  {}: {e}", i.file.display());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_report_each_miss() {
        let exp: Expectation = toml::from_str(
            "caller = \"+1555\"\n[expect]\noutcome = \"transferred\"\nreason = \"negative_words\"\n\
             escalate_after_s = 9.0\nescalate_before_s = 11.0\nintents = [\"billing\"]\n\
             transcript_contains = [\"ridiculous\"]\n[[speech]]\nstart = 1.0\nend = 2.0\ntext = \"x\"\n",
        )
        .expect("parse");
        let good = serde_json::json!({"outcome": "transferred", "reason": "negative_words",
            "transfer_at_s": 10.0, "intents": ["billing"], "utterances": [{"text": "This is Ridiculous."}]});
        assert!(exp.check(&good).is_empty(), "{:?}", exp.check(&good));
        let bad = serde_json::json!({"outcome": "transferred", "reason": "frustration",
            "transfer_at_s": 12.5, "intents": [], "utterances": [{"text": "hello"}]});
        let misses = exp.check(&bad);
        assert_eq!(misses.len(), 4, "{misses:?}");
        assert!(misses[0].contains("reason"));
        assert!(misses[1].contains("outside 9–11"));
    }
}
