//! Intent matching that generalises beyond the example phrases: normalised,
//! lightly stemmed tokens, keyword phrases, synonyms, fuzzy word similarity,
//! and overlap with examples — each match reports its score.

use crate::emotion::tokens;
use serde::Deserialize;

/// One intent from `flow.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intent {
    /// Name, e.g. `billing`.
    pub name: String,
    /// Keywords and phrases (synonyms included).
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Example utterances.
    #[serde(default)]
    pub examples: Vec<String>,
    /// What the bot says.
    #[serde(default)]
    pub reply: String,
    /// Always goes to a human, with reason `urgent_intent`.
    #[serde(default)]
    pub urgent: bool,
    /// The caller asks for a human (reason `requested`).
    #[serde(default)]
    pub handover: bool,
    /// The reply in other languages, by language code (`zh = "…"`); `reply`
    /// is used where a language has none.
    #[serde(default)]
    pub replies: std::collections::BTreeMap<String, String>,
    /// Ask the operator's service what to say instead of `reply`.
    #[serde(default)]
    pub webhook: Option<Webhook>,
}

/// An intent's HTTP webhook: `POST url` with the caller, intent and
/// transcript; the answer's `say` (or `text`) is spoken. No answer within
/// `timeout_ms`, or any failure, hands the caller to a human.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// `http://host:port/path`.
    pub url: String,
    /// How long the caller may wait for the answer.
    #[serde(default = "default_webhook_timeout")]
    pub timeout_ms: u64,
}

fn default_webhook_timeout() -> u64 {
    2000
}

impl Intent {
    /// The reply in `language`, falling back to `reply`.
    pub fn reply_in(&self, language: &str) -> &str {
        self.replies
            .get(language)
            .map(String::as_str)
            .unwrap_or(&self.reply)
    }
}

/// Whether `text` holds CJK characters (matched as substrings, not words).
fn is_cjk(text: &str) -> bool {
    text.chars()
        .any(|c| matches!(c as u32, 0x3040..=0x30ff | 0x3400..=0x9fff | 0xac00..=0xd7af | 0xf900..=0xfaff))
}

/// The best intent for an utterance.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IntentMatch {
    /// Intent name.
    pub name: String,
    /// Confidence in [0, 1].
    pub score: f64,
    /// The words that matched.
    pub evidence: Vec<String>,
}

/// Crude English stemming: plural and verb endings.
pub fn stem(word: &str) -> String {
    let w = word.trim_end_matches("'s");
    let mut base = w;
    for suffix in ["ing", "ed", "es", "s"] {
        if let Some(b) = w.strip_suffix(suffix) {
            if b.chars().count() >= 3 {
                base = b;
                break;
            }
        }
    }
    // "charge"/"charged", "move"/"moved": a final silent e goes too.
    match base.strip_suffix('e') {
        Some(b) if b.chars().count() >= 4 => b.to_string(),
        _ => base.to_string(),
    }
}

fn stems(text: &str) -> Vec<String> {
    tokens(text).iter().map(|t| stem(t)).collect()
}

fn similarity(a: &str, b: &str) -> f64 {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let mut d: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut prev = d[0];
        d[0] = i;
        for j in 1..=b.len() {
            let cur = d[j];
            d[j] = (d[j] + 1)
                .min(d[j - 1] + 1)
                .min(prev + usize::from(a[i - 1] != b[j - 1]));
            prev = cur;
        }
    }
    1.0 - d[b.len()] as f64 / a.len().max(b.len()) as f64
}

const STOP: &[&str] = &[
    "i", "a", "the", "to", "my", "is", "me", "you", "it", "of", "and", "on", "in", "for", "please",
    "want", "would", "like", "can", "need", "what", "do", "be", "this", "that", "with", "an", "at",
];

