//! The caller's emotion, explainably: negative words from a lexicon (with
//! negation), speech rate and loudness against the caller's own baseline,
//! repetition of a request; a frustration score in [0, 1] with its reasons.

use serde::Deserialize;
use std::collections::BTreeMap;

/// Lowercase words of `text` (letters, digits, apostrophes); CJK characters
/// stay together as one run so phrases can be found inside.
pub fn tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(|w| w.trim_matches('\'').to_string())
        .filter(|w| !w.is_empty())
        .collect()
}

const NEGATIONS: &[&str] = &[
    "not", "never", "no", "isn't", "wasn't", "don't", "didn't", "aren't", "not_", "hardly", "不",
    "没",
];

/// A negative-word lexicon for one language.
#[derive(Debug, Clone, Default)]
pub struct Lexicon {
    entries: Vec<(Vec<String>, String, f64)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LexiconFile {
    words: BTreeMap<String, f64>,
}

impl Lexicon {
    /// Parse a lexicon file's text (`[words] phrase = weight`).
    pub fn parse(text: &str) -> Result<Lexicon, toml::de::Error> {
        let f: LexiconFile = toml::from_str(text)?;
        Ok(Lexicon {
            entries: f
                .words
                .into_iter()
                .map(|(phrase, w)| (tokens(&phrase), phrase, w))
                .collect(),
        })
    }

    /// Negative phrases found in `text` (negated ones excluded), with weights.
    pub fn hits(&self, text: &str) -> Vec<(String, f64)> {
        let toks = tokens(text);
        let joined = text.to_lowercase();
        let mut out = Vec::new();
        for (phrase, name, weight) in &self.entries {
            if phrase.is_empty() {
                continue;
            }
            if phrase.iter().any(|t| t.chars().any(|c| c as u32 >= 0x3000)) {
                // CJK: substring match, negation by a preceding 不/没.
                if let Some(pos) = joined.find(name.as_str()) {
                    let before: String = joined[..pos].chars().rev().take(1).collect();
                    if before != "不" && before != "没" {
                        out.push((name.clone(), *weight));
                    }
                }
                continue;
            }
            for start in 0..toks.len() {
                if toks.len() - start < phrase.len()
                    || toks[start..start + phrase.len()] != phrase[..]
                {
                    continue;
                }
                let negated = toks[start.saturating_sub(2)..start]
                    .iter()
                    .any(|t| NEGATIONS.contains(&t.as_str()));
                if !negated {
                    out.push((name.clone(), *weight));
                }
            }
        }
        out
    }
}

/// Signals of one utterance relative to the caller's baseline.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Signals {
    /// Negative words in this utterance.
    pub negative: Vec<String>,
    /// Their summed weight.
    pub negative_weight: f64,
    /// Speech rate ÷ the caller's baseline (1.0 when no baseline yet).
    pub rate_ratio: f64,
    /// Loudness minus the baseline, dB.
    pub loudness_rise_db: f64,
    /// The caller asked for the same thing again.
    pub repeated_request: bool,
}

/// Thresholds for the frustration score.
#[derive(Debug, Clone, Copy)]
pub struct EmotionConfig {
    /// Rate ratio counted as agitation.
    pub rate_rise: f64,
    /// Loudness rise counted as agitation.
    pub loudness_rise_db: f64,
}

/// The caller's emotional state through the call.
#[derive(Debug, Clone, Default)]
pub struct EmotionTracker {
    baseline_rate: Option<f64>,
    baseline_loudness: Option<f64>,
    /// Negative words so far, in order.
    pub negative_words: Vec<String>,
    /// Summed negative weight so far.
    pub negative_weight: f64,
    /// Highest rate ratio seen after the baseline.
    peak_rate_ratio: f64,
    agitated_loudness: bool,
    repeated: bool,
    /// Last score.
    pub score: f64,
    /// Last reasons, in plain words.
    pub reasons: Vec<String>,
    /// Latest rate ratio.
    pub rate_ratio: f64,
}

