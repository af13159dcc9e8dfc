//! The decision core: per call, events in (with the time), actions out. It
//! serves intents, tracks the caller's emotion and wait, and decides when —
//! and why — the caller goes to a human. No I/O and no clock inside.

use super::intents::{best_intent, IntentMatch};
use super::policy::{Customer, Policy};
use crate::emotion::{EmotionConfig, EmotionTracker, Lexicon};
use crate::speech::pipeline::UtteranceResult;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Something that happened on the call.
#[derive(Debug, Clone)]
pub enum CoreEvent {
    /// Answered; the caller ID if any.
    Answered {
        /// Caller ID.
        caller: Option<String>,
    },
    /// A final utterance.
    Utterance(UtteranceResult),
    /// A key press.
    Dtmf(char),
    /// Speech recognition overloaded or failing.
    AsrUnavailable,
    /// Time passes.
    Tick,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum CoreAction {
    /// Speak (TTS) to the caller.
    Say(String),
    /// Hand the caller to a human.
    Transfer {
        /// Reason code.
        reason: String,
        /// Summary for the agent.
        summary: Value,
    },
}

/// One decision with its evidence, as logged and replayed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Decision {
    /// Seconds since answer.
    pub t_s: f64,
    /// `intent`, `no_intent`, `emotion`, `handover`.
    pub kind: String,
    /// Reason code or intent name.
    pub reason: Option<String>,
    /// Intent or frustration score.
    pub score: Option<f64>,
    /// Why, in words.
    pub evidence: Vec<String>,
}

/// A call's decision state.
#[derive(Debug)]
pub struct CallCore {
    policy: Arc<Policy>,
    lexicon: Lexicon,
    caller: Option<String>,
    customer: Option<Customer>,
    emotion: EmotionTracker,
    unrecognized_run: u32,
    wait_since: Option<Duration>,
    intents: Vec<String>,
    last_words: String,
    handed_over: Option<(Duration, String)>,
    /// Every decision so far.
    pub decisions: Vec<Decision>,
}

impl CallCore {
    /// A core for one call under `policy`, for callers speaking `language`.
    pub fn new(policy: Arc<Policy>, language: &str) -> Self {
        let lexicon = policy.lexicon(language);
        Self {
            policy,
            lexicon,
            caller: None,
            customer: None,
            emotion: EmotionTracker::default(),
            unrecognized_run: 0,
            wait_since: None,
            intents: Vec::new(),
            last_words: String::new(),
            handed_over: None,
            decisions: Vec::new(),
        }
    }

    /// When and why the caller was handed over, if they were.
    pub fn handover(&self) -> Option<(Duration, &str)> {
        self.handed_over.as_ref().map(|(t, r)| (*t, r.as_str()))
    }

    /// Intents served so far.
    pub fn intents(&self) -> &[String] {
        &self.intents
    }

    /// Feed one event at `now` (since answer).
    pub fn handle(&mut self, now: Duration, event: CoreEvent) -> Vec<CoreAction> {
        if self.handed_over.is_some() {
            return Vec::new();
        }
        match event {
            CoreEvent::Answered { caller } => {
                self.wait_since = Some(now);
                self.customer = caller.as_deref().and_then(|c| {
                    self.policy
                        .customers
                        .iter()
                        .find(|k| k.number == c)
                        .cloned()
                });
                self.caller = caller;
                if self.policy.rules.vip.enabled
                    && self.customer.as_ref().is_some_and(|c| c.tier == "vip")
                {
                    let name = self
                        .customer
                        .as_ref()
                        .map(|c| c.name.clone())
                        .unwrap_or_default();
                    return self.hand_over(now, "vip", None, vec![format!("VIP customer {name}")]);
                }
                vec![CoreAction::Say(self.policy.flow.greeting.clone())]
            }
            CoreEvent::Tick => {
                let rule = &self.policy.rules.wait_timeout;
                match self.wait_since {
                    Some(since)
                        if rule.enabled
                            && now.saturating_sub(since).as_secs_f64() >= rule.seconds =>
                    {
                        let waited = now.saturating_sub(since).as_secs_f64();
                        self.hand_over(
                            now,
                            "wait_timeout",
                            None,
                            vec![format!("waited {waited:.0} s without being served")],
                        )
                    }
                    _ => Vec::new(),
                }
            }
            CoreEvent::AsrUnavailable if self.policy.rules.asr_unavailable.enabled => self
                .hand_over(
                    now,
                    "asr_unavailable",
                    None,
                    vec!["speech recognition overloaded".into()],
                ),
            CoreEvent::AsrUnavailable => Vec::new(),
            CoreEvent::Dtmf(d) => {
                let Some(name) = self.policy.flow.dtmf.get(&d.to_string()).cloned() else {
                    return Vec::new();
                };
                let m = IntentMatch {
                    name,
                    score: 1.0,
                    evidence: vec![format!("pressed {d}")],
                };
                self.on_intent(now, m, false)
            }
            CoreEvent::Utterance(u) => self.on_utterance(now, u),
        }
    }

