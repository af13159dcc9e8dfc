//! The speech pipeline shared by live calls, `voicegate transcribe` and replay:
//! 8 kHz call audio → 16 kHz → VAD utterances → Whisper → per-utterance
//! features (text, times, speech rate, loudness).

use super::asr::{AsrError, Recognizer};
use super::vad::{Segmenter, Utterance, VadConfig, VadEvent};
use crate::media::resample::Upsampler;
use std::path::Path;
use std::time::Duration;

/// One recognised utterance with the signals the emotion layer uses.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct UtteranceResult {
    /// Start (s from the start of the stream).
    pub start_s: f64,
    /// End (s).
    pub end_s: f64,
    /// Recognised text.
    pub text: String,
    /// Words per second over voiced time (characters per second for CJK text).
    pub words_per_s: f64,
    /// Syllables per second over voiced time (a CJK character is one
    /// syllable): the pace the emotion layer compares, steadier than words
    /// ("blue" and "relevant" take different time).
    pub syllables_per_s: f64,
    /// RMS level of the voiced audio, dBFS.
    pub loudness_dbfs: f32,
    /// Voiced time inside the utterance (s).
    pub voiced_s: f64,
    /// Whether the maximum utterance length forced a cut.
    pub forced_cut: bool,
    /// Language the text is in (configured, or detected by a multilingual model).
    pub language: String,
    /// When the VAD closed the utterance (s): the moment a call can act on it.
    pub closed_at_s: f64,
    /// The text's sentence embedding (semantic intents), made beside Whisper
    /// on the same worker; `None` without a sentence encoder. Not logged: it
    /// is made again from the text on replay.
    #[serde(skip)]
    pub embedding: Option<std::sync::Arc<[f32]>>,
}

fn is_cjk(c: char) -> bool {
    matches!(u32::from(c), 0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x3040..=0x30FF | 0xAC00..=0xD7AF)
}

/// Words in `text` (CJK characters count one each).
pub fn word_count(text: &str) -> usize {
    let cjk = text.chars().filter(|c| is_cjk(*c)).count();
    let words = text
        .split(|c: char| c.is_whitespace() || is_cjk(c))
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .count();
    cjk + words
}

/// Syllables in one English word, estimated from its spelling: groups of
/// vowels, less a silent final e ("change", not "table"); at least one.
fn word_syllables(word: &str) -> usize {
    let w: Vec<char> = word
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphabetic())
        .collect();
    if w.is_empty() {
        return usize::from(word.chars().any(|c| c.is_ascii_digit()));
    }
    let vowel = |c: char| matches!(c, 'a' | 'e' | 'i' | 'o' | 'u' | 'y');
    let mut groups = 0;
    let mut prev = false;
    for &c in &w {
        let v = vowel(c);
        if v && !prev {
            groups += 1;
        }
        prev = v;
    }
    let n = w.len();
    let silent_e = |end: usize| {
        // "change", "likes", "moved": a final e (before s/d) after a
        // consonant is not voiced — but "table", "wanted", "boxes" are.
        end >= 2 && w[end] == 'e' && !vowel(w[end - 1]) && (w[end - 1] != 'l' || vowel(w[end - 2]))
    };
    let last = n - 1;
    let final_e = n > 2 && silent_e(last);
    let before_s = n > 3
        && w[last] == 's'
        && silent_e(last - 1)
        && !matches!(w[last - 2], 's' | 'x' | 'z' | 'c' | 'g' | 'h');
    let before_d =
        n > 3 && w[last] == 'd' && silent_e(last - 1) && !matches!(w[last - 2], 't' | 'd');
    // "lovely", "movement", "careful": the e before these endings is silent too.
    let word: String = w.iter().collect();
    let before_suffix = ["ely", "ement", "eful", "eness"].iter().any(|suffix| {
        word.strip_suffix(suffix)
            .and_then(|stem| stem.chars().last())
            .is_some_and(|c| !vowel(c) && word.len() > suffix.len() + 1)
    });
    if final_e || before_s || before_d {
        groups -= 1;
    }
    if before_suffix && groups > 1 {
        groups -= 1;
    }
    groups.max(1)
}

/// Syllables in `text`: CJK characters one each, other words by spelling.
pub fn syllable_count(text: &str) -> usize {
    let cjk = text.chars().filter(|c| is_cjk(*c)).count();
    let other: usize = text
        .split(|c: char| c.is_whitespace() || is_cjk(c))
        .flat_map(|w| w.split(|c: char| !(c.is_alphanumeric() || c == '\'')))
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .map(word_syllables)
        .sum();
    cjk + other
}

/// Speech rate: words (or CJK characters) per voiced second.
pub fn speech_rate(text: &str, voiced: Duration) -> f64 {
    let secs = voiced.as_secs_f64().max(0.2);
    word_count(text) as f64 / secs
}

/// Build the result for a recognised utterance.
pub fn result_for(u: &Utterance, text: String, language: String) -> UtteranceResult {
    UtteranceResult {
        start_s: u.start.as_secs_f64(),
        end_s: u.end.as_secs_f64(),
        words_per_s: (speech_rate(&text, u.voiced) * 100.0).round() / 100.0,
        syllables_per_s: (syllable_count(&text) as f64 / u.voiced.as_secs_f64().max(0.2) * 100.0)
            .round()
            / 100.0,
        text,
        loudness_dbfs: (u.loudness_dbfs * 10.0).round() / 10.0,
        voiced_s: u.voiced.as_secs_f64(),
        forced_cut: u.forced_cut,
        language,
        closed_at_s: u.closed_at.as_secs_f64(),
        embedding: None,
    }
}

