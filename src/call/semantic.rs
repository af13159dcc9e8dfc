//! Semantic intents: each intent's `examples` (and the flow's `off_topic`
//! examples) as sentence embeddings, and the nearest of them to what the
//! caller said. Plain data and arithmetic: the embeddings are made outside
//! (by the sentence encoder, on the ASR workers) and handed in.

use crate::speech::encoder::cosine;
use std::sync::Arc;

/// The name under which off-topic examples are ranked.
pub const OFF_TOPIC: &str = "(off topic)";

/// One example sentence and its embedding.
#[derive(Debug, Clone)]
pub struct Example {
    /// The intent it stands for, or [`OFF_TOPIC`].
    pub intent: String,
    /// The sentence, as written in `flow.toml`.
    pub text: String,
    /// Its embedding (L2-normalised).
    pub vector: Arc<[f32]>,
}

/// An intent's closeness to an utterance: its nearest example.
#[derive(Debug, Clone, PartialEq)]
pub struct Nearest {
    /// Intent name (or [`OFF_TOPIC`]).
    pub intent: String,
    /// Cosine similarity to the nearest example.
    pub score: f64,
    /// That example.
    pub example: String,
}

/// Every example of the flow, embedded.
#[derive(Debug, Clone, Default)]
pub struct SemanticIndex {
    examples: Vec<Example>,
}

impl SemanticIndex {
    /// An index over `examples`.
    pub fn new(examples: Vec<Example>) -> Self {
        Self { examples }
    }

    /// How many examples it holds.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Each intent's nearest example to `utterance`, closest first. An
    /// intent scores the mean of its two nearest examples when it has two
    /// (one lucky neighbour is weaker evidence than two).
    pub fn rank(&self, utterance: &[f32]) -> Vec<Nearest> {
        let mut per_intent: Vec<(String, f64, f64, String)> = Vec::new();
        for ex in &self.examples {
            let s = cosine(utterance, &ex.vector);
            match per_intent.iter_mut().find(|p| p.0 == ex.intent) {
                Some(p) if s > p.1 => {
                    p.2 = p.1;
                    p.1 = s;
                    p.3 = ex.text.clone();
                }
                Some(p) if s > p.2 => p.2 = s,
                Some(_) => {}
                None => per_intent.push((ex.intent.clone(), s, f64::NAN, ex.text.clone())),
            }
        }
        let mut ranked: Vec<Nearest> = per_intent
            .into_iter()
            .map(|(intent, first, second, example)| Nearest {
                intent,
                score: if second.is_nan() {
                    first
                } else {
                    (first + second) / 2.0
                },
                example,
            })
            .collect();
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
        ranked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: &[f32]) -> Arc<[f32]> {
        let n = x.iter().map(|a| a * a).sum::<f32>().sqrt();
        x.iter().map(|a| a / n).collect::<Vec<f32>>().into()
    }

    #[test]
    fn ranks_intents_by_their_two_nearest_examples() {
        let ex = |intent: &str, text: &str, x: &[f32]| Example {
            intent: intent.into(),
            text: text.into(),
            vector: v(x),
        };
        let index = SemanticIndex::new(vec![
            ex("billing", "my bill", &[1.0, 0.0, 0.0]),
            ex("billing", "my balance", &[0.9, 0.1, 0.0]),
            ex("tracking", "my parcel", &[0.0, 1.0, 0.0]),
            ex(OFF_TOPIC, "the weather", &[0.0, 0.0, 1.0]),
        ]);
        let r = index.rank(&v(&[0.95, 0.05, 0.0]));
        assert_eq!(r[0].intent, "billing");
        assert!(r[0].score > 0.95, "{r:?}");
        assert_eq!(r.len(), 3);
        assert!(r[1].score < 0.2);
    }
}
