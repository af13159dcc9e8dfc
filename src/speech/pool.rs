//! The bounded ASR worker pool: one shared Whisper model, one decoding state
//! per worker thread, a bounded queue. It never blocks the media path: a full
//! queue or a job that waited too long is reported as overload, so the call
//! can go to a human instead of waiting in silence.
//!
//! Finals before partials: a caller's final text (what the bot answers) is
//! taken before any interim look at someone's unfinished utterance, a newer
//! partial of a call replaces its older one still waiting, a final of a call
//! drops its waiting partial, and a partial that waited too long is dropped
//! quietly (it was only a preview) — so under load a caller's answer never
//! waits behind other callers' partials.

use super::asr::{AsrError, Recognizer, WhisperModel};
use super::pipeline::{result_for, UtteranceResult};
use super::vad::Utterance;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// Where a job's answer goes: a channel of [`AsrReply`], or any sink (a live
/// call hands its one inbox, so its task waits on a single channel).
#[derive(Clone)]
pub struct ReplyTo(Arc<dyn Fn(AsrReply) + Send + Sync>);

impl ReplyTo {
    /// Answers handed to `deliver`.
    pub fn new(deliver: impl Fn(AsrReply) + Send + Sync + 'static) -> Self {
        Self(Arc::new(deliver))
    }

    fn send(&self, reply: AsrReply) {
        (self.0)(reply)
    }

    /// The same sink (the same call): a newer partial replaces an older one.
    fn same(&self, other: &Self) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.0), Arc::as_ptr(&other.0))
    }
}

impl From<UnboundedSender<AsrReply>> for ReplyTo {
    fn from(tx: UnboundedSender<AsrReply>) -> Self {
        Self::new(move |reply| {
            let _ = tx.send(reply);
        })
    }
}

impl std::fmt::Debug for ReplyTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplyTo")
    }
}

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
    /// The caller paused: the utterance as it will close if the pause lasts
    /// (`VadEvent::Paused`). Queued and embedded like a final one: most
    /// become the final text, ready when the utterance closes.
    Early,
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
        /// Whisper's part of it, by stage (mel, encoder, decoder).
        stages: super::asr::Stages,
    },
    /// Not recognised because the pool is saturated.
    Overloaded {
        /// The job's kind.
        kind: JobKind,
        /// Why.
        reason: &'static str,
        /// The utterance's start (s), for the log.
        start_s: f64,
    },
    /// Whisper failed on this audio.
    Failed {
        /// The job's kind.
        kind: JobKind,
        /// The error.
        error: String,
        /// The utterance's start (s).
        start_s: f64,
    },
}

struct Job {
    kind: JobKind,
    language: Option<String>,
    utterance: Utterance,
    submitted: Instant,
    reply: ReplyTo,
}

/// Submission refused: the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ASR queue full")]
pub struct QueueFull;

/// The jobs waiting for a worker: finals first.
#[derive(Default)]
struct Waiting {
    finals: VecDeque<Job>,
    partials: VecDeque<Job>,
}

impl Waiting {
    fn len(&self) -> usize {
        self.finals.len() + self.partials.len()
    }

    fn next(&mut self) -> Option<Job> {
        self.finals
            .pop_front()
            .or_else(|| self.partials.pop_front())
    }

    /// Queue `job` within `capacity`: finals before partials, one partial
    /// per call (the newest), a final making room by dropping the oldest
    /// partial. `Err`: no room.
    fn push(&mut self, job: Job, capacity: usize) -> Result<(), QueueFull> {
        // This call's partial still waiting is superseded by what comes now.
        self.partials.retain(|p| !p.reply.same(&job.reply));
        match job.kind {
            JobKind::Partial if self.len() >= capacity => Err(QueueFull),
            JobKind::Partial => {
                self.partials.push_back(job);
                Ok(())
            }
            JobKind::Final | JobKind::Early => {
                if self.len() >= capacity && self.partials.pop_front().is_none() {
                    return Err(QueueFull);
                }
                self.finals.push_back(job);
                Ok(())
            }
        }
    }
}

