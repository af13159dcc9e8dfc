//! Voice activity detection and utterance segmentation on 16 kHz audio, as a
//! sans-IO state machine: samples in, utterances out, time derived from the
//! sample count (so a replay segments exactly as the live call did).

use std::collections::VecDeque;
use std::time::Duration;

/// earshot's frame: 256 samples = 16 ms at 16 kHz.
const FRAME: usize = 256;
const FRAME_MS: u64 = 16;
/// Frames (96 ms) added after the last voiced frame when reporting an
/// utterance's end: the decay the detector smooths over.
const END_TAIL_FRAMES: u64 = 6;
/// Sample rate the segmenter works at.
pub const RATE: u32 = 16_000;

/// Segmentation settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadConfig {
    /// Voice probability above which a frame is speech.
    pub threshold: f32,
    /// Silence that ends an utterance.
    pub hangover: Duration,
    /// Speech needed before an utterance starts.
    pub min_speech: Duration,
    /// Voiced time an utterance needs to be sent to Whisper: shorter ones (a
    /// click, a cough, a burst of line noise) are reported as
    /// [`VadEvent::TooShort`] instead — Whisper reads nothing in them, or
    /// invents a "Thank you." that could end the call.
    pub min_voiced: Duration,
    /// Longest utterance before a forced cut.
    pub max_utterance: Duration,
    /// Audio kept before the detected start.
    pub pre_roll: Duration,
    /// Audio kept after the last voiced frame.
    pub post_roll: Duration,
    /// Frames quieter than this (dBFS) are never speech, whatever the model
    /// says: line noise and codec idle patterns are not a caller talking.
    pub min_level_dbfs: f32,
    /// Silence after which the utterance so far is announced as
    /// [`VadEvent::Paused`] (its transcription can start before the hangover
    /// ends). Only between `post_roll` and `hangover`; zero: never.
    pub early_after: Duration,
}

impl Default for VadConfig {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            hangover: Duration::from_millis(600),
            min_speech: Duration::from_millis(96),
            min_voiced: Duration::from_millis(150),
            max_utterance: Duration::from_secs(15),
            pre_roll: Duration::from_millis(256),
            post_roll: Duration::from_millis(208),
            min_level_dbfs: -70.0,
            early_after: Duration::from_millis(400),
        }
    }
}

/// A finished stretch of speech.
#[derive(Debug, Clone, PartialEq)]
pub struct Utterance {
    /// Start of the utterance: the first voiced frame less the pre-roll (the
    /// attack the detector needs a few frames to hear), from the start of the stream.
    pub start: Duration,
    /// End: the last voiced frame plus 96 ms of decay (the audio sent to ASR
    /// keeps the full post-roll).
    pub end: Duration,
    /// Time the VAD judged voiced inside the utterance.
    pub voiced: Duration,
    /// RMS level of the voiced frames, dBFS.
    pub loudness_dbfs: f32,
    /// Whether `max_utterance` forced the cut.
    pub forced_cut: bool,
    /// Audio with pre- and post-roll, 16 kHz.
    pub samples: Vec<f32>,
    /// Stream time of `samples[0]`.
    pub samples_start: Duration,
    /// Stream time at which the segmenter closed the utterance (its end plus
    /// the hangover): when a live call can first act on it.
    pub closed_at: Duration,
}

/// What a push produced.
#[derive(Debug, Clone, PartialEq)]
pub enum VadEvent {
    /// Speech began (the caller started talking).
    SpeechStarted {
        /// When.
        at: Duration,
    },
    /// An utterance ended.
    Utterance(Utterance),
    /// Speech that started ended with less voiced time than
    /// [`VadConfig::min_voiced`]: not words, not to be transcribed.
    TooShort(Utterance),
    /// The caller has been silent for [`VadConfig::early_after`]: the
    /// utterance so far, exactly as it will close if the silence lasts the
    /// hangover — the same audio (up to the post-roll), start, end and voiced
    /// time; only `closed_at` (now) differs. A recogniser can start on it
    /// before the hangover runs out (issued only when `post_roll ≤
    /// early_after < hangover` and the voiced time is enough for words).
    Paused(Utterance),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Silence,
    Candidate { voiced: u64, gap: u64 },
    Speech,
}

