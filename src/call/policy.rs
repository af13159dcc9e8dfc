//! What the administrator decides in `sip-config/`: the bot (`flow.toml`),
//! the escalation rules (`rules.toml`), lexicons and customers.

use super::intents::Intent;
use crate::emotion::Lexicon;
use serde::Deserialize;
use std::collections::BTreeMap;

/// `flow.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    /// First words to the caller.
    pub greeting: String,
    /// After a served answer.
    pub anything_else: String,
    /// Before hanging up.
    pub goodbye: String,
    /// When nothing matched.
    pub not_understood: String,
    /// While the caller is put through to a person.
    #[serde(default = "default_connecting")]
    pub connecting: String,
    /// Nobody could take the call.
    #[serde(default = "default_all_busy")]
    pub all_busy: String,
    /// Asking for a callback number.
    #[serde(default = "default_callback")]
    pub callback: String,
    /// The callback number was taken.
    #[serde(default = "default_callback_thanks")]
    pub callback_thanks: String,
    /// Minimum intent score.
    pub match_threshold: f64,
    /// Semantic intents: the least cosine similarity between what the caller
    /// said and an intent's nearest examples for the intent to count.
    #[serde(default = "default_semantic_threshold")]
    pub semantic_threshold: f64,
    /// Semantic intents: how far the best intent must be ahead of the
    /// runner-up (and of the off-topic examples); closer than this, the bot
    /// asks which one the caller means.
    #[serde(default = "default_semantic_margin")]
    pub semantic_margin: f64,
    /// Sentences that are no request of this bot (weather, pets, small talk),
    /// in any language: an utterance nearest to these is not understood.
    #[serde(default)]
    pub off_topic: Vec<String>,
    /// The question when two intents are equally likely; `{first}` and
    /// `{second}` are their topics. Answered by speech, or 1 / 2 on the keypad.
    #[serde(default = "default_confirm")]
    pub confirm: String,
    /// After a served answer, this much silence means the caller is done:
    /// goodbye and hang up.
    #[serde(default = "default_silence_goodbye")]
    pub silence_goodbye_s: f64,
    /// The phrases above in other languages (`[language.zh]`).
    #[serde(default)]
    pub language: BTreeMap<String, FlowTexts>,
    /// Key → intent name.
    #[serde(default)]
    pub dtmf: BTreeMap<String, String>,
    /// The intents.
    #[serde(default)]
    pub intent: Vec<Intent>,
}

/// The bot's own phrases in one more language; any left out fall back to
/// the main ones.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowTexts {
    /// First words to the caller.
    pub greeting: Option<String>,
    /// After a served answer.
    pub anything_else: Option<String>,
    /// Before hanging up.
    pub goodbye: Option<String>,
    /// When nothing matched.
    pub not_understood: Option<String>,
    /// While the caller is put through to a person.
    pub connecting: Option<String>,
    /// Nobody could take the call.
    pub all_busy: Option<String>,
    /// Asking for a callback number.
    pub callback: Option<String>,
    /// The callback number was taken.
    pub callback_thanks: Option<String>,
    /// Which of two intents the caller means.
    pub confirm: Option<String>,
}

/// The bot's phrases in one language.
#[derive(Debug, Clone)]
pub struct Phrases {
    /// First words to the caller.
    pub greeting: String,
    /// After a served answer.
    pub anything_else: String,
    /// Before hanging up.
    pub goodbye: String,
    /// When nothing matched.
    pub not_understood: String,
    /// While the caller is put through to a person.
    pub connecting: String,
    /// Nobody could take the call.
    pub all_busy: String,
    /// Asking for a callback number.
    pub callback: String,
    /// The callback number was taken.
    pub callback_thanks: String,
    /// Which of two intents the caller means (`{first}`, `{second}`).
    pub confirm: String,
}

impl Flow {
    /// The bot's phrases in `language` (the main ones where it has none).
    pub fn phrases(&self, language: &str) -> Phrases {
        let t = self.language.get(language).cloned().unwrap_or_default();
        Phrases {
            greeting: t.greeting.unwrap_or_else(|| self.greeting.clone()),
            anything_else: t
                .anything_else
                .unwrap_or_else(|| self.anything_else.clone()),
            goodbye: t.goodbye.unwrap_or_else(|| self.goodbye.clone()),
            not_understood: t
                .not_understood
                .unwrap_or_else(|| self.not_understood.clone()),
            connecting: t.connecting.unwrap_or_else(|| self.connecting.clone()),
            all_busy: t.all_busy.unwrap_or_else(|| self.all_busy.clone()),
            callback: t.callback.unwrap_or_else(|| self.callback.clone()),
            callback_thanks: t
                .callback_thanks
                .unwrap_or_else(|| self.callback_thanks.clone()),
            confirm: t.confirm.unwrap_or_else(|| self.confirm.clone()),
        }
    }
}

