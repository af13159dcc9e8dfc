//! Jitter buffer: reorders packets by sequence number, holds a configurable
//! playout delay, and conceals lost packets. Pure data structure: fed packets,
//! pulled one 20 ms frame at a time by the caller's clock.

use std::collections::BTreeMap;

/// Samples in one 20 ms frame at 8 kHz.
pub const FRAME_8K: usize = 160;

/// Counters a call reports at its end.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct JitterStats {
    /// Packets accepted into the buffer.
    pub received: u64,
    /// Packets never received (concealed).
    pub lost: u64,
    /// Packets that arrived after their playout time (dropped).
    pub late: u64,
    /// Duplicate packets (dropped).
    pub duplicate: u64,
    /// Frames played as silence because the buffer ran dry.
    pub underruns: u64,
    /// Sum over played packets of the frames queued behind them (the hold).
    pub queued_sum: u64,
    /// Packets played.
    pub played: u64,
    /// Frames dropped to bring the delay back to the configured depth.
    pub skipped: u64,
}

impl JitterStats {
    /// Mean time a packet waits in the buffer before it plays, in ms.
    pub fn mean_hold_ms(&self) -> f64 {
        if self.played == 0 {
            0.0
        } else {
            self.queued_sum as f64 * 20.0 / self.played as f64
        }
    }
}

/// Reordering, loss-concealing playout buffer of decoded 8 kHz audio.
#[derive(Debug)]
pub struct JitterBuffer {
    depth: usize,
    packets: BTreeMap<u64, Vec<i16>>,
    next_seq: Option<u64>,
    highest_ext: Option<u64>,
    playing: bool,
    pending: Vec<i16>,
    last: Vec<i16>,
    concealed_run: u32,
    /// Consecutive plays with more than `depth - 1` frames waiting.
    over_depth: u32,
    stats: JitterStats,
}

/// After this many plays (half a second) with too much audio waiting, one
/// frame is skipped so the delay returns to the configured depth.
const CATCH_UP_AFTER: u32 = 25;

