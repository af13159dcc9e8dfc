//! Offline replay: a recorded or synthetic caller track through the live
//! pipeline (8 kHz → 16 kHz, VAD, Whisper) and the same decision core, on a
//! virtual clock advanced by the audio itself — as fast as the CPU allows.

pub mod batch;
pub mod cli;
pub mod mine;
pub mod report;

use crate::call::core::Decision;
use crate::call::policy::Policy;
use crate::call::{Call, CallSetup, Input, Output};
use crate::media::prompt::Prompt;
use crate::speech::asr::{AsrError, Recognizer};
use crate::speech::encoder::SentenceEncoder;
use crate::speech::pipeline::{embed_result, result_for, Track, UtteranceResult};
use crate::speech::pool::{AsrReply, JobKind};
use crate::speech::tts::Synthesizer;
use crate::speech::vad::VadConfig;
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
    /// Every event the call wrote, as a live call's `events.jsonl` has them
    /// (barge-in, goodbye, DTMF, hang-up included).
    pub events: Vec<Value>,
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
            "events": self.events,
        })
    }
}

/// How replay hears the caller and speaks to them: the same pieces a live
/// call uses.
pub struct Listening<'a> {
    /// Whisper.
    pub recognizer: &'a mut Recognizer,
    /// The callers' language (`auto`: detected from the first utterance).
    pub language: Option<&'a str>,
    /// The sentence encoder for semantic intents, if installed.
    pub encoder: Option<&'a SentenceEncoder>,
    /// The voice activity detector, from `[speech]` as on a live call.
    pub vad: VadConfig,
    /// The bot's voice (recorded replies, then the synthesiser), so replay
    /// knows when the bot is speaking — barge-in and the goodbye hold depend
    /// on it. `None`: the bot is silent (its replies are still reported).
    pub voice: Option<Arc<dyn Synthesizer>>,
    /// The greeting played at answer.
    pub greeting: Option<Prompt>,
    /// Keys the caller pressed, with the time since answer (from a
    /// recording's `dtmf` events: RFC 4733 and SIP INFO keys are not in the
    /// audio).
    pub keys: Vec<(Duration, char, &'static str)>,
    /// `[media] max_call_duration_s`, as on a live call.
    pub max_duration: Option<Duration>,
    /// Utterances the live call's Whisper pool refused (start in s, reason),
    /// from a recording's `asr_overloaded` events: answered as overload
    /// again, so the replay decides as the live call did. Overload is the
    /// live box's load, like RFC 4733 keys not in the audio.
    pub refused: Vec<(f64, String)>,
}

/// Replay `track` as a call from `caller`: the same sans-IO [`Call`] a live
/// call runs, fed the track 20 ms at a time on a virtual clock, with Whisper,
/// the synthesiser and webhooks answered at once.
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
        voice,
        greeting,
        keys,
        max_duration,
        refused,
    } = listening;
    let mut call = Call::new(CallSetup {
        policy,
        language: language.unwrap_or("en").to_string(),
        asr_language: language.map(str::to_string),
        caller: caller.clone(),
        vad,
        partial_interval: Duration::from_secs(3600),
        partial_window: None,
        greeting,
        listen: true,
        max_duration,
        // A replay decides the hand-over; no agent is called.
        agents: None,
        hold_music: None,
    });
    let mut io = ReplayIo {
        recognizer,
        language,
        encoder,
        voice,
        refused,
        events: Vec::new(),
    };
    call.handle_input(Duration::ZERO, Input::Answered);
    io.drain(&mut call, Duration::ZERO)?;
    let mut keys = keys.into_iter().peekable();
    let mut fed = 0usize;
    for chunk in track.samples.chunks(320) {
        fed += chunk.len();
        let now = Duration::from_secs_f64(fed as f64 / 16_000.0);
        while let Some((_, digit, source)) = keys.next_if(|(t, _, _)| *t <= now) {
            call.handle_input(now, Input::Digit { digit, source });
        }
        call.handle_input(now, Input::CallerAudioWideband(chunk));
        io.drain(&mut call, now)?;
        let _ = call.poll_frame();
        io.drain(&mut call, now)?;
        if call.transfer().is_some() || call.hung_up() {
            break;
        }
    }
    if call.transfer().is_none() && !call.hung_up() {
        // The audio is over: what the caller was still saying is decided on.
        let now = Duration::from_secs_f64(fed as f64 / 16_000.0);
        call.flush_speech();
        io.drain(&mut call, now)?;
    }
    let core = call.core();
    let handover = core.handover();
    let outcome = crate::call::outcome(handover.is_some(), !core.intents().is_empty());
    let (reason, at) = match handover {
        Some((t, r)) => (
            Some(r.to_string()),
            Some((t.as_secs_f64() * 1000.0).round() / 1000.0),
        ),
        None => (None, None),
    };
    Ok(ReplayReport {
        caller,
        utterances: call
            .heard()
            .iter()
            .map(|(result, intent)| ReplayUtterance {
                result: result.clone(),
                intent: intent.clone(),
            })
            .collect(),
        decisions: core.decisions.clone(),
        outcome,
        reason,
        transfer_at_s: at,
        summary: call.transfer().map(|(_, _, s)| s.clone()),
        intents: core.intents().to_vec(),
        bot_said: call
            .said()
            .iter()
            .map(|(t, text)| json!({"t_s": (t.as_secs_f64() * 1000.0).round() / 1000.0, "text": text}))
            .collect(),
        events: io.events,
    })
}

