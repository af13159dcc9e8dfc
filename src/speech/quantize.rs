//! Quantise a ggml Whisper model (the file [`super::convert`] writes) the way
//! whisper.cpp's own `quantize` tool does: every 2-D weight matrix becomes
//! blocks of 32 values (`q8_0`: one f16 scale and 32 signed bytes; `q5_1`:
//! an f16 scale and minimum, 32 five-bit values); 1-D tensors (norms,
//! biases), the convolution kernels (3-D), the convolution biases and both
//! positional embeddings stay as they are. The header's `ftype` becomes
//! `GGML_QNT_VERSION × 1000 + ftype`, as whisper.cpp writes and expects.
//!
//! Layout read and written (whisper.cpp `whisper_model_load`): magic, eleven
//! i32 hyper-parameters (the last is `ftype`), the mel filterbank (i32 n_mel,
//! i32 n_fft, f32 values), the vocabulary (i32 count, then u32 length +
//! bytes each), then tensors to the end: i32 n_dims, i32 name length, i32
//! type, n_dims × i32 extents (innermost first), the name, the data.

use half::f16;
use std::io::Write;

const MAGIC: u32 = 0x6767_6d6c;
/// ggml's quantisation format version, written into `ftype`.
const QNT_VERSION: i32 = 2;
const QNT_VERSION_FACTOR: i32 = 1000;
/// Values per quantisation block.
pub const BLOCK: usize = 32;

/// ggml tensor types (`enum ggml_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// 5-bit with scale and minimum per block.
    Q5_1,
    /// 8-bit with scale per block.
    Q8_0,
}

impl TensorType {
    /// The ggml type id.
    pub fn id(self) -> i32 {
        match self {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::Q5_1 => 7,
            TensorType::Q8_0 => 8,
        }
    }

    fn from_id(id: i32) -> Option<Self> {
        match id {
            0 => Some(TensorType::F32),
            1 => Some(TensorType::F16),
            7 => Some(TensorType::Q5_1),
            8 => Some(TensorType::Q8_0),
            _ => None,
        }
    }

    /// Bytes for `n` values (a multiple of [`BLOCK`] for quantised types).
    pub fn bytes(self, n: usize) -> usize {
        match self {
            TensorType::F32 => 4 * n,
            TensorType::F16 => 2 * n,
            TensorType::Q5_1 => n / BLOCK * 24,
            TensorType::Q8_0 => n / BLOCK * 34,
        }
    }
}

/// What to quantise to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    /// 8 bits: within a fraction of a percent of f16.
    Q8_0,
    /// 5 bits with a minimum: smaller, a little less exact.
    Q5_1,
}

impl Quant {
    /// From the command line (`q8_0`, `q5_1`).
    pub fn parse(name: &str) -> Option<Quant> {
        match name {
            "q8_0" => Some(Quant::Q8_0),
            "q5_1" => Some(Quant::Q5_1),
            _ => None,
        }
    }

    /// The name used in file names and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Quant::Q8_0 => "q8_0",
            Quant::Q5_1 => "q5_1",
        }
    }

    fn tensor_type(self) -> TensorType {
        match self {
            Quant::Q8_0 => TensorType::Q8_0,
            Quant::Q5_1 => TensorType::Q5_1,
        }
    }

    /// `enum ggml_ftype` (MOSTLY_Q8_0 = 7, MOSTLY_Q5_1 = 9).
    fn ftype(self) -> i32 {
        match self {
            Quant::Q8_0 => 7,
            Quant::Q5_1 => 9,
        }
    }
}

/// Why a model could not be quantised.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    /// Not a ggml Whisper file, or one cut short.
    #[error("not a ggml Whisper model: {0}")]
    Format(String),
    /// The file is already quantised.
    #[error("the model is already quantised (ftype {0})")]
    AlreadyQuantized(i32),
    /// Writing failed.
    #[error("writing the quantised model: {0}")]
    Io(#[from] std::io::Error),
}