/// The queue shared by submitters and workers.
struct Queue {
    waiting: Mutex<Waiting>,
    ready: Condvar,
    /// Finals (and early finals) waiting: a partial being decoded gives way.
    finals_waiting: Arc<AtomicUsize>,
    /// Partials given up for a waiting final.
    preempted: AtomicUsize,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running pool.
#[derive(Clone)]
pub struct AsrPool {
    queue: Arc<Queue>,
    /// Held only by pool handles: the workers watch it through a `Weak` and
    /// end when the last handle is gone. (Counting the queue's references
    /// instead raced with start-up: a first worker saw only itself and the
    /// pool while the second was still being built, and quit — a pool of two
    /// or more workers then had none.)
    #[allow(dead_code)] // held, never read: its strong count is the signal
    alive: Arc<()>,
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
        let queue = Arc::new(Queue {
            waiting: Mutex::default(),
            ready: Condvar::new(),
            finals_waiting: Arc::default(),
            preempted: AtomicUsize::new(0),
        });
        let alive = Arc::new(());
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
            let rx = queue.clone();
            let pool_alive = Arc::downgrade(&alive);
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
                        pool_alive,
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
            queue,
            alive,
            queued,
            busy,
            config,
        })
    }

    /// Interim transcripts given up so far because a final one was waiting.
    pub fn preempted(&self) -> usize {
        self.queue.preempted.load(Ordering::Relaxed)
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
        reply: impl Into<ReplyTo>,
    ) -> Result<(), QueueFull> {
        self.submit_in(kind, utterance, None, reply)
    }

    /// Queue an utterance in `language` (e.g. a trunk's); never blocks.
    /// A full queue refuses a partial, and makes room for a final by dropping
    /// the oldest waiting partial (a preview nobody will miss).
    pub fn submit_in(
        &self,
        kind: JobKind,
        utterance: Utterance,
        language: Option<String>,
        reply: impl Into<ReplyTo>,
    ) -> Result<(), QueueFull> {
        let job = Job {
            kind,
            language,
            utterance,
            submitted: Instant::now(),
            reply: reply.into(),
        };
        let mut w = self.queue.lock();
        let pushed = w.push(job, self.config.queue.max(1));
        self.queued.store(w.len(), Ordering::Relaxed);
        self.queue
            .finals_waiting
            .store(w.finals.len(), Ordering::Relaxed);
        drop(w);
        pushed?;
        self.queue.ready.notify_one();
        Ok(())
    }
}

/// A worker's recognisers: the main one, the multilingual one for other
/// languages (if the main one is English-only), and the pool's language.
type WorkerRecognizers = (Recognizer, Option<Recognizer>, Option<String>);