impl EmotionTracker {
    /// Take one utterance's measures; returns its signals and updates the score.
    pub fn observe(
        &mut self,
        cfg: &EmotionConfig,
        lexicon: &Lexicon,
        text: &str,
        words_per_s: f64,
        loudness_dbfs: f64,
        repeated_request: bool,
    ) -> Signals {
        let hits = lexicon.hits(text);
        let weight: f64 = hits.iter().map(|h| h.1).sum();
        let mut s = Signals {
            negative: hits.iter().map(|h| h.0.clone()).collect(),
            negative_weight: weight,
            rate_ratio: 1.0,
            loudness_rise_db: 0.0,
            repeated_request,
        };
        let speech = words_per_s > 0.5;
        match (self.baseline_rate, speech) {
            (Some(b), true) => s.rate_ratio = words_per_s / b.max(0.5),
            (None, true) => self.baseline_rate = Some(words_per_s),
            _ => {}
        }
        match self.baseline_loudness {
            Some(b) if speech => s.loudness_rise_db = loudness_dbfs - b,
            None if speech => self.baseline_loudness = Some(loudness_dbfs),
            _ => {}
        }
        self.negative_words.extend(s.negative.iter().cloned());
        self.negative_weight += weight;
        self.peak_rate_ratio = self.peak_rate_ratio.max(s.rate_ratio);
        self.agitated_loudness |= s.loudness_rise_db >= cfg.loudness_rise_db;
        self.repeated |= repeated_request;
        self.rate_ratio = s.rate_ratio;
        self.rescore(cfg);
        s
    }

    fn rescore(&mut self, cfg: &EmotionConfig) {
        let mut score = 0.0;
        let mut reasons = Vec::new();
        if self.negative_weight > 0.0 {
            score += 0.35 * self.negative_weight.min(2.0);
            reasons.push(format!(
                "{} negative word{}: {}",
                self.negative_words.len(),
                if self.negative_words.len() == 1 {
                    ""
                } else {
                    "s"
                },
                self.negative_words.join(", ")
            ));
        }
        // Speech rate counts in proportion: full weight at `rate_rise` times
        // the caller's own baseline, nothing at or below it.
        let rise = ((self.peak_rate_ratio - 1.0) / (cfg.rate_rise - 1.0).max(0.01)).clamp(0.0, 1.0);
        if rise > 0.0 && self.peak_rate_ratio >= 1.1 {
            score += 0.35 * rise;
            reasons.push(format!(
                "speaking {:.1}x faster than at the start",
                self.peak_rate_ratio
            ));
        }
        if self.agitated_loudness {
            score += 0.2;
            reasons.push("speaking louder than at the start".into());
        }
        if self.repeated {
            score += 0.3;
            reasons.push("repeated the same request".into());
        }
        self.score = (score * 100.0_f64).round().min(100.0) / 100.0;
        self.reasons = reasons;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn en() -> Lexicon {
        Lexicon::parse("[words]\nridiculous = 1.0\nangry = 1.0\nbad = 0.5\n\"fed up\" = 1.0\n")
            .unwrap()
    }

    #[test]
    fn negative_words_with_negation_and_phrases() {
        let l = en();
        assert_eq!(l.hits("This is ridiculous. I am so angry!").len(), 2);
        assert!(l.hits("That is not bad at all").is_empty(), "negated");
        assert_eq!(l.hits("I'm fed up with this").len(), 1);
        let zh = Lexicon::parse("[words]\n\"投诉\" = 1.0\n\"太差\" = 1.0\n").unwrap();
        assert_eq!(zh.hits("我要投诉，你们的服务太差了").len(), 2);
        assert!(zh.hits("我不投诉").is_empty());
    }

    #[test]
    fn fast_from_the_start_is_not_agitation_but_a_rise_is() {
        let cfg = EmotionConfig {
            rate_rise: 1.35,
            loudness_rise_db: 6.0,
        };
        let l = en();
        let mut calm_fast = EmotionTracker::default();
        calm_fast.observe(&cfg, &l, "hello there", 4.5, -20.0, false);
        calm_fast.observe(&cfg, &l, "my new address is here", 4.6, -20.0, false);
        assert_eq!(calm_fast.score, 0.0);
        let mut rising = EmotionTracker::default();
        rising.observe(&cfg, &l, "hello", 3.0, -25.0, false);
        rising.observe(&cfg, &l, "this is ridiculous", 4.2, -25.0, false);
        assert!(rising.score >= 0.7, "{}", rising.score);
        assert!(
            rising.reasons.iter().any(|r| r.contains("faster")),
            "{:?}",
            rising.reasons
        );
    }
}
