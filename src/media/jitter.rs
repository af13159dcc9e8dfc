//! Jitter buffer: reorders packets by sequence number, holds a configurable
//! playout delay, and conceals lost packets. Pure data structure: fed packets,
//! pulled one 20 ms frame at a time by the caller's clock.

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
    /// Times the peer restarted its sequence numbering and play started over
    /// from the new numbers.
    pub restarts: u64,
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

/// A ring position: the packet whose extended sequence number is `ext`, or
/// nothing (`EMPTY`). A played slot keeps its samples (the loss concealer
/// repeats them) until a later packet takes the position. A 20 ms packet
/// sits inline (no allocation per packet); a longer one in `spill`.
#[derive(Debug)]
struct Slot {
    ext: u64,
    len: usize,
    inline: [i16; FRAME_8K],
    spill: Vec<i16>,
}

impl Slot {
    fn samples(&self) -> &[i16] {
        if self.len <= FRAME_8K {
            &self.inline[..self.len]
        } else {
            &self.spill
        }
    }

    fn fill(&mut self, len: usize, fill: impl FnOnce(&mut [i16])) {
        self.len = len;
        if len <= FRAME_8K {
            fill(&mut self.inline[..len]);
        } else {
            self.spill.clear();
            self.spill.resize(len, 0);
            fill(&mut self.spill);
        }
    }
}

const EMPTY: u64 = u64::MAX;

/// Where the frame last played lives.
#[derive(Debug, Clone, Copy)]
enum LastFrame {
    /// Nothing played yet (concealment repeats silence).
    None,
    /// In the ring at this index (a 20 ms packet played as it came).
    Slot(usize),
    /// In `built` (concealed, or cut from packets of another length).
    Built,
}

/// Reordering, loss-concealing playout buffer of decoded 8 kHz audio.
///
/// Packets live in a ring indexed by sequence number, sized to twice the
/// playout depth (a power of two): pushing one is a decode into its slot,
/// playing one hands out that slot — no allocation, no copy, no tree per
/// packet. A packet further ahead than the ring holds makes the oldest give
/// way (counted as skipped), which bounds both memory and delay.
#[derive(Debug)]
pub struct JitterBuffer {
    depth: usize,
    slots: Box<[Slot]>,
    /// Packets waiting in the ring.
    stored: usize,
    /// The next sequence number to play (once known).
    next_seq: Option<u64>,
    /// Before play starts: the lowest sequence number waiting.
    lowest: Option<u64>,
    highest_ext: Option<u64>,
    playing: bool,
    /// Samples of packets that are not 20 ms long, waiting to make frames.
    pending: Vec<i16>,
    /// The frame handed out when it is not a ring slot.
    built: [i16; FRAME_8K],
    last: LastFrame,
    concealed_run: u32,
    /// Consecutive plays with more than `depth - 1` frames waiting.
    over_depth: u32,
    /// Consecutive packets from far behind the playout point.
    restart_run: u32,
    stats: JitterStats,
}

/// After this many plays (half a second) with too much audio waiting, one
/// frame is skipped so the delay returns to the configured depth.
const CATCH_UP_AFTER: u32 = 25;

/// Packets in a row from further behind than the ring reaches that make the
/// buffer start over from the peer's new numbering.
const RESTART_AFTER: u32 = 3;

/// Ring positions for a playout depth: room for twice the depth waiting
/// (reordering, a burst) plus the frame last played, at least eight.
fn ring_len(depth: usize) -> usize {
    (2 * depth + 2).next_power_of_two().max(8)
}

fn empty_ring(len: usize) -> Box<[Slot]> {
    (0..len)
        .map(|_| Slot {
            ext: EMPTY,
            len: 0,
            inline: [0; FRAME_8K],
            spill: Vec::new(),
        })
        .collect()
}

