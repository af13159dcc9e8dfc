//! Everything a call tells the world, typed: one enum, written to the call's
//! `events.jsonl` as `{"t_s": …, "ts": …, "kind": "…", fields…}` and read by
//! the call board, `/metrics`, `voicegate mine` and batch replay. The kinds
//! and field names are a contract: recordings made by earlier versions still
//! read, and scripts reading `events.jsonl` keep working.
//!
//! Producers (the sans-IO [`super::Call`], the greeting flow, the transfer
//! orchestration and the gateway shell) build a [`CallEvent`]; consumers match
//! on it instead of on strings.

use super::core::{Decision, DecisionKind};
use super::transfer::LegId;
use crate::speech::pipeline::UtteranceResult;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who did something (hung up, refreshed the session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Party {
    /// The caller.
    Caller,
    /// The human agent.
    Agent,
    /// The gateway itself.
    Gateway,
}

/// Declares [`CallEvent`] with each variant's `kind` written once: the
/// macro hands it to serde (`rename`) and to [`CallEvent::kind`], so the two
/// cannot drift apart.
macro_rules! call_events {
    ($(
        $(#[$meta:meta])*
        $kind:literal => $variant:ident $( ( $ty:ty ) )? $( { $($fields:tt)* } )?
    ),* $(,)?) => {
        /// One event of a call. `kind` in `events.jsonl` is the serde name.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind")]
        pub enum CallEvent {
            $(
                $(#[$meta])*
                #[serde(rename = $kind)]
                $variant $( ($ty) )? $( { $($fields)* } )?,
            )*
        }

        impl CallEvent {
            /// The `kind` as written to `events.jsonl`.
            pub fn kind(&self) -> &'static str {
                match self {
                    $( CallEvent::$variant { .. } => $kind, )*
                }
            }
        }
    };
}

call_events! {
    /// The INVITE was accepted: who calls whom, through which trunk.
    "call.invite" => Invite(Box<Invite>),
    /// The caller's ACK arrived: the call exists.
    "call.confirmed" => Confirmed,
    /// The call was answered (time zero): the caller's leg.
    "call.answered" => Answered(Answered),
    /// Someone hung up.
    "call.hangup" => Hangup {
        /// Why (`caller_bye`, `caller_done`, `rtp_timeout`, …).
        reason: String,
        /// Who.
        by: Party,
    },
    /// The call is over.
    "call.ended" => Ended(Ended),
    /// A prompt started playing.
    "prompt.started" => PromptStarted {
        /// Which (`greeting`).
        prompt: String,
    },
    /// A prompt was heard to its end.
    "prompt.finished" => PromptFinished {
        /// Which (`greeting`).
        prompt: String,
    },
    /// The caller pressed a key.
    "dtmf" => Dtmf(Dtmf),
    /// The caller started talking (voice activity).
    "speech.started" => SpeechStarted {
        /// Stream time (s).
        at_s: f64,
    },
    /// A final transcript.
    "utterance" => Utterance(Box<Utterance>),
    /// Speech too short to be words, not transcribed.
    "utterance.skipped" => UtteranceSkipped {
        /// Start (s).
        start_s: f64,
        /// End (s).
        end_s: f64,
        /// Voiced time inside it.
        voiced_ms: u64,
        /// `too_short`.
        reason: String,
    },
    /// A partial transcript of speech still going on.
    "transcript.partial" => TranscriptPartial {
        /// The utterance's start (s).
        start_s: f64,
        /// What was heard so far.
        text: String,
    },
    /// Speech recognition could not take an utterance.
    "asr_overloaded" => AsrOverloaded {
        /// `queue_full`, `too_late`, …
        reason: String,
        /// The utterance's start (s).
        start_s: f64,
        /// Its end (s), when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        end_s: Option<f64>,
    },
    /// Speech recognition failed on an utterance.
    "asr_failed" => AsrFailed {
        /// Why.
        error: String,
    },
    /// The bot says something.
    "bot.say" => BotSay {
        /// What.
        text: String,
    },
    /// The caller talked over the bot, which stopped.
    "bot.interrupted" => BotInterrupted,
    /// The bot says goodbye and will hang up once it is heard.
    "bot.goodbye" => BotGoodbye {
        /// `caller_done` or `caller_silent`.
        reason: String,
    },
    /// A decision of the core, with its evidence.
    "decision" => Decision(DecisionEvent),
    /// An intent's webhook is asked what to say.
    "webhook.ask" => WebhookAsk {
        /// The intent.
        intent: String,
        /// Where.
        url: String,
        /// How long the caller may wait.
        timeout_ms: u64,
    },
    /// The webhook answered (or failed).
    "webhook.reply" => WebhookReply {
        /// The intent.
        intent: String,
        /// Whether it gave a text.
        ok: bool,
        /// The text, or why there is none.
        reply: String,
    },
    /// The caller goes to a human: why, and what the agent is told.
    "handover" => Handover(Handover),
    /// The hand-over orchestration started.
    "transfer.started" => TransferStarted {
        /// Reason code.
        reason: String,
    },
    /// An agent leg is dialled.
    "transfer.dial" => TransferDial {
        /// The leg.
        leg: LegId,
        /// The agent.
        uri: String,
        /// Its ring group.
        group: String,
        /// How long it may ring.
        ring_timeout_s: f64,
    },
    /// The agent leg's INVITE went out.
    "transfer.invite_sent" => TransferInviteSent {
        /// The leg.
        leg: LegId,
        /// Since the hand-over was decided.
        ms_after_decision: f64,
    },
    /// The agent's phone rings.
    "transfer.ringing" => TransferRinging {
        /// The leg.
        leg: LegId,
    },
    /// An agent answered.
    "transfer.answered" => TransferAnswered {
        /// The leg.
        leg: LegId,
        /// The agent.
        uri: String,
        /// Since the hand-over started (s).
        after_s: f64,
    },
    /// The agent leg's media.
    "transfer.agent_media" => TransferAgentMedia {
        /// The leg.
        leg: LegId,
        /// Its codec.
        codec: String,
        /// Where its RTP goes.
        remote_rtp: String,
    },
    /// The whisper to the agent started.
    "transfer.whisper_started" => TransferWhisperStarted {
        /// The leg.
        leg: LegId,
        /// Since the agent answered.
        ms_after_answer: f64,
    },
    /// The whisper was heard to its end.
    "transfer.whisper_finished" => TransferWhisperFinished {
        /// The leg.
        leg: LegId,
    },
    /// The agent must press a key to take the call.
    "transfer.awaiting_accept" => TransferAwaitingAccept {
        /// The leg.
        leg: LegId,
    },
    /// The agent declined (or did not accept in time).
    "transfer.declined" => TransferDeclined {
        /// The leg.
        leg: LegId,
        /// The agent.
        uri: String,
        /// Why, when not a key press.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        why: Option<String>,
    },
    /// One agent leg failed.
    "transfer.attempt_failed" => TransferAttemptFailed {
        /// The leg.
        leg: LegId,
        /// The agent.
        uri: String,
        /// SIP status (0: none).
        status: u16,
        /// Why.
        why: String,
    },
    /// Nobody took the call: the caller is back with the bot.
    "transfer.failed" => TransferFailed {
        /// Every agent tried, with what happened.
        tried: Vec<String>,
        /// Since the hand-over started (s).
        after_s: f64,
    },
    /// Caller and agent are bridged.
    "transfer.bridged" => TransferBridged {
        /// The leg.
        leg: LegId,
        /// The agent.
        uri: String,
        /// Since the hand-over started (s).
        after_s: f64,
    },
    /// The caller hung up before an agent took the call.
    "transfer.abandoned" => TransferAbandoned {
        /// `ringing` or `whisper`.
        #[serde(rename = "while")]
        during: String,
    },
    /// The bridged call ended.
    "transfer.ended" => TransferEnded {
        /// Who hung up.
        by: Party,
        /// The leg.
        leg: LegId,
    },
    /// How long the bridge held audio each way.
    "bridge.latency" => BridgeLatency {
        /// Caller → agent jitter-buffer hold (ms).
        caller_to_agent_hold_ms: f64,
        /// Agent → caller jitter-buffer hold (ms).
        agent_to_caller_hold_ms: f64,
        /// The longest wait for the 20 ms clock (ms).
        clock_wait_ms_max: u64,
        /// The agent leg's media statistics.
        agent_media: Value,
    },
    /// The caller re-INVITEd (hold, resume, new address or codec).
    "sip.reinvite" => SipReinvite {
        /// Whether the caller holds the call now.
        hold: bool,
        /// The SDP direction.
        direction: String,
        /// The codec.
        codec: String,
        /// Where the caller's RTP goes.
        remote_rtp: String,
    },
    /// A re-INVITE was refused; the call goes on as before.
    "sip.reinvite_refused" => SipReinviteRefused {
        /// Why.
        error: String,
    },
    /// The session timer was refreshed.
    "sip.session_refresh" => SipSessionRefresh {
        /// Who refreshed.
        by: Party,
    },
    /// An unfinished recording was repaired at start-up.
    "recording.repaired" => RecordingRepaired {
        /// What the repair found.
        outcome: String,
    },
}

impl CallEvent {
    /// The event as one JSON object: `kind` and its fields.
    pub fn to_json(&self) -> serde_json::Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            // Every variant serialises to an object; keep the kind regardless.
            _ => {
                let mut map = serde_json::Map::new();
                map.insert("kind".into(), Value::from(self.kind()));
                map
            }
        }
    }
}

