//! The decision core: per call, events in (with the time), actions out. It
//! serves intents, tracks the caller's emotion and wait, and decides when —
//! and why — the caller goes to a human. No I/O and no clock inside.

use super::intents::{understand, IntentMatch, SemanticSettings, Understanding};
use super::policy::{Customer, Phrases, Policy};
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
    /// The caller started talking (voice activity, before any transcript):
    /// a caller who talks is not silent, however long recognition takes.
    SpeechStarted,
    /// A key press.
    Dtmf(char),
    /// Speech recognition overloaded or failing.
    AsrUnavailable,
    /// The answer of an intent's webhook: the text to say, or why there is none.
    WebhookReply {
        /// The intent it was asked for.
        intent: String,
        /// Text to say, or the failure.
        reply: Result<String, String>,
    },
    /// Nobody took the hand-over: the caller is back with the bot.
    TransferFailed {
        /// Every agent tried, with what happened.
        tried: Vec<String>,
    },
    /// Time passes.
    Tick,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum CoreAction {
    /// Speak (TTS) to the caller.
    Say(String),
    /// Say goodbye (already queued as `Say`) and end the call once it is heard.
    HangUp {
        /// Why: `caller_done` (said goodbye) or `caller_silent`.
        reason: String,
    },
    /// Ask the intent's webhook what to say (`POST url` with `body`); answer
    /// with [`CoreEvent::WebhookReply`]. The core enforces `timeout` itself.
    CallWebhook {
        /// The intent.
        intent: String,
        /// Where to POST.
        url: String,
        /// How long the caller may wait.
        timeout: Duration,
        /// `caller`, `intent`, `transcript`, `language`.
        body: Value,
    },
    /// Hand the caller to a human.
    Transfer {
        /// Reason code.
        reason: String,
        /// Summary for the agent.
        summary: Value,
    },
}

/// What kind of decision the core took (`kind` in replay reports,
/// `decision` in `events.jsonl`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// A request was understood and served.
    Intent,
    /// Nothing understood in what the caller said.
    NoIntent,
    /// Between two requests: the caller is asked which.
    Confirm,
    /// The caller's frustration was scored.
    Emotion,
    /// The call's language was settled from the caller's words.
    Language,
    /// The caller is done (or silent): the bot says goodbye.
    Goodbye,
    /// The caller goes to a human.
    Handover,
    /// Nobody took the hand-over.
    TransferFailed,
    /// A callback number was taken.
    Callback,
    /// A kind this version does not know (a newer recording).
    #[serde(other)]
    #[default]
    Other,
}

impl DecisionKind {
    /// The name as written (`no_intent`, `handover`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Intent => "intent",
            DecisionKind::NoIntent => "no_intent",
            DecisionKind::Confirm => "confirm",
            DecisionKind::Emotion => "emotion",
            DecisionKind::Language => "language",
            DecisionKind::Goodbye => "goodbye",
            DecisionKind::Handover => "handover",
            DecisionKind::TransferFailed => "transfer_failed",
            DecisionKind::Callback => "callback",
            DecisionKind::Other => "other",
        }
    }
}

/// One decision with its evidence, as logged and replayed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Decision {
    /// Seconds since answer.
    pub t_s: f64,
    /// What was decided.
    pub kind: DecisionKind,
    /// Reason code or intent name.
    pub reason: Option<String>,
    /// Intent or frustration score.
    pub score: Option<f64>,
    /// Why, in words.
    pub evidence: Vec<String>,
}

/// The answer to "is this about A, or about B?": whatever the caller now
/// clearly asks for wins; otherwise the closer of the two by keywords or
/// meaning, or an ordinal ("the first", "第二个"); else still not understood.
fn resolve_confirmation(
    understood: Understanding,
    first: IntentMatch,
    second: IntentMatch,
    text: &str,
) -> Understanding {
    let pick = |mut m: IntentMatch, why: &str| {
        m.evidence.push(why.to_string());
        Understanding::Intent(m)
    };
    let t = text.to_lowercase();
    let has = |words: &[&str]| {
        crate::emotion::tokens(&t)
            .iter()
            .any(|w| words.contains(&w.as_str()))
            || words.iter().any(|w| !w.is_ascii() && t.contains(w))
    };
    match understood {
        Understanding::Intent(m) => Understanding::Intent(m),
        _ if has(&["first", "former", "第一个", "第一", "前面那个", "前者"]) => {
            pick(first, "answered: the first")
        }
        _ if has(&["second", "latter", "第二个", "第二", "后面那个", "后者"]) => {
            pick(second, "answered: the second")
        }
        // Still between two: the question did not help; no second one.
        Understanding::Unsure {
            first: a,
            second: b,
        } => Understanding::Nothing {
            evidence: vec![format!("still unsure: {} or {}", a.name, b.name)],
        },
        nothing => nothing,
    }
}

/// A call's decision state.
#[derive(Debug)]
pub struct CallCore {
    policy: Arc<Policy>,
    lexicon: Lexicon,
    language: String,
    phrases: Phrases,
    /// A webhook asked and not answered: intent and deadline.
    webhook_pending: Option<(String, Duration)>,
    caller: Option<String>,
    customer: Option<Customer>,
    emotion: EmotionTracker,
    unrecognized_run: u32,
    wait_since: Option<Duration>,
    intents: Vec<String>,
    last_words: String,
    handed_over: Option<(Duration, String)>,
    /// A hand-over is in progress: the agent side decides, the bot is quiet.
    transferring: bool,
    /// A hand-over failed: no second attempt, a callback instead.
    transfer_failed: bool,
    /// Collecting a callback number (digits so far); `None` when not asking.
    callback_digits: Option<String>,
    /// The number the caller gave for a callback.
    callback_number: Option<String>,
    /// Since when the bot has been waiting for "anything else?".
    served_at: Option<Duration>,
    /// The silence clock is paused: the caller is talking and the words are
    /// not transcribed yet.
    silence_paused: bool,
    /// The bot asked which of two intents the caller means (1 / 2).
    confirming: Option<(IntentMatch, IntentMatch)>,
    /// The call's language is taken from the first utterance (`auto`).
    language_from_speech: bool,
    ended: bool,
    /// Every decision so far.
    pub decisions: Vec<Decision>,
}

