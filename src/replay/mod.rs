//! Offline replay: a recorded or synthetic caller track through the live
//! pipeline (8 kHz → 16 kHz, VAD, Whisper) and the same decision core, on a
//! virtual clock advanced by the audio itself — as fast as the CPU allows.

pub mod batch;
pub mod mine;
pub mod report;

use crate::call::core::{CallCore, CoreAction, CoreEvent, Decision};
use crate::call::policy::Policy;
use crate::speech::asr::{AsrError, Recognizer};
use crate::speech::encoder::SentenceEncoder;
use crate::speech::pipeline::{embed_result, result_for, Track, UtteranceResult};
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
    /// What the bot said, with the time.
    pub bot_said: Vec<Value>,
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
            "bot_said": self.bot_said,
        })
    }
}

/// How replay hears the caller: the same pieces a live call uses.
pub struct Listening<'a> {
    /// Whisper.
    pub recognizer: &'a mut Recognizer,
    /// The callers' language (`auto`: detected from the first utterance).
    pub language: Option<&'a str>,
    /// The sentence encoder for semantic intents, if installed.
    pub encoder: Option<&'a SentenceEncoder>,
    /// The voice activity detector, from `[speech]` as on a live call.
    pub vad: VadConfig,
}

/// Replay `track` as a call from `caller`.
pub fn replay(
    track: &Track,
    caller: Option<String>,
    policy: Arc<Policy>,
    listening: Listening<'_>,
) -> Result<ReplayReport, AsrError> {
    let Listening {
        recognizer,
        language,
        encoder,
        vad,
    } = listening;
    let mut core = CallCore::new(policy, language.unwrap_or("en"));
    let mut seg = Segmenter::new(vad);
    let mut utterances: Vec<ReplayUtterance> = Vec::new();
    let mut summary = None;
    // Webhooks are asked for real, as on a live call; the answer arrives at the
    // same virtual moment (or, past its timeout, the core's deadline decides).
    let mut bot_said = Vec::new();
    let mut apply = |core: &mut CallCore,
                     now: Duration,
                     actions: Vec<CoreAction>,
                     summary: &mut Option<Value>| {
        let mut queue = actions;
        while !queue.is_empty() {
            let mut next = Vec::new();
            for a in queue {
                match a {
                    CoreAction::Transfer { summary: s, .. } => *summary = Some(s),
                    CoreAction::Say(text) => bot_said.push(
                        json!({"t_s": (now.as_secs_f64() * 1000.0).round() / 1000.0, "text": text}),
                    ),
                    CoreAction::CallWebhook {
                        intent,
                        url,
                        timeout,
                        body,
                    } => {
                        let asked = std::time::Instant::now();
                        let reply = crate::api::webhook::ask(&url, timeout, &body);
                        next.extend(if asked.elapsed() < timeout {
                            core.handle(now, CoreEvent::WebhookReply { intent, reply })
                        } else {
                            core.handle(now + timeout, CoreEvent::Tick)
                        });
                    }
                    _ => {}
                }
            }
            queue = next;
        }
    };
    let answered = core.handle(
        Duration::ZERO,
        CoreEvent::Answered {
            caller: caller.clone(),
        },
    );
    apply(&mut core, Duration::ZERO, answered, &mut summary);
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
            if let VadEvent::SpeechStarted { .. } = ev {
                let actions = core.handle(now, CoreEvent::SpeechStarted);
                apply(&mut core, now, actions, &mut summary);
            }
            if let VadEvent::Utterance(u) = ev {
                let r = recognizer.recognize_in(&u.samples, language)?;
                let result = embed_result(result_for(&u, r.text, r.language), encoder);
                let before = core.intents().len();
                let actions = core.handle(now, CoreEvent::Utterance(result.clone()));
                apply(&mut core, now, actions, &mut summary);
                let intent =
                    (core.intents().len() > before).then(|| core.intents()[before].clone());
                utterances.push(ReplayUtterance { result, intent });
            }
        }
        let actions = core.handle(now, CoreEvent::Tick);
        apply(&mut core, now, actions, &mut summary);
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
        bot_said,
    })
}