/// `call.invite`: the INVITE as accepted.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Invite {
    /// SIP Call-ID.
    pub call_id: String,
    /// The caller's user part.
    pub from: String,
    /// The caller's display name.
    pub from_name: String,
    /// The dialled number.
    pub to: String,
    /// The trunk it came in on.
    pub trunk: String,
    /// The flow the number runs.
    pub flow: String,
    /// The negotiated codec.
    pub codec: String,
    /// Where the caller's RTP goes.
    pub remote_rtp: String,
    /// RFC 4733 payload type, if offered.
    pub telephone_event: Option<u8>,
    /// The signalling source address.
    pub source: Option<String>,
    /// RFC 4028 session interval, if any.
    pub session_expires_s: Option<u64>,
}

/// `call.answered`: the caller's leg as answered.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Answered {
    /// SIP: the local RTP port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_rtp_port: Option<u16>,
    /// WebRTC: `webrtc`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// WebRTC: the codec (`opus`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub codec: Option<String>,
    /// WebRTC: the browser's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// The callers' language (`en`, `zh`, `auto`).
    pub language: String,
}

/// `call.ended`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Ended {
    /// Why (`caller_bye`, `no_ack`, …).
    pub reason: String,
    /// Present (and `false`) for a call that never connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered: Option<bool>,
    /// From answer to end (s), for a call that ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    /// The caller leg's media statistics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<Value>,
}