impl JitterBuffer {
    /// A buffer holding `depth_frames` 20 ms frames before playout starts.
    pub fn new(depth_frames: usize) -> Self {
        let depth = depth_frames.max(1);
        Self {
            depth,
            slots: empty_ring(ring_len(depth)),
            stored: 0,
            next_seq: None,
            lowest: None,
            highest_ext: None,
            playing: false,
            pending: Vec::new(),
            built: [0; FRAME_8K],
            last: LastFrame::None,
            concealed_run: 0,
            over_depth: 0,
            restart_run: 0,
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

    fn index(&self, ext: u64) -> usize {
        // The ring's length is a power of two.
        (ext as usize) & (self.slots.len() - 1)
    }

    fn holds(&self, ext: u64) -> bool {
        self.slots[self.index(ext)].ext == ext
    }

    /// Take packet `ext` out of the ring (its samples stay in the slot).
    fn take(&mut self, ext: u64) -> Option<usize> {
        let i = self.index(ext);
        if self.slots[i].ext != ext {
            return None;
        }
        self.slots[i].ext = EMPTY;
        self.stored -= 1;
        if matches!(self.last, LastFrame::Slot(l) if l == i) {
            self.last = LastFrame::None;
        }
        Some(i)
    }

    /// The lowest sequence number waiting.
    fn first_stored(&self) -> Option<u64> {
        self.slots
            .iter()
            .filter(|s| s.ext != EMPTY)
            .map(|s| s.ext)
            .min()
    }

    /// Drop the oldest waiting packet; play resumes after it.
    fn drop_oldest(&mut self) {
        if let Some(first) = self.first_stored() {
            self.take(first);
            self.stats.skipped += 1;
            self.next_seq = Some(first + 1);
            self.lowest = self.first_stored();
        }
    }

    /// Forget the old numbering: everything waiting goes, playout rebuffers
    /// from packet `ext`.
    fn restart(&mut self, ext: u64) {
        for slot in self.slots.iter_mut() {
            slot.ext = EMPTY;
        }
        self.stats.skipped += self.stored as u64;
        self.stats.restarts += 1;
        self.stored = 0;
        self.next_seq = None;
        self.lowest = None;
        self.highest_ext = Some(ext);
        self.playing = false;
        self.pending.clear();
        self.last = LastFrame::None;
        self.restart_run = 0;
    }

    /// Change the playout depth (a bridged call wants less delay than the
    /// bot did); packets beyond the new depth are skipped, oldest first.
    pub fn set_depth(&mut self, depth_frames: usize) {
        self.depth = depth_frames.max(1);
        if ring_len(self.depth) > self.slots.len() {
            let old = std::mem::replace(&mut self.slots, empty_ring(ring_len(self.depth)));
            for slot in old.into_vec().into_iter().filter(|s| s.ext != EMPTY) {
                let i = self.index(slot.ext);
                self.slots[i] = slot;
            }
            self.last = LastFrame::None;
        }
        // In steady play `depth - 1` frames wait behind the one playing.
        while self.stored > (self.depth - 1).max(1) {
            self.drop_oldest();
        }
    }

    /// Insert a decoded packet with its RTP sequence number.
    pub fn push(&mut self, seq: u16, samples: &[i16]) {
        self.push_with(seq, samples.len(), |out| out.copy_from_slice(samples));
    }

    /// Insert the packet with RTP sequence number `seq`, `len` samples
    /// long, decoded by `fill` straight into its place in the ring.
    pub fn push_with(&mut self, seq: u16, len: usize, fill: impl FnOnce(&mut [i16])) {
        let ext = self.extend_seq(seq);
        if let Some(next) = self.next_seq {
            if ext < next {
                // Far behind, again and again: the peer restarted its
                // numbering (a transfer, a new stream). Start over from it
                // rather than call every packet late.
                self.restart_run = if next - ext > self.slots.len() as u64 {
                    self.restart_run + 1
                } else {
                    0
                };
                if self.restart_run < RESTART_AFTER {
                    self.stats.late += 1;
                    return;
                }
                self.restart(ext);
            }
        }
        self.restart_run = 0;
        if self.holds(ext) {
            self.stats.duplicate += 1;
            return;
        }
        // The ring holds `len - 1` packets from its oldest (one position
        // keeps the frame last played); further ahead, the oldest give way.
        let room = self.slots.len() as u64 - 1;
        let base = self.next_seq.or(self.lowest).unwrap_or(ext).min(ext);
        let newest = self.highest_ext.unwrap_or(ext).max(ext);
        if self.next_seq.is_none() && newest - base >= room && Some(ext) < self.lowest {
            // Before play: older than a full ring of newer packets.
            self.stats.late += 1;
            return;
        }
        if ext - base >= room {
            // Bound memory and delay: a peer that jumps far ahead resynchronises.
            let keep_from = ext + 1 - room;
            while self.stored > 0 && self.first_stored().is_some_and(|f| f < keep_from) {
                self.drop_oldest();
            }
            // Play on from what is left (no run of concealed frames for the
            // numbers the peer jumped over).
            self.next_seq = Some(self.first_stored().map_or(ext, |f| f.min(ext)));
        }
        self.stats.received += 1;
        let i = self.index(ext);
        if matches!(self.last, LastFrame::Slot(l) if l == i) {
            self.last = LastFrame::None;
        }
        let slot = &mut self.slots[i];
        slot.ext = ext;
        slot.fill(len, fill);
        self.stored += 1;
        if self.next_seq.is_none() {
            self.lowest = Some(self.lowest.map_or(ext, |l| l.min(ext)));
        }
    }

    /// The next 20 ms frame, or `None` when nothing is playing (silence).
    pub fn pop_frame(&mut self) -> Option<&[i16]> {
        if !self.playing {
            if self.stored < self.depth {
                return None;
            }
            self.playing = true;
            if self.next_seq.is_none() {
                self.next_seq = self.first_stored();
            }
            self.lowest = None;
        }
        while self.pending.len() < FRAME_8K {
            let Some(next) = self.next_seq else { break };
            if self.stored > self.depth {
                self.over_depth += 1;
                if self.over_depth >= CATCH_UP_AFTER && self.holds(next + 1) {
                    // A burst left more waiting than the depth asks for:
                    // drop one frame to catch up.
                    self.over_depth = 0;
                    self.take(next);
                    self.stats.skipped += 1;
                    self.next_seq = Some(next + 1);
                    continue;
                }
            } else {
                self.over_depth = 0;
            }
            if let Some(i) = self.take(next) {
                self.stats.played += 1;
                self.stats.queued_sum += self.stored as u64;
                self.concealed_run = 0;
                self.next_seq = Some(next + 1);
                if self.pending.is_empty() && self.slots[i].len == FRAME_8K {
                    // The usual 20 ms packet, nothing left over: its slot
                    // is the frame.
                    self.last = LastFrame::Slot(i);
                    return Some(self.slots[i].samples());
                }
                self.pending.extend_from_slice(self.slots[i].samples());
            } else if self.stored == 0 {
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
                let last: &[i16] = match self.last {
                    LastFrame::None => &[0; FRAME_8K],
                    LastFrame::Slot(i) => self.slots[i].samples(),
                    LastFrame::Built => &self.built,
                };
                self.pending
                    .extend(last.iter().map(|s| (f32::from(*s) * gain) as i16));
                self.next_seq = Some(next + 1);
            }
        }
        if self.pending.len() < FRAME_8K {
            if self.pending.is_empty() {
                return None;
            }
            self.pending.resize(FRAME_8K, 0);
        }
        self.built.copy_from_slice(&self.pending[..FRAME_8K]);
        self.pending.drain(..FRAME_8K);
        self.last = LastFrame::Built;
        Some(&self.built)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: i16) -> [i16; FRAME_8K] {
        [v; FRAME_8K]
    }

    #[test]
    fn reorders_within_depth() {
        let mut jb = JitterBuffer::new(3);
        jb.push(10, &frame(1));
        jb.push(12, &frame(3));
        assert_eq!(jb.pop_frame(), None, "still buffering");
        jb.push(11, &frame(2));
        assert_eq!(jb.pop_frame().map(|f| f[0]), Some(1));
        assert_eq!(jb.pop_frame().map(|f| f[0]), Some(2));
        assert_eq!(jb.pop_frame().map(|f| f[0]), Some(3));
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn a_shallower_depth_cuts_the_hold() {
        let mut jb = JitterBuffer::new(3);
        for seq in 0..3 {
            jb.push(seq, &frame(seq as i16));
        }
        assert_eq!(jb.pop_frame().map(|f| f[0]), Some(0));
        assert_eq!(
            jb.stats().mean_hold_ms(),
            40.0,
            "two frames queued behind it"
        );
        jb.push(3, &frame(3));
        jb.set_depth(1);
        assert_eq!(
            jb.pop_frame().map(|f| f[0]),
            Some(3),
            "skipped to the newest"
        );
        jb.push(4, &frame(4));
        assert_eq!(jb.pop_frame().map(|f| f[0]), Some(4));
        assert_eq!(jb.stats().queued_sum, 2);
    }

    #[test]
    fn a_burst_is_caught_up_instead_of_delaying_the_rest_of_the_call() {
        let mut jb = JitterBuffer::new(2);
        let mut seq = 0u16;
        // A burst of four, then one packet per frame.
        for _ in 0..4 {
            jb.push(seq, &frame(1));
            seq += 1;
        }
        for _ in 0..100 {
            jb.pop_frame();
            jb.push(seq, &frame(1));
            seq += 1;
        }
        assert!(jb.stats().skipped >= 1, "{:?}", jb.stats());
        let before = jb.stats();
        for _ in 0..50 {
            jb.pop_frame();
            jb.push(seq, &frame(1));
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
        jb.push(1, &frame(1000));
        jb.push(3, &frame(3000));
        assert_eq!(jb.pop_frame().map(|f| f[0]), Some(1000));
        assert_eq!(jb.pop_frame().map(|f| f[0]), Some(700), "faded repeat");
        assert_eq!(jb.pop_frame().map(|f| f[0]), Some(3000));
        assert_eq!(jb.stats().lost, 1);
    }

    #[test]
    fn late_and_duplicate_packets_are_dropped() {
        let mut jb = JitterBuffer::new(1);
        jb.push(5, &frame(5));
        jb.push(5, &frame(5));
        assert_eq!(jb.stats().duplicate, 1);
        assert!(jb.pop_frame().is_some());
        jb.push(4, &frame(4));
        assert_eq!(jb.stats().late, 1);
    }

    #[test]
    fn sequence_wraps() {
        let mut jb = JitterBuffer::new(1);
        jb.push(65535, &frame(1));
        jb.push(0, &frame(2));
        assert_eq!(jb.pop_frame().map(|f| f[0]), Some(1));
        assert_eq!(jb.pop_frame().map(|f| f[0]), Some(2));
    }

    /// Plays one frame per packet pushed; the first sample of each frame.
    fn play(jb: &mut JitterBuffer, seqs: impl IntoIterator<Item = u16>) -> Vec<i16> {
        let mut heard = Vec::new();
        for seq in seqs {
            jb.push(seq, &frame(seq as i16));
            if let Some(f) = jb.pop_frame() {
                assert_eq!(f.len(), FRAME_8K);
                heard.push(f[0]);
            }
        }
        heard
    }

    #[test]
    fn reordering_within_the_depth_loses_nothing() {
        let mut jb = JitterBuffer::new(5);
        // Blocks of four sent backwards: each packet up to three places
        // out of order, across the 16-bit wrap.
        let seqs: Vec<u16> = (0..2000u32)
            .map(|n| {
                let (block, k) = (n / 4, n % 4);
                (65000 + block * 4 + (3 - k)) as u16
            })
            .collect();
        let heard = play(&mut jb, seqs);
        let stats = jb.stats();
        assert_eq!(
            (stats.lost, stats.late, stats.skipped),
            (0, 0, 0),
            "{stats:?}"
        );
        for pair in heard.windows(2) {
            assert_eq!(pair[1], pair[0].wrapping_add(1), "in order");
        }
        assert!(heard.len() >= 1990, "{} frames", heard.len());
    }

    #[test]
    fn a_jump_far_ahead_plays_on_from_the_new_packets() {
        let mut jb = JitterBuffer::new(3);
        let mut heard = play(&mut jb, 0..50);
        heard.extend(play(&mut jb, 5000..5050));
        let after = heard.iter().position(|&v| v >= 5000).unwrap_or(usize::MAX);
        assert!(after < 60, "new packets heard {} frames in", after);
        assert!(
            heard[after..].windows(2).all(|p| p[1] == p[0] + 1),
            "then in order: {:?}",
            &heard[after..]
        );
        assert!(
            jb.stats().lost <= 3,
            "no run of concealment: {:?}",
            jb.stats()
        );
    }

    #[test]
    fn a_peer_that_restarts_its_numbering_is_heard_again() {
        let mut jb = JitterBuffer::new(3);
        let before = play(&mut jb, 30000..30100);
        assert!(before.len() > 90);
        let heard = play(&mut jb, 100..200);
        assert!(
            heard.len() > 85
                && heard
                    .iter()
                    .rev()
                    .take(80)
                    .all(|&v| (100..200).contains(&v)),
            "the new numbering plays: {} frames, {:?}",
            heard.len(),
            jb.stats()
        );
        assert_eq!(
            jb.stats().late,
            2,
            "the two before the restart: {:?}",
            jb.stats()
        );
        assert_eq!(jb.stats().restarts, 1, "{:?}", jb.stats());
    }

    #[test]
    fn a_burst_bigger_than_the_ring_keeps_the_newest_and_memory_bounded() {
        let mut jb = JitterBuffer::new(2);
        for seq in 0..100u16 {
            jb.push(seq, &frame(seq as i16));
        }
        assert!(jb.stored < jb.slots.len(), "{} waiting", jb.stored);
        let first = jb.pop_frame().map(|f| f[0]);
        assert!(first.is_some_and(|v| v > 90), "{first:?}");
        assert_eq!(jb.stats().received, 100);
    }

    #[test]
    fn concealment_fades_from_the_frame_last_played() {
        let mut jb = JitterBuffer::new(1);
        jb.push(1, &frame(1000));
        assert_eq!(jb.pop_frame().map(|f| f[0]), Some(1000));
        jb.push(5, &frame(5000));
        let faded: Vec<i16> = (0..4)
            .filter_map(|_| jb.pop_frame().map(|f| f[0]))
            .collect();
        assert_eq!(faded, vec![700, 280, 0, 5000]);
        assert_eq!(jb.stats().lost, 3);
    }

    #[test]
    fn longer_packets_are_split_into_frames() {
        let mut jb = JitterBuffer::new(1);
        jb.push(1, &[7; 240]);
        jb.push(2, &[8; 240]);
        assert_eq!(jb.pop_frame().map(|f| (f[0], f[159])), Some((7, 7)));
        let f = jb.pop_frame().unwrap_or_default();
        assert_eq!((f[0], f[80]), (7, 8));
    }
}
