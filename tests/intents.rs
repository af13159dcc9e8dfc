//! Intent understanding on held-out paraphrases (tests/intents/paraphrases.toml),
//! English and Mandarin, with the real sentence encoder and the shipped
//! flow.toml: accuracy per language, keywords alone versus keywords plus
//! meaning, and no calm sentence ever taken for a hand-over intent.

use std::collections::BTreeMap;
use voicegate::call::intents::{understand, SemanticSettings, Understanding};
use voicegate::config::Config;
use voicegate::speech::chinese::has_han;

#[derive(serde::Deserialize)]
struct Cases {
    case: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    intent: String,
    say: Vec<String>,
}

#[derive(Default, Debug)]
struct Tally {
    right: usize,
    wrong: usize,
    asked: usize,
    total: usize,
    serious_false: usize,
}

fn score(cfg: &Config, semantic: bool) -> (BTreeMap<&'static str, Tally>, Vec<String>) {
    let text = std::fs::read_to_string("tests/intents/paraphrases.toml").expect("paraphrases");
    let cases: Cases = toml::from_str(&text).expect("paraphrases.toml");
    let flow = &cfg.policy.flow;
    let settings = SemanticSettings {
        match_threshold: flow.match_threshold,
        threshold: flow.semantic_threshold,
        margin: flow.semantic_margin,
    };
    let encoder = cfg.encoder.as_ref().expect("sentence encoder installed");
    let serious = |name: &str| {
        flow.intent
            .iter()
            .any(|i| i.name == name && (i.urgent || i.handover))
    };
    let mut tally: BTreeMap<&'static str, Tally> = BTreeMap::new();
    let mut misses = Vec::new();
    for case in &cases.case {
        for say in &case.say {
            let lang = if has_han(say) { "zh" } else { "en" };
            let embedding = encoder.embed(say).expect("embed");
            let index = if semantic {
                cfg.policy.semantic.as_deref()
            } else {
                None
            };
            let got = understand(&flow.intent, index, settings, say, Some(&embedding));
            let t = tally.entry(lang).or_default();
            t.total += 1;
            match &got {
                Understanding::Intent(m) if m.name == case.intent => t.right += 1,
                Understanding::Nothing { .. } if case.intent == "none" => t.right += 1,
                Understanding::Unsure { first, second }
                    if first.name == case.intent || second.name == case.intent =>
                {
                    t.asked += 1
                }
                other => {
                    t.wrong += 1;
                    let name = match other {
                        Understanding::Intent(m) => m.name.clone(),
                        Understanding::Unsure { first, second } => {
                            format!("ask {}/{}", first.name, second.name)
                        }
                        Understanding::Nothing { .. } => "none".into(),
                    };
                    if case.intent == "none" && serious(&name) {
                        t.serious_false += 1;
                    }
                    misses.push(format!("{lang} {:>15} → {name:<22} {say}", case.intent));
                }
            }
        }
    }
    (tally, misses)
}

#[test]
fn paraphrases_are_understood_in_english_and_mandarin() {
    let cfg = Config::load(std::path::Path::new("sip-config")).expect("sip-config loads");
    assert!(
        cfg.policy.semantic.is_some(),
        "the sentence encoder must be installed (voicegate models install)"
    );
    let (keywords, _) = score(&cfg, false);
    let (semantic, misses) = score(&cfg, true);
    println!("language  method              right  asked  wrong  total  accuracy");
    for (method, tally) in [
        ("keywords only", &keywords),
        ("keywords + meaning", &semantic),
    ] {
        for (lang, t) in tally {
            println!(
                "{lang:<9} {method:<19} {:>5}  {:>5}  {:>5}  {:>5}  {:>6.1} %",
                t.right,
                t.asked,
                t.wrong,
                t.total,
                100.0 * t.right as f64 / t.total as f64
            );
        }
    }
    println!("misses (keywords + meaning):");
    for m in &misses {
        println!("  {m}");
    }
    for (lang, t) in &semantic {
        assert_eq!(
            t.serious_false, 0,
            "{lang}: a sentence that is no request was taken for an urgent or hand-over intent"
        );
        let accuracy = t.right as f64 / t.total as f64;
        assert!(
            accuracy >= 0.85,
            "{lang}: {:.1} % of held-out paraphrases understood (want ≥ 85 %)",
            accuracy * 100.0
        );
        let wrong = t.wrong as f64 / t.total as f64;
        assert!(wrong <= 0.1, "{lang}: {:.1} % misunderstood", wrong * 100.0);
    }
    for (lang, t) in &keywords {
        let s = &semantic[lang];
        assert!(
            s.right > t.right,
            "{lang}: meaning adds nothing over keywords ({} vs {})",
            s.right,
            t.right
        );
    }
}