/// `dtmf`: a key.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Dtmf {
    /// The key (`0`–`9`, `*`, `#`, `A`–`D`).
    pub digit: String,
    /// `rfc4733`, `inband` or `sip_info`.
    pub source: String,
}

/// `utterance`: a final transcript with its signals and timings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Utterance {
    /// What was heard and measured.
    #[serde(flatten)]
    pub result: UtteranceResult,
    /// From the utterance's end to its text.
    #[serde(default)]
    pub latency_ms: u64,
    /// Whisper (and the embedding) on a worker.
    #[serde(default)]
    pub decode_ms: u64,
    /// Waiting for a worker.
    #[serde(default)]
    pub queue_ms: u64,
    /// Whisper's log-mel stage (live calls only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mel_ms: Option<f64>,
    /// Whisper's encoder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_ms: Option<f64>,
    /// Whisper's decoder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_ms: Option<f64>,
}

/// `decision`: one of [`Decision`], as logged.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DecisionEvent {
    /// What was decided.
    pub decision: DecisionKind,
    /// Seconds since answer.
    pub at_s: f64,
    /// Reason code or intent name.
    pub reason: Option<String>,
    /// Intent or frustration score.
    pub score: Option<f64>,
    /// Why, in words.
    pub evidence: Vec<String>,
}

impl From<&Decision> for DecisionEvent {
    fn from(d: &Decision) -> Self {
        DecisionEvent {
            decision: d.kind,
            at_s: d.t_s,
            reason: d.reason.clone(),
            score: d.score,
            evidence: d.evidence.clone(),
        }
    }
}

/// `handover`: why the caller goes to a human and the agent's summary.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Handover {
    /// Reason code (`frustration`, `waited`, `vip`, …).
    pub reason: String,
    /// The agent summary (who, what, how upset, how long, their words).
    pub summary: Value,
    /// Wall-clock time of the decision (Unix ms), to time the hand-over end
    /// to end.
    pub unix_ms: f64,
}

/// One line of a recorded `events.jsonl`: when, and what.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// Seconds since answer (0 before it, or when the line has none).
    pub t_s: f64,
    /// The event.
    pub event: CallEvent,
}