/// What replay does for the call: Whisper, the synthesiser and webhooks,
/// answered at the virtual moment they were asked.
struct ReplayIo<'a> {
    recognizer: &'a mut Recognizer,
    language: Option<&'a str>,
    encoder: Option<&'a SentenceEncoder>,
    voice: Option<Arc<dyn Synthesizer>>,
    refused: Vec<(f64, String)>,
    events: Vec<Value>,
}

impl ReplayIo<'_> {
    /// Whether the live call's pool refused the utterance starting at
    /// `start_s`, and why (the reasons the pool gives).
    fn refusal(&self, start_s: f64) -> Option<&'static str> {
        // Events keep the start at full precision; a millisecond is far
        // below the VAD's 20 ms frame.
        let (_, reason) = self
            .refused
            .iter()
            .find(|(s, _)| (s - start_s).abs() < 1e-3)?;
        Some(match reason.as_str() {
            "queue_full" => "queue_full",
            "queue" => "queue",
            "latency" => "latency",
            _ => "recorded",
        })
    }

    fn drain(&mut self, call: &mut Call, now: Duration) -> Result<(), AsrError> {
        while let Some(output) = call.poll_output() {
            match output {
                Output::Event(event) => {
                    let mut line = event.to_json();
                    line.insert(
                        "t_s".into(),
                        json!((now.as_secs_f64() * 1000.0).round() / 1000.0),
                    );
                    self.events.push(Value::Object(line));
                }
                Output::SubmitAsr {
                    kind: kind @ (JobKind::Final | JobKind::Early),
                    utterance,
                    ..
                } => {
                    let start_s = utterance.start.as_secs_f64();
                    if let Some(reason) = self.refusal(start_s) {
                        // Refused live: refused again, the same way.
                        let input = if kind == JobKind::Final && reason == "queue_full" {
                            Input::AsrRefused {
                                start_s,
                                end_s: utterance.end.as_secs_f64(),
                            }
                        } else {
                            Input::Asr(AsrReply::Overloaded {
                                kind,
                                reason,
                                start_s,
                            })
                        };
                        call.handle_input(now, input);
                        continue;
                    }
                    let r = self
                        .recognizer
                        .recognize_in(&utterance.samples, self.language)?;
                    let result =
                        embed_result(result_for(&utterance, r.text, r.language), self.encoder);
                    call.handle_input(
                        now,
                        Input::Asr(AsrReply::Done {
                            kind,
                            result,
                            latency: Duration::ZERO,
                            decode: Duration::ZERO,
                            stages: Default::default(),
                        }),
                    );
                }
                Output::SubmitAsr { .. } => {}
                Output::Synthesize { text, voice } => {
                    if let Some(tts) = &self.voice {
                        match tts.synthesize(&text, &voice) {
                            Ok(p) => call.handle_input(now, Input::Prompt(p)),
                            Err(e) => tracing::warn!(error = %e, "text-to-speech failed"),
                        }
                    }
                }
                Output::CallWebhook {
                    intent,
                    url,
                    timeout,
                    body,
                } => {
                    // Asked for real, as on a live call; past its timeout the
                    // core's own deadline decides on a later tick.
                    let asked = std::time::Instant::now();
                    let reply = crate::api::webhook::ask(&url, timeout, &body);
                    if asked.elapsed() < timeout {
                        call.handle_input(now, Input::WebhookReply { intent, reply });
                    }
                }
                Output::Transfer { .. }
                | Output::Hangup { .. }
                | Output::DialAgent { .. }
                | Output::CancelAgent(_)
                | Output::HangUpAgent(_) => {}
            }
        }
        Ok(())
    }
}
