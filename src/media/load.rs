//! How late the media clock runs: every call's 20 ms tick reports how long
//! after its deadline it ran, and the gateway keeps the worst per second.
//! A tick that is late is audio that reaches the caller late (or, beyond the
//! jitter buffer, not at all), so this — not CPU, which Whisper workers keep
//! near 100 % by design — is what admission control reads: while every one
//! of the last few seconds had a tick later than the threshold, new calls
//! are refused (503) so that the calls up keep their media.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Seconds of history kept.
const HISTORY: usize = 3;

/// Upper bounds (µs) of the lateness histogram's buckets; one more bucket
/// holds the rest.
pub const LATENESS_BUCKETS_US: [u64; 10] = [
    100, 250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000,
];

/// Every tick's lateness since start, by bucket (for percentiles: a load test
/// reads it before and after its window).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatenessHistogram {
    /// Ticks at most each bound of [`LATENESS_BUCKETS_US`] late (cumulative),
    /// then all ticks.
    pub cumulative: Vec<u64>,
    /// Total lateness (µs).
    pub sum_us: u64,
}

/// The media clock's lateness, shared by every call and the admission check.
#[derive(Debug, Default)]
pub struct MediaLoad {
    /// Worst lateness (µs) in the second now running.
    current_us: AtomicU64,
    /// Worst lateness (µs) of each of the last full seconds, newest first.
    past_us: Mutex<[u64; HISTORY]>,
    /// Ticks by lateness bucket (not cumulative).
    buckets: [AtomicU64; LATENESS_BUCKETS_US.len() + 1],
    /// Total lateness (µs).
    sum_us: AtomicU64,
}

impl MediaLoad {
    /// A tick ran `late` after its deadline.
    pub fn observe(&self, late: Duration) {
        let us = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        self.current_us.fetch_max(us, Ordering::Relaxed);
        let bucket = LATENESS_BUCKETS_US
            .iter()
            .position(|bound| us <= *bound)
            .unwrap_or(LATENESS_BUCKETS_US.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Every tick's lateness so far.
    pub fn histogram(&self) -> LatenessHistogram {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        LatenessHistogram {
            cumulative,
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }

    /// A second has passed (the gateway's housekeeping calls this each second).
    pub fn rotate(&self) {
        let worst = self.current_us.swap(0, Ordering::Relaxed);
        let mut past = self.past_us.lock().unwrap_or_else(|p| p.into_inner());
        past.rotate_right(1);
        past[0] = worst;
    }

    /// The worst lateness of the last full second.
    pub fn last_second_worst(&self) -> Duration {
        let past = self.past_us.lock().unwrap_or_else(|p| p.into_inner());
        Duration::from_micros(past[0])
    }

    /// Whether every one of the last seconds had a tick later than
    /// `threshold` (sustained, not one hiccup). A zero threshold: never.
    pub fn overloaded(&self, threshold: Duration) -> bool {
        if threshold.is_zero() {
            return false;
        }
        let limit = u64::try_from(threshold.as_micros()).unwrap_or(u64::MAX);
        let past = self.past_us.lock().unwrap_or_else(|p| p.into_inner());
        past.iter().all(|us| *us > limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sustained_lateness_counts_as_overload() {
        let load = MediaLoad::default();
        let ms = Duration::from_millis;
        let limit = ms(100);
        // One bad second among good ones: not overloaded.
        for worst in [ms(5), ms(400), ms(3)] {
            load.observe(worst);
            load.observe(ms(1));
            load.rotate();
        }
        assert!(!load.overloaded(limit));
        assert_eq!(load.last_second_worst(), ms(3));
        // Three bad seconds in a row: overloaded; one good second ends it.
        for _ in 0..3 {
            load.observe(ms(150));
            load.rotate();
        }
        assert!(load.overloaded(limit));
        assert!(!load.overloaded(Duration::ZERO), "a zero threshold is off");
        load.observe(ms(20));
        load.rotate();
        assert!(!load.overloaded(limit));
        // A second with no ticks at all (no calls) is not late.
        load.rotate();
        assert_eq!(load.last_second_worst(), Duration::ZERO);
    }

    #[test]
    fn every_tick_lands_in_its_lateness_bucket() {
        let load = MediaLoad::default();
        for us in [0, 100, 101, 4_999, 5_000, 5_001, 250_000] {
            load.observe(Duration::from_micros(us));
        }
        let h = load.histogram();
        // ≤100 µs: 2; ≤250: 3; ≤500, ≤1 ms, ≤2 ms: 3; ≤5 ms: 5; ≤10 ms … ≤100 ms: 6; all: 7.
        assert_eq!(h.cumulative, [2, 3, 3, 3, 3, 5, 6, 6, 6, 6, 7]);
        assert_eq!(h.sum_us, 100 + 101 + 4_999 + 5_000 + 5_001 + 250_000);
    }
}