/// The events of an `events.jsonl` text, in order. Lines that are not JSON
/// (a torn last line) or of a kind this version does not know are skipped.
pub fn parse_events(text: &str) -> Vec<Recorded> {
    text.lines()
        .filter_map(|line| {
            let value: Value = serde_json::from_str(line).ok()?;
            let t_s = value["t_s"].as_f64().unwrap_or(0.0);
            let event = serde_json::from_value(value).ok()?;
            Some(Recorded { t_s, event })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_keep_the_recorded_format_both_ways() {
        let cases = [
            (
                CallEvent::Hangup {
                    reason: "caller_bye".into(),
                    by: Party::Caller,
                },
                json!({"kind": "call.hangup", "reason": "caller_bye", "by": "caller"}),
            ),
            (CallEvent::Confirmed, json!({"kind": "call.confirmed"})),
            (
                CallEvent::Ended(Ended {
                    reason: "no_ack".into(),
                    answered: Some(false),
                    ..Ended::default()
                }),
                json!({"kind": "call.ended", "reason": "no_ack", "answered": false}),
            ),
            (
                CallEvent::TransferAbandoned {
                    during: "ringing".into(),
                },
                json!({"kind": "transfer.abandoned", "while": "ringing"}),
            ),
            (
                CallEvent::Decision(DecisionEvent {
                    decision: DecisionKind::Handover,
                    at_s: 3.5,
                    reason: Some("frustration".into()),
                    score: None,
                    evidence: vec!["2 negative words".into()],
                }),
                json!({"kind": "decision", "decision": "handover", "at_s": 3.5,
                       "reason": "frustration", "score": null,
                       "evidence": ["2 negative words"]}),
            ),
            (
                CallEvent::Answered(Answered {
                    local_rtp_port: Some(20_000),
                    language: "en".into(),
                    ..Answered::default()
                }),
                json!({"kind": "call.answered", "local_rtp_port": 20000, "language": "en"}),
            ),
        ];
        for (event, expected) in cases {
            let written = serde_json::to_value(&event).expect("serialises");
            assert_eq!(written, expected);
            assert_eq!(written["kind"], event.kind());
            let read: CallEvent = serde_json::from_value(expected).expect("reads back");
            assert_eq!(read, event);
        }
    }

    #[test]
    fn an_utterance_reads_back_with_its_result_flattened() {
        let line = r#"{"t_s":4.2,"ts":"2026-01-01T00:00:00.000Z","kind":"utterance","start_s":1.0,"end_s":2.5,"text":"my card was declined","words_per_s":2.0,"syllables_per_s":3.0,"loudness_dbfs":-20.0,"voiced_s":1.4,"forced_cut":false,"language":"en","closed_at_s":3.1,"latency_ms":400,"decode_ms":380,"queue_ms":20,"encoder_ms":300.5}"#;
        let events = parse_events(line);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].t_s, 4.2);
        let CallEvent::Utterance(u) = &events[0].event else {
            panic!("{:?}", events[0].event);
        };
        assert_eq!(u.result.text, "my card was declined");
        assert_eq!(u.result.closed_at_s, 3.1);
        assert_eq!(
            (u.latency_ms, u.encoder_ms, u.mel_ms),
            (400, Some(300.5), None)
        );
        let again = serde_json::to_value(&events[0].event).expect("serialises");
        assert_eq!(again["text"], "my card was declined");
        assert_eq!(again["encoder_ms"], 300.5);
        assert!(again.get("mel_ms").is_none());
    }

    #[test]
    fn old_and_unknown_lines_are_read_or_skipped_never_fatal() {
        let text = concat!(
            // An older recording: no language, no closed_at_s, no timings.
            r#"{"t_s":1.0,"kind":"utterance","start_s":0.2,"end_s":0.9,"text":"hello","words_per_s":1.0,"loudness_dbfs":-30.0,"voiced_s":0.5,"forced_cut":false}"#,
            "\n",
            r#"{"t_s":1.5,"kind":"something.new","x":1}"#,
            "\n",
            r#"{"t_s":2.0,"kind":"dtmf","digit":"5","source":"rfc4733"}"#,
            "\n",
            r#"{"t_s":2.5,"kind":"decis"#,
        );
        let events = parse_events(text);
        let kinds: Vec<&str> = events.iter().map(|e| e.event.kind()).collect();
        assert_eq!(kinds, ["utterance", "dtmf"]);
    }
}
