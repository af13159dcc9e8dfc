//! Whisper recognition through whisper-rs: one shared model, one decoding
//! state per worker, decoding sized to the utterance.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use whisper_rs::{
    FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState,
};

/// Why recognition failed.
#[derive(Debug, thiserror::Error)]
pub enum AsrError {
    /// The model file is missing or unusable.
    #[error("cannot load Whisper model {path}: {reason}")]
    Load {
        /// The file.
        path: String,
        /// What whisper.cpp said.
        reason: String,
    },
    /// Decoding failed.
    #[error("Whisper decoding failed: {0}")]
    Decode(String),
    /// Stopped on purpose: an interim transcript gave way to a caller's
    /// final one ([`Recognizer::recognize_unless`]).
    #[error("Whisper stopped: a final transcript was waiting")]
    GaveUp,
}

/// A loaded Whisper model, shared by every worker.
#[derive(Clone)]
pub struct WhisperModel {
    ctx: Arc<WhisperContext>,
}

impl std::fmt::Debug for WhisperModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WhisperModel")
    }
}

impl WhisperModel {
    /// Load a ggml Whisper model.
    pub fn load(path: &Path) -> Result<Self, AsrError> {
        whisper_rs::install_logging_hooks();
        let load_err = |reason: String| AsrError::Load {
            path: path.display().to_string(),
            reason,
        };
        if !path.exists() {
            return Err(load_err(
                "file not found (run `voicegate models install`, which `make run` does)".into(),
            ));
        }
        let mut params = WhisperContextParameters::default();
        // Flash attention: off unless VOICEGATE_FLASH_ATTN=1 (a measurement
        // knob for benches/asr/compare.sh; docs/performance.md has the table).
        params.flash_attn(std::env::var("VOICEGATE_FLASH_ATTN").is_ok_and(|v| v == "1"));
        let ctx =
            WhisperContext::new_with_params(path, params).map_err(|e| load_err(e.to_string()))?;
        Ok(Self { ctx: Arc::new(ctx) })
    }

    /// Whether the model knows languages other than English.
    pub fn is_multilingual(&self) -> bool {
        self.ctx.is_multilingual()
    }
}

/// How much encoder context a decode uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AudioCtx {
    /// The audio's own frames + 128, at least 384 (the shipped setting).
    Padded,
    /// All 1500 frames (30 s), whisper.cpp's default.
    Full,
    /// The audio's own frames + 16, at least 64.
    Tight,
    /// The audio's own frames + `pad`, at least `min` (`pad:N,min:M`, to
    /// measure the shapes between `Tight` and `Padded`).
    Shaped { pad: i32, min: i32 },
}

impl AudioCtx {
    /// `full`, `tight`, `pad:N,min:M`; anything else is the shipped shape.
    fn parse(value: Option<&str>) -> Self {
        let shaped = |v: &str| {
            let (mut pad, mut min) = (None, None);
            for part in v.split(',') {
                let (key, n) = part.split_once(':')?;
                let n: i32 = n.trim().parse().ok()?;
                match key.trim() {
                    "pad" => pad = Some(n),
                    "min" => min = Some(n),
                    _ => return None,
                }
            }
            Some(AudioCtx::Shaped {
                pad: pad?.clamp(0, 1500),
                min: min?.clamp(1, 1500),
            })
        };
        match value {
            Some("full") => AudioCtx::Full,
            Some("tight") => AudioCtx::Tight,
            Some(v) => shaped(v).unwrap_or(AudioCtx::Padded),
            None => AudioCtx::Padded,
        }
    }

    /// Encoder frames for `secs` of audio (0: all of them).
    fn frames(self, secs: f64) -> i32 {
        let own = (secs * 50.0).ceil() as i32;
        match self {
            AudioCtx::Padded => (own + 128).clamp(384, 1500),
            AudioCtx::Full => 0,
            AudioCtx::Tight => (own + 16).clamp(64, 1500),
            AudioCtx::Shaped { pad, min } => (own + pad).clamp(min, 1500),
        }
    }
}