/// Score every intent against `text`; the best one at or above `threshold`.
pub fn best_intent(intents: &[Intent], text: &str, threshold: f64) -> Option<IntentMatch> {
    let words = stems(text);
    let content_words: Vec<String> = tokens(text)
        .iter()
        .filter(|w| !STOP.contains(&w.as_str()))
        .map(|w| stem(w))
        .collect();
    let content: Vec<&String> = content_words.iter().collect();
    let squashed: String = text
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let mut best: Option<IntentMatch> = None;
    for intent in intents {
        let mut score: f64 = 0.0;
        let mut evidence = Vec::new();
        for kw in &intent.keywords {
            let phrase = stems(kw);
            if phrase.is_empty() {
                continue;
            }
            let s = if is_cjk(kw) {
                let kw: String = kw.chars().filter(|c| !c.is_whitespace()).collect();
                if squashed.contains(&kw) {
                    1.0
                } else {
                    0.0
                }
            } else if phrase.len() > 1 {
                let hit = words.windows(phrase.len()).any(|w| w == &phrase[..]);
                if hit {
                    1.0
                } else {
                    0.0
                }
            } else {
                content
                    .iter()
                    .map(|w| {
                        let sim = similarity(w, &phrase[0]);
                        if sim >= 0.85 && w.chars().count() >= 5 {
                            sim
                        } else if **w == phrase[0] {
                            1.0
                        } else {
                            0.0
                        }
                    })
                    .fold(0.0, f64::max)
            };
            if s > 0.0 {
                evidence.push(kw.clone());
                score = if score == 0.0 {
                    s
                } else {
                    (score.max(s) + 0.1).min(1.0)
                };
            }
        }
        for ex in &intent.examples {
            let ex: Vec<String> = tokens(ex)
                .iter()
                .filter(|w| !STOP.contains(&w.as_str()))
                .map(|w| stem(w))
                .collect();
            if ex.is_empty() || content.is_empty() {
                continue;
            }
            let shared = ex.iter().filter(|w| content.contains(w)).count();
            let overlap = shared as f64 / ex.len().max(content.len()) as f64;
            if overlap * 0.9 > score {
                score = overlap * 0.9;
                evidence.push(format!("like \"{}\"", intent.examples[0]));
            }
        }
        // Urgent and hand-over intents win ties: a caller who says both is served by a person.
        let rank = score
            + if intent.urgent || intent.handover {
                0.05
            } else {
                0.0
            };
        let better = best.as_ref().is_none_or(|b| {
            let b_rank = b.score
                + if intents
                    .iter()
                    .any(|i| i.name == b.name && (i.urgent || i.handover))
                {
                    0.05
                } else {
                    0.0
                };
            rank > b_rank
        });
        if score >= threshold && better {
            best = Some(IntentMatch {
                name: intent.name.clone(),
                score: (score.min(1.0) * 100.0).round() / 100.0,
                evidence,
            });
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intents() -> Vec<Intent> {
        let flow: toml::Value = toml::from_str(include_str!("../../sip-config/flow.toml")).unwrap();
        flow["intent"].clone().try_into().unwrap()
    }

    #[test]
    fn generalises_beyond_the_examples() {
        let i = intents();
        let m = |t: &str| best_intent(&i, t, 0.5).map(|m| m.name);
        assert_eq!(
            m("Hi, I would like to check my bill, please.").as_deref(),
            Some("billing")
        );
        assert_eq!(m("how much is on my invoice").as_deref(), Some("billing"));
        assert_eq!(
            m("Where is my packet? I want to track my order.").as_deref(),
            Some("tracking")
        );
        assert_eq!(m("my parcels never arrived").as_deref(), Some("tracking"));
        assert_eq!(
            m("I was charged twice for my last order.").as_deref(),
            Some("billing"),
            "charged is a billing word; order only ties"
        );
        assert_eq!(m("we moved last week").as_deref(), Some("address_change"));
        assert_eq!(
            m("I need to change the address on my account").as_deref(),
            Some("address_change")
        );
        assert_eq!(
            m("I need to change the rest on my account please").as_deref(),
            Some("address_change"),
            "close to an example even when ASR garbles the keyword; change is not charge"
        );
        assert_eq!(
            m("My payment failed and my card was declined.").as_deref(),
            Some("payment_failure")
        );
        assert_eq!(
            m("Can I speak to a real person, please?").as_deref(),
            Some("human")
        );
        assert_eq!(m("let me talk to an operator").as_deref(), Some("human"));
        assert_eq!(m("Blue elephants dance on Tuesday.").as_deref(), None);
        assert_eq!(
            m("The weather in the mountains is lovely.").as_deref(),
            None
        );
        assert_eq!(m("My cat likes to sleep on the piano.").as_deref(), None);
        assert_eq!(m("Hello?").as_deref(), None);
    }

    #[test]
    fn chinese_keywords_match_inside_unsegmented_text() {
        let i = intents();
        let m = |t: &str| best_intent(&i, t, 0.5).map(|m| m.name);
        assert_eq!(m("你好，我想查一下我的账单。").as_deref(), Some("billing"));
        assert_eq!(m("我的快递到哪里了？").as_deref(), Some("tracking"));
        assert_eq!(
            m("我的付款失败了，怎么办").as_deref(),
            Some("payment_failure")
        );
        assert_eq!(m("我要转人工").as_deref(), Some("human"));
        assert_eq!(m("我搬家了，要改地址").as_deref(), Some("address_change"));
        assert_eq!(m("今天天气很好").as_deref(), None);
        let billing = i.iter().find(|x| x.name == "billing").unwrap();
        assert!(billing.reply_in("zh").contains("余额"));
        assert_eq!(billing.reply_in("fr"), billing.reply);
    }
}