/// Streaming segmenter for one caller.
pub struct Segmenter {
    detector: Box<earshot::Detector>,
    config: VadConfig,
    pending: Vec<f32>,
    /// Frames consumed so far.
    frames: u64,
    state: State,
    history: VecDeque<f32>,
    utterance: Vec<f32>,
    utterance_samples_start: u64,
    start_frame: u64,
    last_voiced_end_frame: u64,
    voiced_frames: u64,
    voiced_energy: f64,
    silence_run: u64,
}

impl std::fmt::Debug for Segmenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segmenter")
            .field("state", &self.state)
            .finish()
    }
}

fn frames_of(d: Duration) -> u64 {
    (d.as_millis() as u64).div_ceil(FRAME_MS)
}

fn frame_time(frame: u64) -> Duration {
    Duration::from_millis(frame * FRAME_MS)
}

impl Segmenter {
    /// A segmenter with `config`.
    pub fn new(config: VadConfig) -> Self {
        Self {
            detector: earshot::Detector::default_boxed(),
            config,
            pending: Vec::with_capacity(FRAME * 2),
            frames: 0,
            state: State::Silence,
            history: VecDeque::with_capacity(FRAME * 16),
            utterance: Vec::new(),
            utterance_samples_start: 0,
            start_frame: 0,
            last_voiced_end_frame: 0,
            voiced_frames: 0,
            voiced_energy: 0.0,
            silence_run: 0,
        }
    }

    /// Stream time consumed so far.
    pub fn now(&self) -> Duration {
        frame_time(self.frames)
    }

    /// Whether an utterance is in progress, with its start and audio so far.
    pub fn in_progress(&self) -> Option<(Duration, &[f32])> {
        (self.state == State::Speech).then(|| (frame_time(self.start_frame), &self.utterance[..]))
    }

    /// Feed 16 kHz samples in [-1, 1].
    pub fn push(&mut self, samples: &[f32]) -> Vec<VadEvent> {
        let mut events = Vec::new();
        self.pending.extend_from_slice(samples);
        let mut offset = 0;
        while self.pending.len() - offset >= FRAME {
            let frame: [f32; FRAME] = match self.pending[offset..offset + FRAME].try_into() {
                Ok(f) => f,
                Err(_) => break,
            };
            offset += FRAME;
            self.step(&frame, &mut events);
        }
        self.pending.drain(..offset);
        events
    }

    /// End of stream: close an utterance in progress.
    pub fn finish(&mut self) -> Option<Utterance> {
        if self.state == State::Speech {
            Some(self.close(false))
        } else {
            None
        }
    }

    fn step(&mut self, frame: &[f32; FRAME], events: &mut Vec<VadEvent>) {
        let score = self.detector.predict_f32(frame);
        let energy: f64 = frame.iter().map(|v| f64::from(*v) * f64::from(*v)).sum();
        let level_dbfs = 10.0 * (energy / FRAME as f64 + 1e-12).log10();
        let voiced =
            score >= self.config.threshold && level_dbfs >= f64::from(self.config.min_level_dbfs);
        let index = self.frames;
        self.frames += 1;
        let keep_frames = frames_of(self.config.pre_roll) as usize + 8;
        match self.state {
            State::Silence | State::Candidate { .. } => {
                self.history.extend(frame.iter());
                while self.history.len() > keep_frames * FRAME {
                    self.history.pop_front();
                }
            }
            State::Speech => self.utterance.extend_from_slice(frame),
        }
        match self.state {
            State::Silence => {
                if voiced {
                    self.state = State::Candidate { voiced: 1, gap: 0 };
                    self.start_frame = index;
                    self.voiced_frames = 1;
                    self.voiced_energy = energy;
                    self.last_voiced_end_frame = index + 1;
                }
            }
            State::Candidate { voiced: n, gap } => {
                if voiced {
                    let n = n + 1;
                    self.voiced_frames += 1;
                    self.voiced_energy += energy;
                    self.last_voiced_end_frame = index + 1;
                    if n >= frames_of(self.config.min_speech) {
                        self.begin_speech(events);
                    } else {
                        self.state = State::Candidate { voiced: n, gap: 0 };
                    }
                } else if gap >= 2 {
                    self.state = State::Silence;
                } else {
                    self.state = State::Candidate {
                        voiced: n,
                        gap: gap + 1,
                    };
                }
            }
            State::Speech => {
                if voiced {
                    self.voiced_frames += 1;
                    self.voiced_energy += energy;
                    self.last_voiced_end_frame = index + 1;
                    self.silence_run = 0;
                } else {
                    self.silence_run += 1;
                    let early = frames_of(self.config.early_after);
                    if self.silence_run == early
                        && early >= frames_of(self.config.post_roll)
                        && early < frames_of(self.config.hangover)
                        && frame_time(self.voiced_frames) >= self.config.min_voiced
                    {
                        events.push(VadEvent::Paused(self.snapshot()));
                    }
                }
                let length = frame_time(self.frames - self.start_frame);
                if self.silence_run >= frames_of(self.config.hangover) {
                    let u = self.close(false);
                    events.push(if u.voiced < self.config.min_voiced {
                        VadEvent::TooShort(u)
                    } else {
                        VadEvent::Utterance(u)
                    });
                } else if length >= self.config.max_utterance {
                    events.push(VadEvent::Utterance(self.close(true)));
                    if voiced {
                        // Still talking: the next utterance starts here.
                        self.start_frame = self.frames;
                        self.utterance_samples_start = self.frames * FRAME as u64;
                        self.voiced_frames = 0;
                        self.voiced_energy = 0.0;
                        self.silence_run = 0;
                        self.state = State::Speech;
                    }
                }
            }
        }
    }

