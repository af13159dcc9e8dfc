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

/// The media clock's lateness, shared by every call and the admission check.
#[derive(Debug, Default)]
pub struct MediaLoad {
    /// Worst lateness (µs) in the second now running.
    current_us: AtomicU64,
    /// Worst lateness (µs) of each of the last full seconds, newest first.
    past_us: Mutex<[u64; HISTORY]>,
}

impl MediaLoad {
    /// A tick ran `late` after its deadline.
    pub fn observe(&self, late: Duration) {
        let us = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        self.current_us.fetch_max(us, Ordering::Relaxed);
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
}