impl JitterBuffer {
    /// A buffer holding `depth_frames` 20 ms frames before playout starts.
    pub fn new(depth_frames: usize) -> Self {
        Self {
            depth: depth_frames.max(1),
            packets: BTreeMap::new(),
            next_seq: None,
            highest_ext: None,
            playing: false,
            pending: Vec::with_capacity(FRAME_8K * 2),
            last: vec![0; FRAME_8K],
            concealed_run: 0,
            over_depth: 0,
            stats: JitterStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    fn extend_seq(&mut self, seq: u16) -> u64 {
        let Some(high) = self.highest_ext else {
            let ext = (1u64 << 16) + u64::from(seq);
            self.highest_ext = Some(ext);
            return ext;
        };
        let base = high & !0xFFFF;
        let candidates = [
            base.wrapping_sub(1 << 16) + u64::from(seq),
            base + u64::from(seq),
            base + (1 << 16) + u64::from(seq),
        ];
        let ext = candidates
            .into_iter()
            .min_by_key(|c| c.abs_diff(high))
            .unwrap_or(base + u64::from(seq));
        if ext > high {
            self.highest_ext = Some(ext);
        }
        ext
    }

    /// Change the playout depth (a bridged call wants less delay than the
    /// bot did); packets beyond the new depth are skipped, oldest first.
    pub fn set_depth(&mut self, depth_frames: usize) {
        self.depth = depth_frames.max(1);
        // In steady play `depth - 1` frames wait behind the one playing.
        while self.packets.len() > (self.depth - 1).max(1) {
            if let Some((&first, _)) = self.packets.iter().next() {
                self.packets.remove(&first);
                self.next_seq = Some(first + 1);
            }
        }
    }

    /// Insert a decoded packet with its RTP sequence number.
    pub fn push(&mut self, seq: u16, samples: Vec<i16>) {
        let ext = self.extend_seq(seq);
        if let Some(next) = self.next_seq {
            if ext < next {
                self.stats.late += 1;
                return;
            }
        }
        if self.packets.contains_key(&ext) {
            self.stats.duplicate += 1;
            return;
        }
        self.stats.received += 1;
        self.packets.insert(ext, samples);
        // Bound memory: a peer that jumps far ahead resynchronises.
        while self.packets.len() > self.depth * 8 {
            if let Some((&first, _)) = self.packets.iter().next() {
                self.packets.remove(&first);
                self.next_seq = Some(first + 1);
            }
        }
    }

    /// The next 20 ms frame, or `None` when nothing is playing (silence).
    pub fn pop_frame(&mut self) -> Option<Vec<i16>> {
        if !self.playing {
            if self.packets.len() < self.depth {
                return None;
            }
            self.playing = true;
            if self.next_seq.is_none() {
                self.next_seq = self.packets.keys().next().copied();
            }
        }
        while self.pending.len() < FRAME_8K {
            let Some(next) = self.next_seq else { break };
            if self.packets.len() > self.depth {
                self.over_depth += 1;
                if self.over_depth >= CATCH_UP_AFTER && self.packets.contains_key(&(next + 1)) {
                    // A burst left more waiting than the depth asks for:
                    // drop one frame to catch up.
                    self.over_depth = 0;
                    self.packets.remove(&next);
                    self.stats.skipped += 1;
                    self.next_seq = Some(next + 1);
                    continue;
                }
            } else {
                self.over_depth = 0;
            }
            if let Some(samples) = self.packets.remove(&next) {
                self.stats.played += 1;
                self.stats.queued_sum += self.packets.len() as u64;
                self.concealed_run = 0;
                if self.pending.is_empty() && samples.len() == FRAME_8K {
                    // The usual 20 ms packet, nothing left over: it is the
                    // frame, without a copy through `pending`.
                    self.next_seq = Some(next + 1);
                    self.last.copy_from_slice(&samples);
                    return Some(samples);
                }
                self.pending.extend_from_slice(&samples);
                self.next_seq = Some(next + 1);
            } else if self.packets.is_empty() {
                // Ran dry: stop and rebuffer to the configured depth.
                self.playing = false;
                self.stats.underruns += 1;
                break;
            } else {
                // A hole with later packets waiting: the packet is lost.
                self.stats.lost += 1;
                self.concealed_run += 1;
                let gain = match self.concealed_run {
                    1 => 0.7,
                    2 => 0.4,
                    _ => 0.0,
                };
                let conceal: Vec<i16> = self
                    .last
                    .iter()
                    .map(|s| (f32::from(*s) * gain) as i16)
                    .collect();
                self.pending.extend_from_slice(&conceal);
                self.next_seq = Some(next + 1);
            }
        }
        if self.pending.len() < FRAME_8K {
            if self.pending.is_empty() {
                return None;
            }
            self.pending.resize(FRAME_8K, 0);
        }
        let frame = self.pending[..FRAME_8K].to_vec();
        self.pending.drain(..FRAME_8K);
        self.last.copy_from_slice(&frame);
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: i16) -> Vec<i16> {
        vec![v; FRAME_8K]
    }

    #[test]
    fn reorders_within_depth() {
        let mut jb = JitterBuffer::new(3);
        jb.push(10, frame(1));
        jb.push(12, frame(3));
        assert_eq!(jb.pop_frame(), None, "still buffering");
        jb.push(11, frame(2));
        assert_eq!(jb.pop_frame().map(|f| f[0]), Some(1));
        assert_eq!(jb.pop_frame().map(|f| f[0]), Some(2));
        assert_eq!(jb.pop_frame().map(|f| f[0]), Some(3));
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn a_shallower_depth_cuts_the_hold() {
        let mut jb = JitterBuffer::new(3);
        for seq in 0..3 {
            jb.push(seq, frame(seq as i16));
        }
        assert_eq!(jb.pop_frame().map(|f| f[0]), Some(0));
        assert_eq!(
            jb.stats().mean_hold_ms(),
            40.0,
            "two frames queued behind it"
        );
        jb.push(3, frame(3));
        jb.set_depth(1);
        assert_eq!(
            jb.pop_frame().map(|f| f[0]),
            Some(3),
            "skipped to the newest"
        );
        jb.push(4, frame(4));
        assert_eq!(jb.pop_frame().map(|f| f[0]), Some(4));
        assert_eq!(jb.stats().queued_sum, 2);
    }

    #[test]
    fn a_burst_is_caught_up_instead_of_delaying_the_rest_of_the_call() {
        let mut jb = JitterBuffer::new(2);
        let mut seq = 0u16;
        // A burst of four, then one packet per frame.
        for _ in 0..4 {
            jb.push(seq, frame(1));
            seq += 1;
        }
        for _ in 0..100 {
            jb.pop_frame();
            jb.push(seq, frame(1));
            seq += 1;
        }
        assert!(jb.stats().skipped >= 1, "{:?}", jb.stats());
        let before = jb.stats();
        for _ in 0..50 {
            jb.pop_frame();
            jb.push(seq, frame(1));
            seq += 1;
        }
        let after = jb.stats();
        let hold = (after.queued_sum - before.queued_sum) as f64 * 20.0
            / (after.played - before.played) as f64;
        assert!(hold <= 20.0, "back to depth 2: {hold} ms");
        assert_eq!(after.lost, 0);
    }

    #[test]
    fn conceals_a_lost_packet() {
        let mut jb = JitterBuffer::new(2);
        jb.push(1, frame(1000));
        jb.push(3, frame(3000));
        assert_eq!(jb.pop_frame().map(|f| f[0]), Some(1000));
        assert_eq!(jb.pop_frame().map(|f| f[0]), Some(700), "faded repeat");
        assert_eq!(jb.pop_frame().map(|f| f[0]), Some(3000));
        assert_eq!(jb.stats().lost, 1);
    }

    #[test]
    fn late_and_duplicate_packets_are_dropped() {
        let mut jb = JitterBuffer::new(1);
        jb.push(5, frame(5));
        jb.push(5, frame(5));
        assert_eq!(jb.stats().duplicate, 1);
        assert!(jb.pop_frame().is_some());
        jb.push(4, frame(4));
        assert_eq!(jb.stats().late, 1);
    }

    #[test]
    fn sequence_wraps() {
        let mut jb = JitterBuffer::new(1);
        jb.push(65535, frame(1));
        jb.push(0, frame(2));
        assert_eq!(jb.pop_frame().map(|f| f[0]), Some(1));
        assert_eq!(jb.pop_frame().map(|f| f[0]), Some(2));
    }

    #[test]
    fn longer_packets_are_split_into_frames() {
        let mut jb = JitterBuffer::new(1);
        jb.push(1, vec![7; 240]);
        jb.push(2, vec![8; 240]);
        assert_eq!(jb.pop_frame().map(|f| (f[0], f[159])), Some((7, 7)));
        let f = jb.pop_frame().unwrap_or_default();
        assert_eq!((f[0], f[80]), (7, 8));
    }
}
