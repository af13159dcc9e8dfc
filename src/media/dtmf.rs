//! DTMF: RFC 4733 telephone-events in both directions, and an in-band
//! (Goertzel) detector as a fallback for peers that send tones in the audio.

/// Digit for an RFC 4733 event code (0–15).
pub fn event_to_digit(event: u8) -> Option<char> {
    match event {
        0..=9 => Some((b'0' + event) as char),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + event - 12) as char),
        _ => None,
    }
}

/// RFC 4733 event code for a digit.
pub fn digit_to_event(digit: char) -> Option<u8> {
    match digit.to_ascii_uppercase() {
        d @ '0'..='9' => Some(d as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        d @ 'A'..='D' => Some(d as u8 - b'A' + 12),
        _ => None,
    }
}

/// A decoded RFC 4733 payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code.
    pub event: u8,
    /// End bit.
    pub end: bool,
    /// Volume (−dBm0).
    pub volume: u8,
    /// Duration in timestamp units.
    pub duration: u16,
}

impl TelephoneEvent {
    /// Parse a 4-byte telephone-event payload.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        if payload.len() < 4 {
            return None;
        }
        Some(Self {
            event: payload[0],
            end: payload[1] & 0x80 != 0,
            volume: payload[1] & 0x3F,
            duration: u16::from_be_bytes([payload[2], payload[3]]),
        })
    }

    /// Serialise to the 4-byte payload.
    pub fn to_bytes(self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        [
            self.event,
            (if self.end { 0x80 } else { 0 }) | (self.volume & 0x3F),
            d[0],
            d[1],
        ]
    }
}

/// Turns a stream of telephone-event packets into digits, once per event
/// (RFC 4733 retransmits each event several times under one timestamp).
#[derive(Debug, Default)]
pub struct EventReceiver {
    last_timestamp: Option<u32>,
}

impl EventReceiver {
    /// Feed one packet's timestamp and payload; a digit when a new event starts.
    pub fn on_packet(&mut self, timestamp: u32, payload: &[u8]) -> Option<char> {
        let ev = TelephoneEvent::parse(payload)?;
        if self.last_timestamp == Some(timestamp) {
            return None;
        }
        self.last_timestamp = Some(timestamp);
        event_to_digit(ev.event)
    }
}

/// The payloads (with marker flag and timestamp offset 0) of one outgoing
/// digit: updates every 20 ms and three end packets, as RFC 4733 §2.5 asks.
pub fn event_payloads(digit: char, duration_ms: u32) -> Vec<(bool, [u8; 4])> {
    let Some(event) = digit_to_event(digit) else {
        return Vec::new();
    };
    let total = (duration_ms.max(40) * 8).min(u32::from(u16::MAX)) as u16;
    let mut out = Vec::new();
    let mut d: u16 = 160;
    while d < total {
        let ev = TelephoneEvent {
            event,
            end: false,
            volume: 10,
            duration: d,
        };
        out.push((out.is_empty(), ev.to_bytes()));
        d = d.saturating_add(160);
    }
    for _ in 0..3 {
        let ev = TelephoneEvent {
            event,
            end: true,
            volume: 10,
            duration: total,
        };
        out.push((out.is_empty(), ev.to_bytes()));
    }
    out
}

const ROWS: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
const COLS: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const KEYS: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];

/// The Goertzel power of the eight DTMF tones (the four rows, then the four
/// columns) in one pass over the frame: eight independent recurrences side
/// by side, which the compiler runs in vector lanes. Each lane does the same
/// arithmetic in the same order as a filter run on its own.
#[allow(clippy::needless_range_loop)] // lanes indexed alike across three arrays
fn tone_powers(frame: &[i16]) -> [f32; 8] {
    static COEFFS: std::sync::LazyLock<[f32; 8]> = std::sync::LazyLock::new(|| {
        let mut c = [0.0f32; 8];
        for (c, f) in c.iter_mut().zip(ROWS.iter().chain(COLS.iter())) {
            *c = 2.0 * (2.0 * std::f32::consts::PI * f / 8000.0).cos();
        }
        c
    });
    let coeff = *COEFFS;
    let (mut s1, mut s2) = ([0.0f32; 8], [0.0f32; 8]);
    for &x in frame {
        let v = f32::from(x) / 32768.0;
        for k in 0..8 {
            let s = v + coeff[k] * s1[k] - s2[k];
            s2[k] = s1[k];
            s1[k] = s;
        }
    }
    let mut power = [0.0f32; 8];
    for k in 0..8 {
        power[k] = s1[k] * s1[k] + s2[k] * s2[k] - coeff[k] * s1[k] * s2[k];
    }
    power
}

