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
                // CJK: by character or by sound (a homophone Whisper wrote),
                // negation by a preceding 不/没.
                let squashed: String = joined.chars().filter(|c| !c.is_whitespace()).collect();
                if let Some(m) = crate::speech::chinese::find_by_sound(&squashed, name) {
                    let negated = squashed
                        .find(m.heard.as_str())
                        .and_then(|pos| crate::speech::chinese::char_before(&squashed, pos))
                        .is_some_and(|c| c == '不' || c == '没');
                    if !negated {
                        let label = if m.heard == *name {
                            name.clone()
                        } else {
                            format!("{name} (heard {})", m.heard)
                        };
                        out.push((label, *weight));
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
    /// Sustained rate ratio counted as agitation (0.3 of the score: enough
    /// with any other signal).
    pub rate_rise: f64,
    /// Sustained rate ratio that is enough on its own (0.5 of the score).
    pub rate_alone: f64,
    /// Loudness rise counted as agitation.
    pub loudness_rise_db: f64,
}

/// Weights of the frustration score (the hand-over threshold is 0.5 in the
/// shipped rules.toml): each negative word 0.35, a repeated request 0.3,
/// not understood again 0.2, louder 0.2, and a sustained speech-rate rise:
/// 0.3 at `rate_rise` (so a moderate rise plus any other signal reaches 0.5),
/// rising to 0.5 at `rate_alone` (enough alone).
const NEGATIVE_WEIGHT: f64 = 0.35;
const REPEATED_WEIGHT: f64 = 0.3;
const NOT_UNDERSTOOD_WEIGHT: f64 = 0.2;
const LOUDER_WEIGHT: f64 = 0.2;
const RATE_AT_RISE: f64 = 0.3;
const RATE_ALONE: f64 = 0.5;

/// Least syllables for an utterance to set the caller's baseline rate:
/// "hello?" says little about how someone talks.
const BASELINE_MIN_SYLLABLES: f64 = 4.0;
/// An utterance with this much voiced time shows a sustained rate alone;
/// shorter ones need the next one to agree.
const SUSTAINED_VOICED_S: f64 = 2.0;

/// The caller's emotional state through the call.
#[derive(Debug, Clone, Default)]
pub struct EmotionTracker {
    baseline_rate: Option<f64>,
    baseline_loudness: Option<f64>,
    /// Negative words so far, in order.
    pub negative_words: Vec<String>,
    /// Summed negative weight so far.
    pub negative_weight: f64,
    /// Highest sustained rate ratio seen after the baseline.
    peak_rate_ratio: f64,
    /// The previous utterance's rate ratio (after the baseline).
    previous_ratio: Option<f64>,
    agitated_loudness: bool,
    repeated: bool,
    /// Times in a row the bot did not understand (beyond the first).
    not_understood: u32,
    /// Last score.
    pub score: f64,
    /// Last reasons, in plain words.
    pub reasons: Vec<String>,
    /// Latest rate ratio.
    pub rate_ratio: f64,
}

impl EmotionTracker {
    /// Take one utterance's measures; returns its signals and updates the
    /// score. `not_understood`: the bot failed to understand this caller again.
    #[allow(clippy::too_many_arguments)]
    pub fn observe(
        &mut self,
        cfg: &EmotionConfig,
        lexicon: &Lexicon,
        text: &str,
        syllables_per_s: f64,
        voiced_s: f64,
        loudness_dbfs: f64,
        repeated_request: bool,
        not_understood: bool,
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
        let speech = syllables_per_s > 0.5;
        let syllables = syllables_per_s * voiced_s;
        match (self.baseline_rate, speech) {
            (Some(b), true) => {
                s.rate_ratio = syllables_per_s / b.max(0.5);
                // Sustained: a long stretch at that pace, or two in a row.
                let sustained = if voiced_s >= SUSTAINED_VOICED_S {
                    s.rate_ratio
                } else {
                    self.previous_ratio.map_or(1.0, |p| p.min(s.rate_ratio))
                };
                self.previous_ratio = Some(s.rate_ratio);
                self.peak_rate_ratio = self.peak_rate_ratio.max(sustained);
            }
            (None, true) if syllables >= BASELINE_MIN_SYLLABLES => {
                self.baseline_rate = Some(syllables_per_s)
            }
            _ => {}
        }
        match self.baseline_loudness {
            Some(b) if speech => s.loudness_rise_db = loudness_dbfs - b,
            None if speech => self.baseline_loudness = Some(loudness_dbfs),
            _ => {}
        }
        self.negative_words.extend(s.negative.iter().cloned());
        self.negative_weight += weight;
        self.agitated_loudness |= s.loudness_rise_db >= cfg.loudness_rise_db;
        self.repeated |= repeated_request;
        if not_understood {
            self.not_understood += 1;
        }
        self.rate_ratio = s.rate_ratio;
        self.rescore(cfg);
        s
    }

    /// The speech-rate part of the score for a sustained ratio.
    fn rate_weight(cfg: &EmotionConfig, ratio: f64) -> f64 {
        let rise = (cfg.rate_rise - 1.0).max(0.01);
        if ratio < 1.1 {
            0.0
        } else if ratio < cfg.rate_rise {
            RATE_AT_RISE * (ratio - 1.0) / rise
        } else {
            let span = (cfg.rate_alone - cfg.rate_rise).max(0.01);
            RATE_AT_RISE + (RATE_ALONE - RATE_AT_RISE) * ((ratio - cfg.rate_rise) / span).min(1.0)
        }
    }

    fn rescore(&mut self, cfg: &EmotionConfig) {
        let mut score = 0.0;
        let mut reasons = Vec::new();
        if self.negative_weight > 0.0 {
            score += NEGATIVE_WEIGHT * self.negative_weight.min(2.0);
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
        // Speech rate against the caller's own start: a fast talker from the
        // first word is not agitated; one who speeds up is.
        let rate = Self::rate_weight(cfg, self.peak_rate_ratio);
        if rate > 0.0 {
            score += rate;
            reasons.push(format!(
                "speaking {:.1}× faster than at the start",
                self.peak_rate_ratio
            ));
        }
        if self.agitated_loudness {
            score += LOUDER_WEIGHT;
            reasons.push("speaking louder than at the start".into());
        }
        if self.repeated {
            score += REPEATED_WEIGHT;
            reasons.push("repeated the same request".into());
        }
        if self.not_understood > 0 {
            score += NOT_UNDERSTOOD_WEIGHT;
            reasons.push("the bot did not understand them again".into());
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

    const CFG: EmotionConfig = EmotionConfig {
        rate_rise: 1.35,
        rate_alone: 1.6,
        loudness_rise_db: 6.0,
    };

    #[test]
    fn fast_from_the_start_is_not_agitation_but_a_rise_is() {
        let l = en();
        let mut calm_fast = EmotionTracker::default();
        calm_fast.observe(
            &CFG,
            &l,
            "hello there my friend",
            5.5,
            2.0,
            -20.0,
            false,
            false,
        );
        calm_fast.observe(
            &CFG,
            &l,
            "my new address is here",
            5.6,
            2.0,
            -20.0,
            false,
            false,
        );
        assert_eq!(calm_fast.score, 0.0);
        let mut rising = EmotionTracker::default();
        rising.observe(&CFG, &l, "hello I need help", 4.0, 2.0, -25.0, false, false);
        rising.observe(
            &CFG,
            &l,
            "this is ridiculous",
            5.6,
            2.0,
            -25.0,
            false,
            false,
        );
        assert!(rising.score >= 0.6, "{}", rising.score);
        assert!(
            rising
                .reasons
                .iter()
                .any(|r| r.contains("1.4× faster than at the start")),
            "{:?}",
            rising.reasons
        );
    }

    #[test]
    fn a_strong_sustained_rise_is_enough_alone_a_moderate_one_needs_company() {
        let l = en();
        let strong = |second_voiced: f64| {
            let mut t = EmotionTracker::default();
            t.observe(
                &CFG,
                &l,
                "I want to change my plan",
                4.0,
                2.5,
                -25.0,
                false,
                false,
            );
            t.observe(
                &CFG,
                &l,
                "change it now now now",
                6.6,
                second_voiced,
                -25.0,
                false,
                false,
            );
            t
        };
        let t = strong(2.5);
        assert!(t.score >= 0.5, "1.65× over 2.5 s alone: {}", t.score);
        assert!(t.reasons[0].contains("1.6× faster"), "{:?}", t.reasons);
        // One short burst is not sustained: it needs the next utterance too.
        assert_eq!(strong(1.0).score, 0.0);
        let mut twice = strong(1.0);
        twice.observe(&CFG, &l, "right now please", 6.5, 1.0, -25.0, false, false);
        assert!(twice.score >= 0.5, "two short fast ones: {}", twice.score);

        let moderate = |not_understood: bool, louder: f64| {
            let mut t = EmotionTracker::default();
            t.observe(
                &CFG,
                &l,
                "I want to change my plan",
                4.0,
                2.5,
                -25.0,
                false,
                false,
            );
            t.observe(
                &CFG,
                &l,
                "the thing with the plan",
                5.5,
                2.5,
                louder,
                false,
                not_understood,
            );
            t.score
        };
        assert!(moderate(false, -25.0) < 0.5, "1.375× alone is not enough");
        assert!(
            moderate(true, -25.0) >= 0.5,
            "1.375× and not understood again"
        );
        assert!(moderate(false, -18.0) >= 0.5, "1.375× and louder");
        // Everyday variation with one other signal stays with the bot.
        let mut t = EmotionTracker::default();
        t.observe(
            &CFG,
            &l,
            "I want to change my plan",
            4.0,
            2.5,
            -25.0,
            false,
            false,
        );
        t.observe(
            &CFG,
            &l,
            "the thing with the plan",
            5.0,
            2.5,
            -25.0,
            false,
            true,
        );
        assert!(t.score < 0.5, "1.25× and not understood: {}", t.score);
    }

    #[test]
    fn chinese_negative_words_are_found_by_sound_too() {
        let zh = Lexicon::parse("[words]\n\"生气\" = 1.0\n\"投诉\" = 1.0\n").unwrap();
        let hits = zh.hits("我真的很生汽，我要投述");
        assert_eq!(hits.len(), 2, "{hits:?}");
        assert!(hits[0].0.contains("heard"), "{hits:?}");
        assert!(zh.hits("我没生气").is_empty(), "negated");
    }
}
