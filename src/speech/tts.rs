//! Local text-to-speech: espeak-ng through its C library (Debian's
//! libespeak-ng) behind a trait, rendered at the call's rate, with a cache
//! for the fixed texts a bot says again and again.

use crate::media::prompt::Prompt;
use std::collections::HashMap;
use std::ffi::{c_int, c_short, c_void, CString};
use std::sync::{Mutex, OnceLock};

/// The few declarations of `<espeak-ng/speak_lib.h>` used here (Debian's
/// libespeak-ng-dev); written out rather than generated, to keep the build
/// free of a second bindgen.
mod ffi {
    use std::ffi::{c_char, c_int, c_short, c_uint, c_void};

    /// `AUDIO_OUTPUT_SYNCHRONOUS` of `espeak_AUDIO_OUTPUT`.
    pub const AUDIO_OUTPUT_SYNCHRONOUS: c_uint = 2;
    /// `POS_CHARACTER` of `espeak_POSITION_TYPE`.
    pub const POS_CHARACTER: c_uint = 1;
    /// `espeakCHARS_UTF8`.
    pub const CHARS_UTF8: c_uint = 1;
    /// `espeakRATE` of `espeak_PARAMETER`.
    pub const RATE: c_uint = 1;
    /// `EE_OK` of `espeak_ERROR`.
    pub const EE_OK: c_int = 0;

    /// `t_espeak_callback`; events are not read.
    pub type Callback = unsafe extern "C" fn(*mut c_short, c_int, *mut c_void) -> c_int;

    #[link(name = "espeak-ng")]
    unsafe extern "C" {
        pub fn espeak_Initialize(
            output: c_uint,
            buflength: c_int,
            path: *const c_char,
            options: c_int,
        ) -> c_int;
        pub fn espeak_SetSynthCallback(cb: Option<Callback>);
        pub fn espeak_SetVoiceByName(name: *const c_char) -> c_int;
        pub fn espeak_SetParameter(parameter: c_uint, value: c_int, relative: c_int) -> c_int;
        #[allow(clippy::too_many_arguments)]
        pub fn espeak_Synth(
            text: *const c_void,
            size: usize,
            position: c_uint,
            position_type: c_uint,
            end_position: c_uint,
            flags: c_uint,
            unique_identifier: *mut c_uint,
            user_data: *mut c_void,
        ) -> c_int;
    }
}

/// Why speech could not be synthesised.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TtsError {
    /// The engine could not start (data files missing?).
    #[error("espeak-ng could not start: {0}")]
    Init(String),
    /// Synthesis failed.
    #[error("speech synthesis failed: {0}")]
    Synth(String),
}

/// Anything that turns text into 8 kHz speech.
pub trait Synthesizer: Send + Sync {
    /// Render `text` in `voice` (e.g. `en`, `cmn`) as an 8 kHz prompt.
    fn synthesize(&self, text: &str, voice: &str) -> Result<Prompt, TtsError>;
}

/// espeak-ng keeps global state: one synthesis at a time, process-wide.
struct Engine {
    rate: u32,
}

static ENGINE: OnceLock<Result<Mutex<Engine>, TtsError>> = OnceLock::new();
static BUFFER: Mutex<Vec<i16>> = Mutex::new(Vec::new());

unsafe extern "C" fn collect(wav: *mut c_short, count: c_int, _events: *mut c_void) -> c_int {
    if !wav.is_null() && count > 0 {
        // SAFETY: espeak-ng hands us `count` samples at `wav`, valid for this call.
        let samples = unsafe { std::slice::from_raw_parts(wav, count as usize) };
        if let Ok(mut b) = BUFFER.lock() {
            b.extend_from_slice(samples);
        }
    }
    0
}

