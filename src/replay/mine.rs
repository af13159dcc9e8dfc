//! `voicegate mine RECORDINGS_DIR`: learn from the calls people handled.
//! For every call handed to an agent it collects the caller's requests the
//! bot did not recognise (`no_intent` decisions) and — where the agent was
//! bridged — what the agent said (their side of the recording, transcribed)
//! in calls where the caller calmed down afterwards. The most frequent
//! n-grams, with examples, come out as a TOML snippet for `flow.toml`.

use crate::call::core::DecisionKind;
use crate::call::event::parse_events;
use crate::call::intents::{best_intent, stem};
use crate::call::policy::Policy;
use crate::call::CallEvent;
use crate::emotion::tokens;
use crate::speech::asr::Recognizer;
use crate::speech::pipeline::transcribe_track;
use crate::speech::vad::VadConfig;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

const STOP: &[&str] = &[
    "i", "a", "the", "to", "my", "is", "me", "you", "it", "of", "and", "on", "in", "for", "please",
    "was", "am", "are", "be", "this", "that", "with", "an", "at", "so", "do", "can", "will",
    "your", "have", "has", "just", "it's", "i'm", "we", "our", "hello", "hi", "um", "uh", "okay",
    "oh",
];

/// What mining found.
#[derive(Debug, Default)]
pub struct Mined {
    /// Calls read.
    pub calls: usize,
    /// Calls handed to a person.
    pub handed_over: usize,
    /// Calls with an agent bridged.
    pub bridged: usize,
    /// Unrecognised caller phrasings, by the intent they come closest to
    /// (`unknown` when none is near).
    pub unrecognised: BTreeMap<String, Vec<String>>,
    /// What agents said in calls where the caller calmed down.
    pub calming: Vec<String>,
    /// Files that could not be read, with why.
    pub skipped: Vec<String>,
}

/// Call directories (with `events.jsonl`) under `root`.
pub fn call_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if dir.join("events.jsonl").is_file() {
            out.push(dir);
            continue;
        }
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Read every call under `root`; `recognizer` transcribes the agents' side.
pub fn mine(root: &Path, policy: &Policy, recognizer: &mut Recognizer) -> Mined {
    let mut m = Mined::default();
    let lexicon = policy.lexicon("en");
    for dir in call_dirs(root) {
        m.calls += 1;
        let events =
            parse_events(&std::fs::read_to_string(dir.join("events.jsonl")).unwrap_or_default());
        let decisions = || {
            events.iter().filter_map(|e| match &e.event {
                CallEvent::Decision(d) => Some(d),
                _ => None,
            })
        };
        if !decisions().any(|d| d.decision == DecisionKind::Handover) {
            continue;
        }
        m.handed_over += 1;
        for d in decisions().filter(|d| d.decision == DecisionKind::NoIntent) {
            let text = d
                .evidence
                .first()
                .map_or("", |t| t.trim_matches('"'))
                .to_string();
            if text.is_empty() {
                continue;
            }
            let near = best_intent(&policy.flow.intent, &text, 0.2)
                .map(|i| i.name)
                .unwrap_or_else(|| "unknown".into());
            m.unrecognised.entry(near).or_default().push(text);
        }
        let Some(bridged_at) = events
            .iter()
            .find(|e| matches!(e.event, CallEvent::TransferBridged { .. }))
            .map(|e| e.t_s)
        else {
            continue;
        };
        m.bridged += 1;
        // Calmed: nothing negative from the caller once the agent took over.
        let after_words: Vec<&str> = events
            .iter()
            .filter_map(|e| match &e.event {
                CallEvent::Utterance(u) if u.result.start_s >= bridged_at => {
                    Some(u.result.text.as_str())
                }
                _ => None,
            })
            .collect();
        let calmed = after_words.iter().all(|t| lexicon.hits(t).is_empty());
        if !calmed {
            continue;
        }
        match agent_side(&dir.join("call.wav"), bridged_at) {
            Ok(samples) => match transcribe_track(&samples, VadConfig::default(), recognizer, None)
            {
                Ok(utts) => m
                    .calming
                    .extend(utts.into_iter().map(|u| u.text).filter(|t| !t.is_empty())),
                Err(e) => m.skipped.push(format!("{}: {e}", dir.display())),
            },
            Err(e) => m.skipped.push(format!("{}: {e}", dir.display())),
        }
    }
    m
}

/// The right channel (gateway and agent) of a recording from `from_s`, at 16 kHz.
fn agent_side(wav: &Path, from_s: f64) -> Result<Vec<f32>, String> {
    let reader = hound::WavReader::open(wav).map_err(|e| e.to_string())?;
    let spec = reader.spec();
    if spec.channels != 2 {
        return Err("not a stereo gateway recording".into());
    }
    let samples: Vec<i16> = reader
        .into_samples::<i16>()
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let skip = (from_s * f64::from(spec.sample_rate)) as usize;
    let right: Vec<f32> = samples
        .iter()
        .skip(1)
        .step_by(2)
        .skip(skip)
        .map(|s| f32::from(*s) / 32768.0)
        .collect();
    crate::media::resample::resample(&right, spec.sample_rate, 16000).map_err(|e| e.to_string())
}

