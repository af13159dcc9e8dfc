//! Prompts: WAV files of any common rate and format, converted once at load
//! to 8 kHz mono, and an interruptible player that yields 20 ms frames.

use super::jitter::FRAME_8K;
use std::path::Path;
use std::sync::Arc;

/// Why a prompt could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// Unreadable or not a WAV file.
    #[error("{path}: not a readable WAV file: {source}")]
    Wav {
        /// The file.
        path: String,
        /// The decoder's error.
        source: hound::Error,
    },
    /// Rate conversion failed.
    #[error("{path}: cannot convert to 8 kHz: {reason}")]
    Resample {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
}

/// A prompt ready to play: 8 kHz mono linear samples, shared between calls.
#[derive(Debug, Clone)]
pub struct Prompt {
    samples: Arc<[i16]>,
}

impl Prompt {
    /// Load and convert a WAV file.
    pub fn load(path: &Path) -> Result<Prompt, PromptError> {
        let name = path.display().to_string();
        let wav_err = |source| PromptError::Wav {
            path: name.clone(),
            source,
        };
        let reader = hound::WavReader::open(path).map_err(wav_err)?;
        let (mono, rate) = read_mono_f32(reader).map_err(wav_err)?;
        let at8k =
            super::resample::resample(&mono, rate, 8000).map_err(|e| PromptError::Resample {
                path: name.clone(),
                reason: e.to_string(),
            })?;
        Ok(Prompt::from_samples(
            at8k.iter()
                .map(|v| (v.clamp(-1.0, 1.0) * 32767.0) as i16)
                .collect(),
        ))
    }

    /// A prompt from 8 kHz samples.
    pub fn from_samples(samples: Vec<i16>) -> Prompt {
        Prompt {
            samples: samples.into(),
        }
    }

    /// 8 kHz samples.
    pub fn samples(&self) -> &[i16] {
        &self.samples
    }

    /// Playing time.
    pub fn duration(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.samples.len() as u64 / 8)
    }
}

/// Decode any PCM/float WAV to mono f32 in [-1, 1], with its sample rate.
pub fn read_mono_f32<R: std::io::Read>(
    reader: hound::WavReader<R>,
) -> Result<(Vec<f32>, u32), hound::Error> {
    let spec = reader.spec();
    let channels = usize::from(spec.channels.max(1));
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.into_samples::<f32>().collect::<Result<_, _>>()?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()?
        }
    };
    let mono = interleaved
        .chunks(channels)
        .map(|c| c.iter().sum::<f32>() / c.len() as f32)
        .collect();
    Ok((mono, spec.sample_rate))
}

/// Plays one prompt frame by frame; can be stopped (barge-in, DTMF).
#[derive(Debug, Clone)]
pub struct PromptPlayer {
    prompt: Prompt,
    position: usize,
}

impl PromptPlayer {
    /// Start playing `prompt` from the beginning.
    pub fn new(prompt: Prompt) -> Self {
        Self {
            prompt,
            position: 0,
        }
    }

    /// The next 20 ms frame (zero-padded at the end), or `None` when done.
    pub fn next_frame(&mut self) -> Option<[i16; FRAME_8K]> {
        let samples = self.prompt.samples();
        if self.position >= samples.len() {
            return None;
        }
        let mut frame = [0i16; FRAME_8K];
        let end = (self.position + FRAME_8K).min(samples.len());
        frame[..end - self.position].copy_from_slice(&samples[self.position..end]);
        self.position = end;
        Some(frame)
    }

    /// Whether everything has been played.
    pub fn finished(&self) -> bool {
        self.position >= self.prompt.samples().len()
    }

    /// Stop now.
    pub fn stop(&mut self) {
        self.position = self.prompt.samples().len();
    }
}