/// whisper.cpp decode settings that `benches/asr/settings.sh` measures
/// against the shipped ones. Read once from `VOICEGATE_ASR_*` environment
/// variables, which exist for that measurement only: the defaults are the
/// product's settings (docs/decisions/0017-whisper-settings.md has the table).
#[derive(Debug, Clone, Copy)]
struct DecodeKnobs {
    audio_ctx: AudioCtx,
    no_context: bool,
    single_segment: bool,
    no_timestamps: bool,
    suppress_nst: bool,
    temperature_fallback: bool,
    max_tokens: bool,
}

impl DecodeKnobs {
    fn get() -> Self {
        static KNOBS: std::sync::OnceLock<DecodeKnobs> = std::sync::OnceLock::new();
        *KNOBS.get_or_init(|| {
            let var = |name: &str| std::env::var(format!("VOICEGATE_ASR_{name}")).ok();
            let flag = |name: &str, default: bool| match var(name).as_deref() {
                Some("1") => true,
                Some("0") => false,
                _ => default,
            };
            DecodeKnobs {
                audio_ctx: AudioCtx::parse(var("AUDIO_CTX").as_deref()),
                no_context: flag("NO_CONTEXT", true),
                single_segment: flag("SINGLE_SEGMENT", false),
                no_timestamps: flag("NO_TIMESTAMPS", false),
                suppress_nst: flag("SUPPRESS_NST", false),
                temperature_fallback: flag("TEMPERATURE_FALLBACK", false),
                max_tokens: flag("MAX_TOKENS", true),
            }
        })
    }
}

/// A prompt for non-Chinese decodes, read from the file
/// `VOICEGATE_ASR_PROMPT_FILE` names, for `benches/asr/settings.sh` only.
fn measured_prompt() -> Option<&'static str> {
    static PROMPT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    PROMPT
        .get_or_init(|| {
            let path = std::env::var("VOICEGATE_ASR_PROMPT_FILE").ok()?;
            let text = std::fs::read_to_string(path).ok()?;
            Some(text.trim().to_string()).filter(|p| !p.is_empty())
        })
        .as_deref()
}

/// One recognised stretch of speech.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Recognition {
    /// The text, trimmed.
    pub text: String,
    /// Segments with times relative to the audio given (seconds).
    pub segments: Vec<Segment>,
    /// Detected or configured language.
    pub language: String,
    /// Where Whisper's time went.
    #[serde(skip)]
    pub stages: Stages,
}

/// A timed piece of text.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Segment {
    /// Start (s).
    pub start_s: f64,
    /// End (s).
    pub end_s: f64,
    /// Text.
    pub text: String,
}