/// The most frequent 1–3-grams of `texts` (stop words dropped at the edges),
/// each with how often and an example.
pub fn top_ngrams(texts: &[String], limit: usize) -> Vec<(String, usize, String)> {
    let mut counts: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for text in texts {
        let words = tokens(text);
        let mut seen = std::collections::BTreeSet::new();
        for n in 1..=3 {
            for w in words.windows(n) {
                if STOP.contains(&w[0].as_str()) || STOP.contains(&w[n - 1].as_str()) {
                    continue;
                }
                if w.iter().all(|x| x.chars().all(|c| c.is_ascii_digit())) {
                    continue;
                }
                let gram = w.join(" ");
                if seen.insert(gram.clone()) {
                    let e = counts.entry(gram).or_insert((0, text.clone()));
                    e.0 += 1;
                }
            }
        }
    }
    let mut v: Vec<(String, usize, String)> =
        counts.into_iter().map(|(g, (n, ex))| (g, n, ex)).collect();
    // More frequent first; among equals the longer phrase (more specific).
    v.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then(b.0.split(' ').count().cmp(&a.0.split(' ').count()))
            .then(a.0.cmp(&b.0))
    });
    // Drop a word already inside a kept phrase with the same count.
    let mut kept: Vec<(String, usize, String)> = Vec::new();
    for g in v {
        let stemmed = stem(&g.0);
        if kept
            .iter()
            .any(|k| k.1 == g.1 && (k.0.contains(&g.0) || k.0.contains(&stemmed)))
        {
            continue;
        }
        kept.push(g);
        if kept.len() >= limit {
            break;
        }
    }
    kept
}

fn toml_str(s: &str) -> String {
    format!("{s:?}")
}

/// The TOML snippet for an administrator to review.
pub fn snippet(m: &Mined, root: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# voicegate mine {}: {} calls, {} handed to a person, {} with an agent bridged.\n\
         # Review before pasting into flow.toml: add the keywords you agree with to the\n\
         # [[intent]] of the same name; `examples` are what callers actually said.",
        root.display(),
        m.calls,
        m.handed_over,
        m.bridged
    );
    for (intent, texts) in &m.unrecognised {
        let grams = top_ngrams(texts, 8);
        let _ = writeln!(
            out,
            "\n# {} request(s) the bot did not recognise{}",
            texts.len(),
            if intent == "unknown" {
                " and no intent comes close to: perhaps a new intent".to_string()
            } else {
                format!(", closest to intent {intent:?}")
            }
        );
        let _ = writeln!(out, "[[suggestion]]\nintent = {}", toml_str(intent));
        let kws: String = grams
            .iter()
            .map(|(g, n, _)| format!("  {}, # ×{n}\n", toml_str(g)))
            .collect();
        let _ = writeln!(out, "keywords = [\n{kws}]");
        let mut examples: Vec<&String> = texts.iter().collect();
        examples.dedup();
        let ex: Vec<String> = examples.iter().take(5).map(|t| toml_str(t)).collect();
        let _ = writeln!(out, "examples = [\n  {}\n]", ex.join(",\n  "));
    }
    if !m.calming.is_empty() {
        let grams = top_ngrams(&m.calming, 10);
        let _ = writeln!(
            out,
            "\n# What agents said in calls where the caller calmed down: candidates for the\n# bot's own replies (flow.toml `reply`, `all_busy`, `connecting`)."
        );
        let _ = writeln!(out, "[calming]");
        let phrases: String = grams
            .iter()
            .map(|(g, n, _)| format!("  {}, # ×{n}\n", toml_str(g)))
            .collect();
        let _ = writeln!(out, "phrases = [\n{phrases}]");
        let ex: Vec<String> = m.calming.iter().take(5).map(|t| toml_str(t)).collect();
        let _ = writeln!(out, "examples = [\n  {}\n]", ex.join(",\n  "));
    }
    for s in &m.skipped {
        let _ = writeln!(out, "# skipped: {s}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snippet_is_valid_toml() {
        let mut m = Mined {
            calls: 2,
            handed_over: 2,
            bridged: 1,
            calming: vec!["I am so sorry, I will fix it \"now\"".into()],
            ..Mined::default()
        };
        m.unrecognised.insert(
            "billing".into(),
            vec!["charged twice".into(), "double charge".into()],
        );
        let text = snippet(&m, Path::new("recordings"));
        let v: toml::Value = toml::from_str(&text).expect(&text);
        assert_eq!(v["suggestion"][0]["intent"].as_str(), Some("billing"));
        assert!(v["calming"]["phrases"]
            .as_array()
            .is_some_and(|p| !p.is_empty()));
    }

    #[test]
    fn frequent_phrases_come_first_with_an_example() {
        let texts: Vec<String> = [
            "I want a refund for the double charge",
            "refund the double charge please",
            "where is my refund",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let g = top_ngrams(&texts, 3);
        assert_eq!(g[0].0, "refund");
        assert_eq!(g[0].1, 3);
        assert_eq!(g[1].0, "double charge", "{g:?}");
        assert!(
            !g.iter().any(|x| x.0 == "double"),
            "inside a kept phrase: {g:?}"
        );
    }
}
