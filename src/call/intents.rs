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
    /// How the bot names this intent in a question ("your bill"); default:
    /// the name.
    #[serde(default)]
    pub topic: Option<String>,
    /// `topic` in other languages (`zh = "账单"`).
    #[serde(default)]
    pub topics: std::collections::BTreeMap<String, String>,
    /// Recorded replies by language (`en = "prompts/billing.wav"`, `zh = …`),
    /// played instead of the synthesised `reply`/`replies` text; paths are
    /// relative to the configuration directory.
    #[serde(default)]
    pub prompts: std::collections::BTreeMap<String, String>,
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
    /// How the bot names this intent in `language`.
    pub fn topic_in(&self, language: &str) -> String {
        self.topics
            .get(language)
            .or(self.topic.as_ref())
            .cloned()
            .unwrap_or_else(|| self.name.replace('_', " "))
    }

    /// Its recorded replies: (the reply text a recording stands for, its file).
    pub fn recorded_replies(&self) -> Vec<(String, String)> {
        self.prompts
            .iter()
            .map(|(language, file)| (self.reply_in(language).to_string(), file.clone()))
            .collect()
    }

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
        let mut heard: Vec<String> = Vec::new();
        for kw in &intent.keywords {
            let phrase = stems(kw);
            if phrase.is_empty() {
                continue;
            }
            let s = if is_cjk(kw) {
                // By character, or by sound where Whisper wrote a homophone.
                match crate::speech::chinese::find_by_sound(&squashed, kw) {
                    Some(m) if m.heard == kw.trim() => m.score,
                    Some(m) => {
                        heard.push(format!("{kw} (heard {}, by sound {:.2})", m.heard, m.score));
                        m.score
                    }
                    None => 0.0,
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
                match heard.pop() {
                    Some(h) => evidence.push(h),
                    None => evidence.push(kw.clone()),
                }
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

/// What the bot made of an utterance.
#[derive(Debug, Clone, PartialEq)]
pub enum Understanding {
    /// One intent.
    Intent(IntentMatch),
    /// Two intents equally likely: ask which one.
    Unsure {
        /// The closer one.
        first: IntentMatch,
        /// The runner-up.
        second: IntentMatch,
    },
    /// Nothing the bot serves.
    Nothing {
        /// Why, when the sentence encoder had a view ("nearest: …").
        evidence: Vec<String>,
    },
}

/// Thresholds for semantic matching (from `flow.toml`).
#[derive(Debug, Clone, Copy)]
pub struct SemanticSettings {
    /// Keyword/overlap score threshold.
    pub match_threshold: f64,
    /// Least similarity to an intent's nearest examples.
    pub threshold: f64,
    /// Least lead over the runner-up.
    pub margin: f64,
}

fn sem_match(
    n: &super::semantic::Nearest,
    runner_up: Option<&super::semantic::Nearest>,
) -> IntentMatch {
    let mut evidence = vec![format!("semantic {:.2}: like \"{}\"", n.score, n.example)];
    if let Some(r) = runner_up {
        evidence.push(format!("runner-up {} {:.2}", r.intent, r.score));
    }
    IntentMatch {
        name: n.intent.clone(),
        score: (n.score * 100.0).round() / 100.0,
        evidence,
    }
}

/// Understand an utterance: keywords first (high precision), then the
/// nearest examples by meaning (`embedding` against `index`). Urgent and
/// hand-over intents found by meaning win over an ordinary keyword: a caller
/// who says both is served by a person.
pub fn understand(
    intents: &[Intent],
    index: Option<&super::semantic::SemanticIndex>,
    settings: SemanticSettings,
    text: &str,
    embedding: Option<&[f32]>,
) -> Understanding {
    let keyword = best_intent(intents, text, settings.match_threshold);
    let (Some(index), Some(embedding)) = (index, embedding) else {
        return match keyword {
            Some(m) => Understanding::Intent(m),
            None => Understanding::Nothing { evidence: vec![] },
        };
    };
    let ranked = index.rank(embedding);
    let off_topic = ranked
        .iter()
        .find(|n| n.intent == super::semantic::OFF_TOPIC)
        .map_or(f64::MIN, |n| n.score);
    let real: Vec<&super::semantic::Nearest> = ranked
        .iter()
        .filter(|n| n.intent != super::semantic::OFF_TOPIC)
        .collect();
    let top = real.first().copied();
    let second = real.get(1).copied();
    let serious = |name: &str| {
        intents
            .iter()
            .any(|i| i.name == name && (i.urgent || i.handover))
    };
    let lead = |n: &super::semantic::Nearest, other: Option<&super::semantic::Nearest>| {
        n.score - other.map_or(f64::MIN, |o| o.score).max(off_topic)
    };
    if let Some(mut k) = keyword {
        // Keywords decide; the encoder may only add an urgent or hand-over
        // intent it is sure of, or its agreement.
        if let Some(t) = top {
            // Overriding a keyword takes a clear lead: twice the margin.
            if t.intent != k.name
                && serious(&t.intent)
                && !serious(&k.name)
                && t.score >= settings.threshold
                && lead(t, second) >= 2.0 * settings.margin
            {
                let mut m = sem_match(t, second);
                m.evidence.push(format!("keywords said {}", k.name));
                return Understanding::Intent(m);
            }
            if t.intent == k.name {
                k.evidence.push(format!("semantic {:.2}", t.score));
            } else if t.score >= settings.threshold && lead(t, second) >= settings.margin {
                // Keywords of two intents ("change my delivery address"):
                // meaning picks among the intents the caller's words name.
                let own: Vec<Intent> = intents
                    .iter()
                    .filter(|i| i.name == t.intent)
                    .cloned()
                    .collect();
                if let Some(mut m) = best_intent(&own, text, settings.match_threshold) {
                    m.evidence
                        .push(format!("semantic {:.2} over {}", t.score, k.name));
                    return Understanding::Intent(m);
                }
            }
        }
        return Understanding::Intent(k);
    }
    let Some(t) = top else {
        return Understanding::Nothing { evidence: vec![] };
    };
    let mut nearest = vec![format!(
        "nearest: {} {:.2} (\"{}\")",
        t.intent, t.score, t.example
    )];
    if off_topic > f64::MIN {
        nearest.push(format!("off-topic {off_topic:.2}"));
    }
    if t.score < settings.threshold || off_topic >= t.score {
        return Understanding::Nothing { evidence: nearest };
    }
    if lead(t, second) >= settings.margin {
        return Understanding::Intent(sem_match(t, second));
    }
    match second {
        Some(s) if s.score >= settings.threshold && t.score - s.score < settings.margin => {
            Understanding::Unsure {
                first: sem_match(t, Some(s)),
                second: sem_match(s, Some(t)),
            }
        }
        _ => Understanding::Nothing { evidence: nearest },
    }
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