fn worker(
    (mut recognizer, mut multilingual, default_language): WorkerRecognizers,
    encoder: Option<Arc<super::encoder::SentenceEncoder>>,
    rx: Arc<Queue>,
    pool_alive: std::sync::Weak<()>,
    queued: Arc<AtomicUsize>,
    busy: Arc<AtomicUsize>,
    max_wait: Duration,
) {
    loop {
        let job = {
            let mut w = rx.lock();
            loop {
                if let Some(job) = w.next() {
                    queued.store(w.len(), Ordering::Relaxed);
                    rx.finals_waiting.store(w.finals.len(), Ordering::Relaxed);
                    break job;
                }
                // Every pool handle gone: the workers end with the pool.
                if pool_alive.strong_count() == 0 {
                    return;
                }
                w = rx
                    .ready
                    .wait_timeout(w, Duration::from_secs(1))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        };
        let waited = job.submitted.elapsed();
        if waited > max_wait && job.kind == JobKind::Partial {
            // Only a preview, and stale: not worth a worker, not an overload.
            continue;
        }
        if waited > max_wait {
            job.reply.send(AsrReply::Overloaded {
                kind: job.kind,
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
        // A partial is only a preview: it gives way the moment a caller's
        // final transcript waits (a final never waits behind one).
        let give_up = (job.kind == JobKind::Partial).then(|| rx.finals_waiting.clone());
        let result = rec.recognize_unless(&job.utterance.samples, job.language.as_deref(), give_up);
        if job.kind == JobKind::Partial {
            if let Err(e) = &result {
                // A preview that did not finish is dropped, never reported:
                // the call decides on finals only. (It used to be reported
                // as a failure when the final it gave way to had already
                // been taken by another worker by the time this one looked,
                // and the caller went to a human for asr_unavailable.)
                busy.fetch_sub(1, Ordering::Relaxed);
                if matches!(e, AsrError::GaveUp) {
                    rx.preempted.fetch_add(1, Ordering::Relaxed);
                } else {
                    tracing::warn!(error = %e, "interim transcript failed");
                }
                continue;
            }
        }
        let reply = match result {
            Ok(r) => AsrReply::Done {
                stages: r.stages,
                kind: job.kind,
                result: match job.kind {
                    JobKind::Final | JobKind::Early => super::pipeline::embed_result(
                        result_for(&job.utterance, r.text, r.language),
                        encoder.as_deref(),
                    ),
                    _ => result_for(&job.utterance, r.text, r.language),
                },
                latency: job.submitted.elapsed(),
                decode: started.elapsed(),
            },
            Err(e) => AsrReply::Failed {
                kind: job.kind,
                error: e.to_string(),
                start_s: job.utterance.start.as_secs_f64(),
            },
        };
        busy.fetch_sub(1, Ordering::Relaxed);
        job.reply.send(reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(kind: JobKind, reply: &ReplyTo, start_ms: u64) -> Job {
        Job {
            kind,
            language: None,
            utterance: Utterance {
                start: Duration::from_millis(start_ms),
                end: Duration::from_millis(start_ms + 500),
                voiced: Duration::from_millis(400),
                loudness_dbfs: -20.0,
                forced_cut: false,
                samples: Vec::new(),
                samples_start: Duration::from_millis(start_ms),
                closed_at: Duration::from_millis(start_ms + 1100),
            },
            submitted: Instant::now(),
            reply: reply.clone(),
        }
    }

    #[test]
    fn finals_go_first_and_partials_never_pile_up() {
        let a = ReplyTo::new(|_| ());
        let b = ReplyTo::new(|_| ());
        let c = ReplyTo::new(|_| ());
        let mut w = Waiting::default();
        w.push(job(JobKind::Partial, &a, 1), 3).expect("room");
        w.push(job(JobKind::Partial, &b, 2), 3).expect("room");
        // A's newer partial replaces its older one.
        w.push(job(JobKind::Partial, &a, 3), 3).expect("room");
        assert_eq!(w.len(), 2);
        // C's final goes before both partials.
        w.push(job(JobKind::Final, &c, 4), 3).expect("room");
        // Full: a partial is refused, a final makes room (the oldest partial
        // — B's — is dropped) and B's final replaces nothing else.
        assert_eq!(w.push(job(JobKind::Partial, &c, 5), 3), Err(QueueFull));
        w.push(job(JobKind::Final, &b, 6), 3)
            .expect("a partial made room");
        let order: Vec<(JobKind, u64)> = std::iter::from_fn(|| w.next())
            .map(|j| (j.kind, j.utterance.start.as_millis() as u64))
            .collect();
        assert_eq!(
            order,
            [
                (JobKind::Final, 4),
                (JobKind::Final, 6),
                (JobKind::Partial, 3)
            ]
        );
        // Finals only and full: refused.
        for n in 0..3 {
            w.push(job(JobKind::Final, &a, n), 3).expect("room");
        }
        assert_eq!(w.push(job(JobKind::Final, &b, 9), 3), Err(QueueFull));
        // A final drops its own call's waiting partial.
        let mut w = Waiting::default();
        w.push(job(JobKind::Partial, &a, 1), 3).expect("room");
        w.push(job(JobKind::Final, &a, 1), 3).expect("room");
        assert_eq!((w.finals.len(), w.partials.len()), (1, 0));
    }
}