/// One tensor of a ggml file, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Its name (`encoder.blocks.0.attn.query.weight`, …).
    pub name: String,
    /// Extents, innermost first.
    pub dims: Vec<usize>,
    /// Its type.
    pub ty: TensorType,
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], QuantizeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or_else(|| QuantizeError::Format(format!("cut short at byte {}", self.at)))?;
        let s = &self.data[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn i32(&mut self) -> Result<i32, QuantizeError> {
        let b = self.take(4)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn count(&mut self, what: &str) -> Result<usize, QuantizeError> {
        let v = self.i32()?;
        usize::try_from(v).map_err(|_| QuantizeError::Format(format!("negative {what}: {v}")))
    }
}

/// The header (everything before the tensors) and the tensors of a ggml
/// Whisper file: `(header bytes, ftype offset, tensors with their data)`.
#[allow(clippy::type_complexity)]
fn split(model: &[u8]) -> Result<(&[u8], usize, Vec<(TensorInfo, &[u8])>), QuantizeError> {
    let mut r = Reader { data: model, at: 0 };
    let magic = r.take(4)?;
    if u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]) != MAGIC {
        return Err(QuantizeError::Format("bad magic".into()));
    }
    for _ in 0..10 {
        r.i32()?;
    }
    let ftype_at = r.at;
    r.i32()?;
    let n_mel = r.count("n_mel")?;
    let n_fft = r.count("n_fft")?;
    let filters = n_mel
        .checked_mul(n_fft)
        .and_then(|n| n.checked_mul(4))
        .ok_or_else(|| QuantizeError::Format("filterbank size".into()))?;
    r.take(filters)?;
    let n_vocab = r.count("vocabulary size")?;
    for _ in 0..n_vocab {
        let len = r.count("token length")?;
        r.take(len)?;
    }
    let header_end = r.at;
    let mut tensors = Vec::new();
    while r.at < model.len() {
        let n_dims = r.count("n_dims")?;
        let name_len = r.count("name length")?;
        let ty_id = r.i32()?;
        if n_dims == 0 || n_dims > 4 {
            return Err(QuantizeError::Format(format!("{n_dims} dimensions")));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            dims.push(r.count("extent")?);
        }
        let name = String::from_utf8_lossy(r.take(name_len)?).to_string();
        let ty = TensorType::from_id(ty_id)
            .ok_or_else(|| QuantizeError::Format(format!("{name}: tensor type {ty_id}")))?;
        let n = dims
            .iter()
            .try_fold(1usize, |a, d| a.checked_mul(*d))
            .ok_or_else(|| QuantizeError::Format(format!("{name}: size")))?;
        let data = r.take(ty.bytes(n))?;
        tensors.push((TensorInfo { name, dims, ty }, data));
    }
    Ok((&model[..header_end], ftype_at, tensors))
}

/// The tensors of a ggml Whisper file (names, extents, types).
pub fn tensors(model: &[u8]) -> Result<Vec<TensorInfo>, QuantizeError> {
    Ok(split(model)?.2.into_iter().map(|(info, _)| info).collect())
}

/// Whether whisper.cpp's quantiser quantises this tensor.
fn quantised(info: &TensorInfo) -> bool {
    const SKIP: [&str; 4] = [
        "encoder.conv1.bias",
        "encoder.conv2.bias",
        "encoder.positional_embedding",
        "decoder.positional_embedding",
    ];
    info.dims.len() == 2
        && !SKIP.contains(&info.name.as_str())
        && matches!(info.ty, TensorType::F32 | TensorType::F16)
        && info.dims[0].is_multiple_of(BLOCK)
}

fn to_f32(ty: TensorType, data: &[u8]) -> Vec<f32> {
    match ty {
        TensorType::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        _ => data
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    }
}

/// One block of 32 values as ggml's reference `quantize_row_q8_0`.
fn q8_0_block(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
}

/// One block of 32 values as ggml's reference `quantize_row_q5_1`.
fn q5_1_block(x: &[f32], out: &mut Vec<u8>) {
    let min = x.iter().fold(f32::INFINITY, |m, v| m.min(*v));
    let max = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
    let mut qh: u32 = 0;
    let mut qs = [0u8; BLOCK / 2];
    for j in 0..BLOCK / 2 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[BLOCK / 2 + j] - min) * id;
        let xi0 = (x0 + 0.5) as u8;
        let xi1 = (x1 + 0.5) as u8;
        qs[j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
        qh |= u32::from((xi0 & 0x10) >> 4) << j;
        qh |= u32::from((xi1 & 0x10) >> 4) << (j + BLOCK / 2);
    }
    out.extend_from_slice(&qh.to_le_bytes());
    out.extend_from_slice(&qs);
}