/// Add the sentence embedding of a final utterance's text (a failure, or no
/// encoder, leaves the keywords alone to decide).
pub fn embed_result(
    mut result: UtteranceResult,
    encoder: Option<&super::encoder::SentenceEncoder>,
) -> UtteranceResult {
    if let Some(enc) = encoder.filter(|_| !result.text.trim().is_empty()) {
        match enc.embed(&result.text) {
            Ok(v) => result.embedding = Some(v),
            Err(e) => tracing::warn!(error = %e, "sentence embedding failed"),
        }
    }
    result
}

/// Why an audio file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// Not readable / not WAV / unsupported encoding.
    #[error("{path}: {reason}")]
    Unreadable {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// A caller track at 16 kHz, converted exactly as a live call converts it.
#[derive(Debug, Clone)]
pub struct Track {
    /// 16 kHz samples in [-1, 1].
    pub samples: Vec<f32>,
    /// The file's duration.
    pub duration: Duration,
    /// Channels in the file (2 = a gateway recording; the caller is left).
    pub channels: u16,
    /// The file's sample rate.
    pub rate: u32,
}

/// Load the caller track of a WAV: the left channel of a stereo recording,
/// else the mono signal; 8 kHz audio goes through the live path's streaming
/// upsampler frame by frame so replay hears what the live call heard.
pub fn load_caller_track(path: &Path) -> Result<Track, AudioError> {
    let err = |reason: String| AudioError::Unreadable {
        path: path.display().to_string(),
        reason,
    };
    let file =
        std::fs::File::open(path).map_err(|e| err(format!("not a readable WAV file ({e})")))?;
    read_caller_track(std::io::BufReader::new(file)).map_err(err)
}

/// [`load_caller_track`] from any reader (a file, bytes in memory); the
/// error is the reason alone.
pub fn read_caller_track<R: std::io::Read>(source: R) -> Result<Track, String> {
    let err = |reason: String| reason;
    let reader =
        hound::WavReader::new(source).map_err(|e| err(format!("not a readable WAV file ({e})")))?;
    let spec = reader.spec();
    if spec.channels == 0 || spec.sample_rate < 4000 {
        return Err(err(format!(
            "unsupported format: {} channels at {} Hz",
            spec.channels, spec.sample_rate
        )));
    }
    let channels = usize::from(spec.channels);
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .into_samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(|e| err(format!("truncated or corrupt audio ({e})")))?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(|e| err(format!("truncated or corrupt audio ({e})")))?
        }
    };
    let caller: Vec<f32> = interleaved.chunks(channels).map(|c| c[0]).collect();
    let duration = Duration::from_secs_f64(caller.len() as f64 / f64::from(spec.sample_rate));
    let samples = if spec.sample_rate == 8000 {
        let mut up = Upsampler::new().map_err(|e| err(e.to_string()))?;
        let mut out = Vec::with_capacity(caller.len() * 2);
        let mut frame = [0i16; 160];
        for chunk in caller.chunks(160) {
            for (d, s) in frame
                .iter_mut()
                .zip(chunk.iter().chain(std::iter::repeat(&0.0)))
            {
                // Exactly the recorded 16-bit sample (×32768 undoes the
                // read's ÷32768): a one-LSB difference can flip the VAD on a
                // soft onset and move an utterance's start by frames.
                *d = (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
            }
            up.process(&frame[..], &mut out);
        }
        out
    } else {
        crate::media::resample::resample(&caller, spec.sample_rate, 16000)
            .map_err(|e| err(e.to_string()))?
    };
    Ok(Track {
        samples,
        duration,
        channels: spec.channels,
        rate: spec.sample_rate,
    })
}

/// Segment a whole 16 kHz track (in 20 ms chunks, like a live call) and
/// recognise each utterance.
pub fn transcribe_track(
    samples: &[f32],
    vad: VadConfig,
    recognizer: &mut Recognizer,
    language: Option<&str>,
) -> Result<Vec<UtteranceResult>, AsrError> {
    let mut seg = Segmenter::new(vad);
    let mut utterances = Vec::new();
    for chunk in samples.chunks(320) {
        for ev in seg.push(chunk) {
            if let VadEvent::Utterance(u) = ev {
                utterances.push(u);
            }
        }
    }
    utterances.extend(seg.finish());
    utterances
        .iter()
        .map(|u| {
            recognizer
                .recognize_in(&u.samples, language)
                .map(|r| result_for(u, r.text, r.language))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_cjk_characters_count() {
        assert_eq!(word_count("This is ridiculous."), 3);
        assert_eq!(word_count("  hello , world  "), 2);
        assert_eq!(word_count("我要投诉"), 4);
        assert_eq!(word_count("I want 退款 now"), 5);
        assert!((speech_rate("one two three", Duration::from_secs(2)) - 1.5).abs() < 1e-9);
    }

    #[test]
    fn syllables_from_spelling_and_one_per_han_character() {
        for (text, n) in [
            ("change", 1),
            ("likes", 1),
            ("moved", 1),
            ("table", 2),
            ("wanted", 2),
            ("boxes", 2),
            ("relevant", 3),
            ("lovely", 2),
            ("the weather in the mountains is lovely", 10),
            ("我要投诉", 4),
            ("I want 退款", 4),
        ] {
            assert_eq!(syllable_count(text), n, "{text}");
        }
    }
}