fn engine() -> Result<&'static Mutex<Engine>, TtsError> {
    ENGINE
        .get_or_init(|| {
            // SAFETY: plain C initialisation; a null path uses the installed data.
            let rate = unsafe {
                ffi::espeak_Initialize(ffi::AUDIO_OUTPUT_SYNCHRONOUS, 0, std::ptr::null(), 0)
            };
            if rate <= 0 {
                return Err(TtsError::Init(format!("espeak_Initialize returned {rate}")));
            }
            // SAFETY: `collect` has the callback's signature and lives forever.
            unsafe { ffi::espeak_SetSynthCallback(Some(collect)) };
            Ok(Mutex::new(Engine { rate: rate as u32 }))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// espeak-ng, the default synthesiser.
#[derive(Debug, Default, Clone, Copy)]
pub struct Espeak;

impl Synthesizer for Espeak {
    fn synthesize(&self, text: &str, voice: &str) -> Result<Prompt, TtsError> {
        let engine = engine()?;
        let guard = engine
            .lock()
            .map_err(|_| TtsError::Synth("engine lock poisoned".into()))?;
        let c_voice = CString::new(voice).map_err(|e| TtsError::Synth(e.to_string()))?;
        let c_text =
            CString::new(text.replace('\0', " ")).map_err(|e| TtsError::Synth(e.to_string()))?;
        if let Ok(mut b) = BUFFER.lock() {
            b.clear();
        }
        // SAFETY: the engine is initialised and we hold its lock; the strings
        // outlive the synchronous calls.
        let err = unsafe {
            ffi::espeak_SetVoiceByName(c_voice.as_ptr());
            ffi::espeak_SetParameter(ffi::RATE, 165, 0);
            ffi::espeak_Synth(
                c_text.as_ptr() as *const c_void,
                c_text.as_bytes_with_nul().len(),
                0,
                ffi::POS_CHARACTER,
                0,
                ffi::CHARS_UTF8,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if err != ffi::EE_OK {
            return Err(TtsError::Synth(format!("espeak_Synth error {err}")));
        }
        let samples = BUFFER
            .lock()
            .map(|mut b| std::mem::take(&mut *b))
            .unwrap_or_default();
        let rate = guard.rate;
        drop(guard);
        let f: Vec<f32> = samples.iter().map(|s| f32::from(*s) / 32768.0).collect();
        let at8k = crate::media::resample::resample(&f, rate, 8000)
            .map_err(|e| TtsError::Synth(e.to_string()))?;
        Ok(Prompt::from_samples(
            at8k.iter()
                .map(|v| (v.clamp(-1.0, 1.0) * 32767.0) as i16)
                .collect(),
        ))
    }
}

/// Remembers what it has rendered: the bot's fixed phrases cost nothing twice.
pub struct CachedSynthesizer<S> {
    inner: S,
    cache: Mutex<HashMap<(String, String), Prompt>>,
    limit: usize,
}

impl<S: Synthesizer> CachedSynthesizer<S> {
    /// Cache up to `limit` phrases.
    pub fn new(inner: S, limit: usize) -> Self {
        Self {
            inner,
            cache: Mutex::new(HashMap::new()),
            limit,
        }
    }
}

impl<S: Synthesizer> Synthesizer for CachedSynthesizer<S> {
    fn synthesize(&self, text: &str, voice: &str) -> Result<Prompt, TtsError> {
        let key = (voice.to_string(), text.to_string());
        if let Some(p) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(p);
        }
        let p = self.inner.synthesize(text, voice)?;
        if let Ok(mut c) = self.cache.lock() {
            if c.len() < self.limit {
                c.insert(key, p.clone());
            }
        }
        Ok(p)
    }
}

/// The operator's recorded prompts first (`prompts = { zh = "…wav" }` on an
/// intent: a recording of that reply in that language), synthesis for the rest.
pub struct RecordedFirst {
    recorded: HashMap<String, Prompt>,
    synthesizer: std::sync::Arc<dyn Synthesizer>,
}

impl RecordedFirst {
    /// `recorded`: reply text → its recording.
    pub fn new(
        recorded: HashMap<String, Prompt>,
        synthesizer: std::sync::Arc<dyn Synthesizer>,
    ) -> Self {
        Self {
            recorded,
            synthesizer,
        }
    }

    /// Load `(reply text, file)` recordings (files relative to `config_dir`)
    /// by the reply text they stand for; unreadable ones are logged and
    /// skipped (`config check` reports them before).
    pub fn load(
        config_dir: &std::path::Path,
        replies: &[(String, String)],
    ) -> HashMap<String, Prompt> {
        let mut out = HashMap::new();
        for (text, file) in replies {
            match Prompt::load(&config_dir.join(file)) {
                Ok(p) => {
                    out.insert(text.clone(), p);
                }
                Err(e) => {
                    tracing::warn!(%file, error = %e, "recorded prompt unusable: synthesising the reply")
                }
            }
        }
        out
    }
}

impl Synthesizer for RecordedFirst {
    fn synthesize(&self, text: &str, voice: &str) -> Result<Prompt, TtsError> {
        match self.recorded.get(text) {
            Some(p) => Ok(p.clone()),
            None => self.synthesizer.synthesize(text, voice),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any text as one second of a 440 Hz tone: stands in for espeak-ng
    /// where only the choice between recording and synthesis is tested.
    struct Tone;
    impl Synthesizer for Tone {
        fn synthesize(&self, _: &str, _: &str) -> Result<Prompt, TtsError> {
            Ok(Prompt::from_samples(
                (0..8000)
                    .map(|i| {
                        ((i as f32 * 440.0 * std::f32::consts::TAU / 8000.0).sin() * 8000.0) as i16
                    })
                    .collect(),
            ))
        }
    }

    #[test]
    fn an_operators_recording_replaces_the_synthesised_reply_in_its_language() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(dir.path().join("prompts/zh")).expect("mkdir");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w =
            hound::WavWriter::create(dir.path().join("prompts/zh/billing.wav"), spec).expect("wav");
        for _ in 0..12000 {
            w.write_sample(1000i16).expect("sample");
        }
        w.finalize().expect("finalize");
        let flow: toml::Value = toml::from_str(
            r#"[[intent]]
name = "billing"
reply = "Your balance is ten dollars."
replies = { zh = "您的余额是十元。" }
prompts = { zh = "prompts/zh/billing.wav", en = "prompts/missing.wav" }
"#,
        )
        .expect("toml");
        let intents: Vec<crate::call::intents::Intent> =
            flow["intent"].clone().try_into().expect("intents");
        let replies: Vec<(String, String)> =
            intents.iter().flat_map(|i| i.recorded_replies()).collect();
        let recorded = RecordedFirst::load(dir.path(), &replies);
        assert_eq!(
            recorded.len(),
            1,
            "the missing English recording is skipped"
        );
        let tts = RecordedFirst::new(recorded, std::sync::Arc::new(Tone));
        let zh = tts.synthesize("您的余额是十元。", "cmn").expect("recorded");
        assert_eq!(zh.samples().len(), 12000, "the operator's recording");
        let en = tts
            .synthesize("Your balance is ten dollars.", "en-us")
            .expect("synth");
        assert_eq!(
            en.samples().len(),
            8000,
            "synthesised: no usable English recording"
        );
    }

    #[test]
    fn speaks_at_8k_and_caches() {
        let tts = CachedSynthesizer::new(Espeak, 16);
        let t = std::time::Instant::now();
        let p = tts
            .synthesize("Your order shipped yesterday.", "en")
            .expect("espeak-ng");
        let first = t.elapsed();
        let secs = p.duration().as_secs_f64();
        assert!((1.0..4.0).contains(&secs), "{secs} s");
        let rms = (p
            .samples()
            .iter()
            .map(|s| f64::from(*s).powi(2))
            .sum::<f64>()
            / p.samples().len() as f64)
            .sqrt();
        assert!(rms > 500.0, "audible: rms {rms}");
        let t = std::time::Instant::now();
        let again = tts
            .synthesize("Your order shipped yesterday.", "en")
            .expect("cached");
        assert!(t.elapsed() < first, "cache hit is faster");
        assert_eq!(again.samples().len(), p.samples().len());
    }
}
