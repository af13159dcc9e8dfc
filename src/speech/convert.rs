//! Convert a CTranslate2 Whisper model (`model.bin` + `vocabulary.txt`) into
//! the ggml file whisper.cpp (and so whisper-rs) loads.
//!
//! The layout follows whisper.cpp's `whisper_model_load` (src/whisper.cpp,
//! vendored in whisper-rs-sys): magic, eleven i32 hyper-parameters, the mel
//! filterbank, the vocabulary as raw bytes, then named tensors with reversed
//! dimensions. CT2 fuses self-attention Q/K/V (`linear_0`, [3d, d]) and
//! cross-attention K/V (`linear_1`, [2d, d]); whisper.cpp wants them split,
//! with no key bias.

use half::f16;
use std::collections::BTreeMap;
use std::io::Write;

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The CT2 file is not what we expect.
    #[error("model.bin: {0}")]
    Format(String),
    /// A variable the converter needs is missing.
    #[error("model.bin: missing variable {0}")]
    Missing(String),
    /// The vocabulary file is unusable.
    #[error("vocabulary.txt: {0}")]
    Vocabulary(String),
    /// Writing failed.
    #[error("writing the ggml file: {0}")]
    Io(#[from] std::io::Error),
}

/// CT2 element types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2Type {
    /// 32-bit float.
    F32,
    /// 8-bit integer.
    I8,
    /// 16-bit integer.
    I16,
    /// 32-bit integer.
    I32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
}

impl Ct2Type {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Ct2Type::F32,
            1 => Ct2Type::I8,
            2 => Ct2Type::I16,
            3 => Ct2Type::I32,
            4 => Ct2Type::F16,
            5 => Ct2Type::Bf16,
            _ => return None,
        })
    }
}

/// One variable of a CT2 model.
#[derive(Debug, Clone)]
pub struct Variable {
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: Ct2Type,
    /// Raw little-endian bytes.
    pub data: Vec<u8>,
}

impl Variable {
    /// Elements as f32.
    pub fn to_f32(&self) -> Result<Vec<f32>, ConvertError> {
        match self.dtype {
            Ct2Type::F32 => Ok(self
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()),
            Ct2Type::F16 => Ok(self
                .data
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()),
            Ct2Type::Bf16 => Ok(self
                .data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()),
            other => Err(ConvertError::Format(format!(
                "expected floats, found {other:?}"
            ))),
        }
    }

    /// Elements as IEEE half, little-endian bytes.
    pub fn to_f16_bytes(&self) -> Result<Vec<u8>, ConvertError> {
        if self.dtype == Ct2Type::F16 {
            return Ok(self.data.clone());
        }
        Ok(self
            .to_f32()?
            .into_iter()
            .flat_map(|v| f16::from_f32(v).to_le_bytes())
            .collect())
    }

    /// A scalar integer (e.g. `num_heads`).
    pub fn scalar_int(&self) -> Option<i64> {
        let b = &self.data;
        match self.dtype {
            Ct2Type::I8 => b.first().map(|v| i64::from(*v as i8)),
            Ct2Type::I16 if b.len() >= 2 => Some(i64::from(i16::from_le_bytes([b[0], b[1]]))),
            Ct2Type::I32 if b.len() >= 4 => {
                Some(i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            }
            _ => None,
        }
    }

    fn rows(&self, start: usize, end: usize) -> Result<Variable, ConvertError> {
        let rows = *self
            .shape
            .first()
            .ok_or_else(|| ConvertError::Format("scalar split".into()))?;
        if end > rows || start >= end {
            return Err(ConvertError::Format(format!(
                "row split {start}..{end} of {rows}"
            )));
        }
        let row_bytes = self.data.len() / rows;
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        Ok(Variable {
            shape,
            dtype: self.dtype,
            data: self.data[start * row_bytes..end * row_bytes].to_vec(),
        })
    }
}

/// A parsed CT2 `model.bin`.
#[derive(Debug, Default)]
pub struct Ct2Model {
    /// The spec name, e.g. `WhisperSpec`.
    pub spec: String,
    /// Variables by name (aliases resolved).
    pub variables: BTreeMap<String, Variable>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ConvertError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| ConvertError::Format(format!("truncated at byte {}", self.pos)))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, ConvertError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ConvertError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, ConvertError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> Result<String, ConvertError> {
        let n = usize::from(self.u16()?);
        let raw = self.take(n)?;
        let s = String::from_utf8_lossy(raw);
        Ok(s.trim_end_matches('\0').to_string())
    }
}

