//! Sample-rate conversion (rubato): 8 kHz call audio to the 16 kHz frames
//! speech recognition wants, and whole files of any rate to the call rate.

use rubato::{FftFixedIn, Resampler};

/// Streaming 8 kHz → 16 kHz converter for 20 ms frames.
pub struct Upsampler {
    inner: FftFixedIn<f32>,
    input: Vec<f32>,
    output: Vec<Vec<f32>>,
}

impl std::fmt::Debug for Upsampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upsampler(8k->16k)")
    }
}

impl Upsampler {
    /// A converter taking 160-sample (20 ms) frames at 8 kHz.
    pub fn new() -> Result<Self, rubato::ResamplerConstructionError> {
        let inner = FftFixedIn::<f32>::new(8000, 16000, 160, 1, 1)?;
        let output = inner.output_buffer_allocate(true);
        Ok(Self {
            inner,
            input: vec![0.0; 160],
            output,
        })
    }

    /// Convert one 160-sample frame to 320 samples in [-1, 1], appended to `out`.
    pub fn process(&mut self, frame: &[i16], out: &mut Vec<f32>) {
        for (dst, src) in self.input.iter_mut().zip(frame.iter()) {
            *dst = f32::from(*src) / 32768.0;
        }
        if frame.len() < self.input.len() {
            self.input[frame.len()..].fill(0.0);
        }
        match self
            .inner
            .process_into_buffer(&[&self.input], &mut self.output, None)
        {
            Ok((_, produced)) => out.extend_from_slice(&self.output[0][..produced]),
            Err(_) => out.extend(std::iter::repeat_n(0.0, 320)),
        }
    }
}

/// Lowest sample rate accepted (Hz).
pub const MIN_RATE: u32 = 1_000;
/// Highest sample rate accepted (Hz): studio audio goes to 384 kHz.
pub const MAX_RATE: u32 = 384_000;

/// Why audio could not be resampled.
#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    /// A sample rate outside [`MIN_RATE`]..=[`MAX_RATE`].
    #[error("unsupported sample rate {0} Hz (1,000 to 384,000)")]
    Rate(u32),
    /// The resampler failed.
    #[error(transparent)]
    Rubato(#[from] rubato::ResampleError),
}

/// Convert a whole mono signal between rates (output length scaled exactly).
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>, ResampleError> {
    for rate in [from, to] {
        if !(MIN_RATE..=MAX_RATE).contains(&rate) {
            // A WAV header can claim any rate; the FFT resampler's tables
            // grow with it (4 GHz asked for gigabytes — found by `make fuzz`).
            return Err(ResampleError::Rate(rate));
        }
    }
    if from == to || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let chunk = 1024;
    let Ok(mut r) = FftFixedIn::<f32>::new(from as usize, to as usize, chunk, 2, 1) else {
        return Ok(samples.to_vec());
    };
    let delay = r.output_delay();
    let expected = (samples.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let mut out = Vec::with_capacity(expected + delay + chunk * 2);
    let mut pos = 0;
    while pos + chunk <= samples.len() {
        let res = r.process(&[&samples[pos..pos + chunk]], None)?;
        out.extend_from_slice(&res[0]);
        pos += chunk;
    }
    let res = r.process_partial(Some(&[&samples[pos..]]), None)?;
    out.extend_from_slice(&res[0]);
    while out.len() < expected + delay {
        let res = r.process_partial::<&[f32]>(None, None)?;
        if res[0].is_empty() {
            break;
        }
        out.extend_from_slice(&res[0]);
    }
    let end = (delay + expected).min(out.len());
    Ok(out[delay.min(end)..end].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_rates_are_refused_not_allocated() {
        // A WAV header claiming 4 GHz (the input `make fuzz` found).
        assert!(matches!(
            resample(&[0.0; 164], u32::MAX, 16_000),
            Err(ResampleError::Rate(u32::MAX))
        ));
        assert!(matches!(
            resample(&[0.0; 10], 8_000, 0),
            Err(ResampleError::Rate(0))
        ));
        assert_eq!(
            resample(&[0.5; 4], 384_000, 384_000).expect("same rate"),
            [0.5; 4]
        );
    }

    #[test]
    fn upsampler_keeps_a_tone() {
        let mut up = Upsampler::new().unwrap();
        let tone: Vec<i16> = (0..1600)
            .map(|n| {
                ((2.0 * std::f32::consts::PI * 440.0 * n as f32 / 8000.0).sin() * 16000.0) as i16
            })
            .collect();
        let mut out = Vec::new();
        for f in tone.chunks(160) {
            up.process(f, &mut out);
        }
        assert_eq!(out.len(), 3200);
        let rms = (out[1600..].iter().map(|v| v * v).sum::<f32>() / 1600.0).sqrt();
        assert!((rms - 0.345).abs() < 0.03, "rms {rms}");
    }

    #[test]
    fn whole_file_resample_has_exact_length() {
        let s: Vec<f32> = (0..22050).map(|n| (n as f32 * 0.01).sin()).collect();
        let out = resample(&s, 22050, 8000).unwrap();
        assert_eq!(out.len(), 8000);
    }
}
