//! What the administrator decides in `sip-config/`: the bot (`flow.toml`),
//! the escalation rules (`rules.toml`), lexicons and customers.

use super::intents::Intent;
use crate::config::Diagnostic;
use crate::emotion::Lexicon;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Customers {
    #[serde(default)]
    customer: Vec<Customer>,
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

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Diagnostic> {
    let text = std::fs::read_to_string(path).map_err(|e| Diagnostic {
        file: path.to_path_buf(),
        line: 1,
        problem: format!("cannot read the file: {e}"),
        fix: "create it (copy it from the shipped sip-config/)".into(),
    })?;
    toml::from_str(&text)
        .map_err(|e| crate::config::SourceFile::new(path, &text).from_toml_error(&e))
}

impl Policy {
    /// Load `flow.toml`, `rules.toml`, `customers.toml` and `lexicons/*.toml` from `dir`.
    pub fn load(dir: &Path) -> Result<Policy, Vec<Diagnostic>> {
        let mut errors = Vec::new();
        let flow = read::<Flow>(&dir.join("flow.toml"))
            .map_err(|e| errors.push(e))
            .ok();
        let rules = read::<Rules>(&dir.join("rules.toml"))
            .map_err(|e| errors.push(e))
            .ok();
        let customers = read::<Customers>(&dir.join("customers.toml"))
            .map_err(|e| errors.push(e))
            .ok();
        let mut lexicons = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(dir.join("lexicons")) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "toml") {
                    let lang = p
                        .file_stem()
                        .map(|s| s.to_string_lossy().to_string())
                        .unwrap_or_default();
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    match Lexicon::parse(&text) {
                        Ok(l) => {
                            lexicons.insert(lang, l);
                        }
                        Err(e) => errors
                            .push(crate::config::SourceFile::new(&p, &text).from_toml_error(&e)),
                    }
                }
            }
        }
        if let Some(flow) = &flow {
            let path = dir.join("flow.toml");
            for (key, name) in &flow.dtmf {
                if !flow.intent.iter().any(|i| &i.name == name) {
                    errors.push(Diagnostic {
                        file: path.clone(),
                        line: 1,
                        problem: format!("[dtmf] key {key} names unknown intent {name:?}"),
                        fix: "use the name of an [[intent]] in this file".into(),
                    });
                }
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for intent in &flow.intent {
                let Some(hook) = &intent.webhook else {
                    continue;
                };
                let line = text
                    .find(&hook.url)
                    .map(|at| crate::config::SourceFile::new(&path, &text).line_of(at))
                    .unwrap_or(1);
                if !hook.url.starts_with("http://") {
                    errors.push(Diagnostic {
                        file: path.clone(),
                        line,
                        problem: format!(
                            "intent {:?}: webhook url {:?} is not http://",
                            intent.name, hook.url
                        ),
                        fix: "give an http://host:port/path URL (put TLS in a local proxy)".into(),
                    });
                }
                if hook.timeout_ms == 0 || hook.timeout_ms > 10_000 {
                    errors.push(Diagnostic {
                        file: path.clone(),
                        line,
                        problem: format!(
                            "intent {:?}: webhook timeout_ms = {} leaves the caller in silence",
                            intent.name, hook.timeout_ms
                        ),
                        fix: "use 1 to 10000 ms (default 2000)".into(),
                    });
                }
            }
            let line_of = |needle: &str| {
                text.find(needle)
                    .map(|at| crate::config::SourceFile::new(&path, &text).line_of(at))
                    .unwrap_or(1)
            };
            for intent in &flow.intent {
                for (language, file) in &intent.prompts {
                    if !dir.join(file).is_file() {
                        errors.push(Diagnostic {
                            file: path.clone(),
                            line: line_of(file),
                            problem: format!(
                                "intent {:?}: recorded prompt {file:?} ({language}) not found",
                                intent.name
                            ),
                            fix: "record it as a WAV file there (path relative to the configuration directory), or remove it to synthesise the reply".into(),
                        });
                    }
                }
            }
            if !(0.0..1.0).contains(&flow.semantic_threshold) {
                errors.push(Diagnostic {
                    file: path.clone(),
                    line: line_of("semantic_threshold"),
                    problem: format!(
                        "semantic_threshold {} is not a similarity",
                        flow.semantic_threshold
                    ),
                    fix: "use a value between 0 and 1 (shipped: 0.86)".into(),
                });
            }
            if !(0.0..=0.5).contains(&flow.semantic_margin) {
                errors.push(Diagnostic {
                    file: path.clone(),
                    line: line_of("semantic_margin"),
                    problem: format!("semantic_margin {} is out of range", flow.semantic_margin),
                    fix: "use 0 to 0.5 (shipped: 0.015)".into(),
                });
            }
        }
        if let Some(r) = &rules {
            let f = &r.frustration;
            if f.rate_alone <= f.rate_rise {
                let path = dir.join("rules.toml");
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let line = text
                    .find("rate_alone")
                    .map(|at| crate::config::SourceFile::new(&path, &text).line_of(at))
                    .unwrap_or(1);
                errors.push(Diagnostic {
                    file: path,
                    line,
                    problem: format!(
                        "[frustration] rate_alone {} is not above rate_rise {}",
                        f.rate_alone, f.rate_rise
                    ),
                    fix: "a rise strong enough alone must be above the moderate one (shipped: 1.35 and 1.6)".into(),
                });
            }
        }
        match (flow, rules, customers) {
            (Some(flow), Some(rules), Some(c)) if errors.is_empty() => Ok(Policy {
                flow,
                rules,
                lexicons,
                customers: c.customer,
                semantic: None,
            }),
            _ => Err(errors),
        }
    }

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