    fn begin_speech(&mut self, events: &mut Vec<VadEvent>) {
        let pre = frames_of(self.config.pre_roll);
        let from_frame = self.start_frame.saturating_sub(pre);
        let history_start_frame = self.frames - (self.history.len() / FRAME) as u64;
        let skip = (from_frame.saturating_sub(history_start_frame) as usize) * FRAME;
        self.utterance = self.history.iter().skip(skip).copied().collect();
        self.utterance_samples_start = from_frame.max(history_start_frame) * FRAME as u64;
        self.history.clear();
        self.silence_run = 0;
        self.state = State::Speech;
        events.push(VadEvent::SpeechStarted {
            at: frame_time(self.start_frame),
        });
    }

    fn build(&self, forced: bool, mut samples: Vec<f32>) -> Utterance {
        let post = if forced {
            0
        } else {
            frames_of(self.config.post_roll)
        };
        let end_frame = self.last_voiced_end_frame.max(self.start_frame + 1);
        let keep_until = if forced {
            self.frames
        } else {
            (end_frame + post).min(self.frames)
        };
        let keep_samples =
            (keep_until * FRAME as u64).saturating_sub(self.utterance_samples_start) as usize;
        samples.truncate(keep_samples);
        let voiced_n = self.voiced_frames.max(1);
        let mean_sq = self.voiced_energy / (voiced_n * FRAME as u64) as f64;
        let loudness = if mean_sq > 0.0 {
            10.0 * mean_sq.log10()
        } else {
            -120.0
        };
        Utterance {
            start: Duration::from_micros(
                self.utterance_samples_start * 1_000_000 / u64::from(RATE),
            ),
            end: frame_time(if forced {
                self.frames
            } else {
                (end_frame + END_TAIL_FRAMES).min(keep_until)
            }),
            voiced: frame_time(self.voiced_frames),
            loudness_dbfs: loudness as f32,
            forced_cut: forced,
            samples,
            samples_start: Duration::from_micros(
                self.utterance_samples_start * 1_000_000 / u64::from(RATE),
            ),
            closed_at: frame_time(self.frames),
        }
    }

    /// The utterance in progress as `close(false)` would return it now, its
    /// audio copied (the segmenter keeps listening).
    fn snapshot(&self) -> Utterance {
        self.build(false, self.utterance.clone())
    }

    fn close(&mut self, forced: bool) -> Utterance {
        let samples = std::mem::take(&mut self.utterance);
        let u = self.build(forced, samples);
        self.state = State::Silence;
        self.history.clear();
        self.voiced_frames = 0;
        self.voiced_energy = 0.0;
        self.silence_run = 0;
        u
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_line_noise_is_not_speech() {
        let mut seg = Segmenter::new(VadConfig::default());
        let mut x = 12345u32;
        let noise: Vec<f32> = (0..16000 * 2)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                ((x >> 16) as f32 / 65536.0 - 0.5) * 0.0008
            })
            .collect();
        let mut audio = vec![0.0; 800];
        audio.extend(noise);
        assert!(seg.push(&audio).is_empty());
    }

    #[test]
    fn digital_silence_is_not_speech() {
        let mut seg = Segmenter::new(VadConfig::default());
        let events = seg.push(&vec![0.0; 16000 * 3]);
        assert!(events.is_empty(), "{events:?}");
        assert!(seg.finish().is_none());
    }
}