impl Ct2Model {
    /// Parse a CT2 `model.bin` (format version 6).
    pub fn parse(bytes: &[u8]) -> Result<Ct2Model, ConvertError> {
        let mut r = Reader { bytes, pos: 0 };
        let version = r.u32()?;
        if !(5..=6).contains(&version) {
            return Err(ConvertError::Format(format!(
                "unsupported version {version}"
            )));
        }
        let spec = r.string()?;
        let _revision = r.u32()?;
        let count = r.u32()?;
        let mut variables = BTreeMap::new();
        for _ in 0..count {
            let name = r.string()?;
            let rank = usize::from(r.u8()?);
            let shape = (0..rank)
                .map(|_| r.u32().map(|d| d as usize))
                .collect::<Result<Vec<_>, _>>()?;
            let code = r.u8()?;
            let dtype = Ct2Type::from_code(code)
                .ok_or_else(|| ConvertError::Format(format!("{name}: unknown dtype {code}")))?;
            let len = r.u32()? as usize;
            let data = r.take(len)?.to_vec();
            variables.insert(name, Variable { shape, dtype, data });
        }
        if r.pos < bytes.len() {
            let aliases = r.u32()?;
            for _ in 0..aliases {
                let alias = r.string()?;
                let target = r.string()?;
                if let Some(v) = variables.get(&target).cloned() {
                    variables.insert(alias, v);
                }
            }
        }
        Ok(Ct2Model { spec, variables })
    }

    fn get(&self, name: &str) -> Result<&Variable, ConvertError> {
        self.variables
            .get(name)
            .ok_or_else(|| ConvertError::Missing(name.to_string()))
    }

    fn count_layers(&self, prefix: &str) -> usize {
        (0..)
            .take_while(|i| {
                self.variables
                    .keys()
                    .any(|k| k.starts_with(&format!("{prefix}/layer_{i}/")))
            })
            .count()
    }
}

/// Whisper hyper-parameters as whisper.cpp reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HParams {
    /// Vocabulary size (embedding rows).
    pub n_vocab: i32,
    /// Encoder positions.
    pub n_audio_ctx: i32,
    /// Encoder width.
    pub n_audio_state: i32,
    /// Encoder heads.
    pub n_audio_head: i32,
    /// Encoder layers.
    pub n_audio_layer: i32,
    /// Decoder positions.
    pub n_text_ctx: i32,
    /// Decoder width.
    pub n_text_state: i32,
    /// Decoder heads.
    pub n_text_head: i32,
    /// Decoder layers.
    pub n_text_layer: i32,
    /// Mel bins.
    pub n_mels: i32,
}

/// Byte-level BPE: GPT-2's map from printable characters back to bytes.
fn unicode_to_byte() -> std::collections::HashMap<char, u8> {
    let mut bs: Vec<u32> = (u32::from('!')..=u32::from('~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.iter()
        .zip(cs.iter())
        .filter_map(|(b, c)| char::from_u32(*c).map(|ch| (ch, *b as u8)))
        .collect()
}

/// Decode a vocabulary (one byte-level token per line) into raw token bytes,
/// stopping before the first special token (`<|endoftext|>`), as whisper.cpp
/// derives the special tokens itself.
pub fn decode_vocabulary(text: &str) -> Result<Vec<Vec<u8>>, ConvertError> {
    let map = unicode_to_byte();
    let mut out = Vec::new();
    for line in text.split('\n') {
        let token = line.strip_suffix('\r').unwrap_or(line);
        if token == "<|endoftext|>" {
            return Ok(out);
        }
        let bytes = token
            .chars()
            .map(|c| map.get(&c).copied())
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| {
                ConvertError::Vocabulary(format!(
                    "token {} {token:?} is not byte-level BPE",
                    out.len()
                ))
            })?;
        out.push(bytes);
    }
    Err(ConvertError::Vocabulary("no <|endoftext|> token".into()))
}

/// The 80 (or `n_mels`) × 201 Slaney-normalised mel filterbank for a 400-point
/// FFT at 16 kHz, as librosa computes it (`htk=False`, `norm="slaney"`).
pub fn mel_filters(n_mels: usize) -> Vec<f32> {
    const SR: f64 = 16000.0;
    const N_FFT: usize = 400;
    let bins = N_FFT / 2 + 1;
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = (6.4f64).ln() / 27.0;
    let hz_to_mel = |f: f64| {
        if f >= min_log_hz {
            min_log_mel + (f / min_log_hz).ln() / logstep
        } else {
            f / f_sp
        }
    };
    let mel_to_hz = |m: f64| {
        if m >= min_log_mel {
            min_log_hz * (logstep * (m - min_log_mel)).exp()
        } else {
            f_sp * m
        }
    };
    let max_mel = hz_to_mel(SR / 2.0);
    let mel_f: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(max_mel * i as f64 / (n_mels + 1) as f64))
        .collect();
    let fft_freqs: Vec<f64> = (0..bins)
        .map(|i| SR / 2.0 * i as f64 / (bins - 1) as f64)
        .collect();
    let mut weights = vec![0f32; n_mels * bins];
    for m in 0..n_mels {
        let enorm = 2.0 / (mel_f[m + 2] - mel_f[m]);
        for (k, f) in fft_freqs.iter().enumerate() {
            let lower = (f - mel_f[m]) / (mel_f[m + 1] - mel_f[m]);
            let upper = (mel_f[m + 2] - f) / (mel_f[m + 2] - mel_f[m + 1]);
            weights[m * bins + k] = (lower.min(upper).max(0.0) * enorm) as f32;
        }
    }
    weights
}

