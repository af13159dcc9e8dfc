//! The bounded ASR worker pool: one shared Whisper model, one decoding state
//! per worker thread, a bounded queue. It never blocks the media path: a full
//! queue or a job that waited too long is reported as overload, so the call
//! can go to a human instead of waiting in silence.

use super::asr::{Recognizer, WhisperModel};
use super::pipeline::{result_for, UtteranceResult};
use super::vad::Utterance;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// Pool settings.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// Worker threads (each with its own Whisper state).
    pub workers: usize,
    /// CPU threads each worker gives whisper.cpp.
    pub threads_per_worker: usize,
    /// Jobs that may wait.
    pub queue: usize,
    /// A job older than this when a worker reaches it is dropped as overload.
    pub max_wait: Duration,
}

/// Whether a job is an utterance's final text or an interim look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// The utterance ended.
    Final,
    /// The utterance is still going; text so far.
    Partial,
}

/// What the pool sends back.
#[derive(Debug, Clone)]
pub enum AsrReply {
    /// Recognised.
    Done {
        /// Final or partial.
        kind: JobKind,
        /// The result.
        result: UtteranceResult,
        /// Submission → result.
        latency: Duration,
        /// Time spent decoding.
        decode: Duration,
    },
    /// Not recognised because the pool is saturated.
    Overloaded {
        /// Why.
        reason: &'static str,
        /// The utterance's start (s), for the log.
        start_s: f64,
    },
    /// Whisper failed on this audio.
    Failed {
        /// The error.
        error: String,
    },
}

struct Job {
    kind: JobKind,
    language: Option<String>,
    utterance: Utterance,
    submitted: Instant,
    reply: UnboundedSender<AsrReply>,
}

/// Submission refused: the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ASR queue full")]
pub struct QueueFull;

/// A running pool.
#[derive(Clone)]
pub struct AsrPool {
    tx: SyncSender<Job>,
    queued: Arc<AtomicUsize>,
    busy: Arc<AtomicUsize>,
    config: PoolConfig,
}

impl std::fmt::Debug for AsrPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsrPool")
            .field("config", &self.config)
            .finish()
    }
}

impl AsrPool {
    /// Start `config.workers` threads over `model`.
    pub fn start(
        model: WhisperModel,
        language: Option<String>,
        config: PoolConfig,
    ) -> Result<AsrPool, super::asr::AsrError> {
        Self::start_with_encoder(model, language, config, None)
    }

    /// As [`AsrPool::start`]; each final text is also embedded by `encoder`
    /// on the same worker (semantic intents), off the media path.
    pub fn start_with_encoder(
        model: WhisperModel,
        language: Option<String>,
        config: PoolConfig,
        encoder: Option<Arc<super::encoder::SentenceEncoder>>,
    ) -> Result<AsrPool, super::asr::AsrError> {
        Self::start_full(model, None, language, config, encoder)
    }