fn default_semantic_threshold() -> f64 {
    0.86
}
fn default_semantic_margin() -> f64 {
    0.015
}
fn default_confirm() -> String {
    "Is this about {first}, or about {second}?".into()
}
fn default_connecting() -> String {
    "Please hold, I am connecting you to a colleague.".into()
}
fn default_all_busy() -> String {
    "I am sorry, all our colleagues are busy right now.".into()
}
fn default_callback() -> String {
    "Please key in your phone number followed by the hash key, or say it, and we will call you back.".into()
}
fn default_callback_thanks() -> String {
    "Thank you. A colleague will call you back at that number.".into()
}

fn default_silence_goodbye() -> f64 {
    8.0
}

fn on() -> bool {
    true
}

/// A rule that can only be switched.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Switch {
    /// Whether the rule applies.
    #[serde(default = "on")]
    pub enabled: bool,
}

/// `[negative_words]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NegativeRule {
    /// Whether the rule applies.
    #[serde(default = "on")]
    pub enabled: bool,
    /// Lexicon weight in the call that triggers it.
    pub hits: f64,
}

/// `[frustration]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrustrationRule {
    /// Whether the rule applies.
    #[serde(default = "on")]
    pub enabled: bool,
    /// Score that triggers it.
    pub threshold: f64,
    /// A sustained speech-rate ratio (against the caller's own start) that
    /// counts as agitation: with any other signal it hands the caller over.
    pub rate_rise: f64,
    /// A sustained ratio this high hands the caller over on its own.
    #[serde(default = "default_rate_alone")]
    pub rate_alone: f64,
    /// Loudness rise counted as agitation.
    pub loudness_rise_db: f64,
}

fn default_rate_alone() -> f64 {
    1.6
}

/// `[unrecognized]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnrecognizedRule {
    /// Whether the rule applies.
    #[serde(default = "on")]
    pub enabled: bool,
    /// Consecutive utterances with no intent.
    pub consecutive: u32,
}

/// `[wait_timeout]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitRule {
    /// Whether the rule applies.
    #[serde(default = "on")]
    pub enabled: bool,
    /// Seconds of unserved waiting.
    pub seconds: f64,
}

/// `rules.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Negative words.
    pub negative_words: NegativeRule,
    /// Combined frustration score.
    pub frustration: FrustrationRule,
    /// Unrecognised requests.
    pub unrecognized: UnrecognizedRule,
    /// Waiting too long.
    pub wait_timeout: WaitRule,
    /// VIP callers.
    pub vip: Switch,
    /// The caller asked for a person.
    pub requested: Switch,
    /// Urgent intents.
    pub urgent_intent: Switch,
    /// Speech recognition unavailable.
    pub asr_unavailable: Switch,
}

/// A known caller.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Customer {
    /// Caller ID.
    pub number: String,
    /// Name for the agent.
    pub name: String,
    /// `vip` or `standard`.
    pub tier: String,
}

/// Everything the decision core needs, loaded once and shared by calls.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The bot.
    pub flow: Flow,
    /// Escalation rules.
    pub rules: Rules,
    /// Lexicons by language code.
    pub lexicons: BTreeMap<String, Lexicon>,
    /// Known callers.
    pub customers: Vec<Customer>,
    /// The intents' examples embedded for semantic matching (`None`: no
    /// sentence encoder installed — keywords alone decide).
    pub semantic: Option<std::sync::Arc<super::semantic::SemanticIndex>>,
}

impl Policy {
    /// Every example sentence to embed for semantic matching: each intent's
    /// `examples`, then the flow's `off_topic` ones.
    pub fn example_sentences(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for i in &self.flow.intent {
            out.extend(i.examples.iter().map(|e| (i.name.clone(), e.clone())));
        }
        out.extend(
            self.flow
                .off_topic
                .iter()
                .map(|e| (super::semantic::OFF_TOPIC.to_string(), e.clone())),
        );
        out
    }

    /// The lexicon for a language (falls back to English).
    pub fn lexicon(&self, language: &str) -> Lexicon {
        self.lexicons
            .get(language)
            .or_else(|| self.lexicons.get("en"))
            .cloned()
            .unwrap_or_default()
    }
}