/// Remove Whisper's non-speech annotations (`[BLANK_AUDIO]`, `(music)`, `*sigh*`)
/// and collapse whitespace.
pub fn clean_text(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut depth = 0usize;
    let mut star = false;
    for c in raw.chars() {
        match c {
            '[' | '(' => depth += 1,
            ']' | ')' => depth = depth.saturating_sub(1),
            '*' => star = !star,
            _ if depth == 0 && !star => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whisper's initial prompt for Mandarin: a sentence in Simplified characters.
const SIMPLIFIED_PROMPT: &str = "以下是普通话的句子，使用简体中文。";

/// Where Whisper's time on one utterance went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stages {
    /// Log-mel spectrogram (and set-up) until the encoder starts.
    pub mel: Duration,
    /// The encoder pass(es).
    pub encoder: Duration,
    /// The decoder (tokens), to the end.
    pub decoder: Duration,
}

/// What whisper.cpp's callbacks see during one `full` call: when the
/// encoder began and ended, and the counter that makes a partial give way.
struct StageClock {
    give_up: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    /// Set when the abort callback told whisper.cpp to stop.
    gave_up: std::sync::atomic::AtomicBool,
    marks: std::sync::Mutex<StageMarks>,
}

#[derive(Default)]
struct StageMarks {
    first_encoder: Option<Instant>,
    encoding_since: Option<Instant>,
    encoder: Duration,
}

impl StageClock {
    fn marks(&self) -> std::sync::MutexGuard<'_, StageMarks> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stages of a `full` call that began at `started` and just ended.
    fn stages(&self, started: Instant) -> Stages {
        let m = self.marks();
        let end = Instant::now();
        let first = m.first_encoder.unwrap_or(end);
        // Audio over 30 s is encoded window by window, each followed by its
        // decoding: the decoder is everything after the first encoder pass
        // began that was not an encoder pass.
        Stages {
            mel: first.saturating_duration_since(started),
            encoder: m.encoder,
            decoder: end
                .saturating_duration_since(first)
                .saturating_sub(m.encoder),
        }
    }
}

/// whisper.cpp's encoder-begin callback: the mel is done, the encoder starts.
unsafe extern "C" fn encoder_begins(
    _ctx: *mut whisper_rs::WhisperSysContext,
    _state: *mut whisper_rs::WhisperSysState,
    user_data: *mut std::ffi::c_void,
) -> bool {
    if !user_data.is_null() {
        // SAFETY: `recognize_unless` passes a `StageClock` it keeps alive
        // until `full` returns, the only time whisper.cpp calls this.
        let clock = unsafe { &*(user_data as *const StageClock) };
        let now = Instant::now();
        let mut m = clock.marks();
        m.first_encoder.get_or_insert(now);
        m.encoding_since = Some(now);
    }
    true
}

/// whisper.cpp's abort callback, called at the end of each encoder pass and
/// after each decoder step: the first call after an encoder began marks its
/// end; give up (a partial) while the counter is above zero. Our patched
/// whisper.cpp (vendor/whisper-rs-sys/VOICEGATE.md) also calls it between the
/// nodes of each graph, with the lowest bit of `user_data` set: those calls
/// only check whether to give up, so an encoder pass can stop part-way.
unsafe extern "C" fn after_each_step(user_data: *mut std::ffi::c_void) -> bool {
    let between_nodes = user_data.addr() & 1 == 1;
    let user_data = user_data.map_addr(|a| a & !1) as *const StageClock;
    if user_data.is_null() {
        return false;
    }
    // SAFETY: as in `encoder_begins`; `StageClock` is aligned to more than
    // two bytes, so the lowest bit of its address is the patch's tag.
    let clock = unsafe { &*user_data };
    if !between_nodes {
        let mut m = clock.marks();
        if let Some(since) = m.encoding_since.take() {
            let now = Instant::now();
            m.encoder += now.saturating_duration_since(since);
        }
    }
    let stop = clock
        .give_up
        .as_ref()
        .is_some_and(|w| w.load(std::sync::atomic::Ordering::Relaxed) > 0);
    if stop {
        clock
            .gave_up
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    stop
}

/// A decoding state bound to a model; one per worker thread.
pub struct Recognizer {
    state: WhisperState,
    threads: i32,
    multilingual: bool,
    language: Option<String>,
}

impl Recognizer {
    /// A recogniser for `model` using `threads` CPU threads; `language` `None`
    /// means auto-detect (multilingual models only).
    pub fn new(
        model: &WhisperModel,
        threads: usize,
        language: Option<&str>,
    ) -> Result<Self, AsrError> {
        let state = model
            .ctx
            .create_state()
            .map_err(|e| AsrError::Decode(e.to_string()))?;
        let language = if model.is_multilingual() {
            language.map(str::to_string)
        } else {
            Some("en".to_string())
        };
        Ok(Self {
            state,
            threads: threads.max(1) as i32,
            multilingual: model.is_multilingual(),
            language,
        })
    }

    /// Recognise 16 kHz mono samples in [-1, 1] (greedy, temperature 0, no
    /// context carried over between calls).
    pub fn recognize(&mut self, samples: &[f32]) -> Result<Recognition, AsrError> {
        self.recognize_in(samples, None)
    }

    /// As [`Recognizer::recognize`], in `language` (a code such as `zh`, or
    /// `auto`) instead of the recogniser's default; English-only models
    /// always decode English.
    pub fn recognize_in(
        &mut self,
        samples: &[f32],
        language: Option<&str>,
    ) -> Result<Recognition, AsrError> {
        self.recognize_unless(samples, language, None)
    }

    /// As [`Recognizer::recognize_in`], given up (an error) as soon as
    /// `give_up` counts above zero — checked by whisper.cpp between steps of
    /// the encoder and the decoder. The pool uses it to stop an interim
    /// transcript when a caller's final one is waiting.
    pub fn recognize_unless(
        &mut self,
        samples: &[f32],
        language: Option<&str>,
        give_up: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    ) -> Result<Recognition, AsrError> {
        let language: Option<String> = match (self.multilingual, language) {
            (false, _) => Some("en".into()),
            (true, Some("auto")) => None,
            (true, Some(l)) => Some(l.to_string()),
            (true, None) => self.language.clone(),
        };
        let knobs = DecodeKnobs::get();
        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        params.set_n_threads(self.threads);
        params.set_translate(false);
        params.set_no_context(knobs.no_context);
        params.set_single_segment(knobs.single_segment);
        params.set_no_timestamps(knobs.no_timestamps);
        params.set_suppress_nst(knobs.suppress_nst);
        params.set_print_special(false);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_timestamps(false);
        params.set_suppress_blank(true);
        params.set_temperature(0.0);
        // Greedy only, no temperature fallback: whisper.cpp samples its
        // fallback from a random generator that lives in the decoding state
        // and is never reset, so the same audio could read differently after
        // other callers' utterances — and replay would not reproduce a live
        // call. Tokens are capped to what a person can say in this much
        // audio, so a repetition loop cannot run away.
        params.set_temperature_inc(if knobs.temperature_fallback { 0.2 } else { 0.0 });
        params.set_max_tokens(if knobs.max_tokens {
            ((samples.len() as f64 / 16000.0) * 12.0) as i32 + 16
        } else {
            0
        });
        params.set_language(language.as_deref());
        params.set_detect_language(false);
        if language.as_deref() == Some("zh") {
            // A Simplified prompt steers Whisper away from Traditional output
            // (it writes Traditional about half the time without one).
            params.set_initial_prompt(SIMPLIFIED_PROMPT);
        } else if let Some(prompt) = measured_prompt() {
            params.set_initial_prompt(prompt);
        }
        // Decode only as much encoder context as the audio needs (50 frames/s),
        // with headroom; whisper.cpp pads the rest.
        let secs = samples.len() as f64 / 16000.0;
        params.set_audio_ctx(knobs.audio_ctx.frames(secs));
        // Stage times and the give-way counter, through whisper.cpp's own
        // callbacks. (Not whisper-rs's `set_abort_callback_safe`: in 0.16 its
        // trampoline reads the closure through the wrong pointer type, and
        // leaks it.)
        let clock = StageClock {
            give_up,
            gave_up: std::sync::atomic::AtomicBool::new(false),
            marks: std::sync::Mutex::default(),
        };
        let clock_ptr = &clock as *const StageClock as *mut std::ffi::c_void;
        // SAFETY: both callbacks only read `clock` (its counter, and marks
        // behind a mutex); it lives on this stack frame until after `full`
        // returns — the only time whisper.cpp calls them.
        unsafe {
            params.set_abort_callback(Some(after_each_step));
            params.set_abort_callback_user_data(clock_ptr);
            params.set_start_encoder_callback(Some(encoder_begins));
            params.set_start_encoder_callback_user_data(clock_ptr);
        }
        // At least a second of audio: Whisper decodes very short input poorly.
        let mut padded = samples.to_vec();
        if padded.len() < 17600 {
            padded.resize(17600, 0.0);
        }
        let audio = &padded[..];
        let started = Instant::now();
        self.state.full(params, audio).map_err(|e| {
            if clock.gave_up.load(std::sync::atomic::Ordering::Relaxed) {
                AsrError::GaveUp
            } else {
                AsrError::Decode(e.to_string())
            }
        })?;
        let stages = clock.stages(started);
        let mut text = String::new();
        let mut segments = Vec::new();
        for seg in self.state.as_iter() {
            let t = seg
                .to_str_lossy()
                .map(|c| c.to_string())
                .unwrap_or_default();
            text.push_str(&t);
            segments.push(Segment {
                start_s: seg.start_timestamp() as f64 / 100.0,
                end_s: seg.end_timestamp() as f64 / 100.0,
                text: t.trim().to_string(),
            });
        }
        let language = language.unwrap_or_else(|| {
            whisper_rs::get_lang_str(self.state.full_lang_id_from_state())
                .unwrap_or("auto")
                .to_string()
        });
        let mut text = clean_text(&text);
        if language == "zh" {
            // Everything downstream (intents, lexicons, the agent) reads Simplified.
            text = super::chinese::collapse_loops(&super::chinese::to_simplified(&text));
            for s in &mut segments {
                s.text = super::chinese::collapse_loops(&super::chinese::to_simplified(&s.text));
            }
        }
        Ok(Recognition {
            text,
            segments,
            language,
            stages,
        })
    }
}

/// The recognisers a batch tool needs (replay, transcribe, mine): the
/// `[speech]` model, and the multilingual one for callers in other languages
/// when that model is English-only — each loaded on first use.
pub struct Recognizers {
    main: std::path::PathBuf,
    multilingual: Option<std::path::PathBuf>,
    threads: usize,
    default_language: Option<String>,
    loaded: Vec<(std::path::PathBuf, bool, Recognizer)>,
}

impl Recognizers {
    /// For `model` (and `multilingual` for other languages), `threads`
    /// threads, callers in `language` unless told otherwise.
    pub fn new(
        model: &Path,
        multilingual: Option<&Path>,
        threads: usize,
        language: Option<&str>,
    ) -> Self {
        Self {
            main: model.to_path_buf(),
            multilingual: multilingual.map(Path::to_path_buf),
            threads,
            default_language: language.map(str::to_string),
            loaded: Vec::new(),
        }
    }

    /// The recogniser for callers in `language` (`None`: the default).
    pub fn get(&mut self, language: Option<&str>) -> Result<&mut Recognizer, AsrError> {
        let language = language
            .map(str::to_string)
            .or_else(|| self.default_language.clone());
        let english = language.as_deref().is_none_or(|l| l == "en");
        let main = self.load(&self.main.clone())?;
        let use_main = english || self.loaded[main].1 || self.multilingual.is_none();
        let at = if use_main {
            main
        } else {
            let path = self
                .multilingual
                .clone()
                .unwrap_or_else(|| self.main.clone());
            self.load(&path)?
        };
        Ok(&mut self.loaded[at].2)
    }

    fn load(&mut self, path: &Path) -> Result<usize, AsrError> {
        if let Some(at) = self.loaded.iter().position(|(p, _, _)| p == path) {
            return Ok(at);
        }
        let model = WhisperModel::load(path)?;
        let rec = Recognizer::new(&model, self.threads, self.default_language.as_deref())?;
        self.loaded
            .push((path.to_path_buf(), model.is_multilingual(), rec));
        Ok(self.loaded.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::{clean_text, AudioCtx};

    #[test]
    fn annotations_are_removed() {
        assert_eq!(clean_text(" [BLANK_AUDIO]"), "");
        assert_eq!(
            clean_text(" (music) Hello  there *sigh* you"),
            "Hello there you"
        );
        assert_eq!(clean_text("I want a refund."), "I want a refund.");
    }

    /// The shipped encoder context is unchanged by the measurement's
    /// shapes; a shape that does not parse is the shipped one.
    #[test]
    fn audio_ctx_shapes_size_the_encoder_context() {
        let shipped = AudioCtx::parse(None);
        assert_eq!(shipped, AudioCtx::Padded);
        assert_eq!(shipped.frames(2.0), 384, "a short utterance gets the floor");
        assert_eq!(shipped.frames(10.0), 628, "a long one its frames + 128");
        assert_eq!(shipped.frames(40.0), 1500);
        assert_eq!(AudioCtx::parse(Some("full")).frames(2.0), 0);
        assert_eq!(AudioCtx::parse(Some("tight")).frames(2.0), 116);
        let shaped = AudioCtx::parse(Some("pad:64,min:256"));
        assert_eq!(shaped, AudioCtx::Shaped { pad: 64, min: 256 });
        assert_eq!(shaped.frames(2.0), 256);
        assert_eq!(shaped.frames(6.0), 364);
        for bad in ["pad:64", "min:256", "pad:x,min:256", "pad:64,floor:256", ""] {
            assert_eq!(AudioCtx::parse(Some(bad)), AudioCtx::Padded, "{bad}");
        }
    }
}