    fn on_utterance(&mut self, now: Duration, u: UtteranceResult) -> Vec<CoreAction> {
        if u.text.trim().is_empty() {
            return Vec::new();
        }
        self.last_words = u.text.clone();
        if self.wait_since.is_none() {
            self.wait_since = Some(now);
        }
        let matched = best_intent(
            &self.policy.flow.intent,
            &u.text,
            self.policy.flow.match_threshold,
        );
        let repeated = matched
            .as_ref()
            .is_some_and(|m| self.intents.last() == Some(&m.name));
        let r = &self.policy.rules.frustration;
        let cfg = EmotionConfig {
            rate_rise: r.rate_rise,
            loudness_rise_db: r.loudness_rise_db,
        };
        let signals = self.emotion.observe(
            &cfg,
            &self.lexicon,
            &u.text,
            u.words_per_s,
            f64::from(u.loudness_dbfs),
            repeated,
        );
        if !signals.negative.is_empty() || self.emotion.score > 0.0 {
            self.decisions.push(Decision {
                t_s: now.as_secs_f64(),
                kind: "emotion".into(),
                reason: None,
                score: Some(self.emotion.score),
                evidence: self.emotion.reasons.clone(),
            });
        }
        let rules = &self.policy.rules;
        if let Some(m) = &matched {
            let intent = self.policy.flow.intent.iter().find(|i| i.name == m.name);
            if intent.is_some_and(|i| i.handover) && rules.requested.enabled {
                return self.hand_over(
                    now,
                    "requested",
                    Some(m.score),
                    vec![format!("asked for a person: \"{}\"", u.text)],
                );
            }
            if intent.is_some_and(|i| i.urgent) && rules.urgent_intent.enabled {
                return self.hand_over(
                    now,
                    "urgent_intent",
                    Some(m.score),
                    vec![format!("urgent: {} (\"{}\")", m.name, u.text)],
                );
            }
        }
        if rules.negative_words.enabled && self.emotion.negative_weight >= rules.negative_words.hits
        {
            let ev = vec![format!(
                "{} negative words: {}",
                self.emotion.negative_words.len(),
                self.emotion.negative_words.join(", ")
            )];
            return self.hand_over(now, "negative_words", Some(self.emotion.score), ev);
        }
        if rules.frustration.enabled && self.emotion.score >= rules.frustration.threshold {
            let ev = self.emotion.reasons.clone();
            return self.hand_over(now, "frustration", Some(self.emotion.score), ev);
        }
        match matched {
            Some(m) => self.on_intent(now, m, repeated),
            None => {
                self.unrecognized_run += 1;
                self.decisions.push(Decision {
                    t_s: now.as_secs_f64(),
                    kind: "no_intent".into(),
                    reason: None,
                    score: None,
                    evidence: vec![format!("\"{}\"", u.text)],
                });
                if rules.unrecognized.enabled
                    && self.unrecognized_run >= rules.unrecognized.consecutive
                {
                    let n = self.unrecognized_run;
                    return self.hand_over(
                        now,
                        "unrecognized",
                        None,
                        vec![format!("{n} requests in a row not understood")],
                    );
                }
                vec![CoreAction::Say(self.policy.flow.not_understood.clone())]
            }
        }
    }

    fn on_intent(&mut self, now: Duration, m: IntentMatch, _repeated: bool) -> Vec<CoreAction> {
        self.unrecognized_run = 0;
        let intent = self
            .policy
            .flow
            .intent
            .iter()
            .find(|i| i.name == m.name)
            .cloned();
        self.decisions.push(Decision {
            t_s: now.as_secs_f64(),
            kind: "intent".into(),
            reason: Some(m.name.clone()),
            score: Some(m.score),
            evidence: m.evidence.clone(),
        });
        self.intents.push(m.name.clone());
        let Some(intent) = intent else {
            return Vec::new();
        };
        if intent.handover && self.policy.rules.requested.enabled {
            return self.hand_over(now, "requested", Some(m.score), m.evidence);
        }
        if intent.urgent && self.policy.rules.urgent_intent.enabled {
            return self.hand_over(now, "urgent_intent", Some(m.score), m.evidence);
        }
        // Served: the wait clock stops until the caller's next request.
        self.wait_since = None;
        vec![
            CoreAction::Say(intent.reply.clone()),
            CoreAction::Say(self.policy.flow.anything_else.clone()),
        ]
    }

    fn hand_over(
        &mut self,
        now: Duration,
        reason: &str,
        score: Option<f64>,
        evidence: Vec<String>,
    ) -> Vec<CoreAction> {
        self.decisions.push(Decision {
            t_s: now.as_secs_f64(),
            kind: "handover".into(),
            reason: Some(reason.into()),
            score,
            evidence: evidence.clone(),
        });
        self.handed_over = Some((now, reason.to_string()));
        vec![CoreAction::Transfer {
            reason: reason.into(),
            summary: self.summary(now, reason, &evidence),
        }]
    }

    /// The agent's summary: short text (≤ 25 words) and data.
    pub fn summary(&self, now: Duration, reason: &str, evidence: &[String]) -> Value {
        let who = match &self.customer {
            Some(c) if c.tier == "vip" => format!("VIP {}", c.name),
            Some(c) => c.name.clone(),
            None => self
                .caller
                .clone()
                .unwrap_or_else(|| "Anonymous caller".into()),
        };
        let wants = self
            .intents
            .last()
            .cloned()
            .unwrap_or_else(|| "unknown request".into());
        let waited = now.as_secs_f64();
        let words: Vec<&str> = self
            .last_words
            .split_whitespace()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let mut text = format!(
            "{who}, {wants}, {} — upset {:.0}%, waited {:.0}s. Said: \"{}\"",
            reason.replace('_', " "),
            self.emotion.score * 100.0,
            waited,
            words.join(" ")
        );
        let mut ws: Vec<&str> = text.split_whitespace().collect();
        if ws.len() > 25 {
            ws.truncate(25);
            text = ws.join(" ") + "…\"";
        }
        json!({
            "text": text,
            "caller": self.caller,
            "customer": self.customer,
            "intents": self.intents,
            "last_words": self.last_words,
            "frustration": self.emotion.score,
            "reasons": if self.emotion.reasons.is_empty() { evidence.to_vec() } else { self.emotion.reasons.clone() },
            "evidence": evidence,
            "waited_s": (waited * 10.0).round() / 10.0,
            "reason": reason,
        })
    }
}
