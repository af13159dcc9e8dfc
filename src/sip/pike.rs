//! Per-source INVITE rate limiting (the idea of Kamailio's `pike`): a token
//! bucket per source address, `rate` INVITEs a second with bursts up to
//! `burst`; sources over it are dropped before any work is done for them.
//! Addresses in the exempt list (a trusted proxy in front, loopback load
//! generators) are never limited. The table is bounded: a spoofed-source
//! flood cannot grow memory.

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// Sources tracked at most.
const MAX_SOURCES: usize = 50_000;

/// The limits, from `[sip]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimits {
    /// INVITEs per second per source (0: no limit).
    pub rate: f64,
    /// Bucket size: INVITEs a source may send at once.
    pub burst: f64,
    /// Never limited.
    pub exempt: Vec<IpNet>,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            rate: 20.0,
            burst: 40.0,
            exempt: vec![
                "127.0.0.1/32".parse().expect("literal"),
                "::1/128".parse().expect("literal"),
            ],
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Duration,
    /// When this source was last reported over the limit.
    reported: Option<Duration>,
}

/// Token buckets by source.
#[derive(Debug, Default)]
pub struct Pike {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl Pike {
    /// Whether an INVITE from `source` at `now` (any monotonic clock) is let
    /// through.
    pub fn allow(&self, source: IpAddr, now: Duration, limits: &RateLimits) -> bool {
        if limits.rate <= 0.0 || limits.exempt.iter().any(|n| n.contains(&source)) {
            return true;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_SOURCES && !buckets.contains_key(&source) {
            // Forget the sources whose buckets are full again (idle ones).
            let burst = limits.burst;
            let rate = limits.rate;
            buckets.retain(|_, b| b.tokens + now.saturating_sub(b.at).as_secs_f64() * rate < burst);
            if buckets.len() >= MAX_SOURCES {
                return false;
            }
        }
        let b = buckets.entry(source).or_insert(Bucket {
            tokens: limits.burst,
            at: now,
            reported: None,
        });
        let refill = now.saturating_sub(b.at).as_secs_f64() * limits.rate;
        b.tokens = (b.tokens + refill).min(limits.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return true;
        }
        // One line per source per 10 s, for the operator and fail2ban.
        if b.reported
            .is_none_or(|r| now.saturating_sub(r) >= Duration::from_secs(10))
        {
            b.reported = Some(now);
            tracing::warn!(
                "SIP INVITE flood from {source}: over {} per second, dropping",
                limits.rate
            );
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_a_flood_is_cut_and_the_bucket_refills() {
        let pike = Pike::default();
        let limits = RateLimits {
            rate: 10.0,
            burst: 20.0,
            exempt: vec!["127.0.0.1/32".parse().expect("net")],
        };
        let flood: IpAddr = "192.0.2.1".parse().expect("ip");
        let ms = Duration::from_millis;
        // 1,000 INVITEs in one second: the burst and the second's refill pass.
        let passed = (0..1000)
            .filter(|i| pike.allow(flood, ms(*i), &limits))
            .count();
        assert!((20..=31).contains(&passed), "{passed}");
        // A calm second later the source may call again.
        assert!(pike.allow(flood, ms(3000), &limits));
        // Exempt and other sources are untouched.
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        assert!((0..1000).all(|i| pike.allow(lo, ms(i), &limits)));
        assert!(pike.allow("192.0.2.2".parse().expect("ip"), ms(1000), &limits));
    }
}