/// Values back from `q8_0` or `q5_1` blocks (for tests and checks).
pub fn dequantize(ty: TensorType, data: &[u8]) -> Vec<f32> {
    match ty {
        TensorType::Q8_0 => data
            .chunks_exact(34)
            .flat_map(|b| {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                b[2..].iter().map(move |q| f32::from(*q as i8) * d)
            })
            .collect(),
        TensorType::Q5_1 => data
            .chunks_exact(24)
            .flat_map(|b| {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                let m = f16::from_le_bytes([b[2], b[3]]).to_f32();
                let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                let qs = &b[8..24];
                let lo = (0..BLOCK / 2).map(move |j| {
                    let h = ((qh >> j) & 1) as u8;
                    f32::from((qs[j] & 0x0f) | (h << 4)) * d + m
                });
                let hi = (0..BLOCK / 2).map(move |j| {
                    let h = ((qh >> (j + BLOCK / 2)) & 1) as u8;
                    f32::from((qs[j] >> 4) | (h << 4)) * d + m
                });
                lo.chain(hi).collect::<Vec<_>>()
            })
            .collect(),
        other => to_f32(other, data),
    }
}

/// What a quantisation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantized {
    /// Tensors quantised.
    pub quantised: usize,
    /// Tensors kept as they were.
    pub kept: usize,
    /// Bytes of tensor data before and after.
    pub bytes: (usize, usize),
}

