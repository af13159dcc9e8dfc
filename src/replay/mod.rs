//! Offline replay: a recorded or synthetic caller track through the live
//! pipeline (8 kHz → 16 kHz, VAD, Whisper) and the same decision core, on a
//! virtual clock advanced by the audio itself — as fast as the CPU allows.

use crate::call::core::{CallCore, CoreAction, CoreEvent, Decision};
use crate::call::policy::Policy;
use crate::speech::asr::{AsrError, Recognizer};
use crate::speech::pipeline::{result_for, Track, UtteranceResult};
use crate::speech::vad::{Segmenter, VadConfig, VadEvent};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// One utterance as replay reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayUtterance {
    /// Speech measures and text.
    #[serde(flatten)]
    pub result: UtteranceResult,
    /// The intent served for it, if any.
    pub intent: Option<String>,
}

/// The outcome of replaying one call.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    /// Caller ID used.
    pub caller: Option<String>,
    /// Utterances with their intents.
    pub utterances: Vec<ReplayUtterance>,
    /// Every decision.
    pub decisions: Vec<Decision>,
    /// `bot_resolved`, `transferred` or `caller_hung_up`.
    pub outcome: &'static str,
    /// Hand-over reason.
    pub reason: Option<String>,
    /// When the hand-over was decided.
    pub transfer_at_s: Option<f64>,
    /// The agent summary.
    pub summary: Option<Value>,
    /// Intents served.
    pub intents: Vec<String>,
}

impl ReplayReport {
    /// The JSON object `voicegate replay --json` prints.
    pub fn to_json(&self, file: &str) -> Value {
        json!({
            "file": file,
            "caller": self.caller,
            "utterances": self.utterances,
            "intents": self.intents,
            "decisions": self.decisions,
            "outcome": self.outcome,
            "reason": self.reason,
            "transfer_at_s": self.transfer_at_s,
            "summary": self.summary,
        })
    }
}

/// Replay `track` as a call from `caller`.
pub fn replay(
    track: &Track,
    caller: Option<String>,
    policy: Arc<Policy>,
    recognizer: &mut Recognizer,
    language: Option<&str>,
) -> Result<ReplayReport, AsrError> {
    let mut core = CallCore::new(policy, language.unwrap_or("en"));
    let mut seg = Segmenter::new(VadConfig::default());
    let mut utterances: Vec<ReplayUtterance> = Vec::new();
    let mut summary = None;
    let apply = |actions: Vec<CoreAction>, summary: &mut Option<Value>| {
        for a in actions {
            if let CoreAction::Transfer { summary: s, .. } = a {
                *summary = Some(s);
            }
        }
    };
    apply(
        core.handle(
            Duration::ZERO,
            CoreEvent::Answered {
                caller: caller.clone(),
            },
        ),
        &mut summary,
    );
    let mut chunks = track.samples.chunks(320).peekable();
    while core.handover().is_none() && !core.ended() {
        let events = match chunks.next() {
            Some(c) => seg.push(c),
            None => {
                let tail: Vec<VadEvent> =
                    seg.finish().map(VadEvent::Utterance).into_iter().collect();
                if tail.is_empty() {
                    break;
                }
                tail
            }
        };
        let now = seg.now();
        for ev in events {
            if let VadEvent::Utterance(u) = ev {
                let r = recognizer.recognize_in(&u.samples, language)?;
                let result = result_for(&u, r.text, r.language);
                let before = core.intents().len();
                apply(
                    core.handle(now, CoreEvent::Utterance(result.clone())),
                    &mut summary,
                );
                let intent =
                    (core.intents().len() > before).then(|| core.intents()[before].clone());
                utterances.push(ReplayUtterance { result, intent });
            }
        }
        apply(core.handle(now, CoreEvent::Tick), &mut summary);
        if chunks.peek().is_none() && seg.in_progress().is_none() {
            // Audio is over: the caller stays on the line (silent) until the
            // file's end; nothing more can happen.
            break;
        }
    }
    let (outcome, reason, at) = match core.handover() {
        Some((t, r)) => (
            "transferred",
            Some(r.to_string()),
            Some((t.as_secs_f64() * 1000.0).round() / 1000.0),
        ),
        None if !core.intents().is_empty() => ("bot_resolved", None, None),
        None => ("caller_hung_up", None, None),
    };
    Ok(ReplayReport {
        caller,
        utterances,
        decisions: core.decisions.clone(),
        outcome,
        reason,
        transfer_at_s: at,
        summary,
        intents: core.intents().to_vec(),
    })
}