    /// As [`AsrPool::start_with_encoder`], with a multilingual model for
    /// jobs in other languages than English when `model` is English-only.
    pub fn start_full(
        model: WhisperModel,
        multilingual: Option<WhisperModel>,
        language: Option<String>,
        config: PoolConfig,
        encoder: Option<Arc<super::encoder::SentenceEncoder>>,
    ) -> Result<AsrPool, super::asr::AsrError> {
        let multilingual = multilingual.filter(|_| !model.is_multilingual());
        let (tx, rx) = sync_channel::<Job>(config.queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let queued = Arc::new(AtomicUsize::new(0));
        let busy = Arc::new(AtomicUsize::new(0));
        for i in 0..config.workers.max(1) {
            let recognizer =
                Recognizer::new(&model, config.threads_per_worker, language.as_deref())?;
            let other = match &multilingual {
                Some(m) => Some(Recognizer::new(
                    m,
                    config.threads_per_worker,
                    language.as_deref(),
                )?),
                None => None,
            };
            let rx = rx.clone();
            let queued = queued.clone();
            let busy = busy.clone();
            let max_wait = config.max_wait;
            let encoder = encoder.clone();
            let default_language = language.clone();
            std::thread::Builder::new()
                .name(format!("asr-{i}"))
                .spawn(move || {
                    worker(
                        (recognizer, other, default_language),
                        encoder,
                        rx,
                        queued,
                        busy,
                        max_wait,
                    )
                })
                .map_err(|e| {
                    super::asr::AsrError::Decode(format!("cannot start ASR worker: {e}"))
                })?;
        }
        Ok(AsrPool {
            tx,
            queued,
            busy,
            config,
        })
    }

    /// Jobs waiting for a worker.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Whether every worker is busy or jobs are waiting.
    pub fn saturated(&self) -> bool {
        self.queued() > 0 || self.busy.load(Ordering::Relaxed) >= self.config.workers.max(1)
    }

    /// Whether the pool is behind, not merely working: half its queue is
    /// waiting (at least two utterances). A node says so to health probes so
    /// that a dispatcher sends new calls elsewhere; a busy worker alone is
    /// normal operation (a node with one worker is busy whenever anyone
    /// talks) and must not take the node out of rotation.
    pub fn overloaded(&self) -> bool {
        self.queued() >= (self.config.queue / 2).max(2)
    }

    /// Queue an utterance in the pool's default language; never blocks.
    pub fn submit(
        &self,
        kind: JobKind,
        utterance: Utterance,
        reply: UnboundedSender<AsrReply>,
    ) -> Result<(), QueueFull> {
        self.submit_in(kind, utterance, None, reply)
    }

    /// Queue an utterance in `language` (e.g. a trunk's); never blocks.
    pub fn submit_in(
        &self,
        kind: JobKind,
        utterance: Utterance,
        language: Option<String>,
        reply: UnboundedSender<AsrReply>,
    ) -> Result<(), QueueFull> {
        self.queued.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            kind,
            language,
            utterance,
            submitted: Instant::now(),
            reply,
        };
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                Err(QueueFull)
            }
        }
    }
}

/// A worker's recognisers: the main one, the multilingual one for other
/// languages (if the main one is English-only), and the pool's language.
type WorkerRecognizers = (Recognizer, Option<Recognizer>, Option<String>);

fn worker(
    (mut recognizer, mut multilingual, default_language): WorkerRecognizers,
    encoder: Option<Arc<super::encoder::SentenceEncoder>>,
    rx: Arc<Mutex<Receiver<Job>>>,
    queued: Arc<AtomicUsize>,
    busy: Arc<AtomicUsize>,
    max_wait: Duration,
) {
    loop {
        let job = {
            let Ok(guard) = rx.lock() else { return };
            match guard.recv() {
                Ok(j) => j,
                Err(_) => return,
            }
        };
        queued.fetch_sub(1, Ordering::Relaxed);
        let waited = job.submitted.elapsed();
        if waited > max_wait {
            let _ = job.reply.send(AsrReply::Overloaded {
                reason: "latency",
                start_s: job.utterance.start.as_secs_f64(),
            });
            continue;
        }
        busy.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        // Callers in another language than English go to the multilingual
        // model when the main one is English-only.
        let english = job
            .language
            .as_ref()
            .or(default_language.as_ref())
            .is_some_and(|l| l == "en");
        let rec = match multilingual.as_mut() {
            Some(m) if !english => m,
            _ => &mut recognizer,
        };
        let reply = match rec.recognize_in(&job.utterance.samples, job.language.as_deref()) {
            Ok(r) => AsrReply::Done {
                kind: job.kind,
                result: match job.kind {
                    JobKind::Final => super::pipeline::embed_result(
                        result_for(&job.utterance, r.text, r.language),
                        encoder.as_deref(),
                    ),
                    _ => result_for(&job.utterance, r.text, r.language),
                },
                latency: job.submitted.elapsed(),
                decode: started.elapsed(),
            },
            Err(e) => AsrReply::Failed {
                error: e.to_string(),
            },
        };
        busy.fetch_sub(1, Ordering::Relaxed);
        let _ = job.reply.send(reply);
    }
}