/// Quantise the ggml Whisper `model` to `quant`, written to `out`.
pub fn quantize(
    model: &[u8],
    quant: Quant,
    out: &mut impl Write,
) -> Result<Quantized, QuantizeError> {
    let (header, ftype_at, tensors) = split(model)?;
    let ftype = i32::from_le_bytes([
        header[ftype_at],
        header[ftype_at + 1],
        header[ftype_at + 2],
        header[ftype_at + 3],
    ]);
    if ftype > 1 {
        return Err(QuantizeError::AlreadyQuantized(ftype));
    }
    out.write_all(&header[..ftype_at])?;
    out.write_all(&(QNT_VERSION * QNT_VERSION_FACTOR + quant.ftype()).to_le_bytes())?;
    out.write_all(&header[ftype_at + 4..])?;
    let mut summary = Quantized {
        quantised: 0,
        kept: 0,
        bytes: (0, 0),
    };
    let mut buf = Vec::new();
    for (info, data) in &tensors {
        let (ty, bytes): (TensorType, &[u8]) = if quantised(info) {
            buf.clear();
            let values = to_f32(info.ty, data);
            for block in values.chunks_exact(BLOCK) {
                match quant {
                    Quant::Q8_0 => q8_0_block(block, &mut buf),
                    Quant::Q5_1 => q5_1_block(block, &mut buf),
                }
            }
            summary.quantised += 1;
            (quant.tensor_type(), &buf)
        } else {
            summary.kept += 1;
            (info.ty, data)
        };
        out.write_all(&(info.dims.len() as i32).to_le_bytes())?;
        out.write_all(&(info.name.len() as i32).to_le_bytes())?;
        out.write_all(&ty.id().to_le_bytes())?;
        for d in &info.dims {
            out.write_all(&(*d as i32).to_le_bytes())?;
        }
        out.write_all(info.name.as_bytes())?;
        out.write_all(bytes)?;
        summary.bytes.0 += data.len();
        summary.bytes.1 += bytes.len();
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny ggml Whisper file: a skipped embedding, a 3-D kernel, a
    /// quantisable matrix (f16), a bias (f32), the token embedding (f16).
    fn model() -> (Vec<u8>, Vec<f32>) {
        let mut m = Vec::new();
        m.extend_from_slice(&MAGIC.to_le_bytes());
        for v in [51864i32, 1500, 64, 1, 1, 448, 64, 1, 1, 2, 1] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m.extend_from_slice(&2i32.to_le_bytes());
        m.extend_from_slice(&3i32.to_le_bytes());
        for i in 0..6 {
            m.extend_from_slice(&(i as f32).to_le_bytes());
        }
        m.extend_from_slice(&2i32.to_le_bytes());
        for tok in ["a", "bc"] {
            m.extend_from_slice(&(tok.len() as u32).to_le_bytes());
            m.extend_from_slice(tok.as_bytes());
        }
        let weights: Vec<f32> = (0..64 * 3)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let mut tensor = |name: &str, dims: &[usize], ty: TensorType, values: &[f32]| {
            m.extend_from_slice(&(dims.len() as i32).to_le_bytes());
            m.extend_from_slice(&(name.len() as i32).to_le_bytes());
            m.extend_from_slice(&ty.id().to_le_bytes());
            for d in dims {
                m.extend_from_slice(&(*d as i32).to_le_bytes());
            }
            m.extend_from_slice(name.as_bytes());
            for v in values {
                match ty {
                    TensorType::F32 => m.extend_from_slice(&v.to_le_bytes()),
                    _ => m.extend_from_slice(&f16::from_f32(*v).to_le_bytes()),
                }
            }
        };
        tensor(
            "encoder.positional_embedding",
            &[64, 2],
            TensorType::F32,
            &[0.5; 128],
        );
        tensor(
            "encoder.conv1.weight",
            &[3, 2, 64],
            TensorType::F16,
            &[0.25; 384],
        );
        tensor(
            "encoder.blocks.0.attn.query.weight",
            &[64, 3],
            TensorType::F16,
            &weights,
        );
        tensor(
            "encoder.blocks.0.attn.query.bias",
            &[64],
            TensorType::F32,
            &[1.0; 64],
        );
        tensor(
            "decoder.token_embedding.weight",
            &[64, 2],
            TensorType::F16,
            &[-0.125; 128],
        );
        (m, weights)
    }

    #[test]
    fn weight_matrices_become_blocks_and_everything_else_stays() {
        let (m, weights) = model();
        for quant in [Quant::Q8_0, Quant::Q5_1] {
            let mut out = Vec::new();
            let done = quantize(&m, quant, &mut out).expect("quantise");
            assert_eq!((done.quantised, done.kept), (2, 3));
            let types: Vec<(String, TensorType)> = tensors(&out)
                .expect("readable")
                .into_iter()
                .map(|t| (t.name, t.ty))
                .collect();
            let q = quant.tensor_type();
            assert_eq!(
                types.iter().map(|(_, t)| *t).collect::<Vec<_>>(),
                [TensorType::F32, TensorType::F16, q, TensorType::F32, q],
                "{types:?}"
            );
            // The header's ftype: version 2 × 1000 + MOSTLY_Q8_0 (7) / Q5_1 (9).
            let ftype = i32::from_le_bytes([out[44], out[45], out[46], out[47]]);
            assert_eq!(ftype, 2000 + quant.ftype());
            // The values come back within the format's step.
            let (_, _, ts) = split(&out).expect("split");
            let back = dequantize(q, ts[2].1);
            let step = match quant {
                Quant::Q8_0 => 1.25 / 127.0,
                Quant::Q5_1 => 2.5 / 31.0,
            };
            for (a, b) in weights.iter().zip(&back) {
                assert!((a - b).abs() <= step * 0.5 + 1e-3, "{quant:?}: {a} vs {b}");
            }
            let emb = dequantize(q, ts[4].1);
            assert!(emb.iter().all(|v| (v + 0.125).abs() < 1e-3), "{emb:?}");
            // Already quantised: refused.
            assert!(matches!(
                quantize(&out, quant, &mut Vec::new()),
                Err(QuantizeError::AlreadyQuantized(_))
            ));
        }
        // Cut short: an error, not a panic.
        assert!(matches!(
            quantize(&m[..m.len() - 3], Quant::Q8_0, &mut Vec::new()),
            Err(QuantizeError::Format(_))
        ));
    }
}