/// One tensor to write.
struct Tensor {
    name: String,
    /// Shape, outermost first (as PyTorch); written reversed.
    shape: Vec<usize>,
    f16: bool,
    data: Vec<u8>,
}

fn float_tensor(
    name: &str,
    v: &Variable,
    shape: Vec<usize>,
    as_f16: bool,
) -> Result<Tensor, ConvertError> {
    let data = if as_f16 {
        v.to_f16_bytes()?
    } else {
        v.to_f32()?.iter().flat_map(|x| x.to_le_bytes()).collect()
    };
    Ok(Tensor {
        name: name.to_string(),
        shape,
        f16: as_f16,
        data,
    })
}

/// Summary of a conversion, for tests and logs.
#[derive(Debug, Clone)]
pub struct Converted {
    /// Hyper-parameters written.
    pub hparams: HParams,
    /// Tokens written (regular tokens; specials are implied).
    pub tokens: usize,
    /// Tensor names and shapes (outermost first), in file order.
    pub tensors: Vec<(String, Vec<usize>)>,
}

/// Convert a parsed CT2 Whisper model and its vocabulary into ggml, written to `out`.
pub fn convert(
    model: &Ct2Model,
    vocabulary: &str,
    out: &mut impl Write,
) -> Result<Converted, ConvertError> {
    if !model.spec.starts_with("WhisperSpec") {
        return Err(ConvertError::Format(format!(
            "not a Whisper model (spec {})",
            model.spec
        )));
    }
    let emb = model.get("decoder/embeddings/weight")?;
    let enc_pos = model.get("encoder/position_encodings/encodings")?;
    let dec_pos = model.get("decoder/position_encodings/encodings")?;
    let conv1 = model.get("encoder/conv1/weight")?;
    let dim = |v: &Variable, i: usize| v.shape.get(i).copied().unwrap_or(0) as i32;
    let heads = |name: &str| -> Result<i32, ConvertError> {
        model
            .get(name)?
            .scalar_int()
            .map(|h| h as i32)
            .ok_or_else(|| ConvertError::Format(format!("{name} is not an integer")))
    };
    let hp = HParams {
        n_vocab: dim(emb, 0),
        n_audio_ctx: dim(enc_pos, 0),
        n_audio_state: dim(enc_pos, 1),
        n_audio_head: heads("encoder/num_heads")?,
        n_audio_layer: model.count_layers("encoder") as i32,
        n_text_ctx: dim(dec_pos, 0),
        n_text_state: dim(dec_pos, 1),
        n_text_head: heads("decoder/num_heads")?,
        n_text_layer: model.count_layers("decoder") as i32,
        n_mels: dim(conv1, 1),
    };
    if hp.n_audio_layer == 0 || hp.n_text_layer == 0 || hp.n_audio_state != hp.n_text_state {
        return Err(ConvertError::Format(format!(
            "inconsistent dimensions {hp:?}"
        )));
    }
    let d = hp.n_audio_state as usize;
    let tokens = decode_vocabulary(vocabulary)?;

    let mut tensors: Vec<Tensor> = Vec::new();
    let push = |tensors: &mut Vec<Tensor>,
                name: String,
                v: &Variable,
                f16: bool|
     -> Result<(), ConvertError> {
        tensors.push(float_tensor(&name, v, v.shape.clone(), f16)?);
        Ok(())
    };
    // Encoder.
    push(
        &mut tensors,
        "encoder.positional_embedding".into(),
        enc_pos,
        false,
    )?;
    push(&mut tensors, "encoder.conv1.weight".into(), conv1, true)?;
    push(
        &mut tensors,
        "encoder.conv2.weight".into(),
        model.get("encoder/conv2/weight")?,
        true,
    )?;
    for (i, conv) in ["conv1", "conv2"].iter().enumerate() {
        let b = model.get(&format!("encoder/{conv}/bias"))?;
        let mut t = float_tensor(
            &format!("encoder.conv{}.bias", i + 1),
            b,
            vec![b.shape[0], 1],
            false,
        )?;
        t.shape = vec![b.shape[0], 1];
        tensors.push(t);
    }
    let ln = |prefix: &str| -> Result<(&Variable, &Variable), ConvertError> {
        Ok((
            model.get(&format!("{prefix}/gamma"))?,
            model.get(&format!("{prefix}/beta"))?,
        ))
    };
    let add_ln = |tensors: &mut Vec<Tensor>, ct2: &str, ggml: &str| -> Result<(), ConvertError> {
        let (g, b) = ln(ct2)?;
        tensors.push(float_tensor(
            &format!("{ggml}.weight"),
            g,
            g.shape.clone(),
            false,
        )?);
        tensors.push(float_tensor(
            &format!("{ggml}.bias"),
            b,
            b.shape.clone(),
            false,
        )?);
        Ok(())
    };
    let linear = |tensors: &mut Vec<Tensor>,
                  w: &Variable,
                  b: Option<&Variable>,
                  ggml: &str|
     -> Result<(), ConvertError> {
        tensors.push(float_tensor(
            &format!("{ggml}.weight"),
            w,
            w.shape.clone(),
            true,
        )?);
        if let Some(b) = b {
            tensors.push(float_tensor(
                &format!("{ggml}.bias"),
                b,
                b.shape.clone(),
                false,
            )?);
        }
        Ok(())
    };
    // A CT2 linear layer (`…/weight`, `…/bias`) copied whole under a ggml name.
    let copy_linear =
        |tensors: &mut Vec<Tensor>, ct2: &str, ggml: &str| -> Result<(), ConvertError> {
            linear(
                tensors,
                model.get(&format!("{ct2}/weight"))?,
                Some(model.get(&format!("{ct2}/bias"))?),
                ggml,
            )
        };
    add_ln(&mut tensors, "encoder/layer_norm", "encoder.ln_post")?;
    for side in ["encoder", "decoder"] {
        let layers = if side == "encoder" {
            hp.n_audio_layer
        } else {
            hp.n_text_layer
        };
        for i in 0..layers {
            let ct = format!("{side}/layer_{i}");
            let gg = format!("{side}.blocks.{i}");
            // Self-attention: fused QKV.
            add_ln(
                &mut tensors,
                &format!("{ct}/self_attention/layer_norm"),
                &format!("{gg}.attn_ln"),
            )?;
            let qkv_w = model.get(&format!("{ct}/self_attention/linear_0/weight"))?;
            let qkv_b = model.get(&format!("{ct}/self_attention/linear_0/bias"))?;
            linear(
                &mut tensors,
                &qkv_w.rows(0, d)?,
                Some(&qkv_b.rows(0, d)?),
                &format!("{gg}.attn.query"),
            )?;
            linear(
                &mut tensors,
                &qkv_w.rows(d, 2 * d)?,
                None,
                &format!("{gg}.attn.key"),
            )?;
            linear(
                &mut tensors,
                &qkv_w.rows(2 * d, 3 * d)?,
                Some(&qkv_b.rows(2 * d, 3 * d)?),
                &format!("{gg}.attn.value"),
            )?;
            copy_linear(
                &mut tensors,
                &format!("{ct}/self_attention/linear_1"),
                &format!("{gg}.attn.out"),
            )?;
            if side == "decoder" {
                // Cross-attention: Q alone, fused KV, out.
                add_ln(
                    &mut tensors,
                    &format!("{ct}/attention/layer_norm"),
                    &format!("{gg}.cross_attn_ln"),
                )?;
                copy_linear(
                    &mut tensors,
                    &format!("{ct}/attention/linear_0"),
                    &format!("{gg}.cross_attn.query"),
                )?;
                let kv_w = model.get(&format!("{ct}/attention/linear_1/weight"))?;
                let kv_b = model.get(&format!("{ct}/attention/linear_1/bias"))?;
                linear(
                    &mut tensors,
                    &kv_w.rows(0, d)?,
                    None,
                    &format!("{gg}.cross_attn.key"),
                )?;
                linear(
                    &mut tensors,
                    &kv_w.rows(d, 2 * d)?,
                    Some(&kv_b.rows(d, 2 * d)?),
                    &format!("{gg}.cross_attn.value"),
                )?;
                copy_linear(
                    &mut tensors,
                    &format!("{ct}/attention/linear_2"),
                    &format!("{gg}.cross_attn.out"),
                )?;
            }
            add_ln(
                &mut tensors,
                &format!("{ct}/ffn/layer_norm"),
                &format!("{gg}.mlp_ln"),
            )?;
            copy_linear(
                &mut tensors,
                &format!("{ct}/ffn/linear_0"),
                &format!("{gg}.mlp.0"),
            )?;
            copy_linear(
                &mut tensors,
                &format!("{ct}/ffn/linear_1"),
                &format!("{gg}.mlp.2"),
            )?;
        }
    }
    push(
        &mut tensors,
        "decoder.positional_embedding".into(),
        dec_pos,
        false,
    )?;
    push(
        &mut tensors,
        "decoder.token_embedding.weight".into(),
        emb,
        true,
    )?;
    add_ln(&mut tensors, "decoder/layer_norm", "decoder.ln")?;

    // Header.
    let w32 = |out: &mut dyn Write, v: i32| out.write_all(&v.to_le_bytes());
    out.write_all(&0x6767_6d6cu32.to_le_bytes())?;
    for v in [
        hp.n_vocab,
        hp.n_audio_ctx,
        hp.n_audio_state,
        hp.n_audio_head,
        hp.n_audio_layer,
        hp.n_text_ctx,
        hp.n_text_state,
        hp.n_text_head,
        hp.n_text_layer,
        hp.n_mels,
        1, // ftype: f16 weights
    ] {
        w32(out, v)?;
    }
    let n_mels = hp.n_mels as usize;
    w32(out, hp.n_mels)?;
    w32(out, 201)?;
    for v in mel_filters(n_mels) {
        out.write_all(&v.to_le_bytes())?;
    }
    w32(out, tokens.len() as i32)?;
    for t in &tokens {
        w32(out, t.len() as i32)?;
        out.write_all(t)?;
    }
    for t in &tensors {
        w32(out, t.shape.len() as i32)?;
        w32(out, t.name.len() as i32)?;
        w32(out, i32::from(t.f16))?;
        for dim in t.shape.iter().rev() {
            w32(out, *dim as i32)?;
        }
        out.write_all(t.name.as_bytes())?;
        out.write_all(&t.data)?;
    }
    Ok(Converted {
        hparams: hp,
        tokens: tokens.len(),
        tensors: tensors.into_iter().map(|t| (t.name, t.shape)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_tokens_decode() {
        let v = "!\nĠthe\nĊ\nÃ©\n<|endoftext|>\n<|startoftranscript|>\n";
        let t = decode_vocabulary(v).unwrap();
        assert_eq!(
            t,
            vec![
                b"!".to_vec(),
                b" the".to_vec(),
                b"\n".to_vec(),
                "é".as_bytes().to_vec()
            ]
        );
        assert!(decode_vocabulary("a\nb\n").is_err());
    }

    #[test]
    fn mel_filters_match_librosa_shape_and_norm() {
        let f = mel_filters(80);
        assert_eq!(f.len(), 80 * 201);
        // Slaney normalisation: each filter's area in Hz is about 1 (2/(width) * width/2).
        for m in [0usize, 40, 79] {
            let row = &f[m * 201..(m + 1) * 201];
            assert!(row.iter().all(|v| *v >= 0.0));
            assert!(row.iter().any(|v| *v > 0.0), "filter {m} empty");
        }
        // Reference values of Whisper's own mel_80 table (librosa, float32).
        let reference = [
            (1, 0.024_862_595),
            (201 + 1, 0.001_990_822),
            (40 * 201 + 43, 0.014_735_566),
            (60 * 201 + 91, 0.003_441_219),
            (79 * 201 + 187, 0.000_833_07),
            (79 * 201 + 190, 0.002_232_055),
            (40 * 201 + 30, 0.0),
        ];
        for (i, want) in reference {
            assert!(
                (f[i] - want).abs() < 2e-7,
                "mel[{i}] = {} want {want}",
                f[i]
            );
        }
        if let Ok(bytes) = std::fs::read("/tmp/mel80.f32") {
            let max = bytes
                .chunks_exact(4)
                .zip(&f)
                .map(|(b, v)| (f32::from_le_bytes([b[0], b[1], b[2], b[3]]) - v).abs())
                .fold(0.0f32, f32::max);
            assert!(max < 1e-6, "max difference to reference {max}");
        }
    }
}