/// In-band DTMF detector over 20 ms frames at 8 kHz. A digit is reported
/// once it is heard in two consecutive frames, and again only after a pause.
#[derive(Debug, Default)]
pub struct InbandDetector {
    candidate: Option<char>,
    reported: Option<char>,
}

impl InbandDetector {
    fn classify(frame: &[i16]) -> Option<char> {
        let energy: f32 = frame
            .iter()
            .map(|s| {
                let v = f32::from(*s) / 32768.0;
                v * v
            })
            .sum();
        if energy < 1e-3 * frame.len() as f32 / 160.0 {
            return None;
        }
        let power = tone_powers(frame);
        let (rows, cols) = power.split_at(4);
        let (ri, rp) = max_index(rows)?;
        let (ci, cp) = max_index(cols)?;
        // Each tone must dominate its group, and together carry most of the energy.
        let second = |v: &[f32], i: usize| {
            v.iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| *p)
                .fold(0.0f32, f32::max)
        };
        if rp < 4.0 * second(rows, ri) || cp < 4.0 * second(cols, ci) {
            return None;
        }
        // Twist: the two tones within ~8 dB of each other.
        if rp > 6.3 * cp || cp > 6.3 * rp {
            return None;
        }
        let n = frame.len() as f32;
        let tone_energy = 2.0 * (rp + cp) / n;
        if tone_energy < 0.5 * energy {
            return None;
        }
        Some(KEYS[ri][ci])
    }

    /// Feed one frame; a digit when a new key press is confirmed.
    pub fn on_frame(&mut self, frame: &[i16]) -> Option<char> {
        let heard = Self::classify(frame);
        let confirmed = heard.is_some() && heard == self.candidate;
        self.candidate = heard;
        match heard {
            None => {
                self.reported = None;
                None
            }
            Some(d) if confirmed && self.reported != Some(d) => {
                self.reported = Some(d);
                Some(d)
            }
            _ => None,
        }
    }
}

fn max_index(v: &[f32]) -> Option<(usize, f32)> {
    v.iter()
        .copied()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// Synthesize a DTMF tone (8 kHz), for tests and in-band sending.
pub fn tone(digit: char, ms: u32) -> Vec<i16> {
    let Some((r, c)) = KEYS.iter().enumerate().find_map(|(r, row)| {
        row.iter()
            .position(|k| *k == digit.to_ascii_uppercase())
            .map(|c| (r, c))
    }) else {
        return vec![0; (ms * 8) as usize];
    };
    (0..ms * 8)
        .map(|n| {
            let t = n as f32 / 8000.0;
            let v = (2.0 * std::f32::consts::PI * ROWS[r] * t).sin()
                + (2.0 * std::f32::consts::PI * COLS[c] * t).sin();
            (v * 0.35 * 32767.0 / 2.0) as i16
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_codes_round_trip() {
        for d in "0123456789*#ABCD".chars() {
            assert_eq!(digit_to_event(d).and_then(event_to_digit), Some(d));
        }
        assert_eq!(digit_to_event('x'), None);
    }

    #[test]
    fn receiver_reports_each_event_once() {
        let mut rx = EventReceiver::default();
        let pkts = event_payloads('#', 100);
        let digits: Vec<char> = pkts
            .iter()
            .filter_map(|(_, p)| rx.on_packet(1234, p))
            .collect();
        assert_eq!(digits, vec!['#']);
        assert_eq!(rx.on_packet(5678, &pkts[0].1), Some('#'));
        assert!(pkts[0].0 && !pkts[1].0, "marker on the first packet only");
        assert_eq!(pkts.iter().filter(|(_, p)| p[1] & 0x80 != 0).count(), 3);
    }

    #[test]
    fn inband_detects_every_key_and_ignores_speechlike_noise() {
        for d in "0123456789*#ABCD".chars() {
            let mut det = InbandDetector::default();
            let mut samples = tone(d, 80);
            samples.extend(vec![0; 320]);
            let found: Vec<char> = samples
                .chunks(160)
                .filter_map(|f| det.on_frame(f))
                .collect();
            assert_eq!(found, vec![d], "digit {d}");
        }
        let mut det = InbandDetector::default();
        let noise: Vec<i16> = (0..8000)
            .map(|n: i32| ((n.wrapping_mul(1103515245).wrapping_add(12345) >> 16) % 8000) as i16)
            .collect();
        assert!(noise.chunks(160).all(|f| det.on_frame(f).is_none()));
    }
}