impl CallCore {
    /// A core for one call under `policy`, for callers speaking `language`.
    pub fn new(policy: Arc<Policy>, language: &str) -> Self {
        let lexicon = policy.lexicon(language);
        let phrases = policy.flow.phrases(language);
        Self {
            policy,
            lexicon,
            language: language.to_string(),
            phrases,
            webhook_pending: None,
            caller: None,
            customer: None,
            emotion: EmotionTracker::default(),
            unrecognized_run: 0,
            wait_since: None,
            intents: Vec::new(),
            last_words: String::new(),
            handed_over: None,
            transferring: false,
            transfer_failed: false,
            callback_digits: None,
            callback_number: None,
            served_at: None,
            silence_paused: false,
            confirming: None,
            language_from_speech: language == "auto",
            ended: false,
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
        if let CoreEvent::TransferFailed { tried } = &event {
            return self.on_transfer_failed(now, tried.clone());
        }
        if self.transferring || self.ended {
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
                vec![CoreAction::Say(self.phrases.greeting.clone())]
            }
            CoreEvent::WebhookReply { intent, reply } => {
                match &self.webhook_pending {
                    Some((pending, _)) if *pending == intent => {}
                    _ => return Vec::new(), // late or superseded: already decided
                }
                self.webhook_pending = None;
                match reply {
                    Ok(text) => self.served(now, text),
                    Err(e) => self.hand_over(
                        now,
                        "webhook_failed",
                        None,
                        vec![format!("the {intent} service failed: {e}")],
                    ),
                }
            }
            CoreEvent::Tick => {
                if let Some((intent, deadline)) = self.webhook_pending.clone() {
                    if now >= deadline {
                        self.webhook_pending = None;
                        return self.hand_over(
                            now,
                            "webhook_failed",
                            None,
                            vec![format!("the {intent} service did not answer in time")],
                        );
                    }
                }
                if let Some(since) = self.served_at.filter(|_| self.callback_digits.is_none()) {
                    if now.saturating_sub(since).as_secs_f64() >= self.policy.flow.silence_goodbye_s
                    {
                        return self.end(now, "caller_silent");
                    }
                }
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
            CoreEvent::Dtmf(d) if self.callback_digits.is_some() => self.callback_key(now, d),
            CoreEvent::Dtmf(d @ ('1' | '2')) if self.confirming.is_some() => {
                let Some((first, second)) = self.confirming.take() else {
                    return Vec::new();
                };
                let mut m = if d == '1' { first } else { second };
                m.evidence.push(format!("confirmed with {d}"));
                self.on_intent(now, m, false)
            }
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
            CoreEvent::SpeechStarted => {
                if self.served_at.take().is_some() {
                    self.silence_paused = true;
                }
                Vec::new()
            }
            CoreEvent::TransferFailed { .. } => Vec::new(),
        }
    }

    fn on_utterance(&mut self, now: Duration, u: UtteranceResult) -> Vec<CoreAction> {
        if u.text.trim().is_empty() {
            // Noise, not words: the silence clock starts again from here.
            if std::mem::take(&mut self.silence_paused) {
                self.served_at = Some(now);
            }
            return Vec::new();
        }
        self.silence_paused = false;
        self.last_words = u.text.clone();
        self.served_at = None;
        if self.callback_digits.is_some() {
            let digits = spoken_digits(&u.text);
            if digits.len() >= 7 {
                return self.take_callback(now, digits, "speech");
            }
        }
        if self.wait_since.is_none() {
            self.wait_since = Some(now);
        }
        if std::mem::take(&mut self.language_from_speech) {
            self.adopt_language(&u.language);
        }
        let flow = &self.policy.flow;
        let settings = SemanticSettings {
            match_threshold: flow.match_threshold,
            threshold: flow.semantic_threshold,
            margin: flow.semantic_margin,
        };
        let mut understood = understand(
            &flow.intent,
            self.policy.semantic.as_deref(),
            settings,
            &u.text,
            u.embedding.as_deref(),
        );
        if let Some((first, second)) = self.confirming.take() {
            understood = resolve_confirmation(understood, first, second, &u.text);
        } else if let Understanding::Unsure { first, second } = &understood {
            // Ask only a caller the bot has been following: in a run of
            // not-understood turns, unsure is one more of them.
            if self.unrecognized_run > 0 {
                understood = Understanding::Nothing {
                    evidence: vec![format!("unsure: {} or {}", first.name, second.name)],
                };
            }
        }
        let matched = match &understood {
            Understanding::Intent(m) => Some(m.clone()),
            _ => None,
        };
        let repeated = matched
            .as_ref()
            .is_some_and(|m| self.intents.last() == Some(&m.name));
        let r = &self.policy.rules.frustration;
        let cfg = EmotionConfig {
            rate_rise: r.rate_rise,
            rate_alone: r.rate_alone,
            loudness_rise_db: r.loudness_rise_db,
        };
        let not_understood =
            matches!(understood, Understanding::Nothing { .. }) && self.unrecognized_run >= 1;
        let signals = self.emotion.observe(
            &cfg,
            &self.lexicon,
            &u.text,
            u.syllables_per_s,
            u.voiced_s,
            f64::from(u.loudness_dbfs),
            repeated,
            not_understood,
        );
        if !signals.negative.is_empty() || self.emotion.score > 0.0 {
            self.decisions.push(Decision {
                t_s: now.as_secs_f64(),
                kind: DecisionKind::Emotion,
                reason: None,
                score: Some(self.emotion.score),
                evidence: self.emotion.reasons.clone(),
            });
        }
        let rules = &self.policy.rules;
        // Two negative words hand over as such, even when the same words
        // also name an urgent request ("I want to complain, this is awful").
        if rules.negative_words.enabled && self.emotion.negative_weight >= rules.negative_words.hits
        {
            let ev = vec![format!(
                "{} negative words: {}",
                self.emotion.negative_words.len(),
                self.emotion.negative_words.join(", ")
            )];
            return self.hand_over(now, "negative_words", Some(self.emotion.score), ev);
        }
        if let Some(m) = &matched {
            let intent = self.policy.flow.intent.iter().find(|i| i.name == m.name);
            if intent.is_some_and(|i| i.handover) && rules.requested.enabled {
                let mut ev = vec![format!("asked for a person: \"{}\"", u.text)];
                ev.extend(m.evidence.iter().cloned());
                return self.hand_over(now, "requested", Some(m.score), ev);
            }
            if intent.is_some_and(|i| i.urgent) && rules.urgent_intent.enabled {
                let mut ev = vec![format!("urgent: {} (\"{}\")", m.name, u.text)];
                ev.extend(m.evidence.iter().cloned());
                return self.hand_over(now, "urgent_intent", Some(m.score), ev);
            }
        }
        // The third request in a row not understood is that, whatever else
        // adds to the frustration score.
        let third_unrecognized = matches!(understood, Understanding::Nothing { .. })
            && rules.unrecognized.enabled
            && self.unrecognized_run + 1 >= rules.unrecognized.consecutive;
        if !third_unrecognized
            && rules.frustration.enabled
            && self.emotion.score >= rules.frustration.threshold
        {
            let ev = self.emotion.reasons.clone();
            return self.hand_over(now, "frustration", Some(self.emotion.score), ev);
        }
        match understood {
            Understanding::Intent(m) => self.on_intent(now, m, repeated),
            Understanding::Unsure { first, second } => {
                // One short question instead of "not understood": it does not
                // count toward `unrecognized` unless the answer leaves it open.
                let phrase = self
                    .phrases
                    .confirm
                    .replace("{first}", &self.topic(&first.name))
                    .replace("{second}", &self.topic(&second.name));
                self.decisions.push(Decision {
                    t_s: now.as_secs_f64(),
                    kind: DecisionKind::Confirm,
                    reason: Some(format!("{} or {}", first.name, second.name)),
                    score: Some(first.score),
                    evidence: vec![
                        format!("\"{}\"", u.text),
                        format!("{} {:.2}", first.name, first.score),
                        format!("{} {:.2}", second.name, second.score),
                    ],
                });
                self.confirming = Some((first, second));
                vec![CoreAction::Say(phrase)]
            }
            Understanding::Nothing { evidence } => {
                self.unrecognized_run += 1;
                let mut ev = vec![format!("\"{}\"", u.text)];
                ev.extend(evidence);
                self.decisions.push(Decision {
                    t_s: now.as_secs_f64(),
                    kind: DecisionKind::NoIntent,
                    reason: None,
                    score: None,
                    evidence: ev,
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
                vec![CoreAction::Say(self.phrases.not_understood.clone())]
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
            kind: DecisionKind::Intent,
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
        if intent.name == "goodbye" {
            return self.end(now, "caller_done");
        }
        if let Some(hook) = &intent.webhook {
            // The caller is not served until the service answers: the wait
            // clock runs on, and the deadline is the core's, not the shell's.
            let timeout = Duration::from_millis(hook.timeout_ms);
            self.webhook_pending = Some((intent.name.clone(), now + timeout));
            return vec![CoreAction::CallWebhook {
                intent: intent.name.clone(),
                url: hook.url.clone(),
                timeout,
                body: json!({
                    "caller": self.caller,
                    "intent": intent.name,
                    "transcript": self.last_words,
                    "language": self.language,
                }),
            }];
        }
        self.served(now, intent.reply_in(&self.language).to_string())
    }

    /// How the bot names an intent to this caller.
    fn topic(&self, intent: &str) -> String {
        self.topic_in(intent, &self.language)
    }

    /// The call's language was `auto`: take the one the first utterance was
    /// recognised in, with its lexicon and phrases.
    fn adopt_language(&mut self, language: &str) {
        if language.is_empty() || language == "auto" {
            return;
        }
        self.language = language.to_string();
        self.lexicon = self.policy.lexicon(language);
        self.phrases = self.policy.flow.phrases(language);
        self.decisions.push(Decision {
            t_s: 0.0,
            kind: DecisionKind::Language,
            reason: Some(language.to_string()),
            score: None,
            evidence: vec![format!("detected from the first utterance: {language}")],
        });
    }

    /// The caller's language (as configured, or detected).
    pub fn language(&self) -> &str {
        &self.language
    }

    /// The caller got their answer: the wait clock stops until their next request.
    fn served(&mut self, now: Duration, reply: String) -> Vec<CoreAction> {
        self.wait_since = None;
        self.served_at = Some(now);
        vec![
            CoreAction::Say(reply),
            CoreAction::Say(self.phrases.anything_else.clone()),
        ]
    }

    /// The caller is done: goodbye, then hang up.
    fn end(&mut self, now: Duration, reason: &str) -> Vec<CoreAction> {
        self.ended = true;
        self.decisions.push(Decision {
            t_s: now.as_secs_f64(),
            kind: DecisionKind::Goodbye,
            reason: Some(reason.into()),
            score: None,
            evidence: vec![],
        });
        vec![
            CoreAction::Say(self.phrases.goodbye.clone()),
            CoreAction::HangUp {
                reason: reason.into(),
            },
        ]
    }

    /// Whether the bot ended the call (goodbye).
    pub fn ended(&self) -> bool {
        self.ended
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
            kind: DecisionKind::Handover,
            reason: Some(reason.into()),
            score,
            evidence: evidence.clone(),
        });
        if self.transfer_failed {
            // Nobody could take this caller a moment ago: keep them with the
            // bot and make sure a callback is on its way instead of ringing
            // the same busy agents again.
            self.wait_since = None;
            self.served_at = Some(now);
            return match (&self.callback_number, &self.callback_digits) {
                (None, None) => {
                    self.callback_digits = Some(String::new());
                    vec![CoreAction::Say(self.phrases.callback.clone())]
                }
                _ => Vec::new(),
            };
        }
        self.handed_over = Some((now, reason.to_string()));
        self.transferring = true;
        vec![
            CoreAction::Say(self.phrases.connecting.clone()),
            CoreAction::Transfer {
                reason: reason.into(),
                summary: self.summary(now, reason, &evidence),
            },
        ]
    }

    fn on_transfer_failed(&mut self, now: Duration, tried: Vec<String>) -> Vec<CoreAction> {
        if !self.transferring {
            return Vec::new();
        }
        self.transferring = false;
        self.transfer_failed = true;
        self.wait_since = None;
        self.served_at = None;
        self.callback_digits = Some(String::new());
        self.decisions.push(Decision {
            t_s: now.as_secs_f64(),
            kind: DecisionKind::TransferFailed,
            reason: self.handed_over.as_ref().map(|(_, r)| r.clone()),
            score: None,
            evidence: tried,
        });
        vec![
            CoreAction::Say(self.phrases.all_busy.clone()),
            CoreAction::Say(self.phrases.callback.clone()),
        ]
    }

    fn callback_key(&mut self, now: Duration, key: char) -> Vec<CoreAction> {
        let digits = self.callback_digits.get_or_insert_with(String::new);
        match key {
            '#' if digits.len() >= 3 => {
                let number = std::mem::take(digits);
                self.take_callback(now, number, "dtmf")
            }
            '#' => Vec::new(),
            '*' => {
                digits.clear();
                Vec::new()
            }
            d if d.is_ascii_digit() && digits.len() < 20 => {
                digits.push(d);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn take_callback(&mut self, now: Duration, number: String, how: &str) -> Vec<CoreAction> {
        self.callback_digits = None;
        self.callback_number = Some(number.clone());
        self.decisions.push(Decision {
            t_s: now.as_secs_f64(),
            kind: DecisionKind::Callback,
            reason: Some(number),
            score: None,
            evidence: vec![format!("given by {how}")],
        });
        self.served_at = Some(now);
        vec![
            CoreAction::Say(self.phrases.callback_thanks.clone()),
            CoreAction::Say(self.phrases.anything_else.clone()),
        ]
    }

    /// Whether the caller's keys are a number being typed (so `#` ends the
    /// number, not the call).
    pub fn collecting_digits(&self) -> bool {
        self.callback_digits.is_some()
    }

    /// The callback number the caller gave, if any.
    pub fn callback_number(&self) -> Option<&str> {
        self.callback_number.as_deref()
    }

    /// The agent's summary: short text (≤ 25 words) and data.
    pub fn summary(&self, now: Duration, reason: &str, evidence: &[String]) -> Value {
        let waited = now.as_secs_f64();
        let texts = json!({
            "en": self.summary_en(waited, reason),
            "zh": self.summary_zh(waited, reason),
        });
        // The caller's language when the bot has a summary in it, else English.
        let text = texts
            .get(self.language.as_str())
            .unwrap_or(&texts["en"])
            .clone();
        json!({
            "text": text,
            "texts": texts,
            "language": self.language,
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

    fn summary_en(&self, waited: f64, reason: &str) -> String {
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
            "{who}, {wants}, {} — upset {:.0}%, waited {:.0} seconds. Said: \"{}\"",
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
        text
    }

    /// The same summary in Mandarin, for Chinese-speaking agents.
    fn summary_zh(&self, waited: f64, reason: &str) -> String {
        let who = match &self.customer {
            Some(c) if c.tier == "vip" => format!("VIP客户{}", c.name),
            Some(c) => c.name.clone(),
            None => self.caller.clone().unwrap_or_else(|| "匿名来电".into()),
        };
        let wants = self
            .intents
            .last()
            .map(|i| self.topic_in(i, "zh"))
            .unwrap_or_else(|| "未知需求".into());
        let why = match reason {
            "negative_words" => "负面用语",
            "frustration" => "情绪激动",
            "unrecognized" => "多次未能识别",
            "urgent_intent" => "紧急事项",
            "vip" => "VIP客户",
            "requested" => "要求人工",
            "wait_timeout" => "等待超时",
            "asr_unavailable" => "语音识别不可用",
            "webhook_failed" => "业务查询失败",
            other => other,
        };
        let chars: Vec<char> = self.last_words.chars().collect();
        let said: String = chars[chars.len().saturating_sub(30)..].iter().collect();
        format!(
            "{who}，{wants}，{why}——不满程度{:.0}%，已等待{:.0}秒。原话：“{said}”",
            self.emotion.score * 100.0,
            waited
        )
    }

    fn topic_in(&self, intent: &str, language: &str) -> String {
        self.policy
            .flow
            .intent
            .iter()
            .find(|i| i.name == intent)
            .map(|i| i.topic_in(language))
            .unwrap_or_else(|| intent.replace('_', " "))
    }
}

/// The digits in `text`, spoken ("five five five, oh one") or written.
pub fn spoken_digits(text: &str) -> String {
    const WORDS: &[(&str, char)] = &[
        ("zero", '0'),
        ("oh", '0'),
        ("o", '0'),
        ("one", '1'),
        ("two", '2'),
        ("to", '2'),
        ("too", '2'),
        ("three", '3'),
        ("four", '4'),
        ("for", '4'),
        ("five", '5'),
        ("six", '6'),
        ("seven", '7'),
        ("eight", '8'),
        ("nine", '9'),
        ("零", '0'),
        ("一", '1'),
        ("幺", '1'),
        ("二", '2'),
        ("两", '2'),
        ("三", '3'),
        ("四", '4'),
        ("五", '5'),
        ("六", '6'),
        ("七", '7'),
        ("八", '8'),
        ("九", '9'),
    ];
    let mut out = String::new();
    for word in text
        .to_lowercase()
        .split(|c: char| c.is_whitespace() || c == ',' || c == '.' || c == '-')
    {
        if word.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(word);
            continue;
        }
        if let Some((_, d)) = WORDS.iter().find(|(w, _)| *w == word) {
            out.push(*d);
            continue;
        }
        // CJK digits run together; written digits inside words ("+1555…").
        for c in word.chars() {
            if c.is_ascii_digit() {
                out.push(c);
            } else if let Some((_, d)) = WORDS
                .iter()
                .find(|(w, _)| w.chars().count() == 1 && w.starts_with(c) && !c.is_ascii())
            {
                out.push(*d);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::speech::pipeline::UtteranceResult;

    fn policy() -> Arc<Policy> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sip-config");
        Arc::new(crate::config::load_policy(&dir).expect("shipped policy"))
    }

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    fn said(text: &str, wps: f64) -> CoreEvent {
        CoreEvent::Utterance(UtteranceResult {
            start_s: 0.0,
            end_s: 0.0,
            text: text.into(),
            words_per_s: wps,
            syllables_per_s: wps * 1.4,
            loudness_dbfs: -25.0,
            voiced_s: 2.0,
            forced_cut: false,
            language: "en".into(),
            closed_at_s: 0.0,
            embedding: None,
        })
    }

    fn transfer_reason(actions: &[CoreAction]) -> Option<String> {
        actions.iter().find_map(|a| match a {
            CoreAction::Transfer { reason, .. } => Some(reason.clone()),
            _ => None,
        })
    }

    fn call(caller: Option<&str>) -> CallCore {
        let mut c = CallCore::new(policy(), "en");
        c.handle(
            Duration::ZERO,
            CoreEvent::Answered {
                caller: caller.map(String::from),
            },
        );
        c
    }

    fn with_billing_webhook() -> CallCore {
        let mut p = (*policy()).clone();
        for i in &mut p.flow.intent {
            if i.name == "billing" {
                i.webhook = Some(crate::call::intents::Webhook {
                    url: "http://127.0.0.1:9/balance".into(),
                    timeout_ms: 1500,
                });
            }
        }
        let mut c = CallCore::new(Arc::new(p), "en");
        c.handle(
            Duration::ZERO,
            CoreEvent::Answered {
                caller: Some("+15550100".into()),
            },
        );
        c
    }

    #[test]
    fn a_webhook_answer_is_spoken_and_serves_the_caller() {
        let mut c = with_billing_webhook();
        let a = c.handle(s(3.0), said("what is my balance", 3.0));
        let Some(CoreAction::CallWebhook {
            intent,
            timeout,
            body,
            ..
        }) = a.first()
        else {
            panic!("expected a webhook call, got {a:?}");
        };
        assert_eq!(intent, "billing");
        assert_eq!(*timeout, Duration::from_millis(1500));
        assert_eq!(body["caller"], "+15550100");
        assert_eq!(body["transcript"], "what is my balance");
        assert!(
            c.handle(s(4.0), CoreEvent::Tick).is_empty(),
            "still waiting"
        );
        let a = c.handle(
            s(4.2),
            CoreEvent::WebhookReply {
                intent: "billing".into(),
                reply: Ok("You owe twelve dollars.".into()),
            },
        );
        assert_eq!(
            a.first(),
            Some(&CoreAction::Say("You owe twelve dollars.".into()))
        );
        assert_eq!(transfer_reason(&c.handle(s(5.0), CoreEvent::Tick)), None);
        assert_eq!(c.handover(), None);
    }

    #[test]
    fn a_failed_or_silent_webhook_hands_the_caller_to_a_human() {
        let mut c = with_billing_webhook();
        c.handle(s(3.0), said("what is my balance", 3.0));
        assert_eq!(transfer_reason(&c.handle(s(4.49), CoreEvent::Tick)), None);
        assert_eq!(
            transfer_reason(&c.handle(s(4.5), CoreEvent::Tick)).as_deref(),
            Some("webhook_failed"),
            "timeout is the core's deadline"
        );
        assert!(
            c.handle(
                s(4.6),
                CoreEvent::WebhookReply {
                    intent: "billing".into(),
                    reply: Ok("late".into())
                }
            )
            .is_empty(),
            "a late answer changes nothing"
        );
        let mut c = with_billing_webhook();
        c.handle(s(3.0), said("what is my balance", 3.0));
        let a = c.handle(
            s(3.2),
            CoreEvent::WebhookReply {
                intent: "billing".into(),
                reply: Err("HTTP 500".into()),
            },
        );
        assert_eq!(transfer_reason(&a).as_deref(), Some("webhook_failed"));
        let Some(CoreAction::Transfer { summary, .. }) =
            a.iter().find(|a| matches!(a, CoreAction::Transfer { .. }))
        else {
            panic!("{a:?}")
        };
        assert!(summary["evidence"][0]
            .as_str()
            .unwrap_or("")
            .contains("HTTP 500"));
    }

    #[test]
    fn chinese_callers_hear_chinese_phrases() {
        let mut c = CallCore::new(policy(), "zh");
        let a = c.handle(Duration::ZERO, CoreEvent::Answered { caller: None });
        assert_eq!(
            a,
            vec![CoreAction::Say("您好，请问有什么可以帮您？".into())]
        );
        let a = c.handle(s(3.0), said("我想查一下我的账单", 3.0));
        assert!(
            matches!(&a[0], CoreAction::Say(t) if t.contains("余额")),
            "{a:?}"
        );
        assert_eq!(c.intents(), ["billing"]);
        let a = c.handle(s(8.0), said("这太离谱了，我很生气，我要投诉", 3.0));
        assert_eq!(transfer_reason(&a).as_deref(), Some("negative_words"));
    }

    #[test]
    fn a_failed_transfer_brings_the_caller_back_and_takes_a_callback_number() {
        let mut c = call(Some("+15550123"));
        let a = c.handle(s(2.0), CoreEvent::Dtmf('0'));
        assert_eq!(
            a.first(),
            Some(&CoreAction::Say(
                "Please hold, I am connecting you to a colleague.".into()
            ))
        );
        assert_eq!(transfer_reason(&a).as_deref(), Some("requested"));
        assert!(
            c.handle(s(3.0), said("hello?", 2.0)).is_empty(),
            "agent side decides"
        );
        let a = c.handle(
            s(30.0),
            CoreEvent::TransferFailed {
                tried: vec!["sip:1001@pbx: busy".into()],
            },
        );
        assert!(
            matches!(&a[..], [CoreAction::Say(busy), CoreAction::Say(cb)] if busy.contains("busy") && cb.contains("call you back")),
            "{a:?}"
        );
        for d in "555*5550123".chars() {
            assert!(c.handle(s(31.0), CoreEvent::Dtmf(d)).is_empty(), "{d}");
        }
        let a = c.handle(s(33.0), CoreEvent::Dtmf('#'));
        assert!(matches!(&a[0], CoreAction::Say(t) if t.contains("call you back at that number")));
        assert_eq!(c.callback_number(), Some("5550123"), "* starts over");
        assert!(c
            .decisions
            .iter()
            .any(|d| d.kind == DecisionKind::TransferFailed));
        // Back with the bot: served as usual, never rung through again.
        let a = c.handle(s(35.0), said("what is my balance", 3.0));
        assert!(matches!(&a[0], CoreAction::Say(t) if t.contains("balance")));
        let a = c.handle(s(40.0), said("this is ridiculous and I am angry", 3.0));
        assert_eq!(transfer_reason(&a), None);
        assert_eq!(
            c.handle(s(80.0), CoreEvent::Tick).len(),
            2,
            "silent: goodbye"
        );
    }

    #[test]
    fn a_callback_number_can_be_spoken() {
        assert_eq!(spoken_digits("five five five, oh one two three"), "5550123");
        assert_eq!(spoken_digits("my number is 555 0199"), "5550199");
        assert_eq!(spoken_digits("五五五零一二三"), "5550123");
        let mut c = call(None);
        c.handle(s(1.0), CoreEvent::Dtmf('0'));
        c.handle(s(20.0), CoreEvent::TransferFailed { tried: vec![] });
        let a = c.handle(
            s(25.0),
            said("It is five five five, oh one nine nine.", 3.0),
        );
        assert!(matches!(&a[0], CoreAction::Say(t) if t.contains("call you back")));
        assert_eq!(c.callback_number(), Some("5550199"));
    }

    #[test]
    fn a_caller_who_only_says_hello_is_handed_over_at_15_s() {
        let mut c = call(None);
        assert!(c
            .handle(s(2.0), said("Hello?", 2.0))
            .iter()
            .all(|a| matches!(a, CoreAction::Say(_))));
        assert_eq!(transfer_reason(&c.handle(s(14.98), CoreEvent::Tick)), None);
        assert_eq!(
            transfer_reason(&c.handle(s(15.0), CoreEvent::Tick)).as_deref(),
            Some("wait_timeout")
        );
        assert_eq!(c.handover().map(|h| h.0), Some(s(15.0)));
        assert!(
            c.handle(s(16.0), said("please help", 2.0)).is_empty(),
            "nothing after hand-over"
        );
    }

    #[test]
    fn the_wait_clock_stops_while_served_and_restarts_with_the_next_request() {
        let mut c = call(None);
        c.handle(s(4.0), said("I would like to check my bill", 3.0));
        assert_eq!(
            transfer_reason(&c.handle(s(11.9), CoreEvent::Tick)),
            None,
            "served: no wait"
        );
        c.handle(s(11.95), said("blue elephants dance on tuesday", 3.0));
        assert_eq!(transfer_reason(&c.handle(s(26.9), CoreEvent::Tick)), None);
        assert_eq!(
            transfer_reason(&c.handle(s(26.95), CoreEvent::Tick)).as_deref(),
            Some("wait_timeout")
        );
    }

    #[test]
    fn vip_requested_urgent_and_asr_unavailable_go_straight_to_a_human() {
        let mut c = CallCore::new(policy(), "en");
        let a = c.handle(
            Duration::ZERO,
            CoreEvent::Answered {
                caller: Some("+15550199".into()),
            },
        );
        assert_eq!(transfer_reason(&a).as_deref(), Some("vip"));
        let mut c = call(Some("+15550123"));
        assert_eq!(
            transfer_reason(&c.handle(s(1.0), CoreEvent::Dtmf('0'))).as_deref(),
            Some("requested")
        );
        let mut c = call(None);
        assert_eq!(
            transfer_reason(&c.handle(s(3.0), said("can I talk to an agent", 3.0))).as_deref(),
            Some("requested")
        );
        let mut c = call(None);
        assert_eq!(
            transfer_reason(&c.handle(s(3.0), said("my card was declined", 3.0))).as_deref(),
            Some("urgent_intent")
        );
        let mut c = call(None);
        assert_eq!(
            transfer_reason(&c.handle(s(3.0), CoreEvent::AsrUnavailable)).as_deref(),
            Some("asr_unavailable")
        );
    }

    #[test]
    fn two_negative_words_across_the_call_but_not_negated_ones() {
        let mut c = call(None);
        assert_eq!(
            transfer_reason(
                &c.handle(s(3.0), said("where is my package, this is ridiculous", 3.0))
            ),
            None
        );
        assert_eq!(
            transfer_reason(&c.handle(s(6.0), said("it is not bad, thanks for that", 3.0))),
            None,
            "negated"
        );
        assert_eq!(
            transfer_reason(&c.handle(s(9.0), said("I am so angry", 3.0))).as_deref(),
            Some("negative_words")
        );
    }

    #[test]
    fn three_unrecognised_in_a_row_and_an_intent_resets_the_count() {
        let mut c = call(None);
        c.handle(s(2.0), said("blue elephants dance", 3.0));
        c.handle(s(4.0), said("the weather is lovely", 3.0));
        c.handle(s(6.0), said("check my bill please", 3.0));
        c.handle(s(8.0), said("my cat likes the piano", 3.0));
        assert_eq!(
            transfer_reason(&c.handle(s(10.0), said("purple monkey", 3.0))),
            None
        );
        assert_eq!(
            transfer_reason(&c.handle(s(12.0), said("green ideas sleep", 3.0))).as_deref(),
            Some("unrecognized")
        );
    }

    #[test]
    fn frustration_combines_signals_but_a_fast_talker_is_not_frustrated() {
        let mut c = call(None);
        c.handle(s(3.0), said("I need to change my address", 3.0));
        let a = c.handle(
            s(8.0),
            said("change my address today, this is terrible", 4.1),
        );
        assert_eq!(transfer_reason(&a).as_deref(), Some("frustration"));
        let mut fast = call(None);
        fast.handle(s(3.0), said("I need to change my address", 5.0));
        let a = fast.handle(s(8.0), said("the new address is twelve oak street", 5.2));
        assert_eq!(transfer_reason(&a), None);
    }

    /// A policy whose semantic index is three hand-made directions: bill,
    /// order, off topic — enough to drive the core without the encoder.
    fn semantic_call() -> CallCore {
        use crate::call::semantic::{Example, SemanticIndex, OFF_TOPIC};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sip-config");
        let mut p = crate::config::load_policy(&dir).expect("shipped policy");
        let ex = |intent: &str, v: [f32; 3]| Example {
            intent: intent.into(),
            text: format!("{intent} example"),
            vector: unit(v),
        };
        p.semantic = Some(Arc::new(SemanticIndex::new(vec![
            ex("billing", [1.0, 0.0, 0.0]),
            ex("tracking", [0.0, 1.0, 0.0]),
            ex("payment_failure", [0.0, 0.0, 1.0]),
            ex(OFF_TOPIC, [-1.0, -1.0, 0.0]),
        ])));
        p.flow.semantic_threshold = 0.6;
        p.flow.semantic_margin = 0.05;
        let mut c = CallCore::new(Arc::new(p), "en");
        c.handle(Duration::ZERO, CoreEvent::Answered { caller: None });
        c
    }

    fn unit(v: [f32; 3]) -> Arc<[f32]> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect::<Vec<f32>>().into()
    }

    fn meant(text: &str, v: [f32; 3]) -> CoreEvent {
        let CoreEvent::Utterance(mut u) = said(text, 3.0) else {
            unreachable!()
        };
        u.embedding = Some(unit(v));
        CoreEvent::Utterance(u)
    }

    #[test]
    fn meaning_finds_intents_without_keywords_and_urgent_ones_hand_over() {
        let mut c = semantic_call();
        let a = c.handle(
            s(2.0),
            meant("what do I have to pay you", [0.95, 0.1, 0.05]),
        );
        assert_eq!(c.intents(), ["billing"]);
        assert!(
            matches!(&a[0], CoreAction::Say(t) if t.contains("balance")),
            "{a:?}"
        );
        let d = c
            .decisions
            .iter()
            .find(|d| d.kind == DecisionKind::Intent)
            .unwrap();
        assert!(d.evidence[0].starts_with("semantic"), "{:?}", d.evidence);
        assert!(
            d.evidence.iter().any(|e| e.starts_with("runner-up")),
            "{:?}",
            d.evidence
        );
        let a = c.handle(
            s(9.0),
            meant(
                "the system won't let me do it, it keeps failing",
                [0.1, 0.0, 1.0],
            ),
        );
        assert_eq!(transfer_reason(&a).as_deref(), Some("urgent_intent"));
        // Keywords of two intents ("bill" and "order"): meaning picks among them.
        let mut c = semantic_call();
        c.handle(
            s(2.0),
            meant("the bill says my order is on its way", [0.05, 1.0, 0.0]),
        );
        assert_eq!(c.intents(), ["tracking"]);
        let d = c
            .decisions
            .iter()
            .find(|d| d.kind == DecisionKind::Intent)
            .unwrap();
        assert!(
            d.evidence.iter().any(|e| e.contains("over billing")),
            "{:?}",
            d.evidence
        );
        // Nearest the off-topic examples: not understood, whatever else is near.
        let mut c = semantic_call();
        let a = c.handle(s(2.0), meant("lovely weather", [-0.9, -0.8, 0.2]));
        assert!(
            matches!(&a[0], CoreAction::Say(t) if t.contains("did not catch")),
            "{a:?}"
        );
    }

    #[test]
    fn two_close_intents_get_one_question_answered_by_speech_or_keys() {
        let mut c = semantic_call();
        let a = c.handle(
            s(2.0),
            meant("it's about the thing from last week", [1.0, 0.97, 0.0]),
        );
        assert!(
            matches!(&a[..], [CoreAction::Say(t)] if t.contains("your bill") && t.contains("an order")),
            "{a:?}"
        );
        assert!(c.decisions.iter().any(|d| d.kind == DecisionKind::Confirm));
        assert!(c.intents().is_empty());
        // Keys: 2 is the second topic (not the DTMF menu's "tracking" by luck:
        // the order of the question decides).
        c.handle(s(5.0), CoreEvent::Dtmf('2'));
        assert_eq!(c.intents(), ["tracking"]);

        let mut c = semantic_call();
        c.handle(
            s(2.0),
            meant("it's about the thing from last week", [1.0, 0.97, 0.0]),
        );
        c.handle(s(6.0), meant("the bill one", [0.7, 0.7, 0.1]));
        assert_eq!(c.intents(), ["billing"], "answered by a keyword");

        let mut c = semantic_call();
        c.handle(
            s(2.0),
            meant("it's about the thing from last week", [1.0, 0.97, 0.0]),
        );
        c.handle(s(6.0), meant("the second", [0.7, 0.7, 0.1]));
        assert_eq!(c.intents(), ["tracking"], "answered by an ordinal");

        // Left open, the answer counts as one not understood — the question did not.
        let mut c = semantic_call();
        c.handle(
            s(2.0),
            meant("it's about the thing from last week", [1.0, 0.97, 0.0]),
        );
        c.handle(s(6.0), meant("hmm I don't know", [0.7, 0.7, 0.1]));
        c.handle(s(9.0), meant("hmm", [0.7, 0.7, 0.1]));
        assert_eq!(c.handover(), None, "only two turns count as not understood");
        let a = c.handle(s(12.0), meant("what", [0.7, 0.7, 0.1]));
        assert_eq!(transfer_reason(&a).as_deref(), Some("unrecognized"));
    }

    #[test]
    fn a_mandarin_callers_summary_is_in_mandarin_with_the_english_one_beside() {
        let mut c = CallCore::new(policy(), "zh");
        c.handle(Duration::ZERO, CoreEvent::Answered { caller: None });
        let said_zh = |t: &str| {
            let CoreEvent::Utterance(mut u) = said(t, 4.0) else {
                unreachable!()
            };
            u.language = "zh".into();
            CoreEvent::Utterance(u)
        };
        c.handle(s(3.0), said_zh("我想查一下账单"));
        let a = c.handle(s(9.0), said_zh("这太离谱了，服务太差了"));
        let summary = a
            .iter()
            .find_map(|x| match x {
                CoreAction::Transfer { summary, .. } => Some(summary.clone()),
                _ => None,
            })
            .expect("handed over");
        let text = summary["text"].as_str().unwrap_or("");
        assert!(
            text.contains("账单") && text.contains("负面用语") && text.contains("原话"),
            "{text}"
        );
        assert_eq!(summary["language"], "zh");
        let en = summary["texts"]["en"].as_str().unwrap_or("");
        assert!(en.contains("negative words"), "{en}");
    }

    #[test]
    fn a_call_in_auto_takes_the_language_of_its_first_utterance() {
        let mut c = CallCore::new(policy(), "auto");
        c.handle(Duration::ZERO, CoreEvent::Answered { caller: None });
        let CoreEvent::Utterance(mut u) = said("我想查一下账单", 4.0) else {
            unreachable!()
        };
        u.language = "zh".into();
        let a = c.handle(s(3.0), CoreEvent::Utterance(u));
        assert_eq!(c.language(), "zh");
        assert!(
            matches!(&a[0], CoreAction::Say(t) if t.contains("余额")),
            "{a:?}"
        );
        assert!(c.decisions.iter().any(|d| d.kind == DecisionKind::Language));
    }

    #[test]
    fn the_summary_is_short_and_says_who_why_and_how_long() {
        let mut c = call(Some("+15550123"));
        c.handle(s(3.0), said("where is my parcel", 3.0));
        let a = c.handle(s(9.0), said("this is ridiculous and I am angry", 3.0));
        let summary = a.iter().find_map(|a| match a {
            CoreAction::Transfer { summary, .. } => Some(summary.clone()),
            _ => None,
        });
        let summary = summary.expect("transfer");
        let text = summary["text"].as_str().unwrap_or("");
        assert!(text.split_whitespace().count() <= 26, "{text}");
        assert!(
            text.contains("Sam Carter")
                && text.contains("negative words")
                && text.contains("waited 9 seconds"),
            "{text}"
        );
        assert_eq!(summary["intents"][0], "tracking");
        assert_eq!(summary["customer"]["tier"], "standard");
    }

    #[test]
    fn goodbye_after_an_answer_when_the_caller_is_silent_or_done() {
        let mut c = call(None);
        c.handle(s(3.0), said("check my bill please", 3.0));
        assert!(c.handle(s(10.9), CoreEvent::Tick).is_empty());
        let a = c.handle(s(11.0), CoreEvent::Tick);
        assert!(
            a.contains(&CoreAction::HangUp {
                reason: "caller_silent".into()
            }),
            "{a:?}"
        );
        assert!(c.handle(s(12.0), said("wait", 3.0)).is_empty(), "ended");
        let mut c = call(None);
        c.handle(s(3.0), said("where is my parcel", 3.0));
        c.handle(s(6.0), said("ok", 3.0));
        assert!(
            c.handle(s(13.5), CoreEvent::Tick).is_empty(),
            "the caller spoke: no silent goodbye yet"
        );
        let a = c.handle(s(14.0), said("no thanks, goodbye", 3.0));
        assert!(
            a.contains(&CoreAction::HangUp {
                reason: "caller_done".into()
            }),
            "{a:?}"
        );
    }

    #[test]
    fn a_caller_who_is_talking_is_not_silent_however_slow_recognition_is() {
        // Served at 3 s; the caller starts talking at 9 s; recognition is slow
        // and the words arrive at 20 s: no silent goodbye meanwhile.
        let mut c = call(None);
        c.handle(s(3.0), said("check my bill please", 3.0));
        assert!(c.handle(s(9.0), CoreEvent::SpeechStarted).is_empty());
        assert!(
            c.handle(s(19.0), CoreEvent::Tick).is_empty(),
            "still talking"
        );
        let a = c.handle(s(20.0), said("this is ridiculous I am so angry", 3.0));
        assert!(
            !a.iter().any(|a| matches!(a, CoreAction::HangUp { .. })),
            "{a:?}"
        );
        // Noise (no words) restarts the silence clock from that moment.
        let mut c = call(None);
        c.handle(s(3.0), said("check my bill please", 3.0));
        c.handle(s(9.0), CoreEvent::SpeechStarted);
        c.handle(s(10.0), said("", 3.0));
        assert!(c.handle(s(17.9), CoreEvent::Tick).is_empty());
        let a = c.handle(s(18.0), CoreEvent::Tick);
        assert!(
            a.contains(&CoreAction::HangUp {
                reason: "caller_silent".into()
            }),
            "{a:?}"
        );
    }

    #[test]
    fn random_event_sequences_respect_the_invariants() {
        let texts = [
            "hello",
            "check my bill",
            "this is terrible",
            "where is my package",
            "blue sky",
            "I am angry",
            "talk to a person",
            "ok",
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..300 {
            let mut c = call(None);
            let mut t = 0.0;
            let mut transfers = 0;
            for _ in 0..20 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                t += (x % 4000) as f64 / 1000.0;
                let ev = match x % 5 {
                    0 => CoreEvent::Tick,
                    1 => CoreEvent::Dtmf(char::from(b'0' + (x % 10) as u8)),
                    _ => said(
                        texts[(x as usize / 7) % texts.len()],
                        2.0 + (x % 30) as f64 / 10.0,
                    ),
                };
                let was_handed_over = c.handover().is_some();
                let actions = c.handle(s(t), ev);
                if was_handed_over {
                    assert!(actions.is_empty(), "nothing happens after a hand-over");
                }
                transfers += actions
                    .iter()
                    .filter(|a| matches!(a, CoreAction::Transfer { .. }))
                    .count();
            }
            assert!(transfers <= 1, "at most one hand-over per call");
            assert!(
                c.decisions.windows(2).all(|w| w[0].t_s <= w[1].t_s),
                "decisions in time order"
            );
            let score_ok = c
                .decisions
                .iter()
                .filter_map(|d| d.score)
                .all(|s| (0.0..=1.0).contains(&s));
            assert!(score_ok, "scores in [0, 1]");
        }
    }
}
