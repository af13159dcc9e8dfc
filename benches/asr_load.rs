//! ASR under load: end of utterance → final text latency (p50/p95) for N
//! concurrently talking callers on the real tiny.en model and real calls, and
//! the memory each caller costs. Run: `cargo bench --bench asr_load`
//! (`ASR_LOAD_SECONDS`, `ASR_LOAD_CALLERS=1,2,4` to change the sweep,
//! `ASR_LOAD_MODEL=models/ggml-tiny.en-q8_0.bin` for another model,
//! `ASR_LOAD_EARLY_MS`: how long before the utterance closes its
//! transcription starts — 200 as shipped, `vad_hangover_ms − vad_early_ms`;
//! 0 asks at the close, as before early transcription;
//! `ASR_LOAD_PARTIAL_WINDOW_MS`: callers also ask for an interim transcript
//! every second while they talk, of at most this much of the latest audio —
//! 3000 as shipped, 0 the whole utterance so far; unset: no partials).

use std::time::{Duration, Instant};
use voicegate::speech::{asr, pipeline, pool, vad};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn utterances() -> Vec<vad::Utterance> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("tests/calls") else {
        return out;
    };
    for e in dir.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "wav") {
            continue;
        }
        let Ok(track) = pipeline::load_caller_track(&p) else {
            continue;
        };
        let mut seg = vad::Segmenter::new(vad::VadConfig::default());
        for c in track.samples.chunks(320) {
            for ev in seg.push(c) {
                if let vad::VadEvent::Utterance(u) = ev {
                    out.push(u);
                }
            }
        }
    }
    out
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let seconds: u64 = std::env::var("ASR_LOAD_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let callers: Vec<usize> = std::env::var("ASR_LOAD_CALLERS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 4, 6, 8, 12]);
    let base = rss_kib();
    let model_path =
        std::env::var("ASR_LOAD_MODEL").unwrap_or_else(|_| "models/ggml-tiny.en.bin".into());
    println!("model {model_path}");
    let model = match asr::WhisperModel::load(std::path::Path::new(&model_path)) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            return;
        }
    };
    let utts = utterances();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let workers = env("ASR_LOAD_WORKERS", cores);
    let early = Duration::from_millis(env("ASR_LOAD_EARLY_MS", 200) as u64);
    let threads = env("ASR_LOAD_THREADS", 1);
    let partial_window: Option<usize> = std::env::var("ASR_LOAD_PARTIAL_WINDOW_MS")
        .ok()
        .and_then(|v| v.parse().ok());
    let p = match pool::AsrPool::start(
        model,
        None,
        pool::PoolConfig {
            workers,
            threads_per_worker: threads,
            queue: 64,
            max_wait: Duration::from_secs(30),
        },
    ) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return;
        }
    };
    let after_model = rss_kib();
    println!("early start {} ms before the close", early.as_millis());
    match partial_window {
        None => println!("no partials"),
        Some(0) => println!("a partial every second of the whole utterance so far"),
        Some(w) => println!("a partial every second of at most the latest {w} ms"),
    }
    println!("{workers} worker(s) x {threads} thread(s); model + worker states: {:.1} MiB resident (process before: {:.1} MiB)", (after_model - base) as f64 / 1024.0, base as f64 / 1024.0);
    println!("| concurrent talking callers | utterances | p50 latency | p95 latency | p95 (≤ 5 s utterances) | p95 queue wait | p95 Whisper | p50 mel / encoder / decoder |");
    println!("|---|---|---|---|---|---|---|---|");
    for &n in &callers {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = Instant::now() + Duration::from_secs(seconds);
        let mut handles = Vec::new();
        for c in 0..n {
            let p = p.clone();
            let tx = tx.clone();
            let utts = utts.clone();
            handles.push(std::thread::spawn(move || {
                let mut i = c * 3;
                // One sink per caller: the pool replaces a caller's waiting
                // partial with its newer one, as for a live call.
                let (reply_tx, mut reply_rx) = tokio::sync::mpsc::unbounded_channel();
                let reply = pool::ReplyTo::from(reply_tx);
                // Staggered start, then talk / listen alternately in real time.
                std::thread::sleep(Duration::from_millis((c as u64 * 700) % 3000));
                while Instant::now() < stop {
                    let u = utts[i % utts.len()].clone();
                    i += 1;
                    let talk = u.end.saturating_sub(u.start);
                    let mut talked = Duration::ZERO;
                    if let Some(window) = partial_window {
                        // An interim transcript each second the caller talks on.
                        while talked + Duration::from_secs(1) < talk {
                            std::thread::sleep(Duration::from_secs(1));
                            talked += Duration::from_secs(1);
                            let upto = ((talked.as_millis() as usize) * 16).min(u.samples.len());
                            let from = if window == 0 {
                                0
                            } else {
                                upto.saturating_sub(window * 16)
                            };
                            let mut partial = u.clone();
                            partial.samples = u.samples[from..upto].to_vec();
                            let _ = p.submit(pool::JobKind::Partial, partial, reply.clone());
                        }
                    }
                    std::thread::sleep(talk.saturating_sub(talked));
                    let long = talk > Duration::from_secs(5);
                    let submitted = Instant::now();
                    // The utterance closes `early` after its job was asked for.
                    let closes = submitted + early;
                    let kind = if early.is_zero() {
                        pool::JobKind::Final
                    } else {
                        pool::JobKind::Early
                    };
                    if p.submit(kind, u, reply.clone()).is_err() {
                        let _ = tx.send((
                            f64::INFINITY,
                            long,
                            f64::INFINITY,
                            f64::INFINITY,
                            [f64::INFINITY; 3],
                        ));
                        continue;
                    }
                    let (lat, queue, whisper, stages) = loop {
                        match reply_rx.try_recv() {
                            // A partial's answer (or its refusal): not what we wait for.
                            Ok(pool::AsrReply::Done {
                                kind: pool::JobKind::Partial,
                                ..
                            })
                            | Ok(pool::AsrReply::Overloaded {
                                kind: pool::JobKind::Partial,
                                ..
                            }) => {}
                            Ok(pool::AsrReply::Done {
                                latency,
                                decode,
                                stages,
                                ..
                            }) => {
                                break (
                                    Instant::now()
                                        .saturating_duration_since(closes)
                                        .as_secs_f64(),
                                    latency.saturating_sub(decode).as_secs_f64(),
                                    decode.as_secs_f64(),
                                    [
                                        stages.mel.as_secs_f64(),
                                        stages.encoder.as_secs_f64(),
                                        stages.decoder.as_secs_f64(),
                                    ],
                                )
                            }
                            Ok(_) => {
                                break (
                                    f64::INFINITY,
                                    f64::INFINITY,
                                    f64::INFINITY,
                                    [f64::INFINITY; 3],
                                )
                            }
                            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                                std::thread::sleep(Duration::from_millis(2))
                            }
                            Err(_) => {
                                break (
                                    f64::INFINITY,
                                    f64::INFINITY,
                                    f64::INFINITY,
                                    [f64::INFINITY; 3],
                                )
                            }
                        }
                    };
                    let _ = tx.send((lat, long, queue, whisper, stages));
                    // The bot answers for about as long as the caller spoke.
                    std::thread::sleep(Duration::from_millis(1500));
                }
            }));
        }
        drop(tx);
        for h in handles {
            let _ = h.join();
        }
        let mut all = Vec::new();
        let mut short = Vec::new();
        let (mut queues, mut whispers) = (Vec::new(), Vec::new());
        let mut stages = [Vec::new(), Vec::new(), Vec::new()];
        while let Ok((lat, long, queue, whisper, stage)) = rx.try_recv() {
            all.push(lat);
            queues.push(queue);
            whispers.push(whisper);
            for (all, s) in stages.iter_mut().zip(stage) {
                all.push(s);
            }
            if !long {
                short.push(lat);
            }
        }
        let count = all.len();
        let p50 = percentile(&mut all, 0.5);
        let p95 = percentile(&mut all, 0.95);
        let p95s = percentile(&mut short, 0.95);
        let q95 = percentile(&mut queues, 0.95);
        let w95 = percentile(&mut whispers, 0.95);
        let [m50, e50, d50] = stages.map(|mut v| percentile(&mut v, 0.5) * 1000.0);
        println!(
            "| {n} | {count} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {m50:.0} / {e50:.0} / {d50:.0} ms |",
            p50 * 1000.0,
            p95 * 1000.0,
            p95s * 1000.0,
            q95 * 1000.0,
            w95 * 1000.0
        );
    }
    // Per-caller memory on the media/speech path: upsampler + VAD + buffers.
    let before = rss_kib();
    let mut per_call = Vec::new();
    for _ in 0..200 {
        let mut seg = vad::Segmenter::new(vad::VadConfig::default());
        let _ = seg.push(&[0.0; 16000 * 5]);
        per_call.push((voicegate::media::resample::Upsampler::new().ok(), seg));
    }
    let after = rss_kib();
    println!(
        "per-caller speech state (upsampler + VAD + buffers): {:.1} KiB",
        (after.saturating_sub(before)) as f64 / 200.0
    );
    drop(per_call);
}
