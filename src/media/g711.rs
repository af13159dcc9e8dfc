//! G.711 μ-law and A-law (ITU-T G.711). The per-sample functions define the
//! codec; `encode` and `decode` read tables built from them at compile time
//! (a lookup per sample instead of the bit arithmetic: the media path codes
//! 8,000 samples per second each way for every call).

use crate::config::Codec;

const BIAS: i32 = 0x84;
const CLIP: i32 = 32635;

/// Encode one linear sample to μ-law.
pub const fn linear_to_ulaw(sample: i16) -> u8 {
    let mut s = sample as i32;
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = if s > CLIP { CLIP } else { s } + BIAS;
    let exponent = 7 - ((s as u32).leading_zeros() as i32 - 17);
    let exponent = if exponent < 0 {
        0
    } else if exponent > 7 {
        7
    } else {
        exponent
    };
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) as u8 as i32 | mantissa) as u8
}

/// Decode one μ-law byte.
pub const fn ulaw_to_linear(byte: u8) -> i16 {
    let u = !byte;
    let sign = u & 0x80;
    let exponent = ((u >> 4) & 0x07) as i32;
    let mantissa = (u & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    (if sign != 0 { -magnitude } else { magnitude }) as i16
}

/// Encode one linear sample to A-law.
pub const fn linear_to_alaw(sample: i16) -> u8 {
    let mut s = (sample as i32) >> 3; // 13-bit magnitude domain
    let sign = if s >= 0 {
        0x80
    } else {
        s = -s - 1;
        0x00
    };
    if s > 0x0FFF {
        s = 0x0FFF;
    }
    let byte = if s < 32 {
        (s >> 1) as u8
    } else {
        let exponent = 31 - (s as u32).leading_zeros() as i32 - 4; // 1..=7
        let mantissa = (s >> exponent) & 0x0F;
        ((exponent << 4) | mantissa) as u8
    };
    (byte | sign) ^ 0x55
}

/// Decode one A-law byte.
pub const fn alaw_to_linear(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let exponent = ((a >> 4) & 0x07) as i32;
    let mantissa = (a & 0x0F) as i32;
    let magnitude = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    (if a & 0x80 != 0 { magnitude } else { -magnitude }) as i16
}

/// Every 16-bit sample's code, indexed by the sample's bits (`s as u16`):
/// μ-law when `alaw` is false.
const fn encode_table(alaw: bool) -> [u8; 65536] {
    let mut t = [0u8; 65536];
    let mut i = 0;
    while i < 65536 {
        let s = i as u16 as i16;
        t[i] = if alaw {
            linear_to_alaw(s)
        } else {
            linear_to_ulaw(s)
        };
        i += 1;
    }
    t
}

/// Every code's sample: μ-law when `alaw` is false.
const fn decode_table(alaw: bool) -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if alaw {
            alaw_to_linear(i as u8)
        } else {
            ulaw_to_linear(i as u8)
        };
        i += 1;
    }
    t
}

static ULAW_OF: [u8; 65536] = encode_table(false);
static ALAW_OF: [u8; 65536] = encode_table(true);
static LINEAR_OF_ULAW: [i16; 256] = decode_table(false);
static LINEAR_OF_ALAW: [i16; 256] = decode_table(true);

/// Decode a payload into `out` (appends).
pub fn decode(codec: Codec, payload: &[u8], out: &mut Vec<i16>) {
    let base = out.len();
    out.resize(base + payload.len(), 0);
    decode_into(codec, payload, &mut out[base..]);
}

/// Decode a payload into `out`, one sample per byte (`out` is as long as
/// the payload).
pub fn decode_into(codec: Codec, payload: &[u8], out: &mut [i16]) {
    let table = match codec {
        Codec::Pcmu => &LINEAR_OF_ULAW,
        Codec::Pcma => &LINEAR_OF_ALAW,
    };
    for (o, b) in out.iter_mut().zip(payload) {
        *o = table[usize::from(*b)];
    }
}

/// Encode samples into `out` (appends).
pub fn encode(codec: Codec, samples: &[i16], out: &mut Vec<u8>) {
    let table = match codec {
        Codec::Pcmu => &ULAW_OF,
        Codec::Pcma => &ALAW_OF,
    };
    out.extend(samples.iter().map(|s| table[usize::from(*s as u16)]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_known_values() {
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(linear_to_ulaw(32767), 0x80);
        assert_eq!(linear_to_ulaw(-32768), 0x00);
    }

    #[test]
    fn alaw_known_values() {
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
    }

    #[test]
    fn the_tables_are_the_functions() {
        for s in i16::MIN..=i16::MAX {
            let mut u = Vec::new();
            encode(Codec::Pcmu, &[s], &mut u);
            let mut a = Vec::new();
            encode(Codec::Pcma, &[s], &mut a);
            assert_eq!((u[0], a[0]), (linear_to_ulaw(s), linear_to_alaw(s)), "{s}");
        }
        for b in 0..=255u8 {
            let mut u = Vec::new();
            decode(Codec::Pcmu, &[b], &mut u);
            let mut a = Vec::new();
            decode(Codec::Pcma, &[b], &mut a);
            assert_eq!(
                (u[0], a[0]),
                (ulaw_to_linear(b), alaw_to_linear(b)),
                "{b:#x}"
            );
        }
    }

    #[test]
    fn every_code_round_trips() {
        for b in 0..=255u8 {
            assert_eq!(
                ulaw_to_linear(linear_to_ulaw(ulaw_to_linear(b))),
                ulaw_to_linear(b)
            );
            assert_eq!(linear_to_alaw(alaw_to_linear(b)), b, "alaw {b:#x}");
        }
    }

    #[test]
    fn quantisation_error_is_bounded() {
        for s in (-32000i32..32000).step_by(7) {
            let s = s as i16;
            let u = i32::from(ulaw_to_linear(linear_to_ulaw(s)));
            let a = i32::from(alaw_to_linear(linear_to_alaw(s)));
            let bound = (i32::from(s).abs() / 16).max(16);
            assert!((u - i32::from(s)).abs() <= bound, "ulaw {s} -> {u}");
            assert!((a - i32::from(s)).abs() <= bound, "alaw {s} -> {a}");
        }
    }
}
