//! RTP port allocation within the configured range (even ports, RTCP = +1).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// Hands out even RTP ports at random and takes them back when a call ends.
#[derive(Debug, Clone)]
pub struct PortPool {
    inner: Arc<Mutex<PoolInner>>,
}

#[derive(Debug)]
struct PoolInner {
    min: u16,
    max: u16,
    next: u16,
    in_use: BTreeSet<u16>,
}

/// A port held for one call; returned to the pool on drop.
#[derive(Debug)]
pub struct PortLease {
    port: u16,
    pool: PortPool,
}

impl PortLease {
    /// The RTP port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.pool.inner.lock() {
            inner.in_use.remove(&self.port);
        }
    }
}

impl PortPool {
    /// A pool over `[min, max]`.
    pub fn new(min: u16, max: u16) -> Self {
        let min = min + (min % 2);
        Self {
            inner: Arc::new(Mutex::new(PoolInner {
                min,
                max,
                next: min,
                in_use: BTreeSet::new(),
            })),
        }
    }

    /// A free even port, leased until the lease is dropped. Chosen at random
    /// (an attacker cannot predict the next call's port and spray it before
    /// the caller's first packet); when random picks keep hitting used ports,
    /// the rest of the range is scanned in order.
    pub fn lease(&self) -> Option<PortLease> {
        let mut inner = self.inner.lock().ok()?;
        let span = (inner.max.saturating_sub(inner.min) / 2 + 1) as usize;
        for _ in 0..16 {
            let port = inner.min + 2 * (rand::random::<u16>() % span as u16);
            if port <= inner.max && inner.in_use.insert(port) {
                return Some(PortLease {
                    port,
                    pool: self.clone(),
                });
            }
        }
        for _ in 0..span {
            let port = inner.next;
            inner.next = if port + 2 > inner.max {
                inner.min
            } else {
                port + 2
            };
            if inner.in_use.insert(port) {
                return Some(PortLease {
                    port,
                    pool: self.clone(),
                });
            }
        }
        None
    }
}

/// Bind an RTP socket on `ip` at a port leased from `ports`. It is a plain
/// non-blocking socket, not registered with any reactor: the 20 ms media
/// clock drains it, so arriving packets never wake a thread on their own.
/// Falls back to the wildcard address when `ip` is not local (behind NAT the
/// SDP address is the public one).
pub fn bind_rtp(
    ip: std::net::IpAddr,
    ports: &PortPool,
) -> Option<(std::net::UdpSocket, PortLease)> {
    for _ in 0..32 {
        let lease = ports.lease()?;
        let local = std::net::SocketAddr::new(ip, lease.port());
        let any = std::net::SocketAddr::new(
            if ip.is_ipv6() {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            },
            lease.port(),
        );
        for addr in [local, any] {
            if let Ok(s) = std::net::UdpSocket::bind(addr) {
                if s.set_nonblocking(true).is_ok() {
                    return Some((s, lease));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_every_even_port_once_and_reuses_after_drop() {
        let pool = PortPool::new(20000, 20005);
        let a = pool.lease().unwrap();
        let b = pool.lease().unwrap();
        let c = pool.lease().unwrap();
        let mut got = vec![a.port(), b.port(), c.port()];
        got.sort_unstable();
        assert_eq!(got, vec![20000, 20002, 20004]);
        assert!(pool.lease().is_none());
        let freed = b.port();
        drop(b);
        assert_eq!(pool.lease().map(|l| l.port()), Some(freed));
    }

    #[test]
    fn the_next_port_cannot_be_predicted() {
        let pool = PortPool::new(20000, 29999);
        let leases: Vec<PortLease> = (0..50).filter_map(|_| pool.lease()).collect();
        assert_eq!(leases.len(), 50);
        assert!(leases
            .iter()
            .all(|l| l.port() % 2 == 0 && (20000..=29999).contains(&l.port())));
        let sequential = leases
            .windows(2)
            .filter(|w| w[1].port() == w[0].port() + 2)
            .count();
        // Round-robin would make all 49 steps sequential; random makes one
        // such step a 1-in-5000 event.
        assert!(sequential <= 2, "{sequential} sequential steps");
    }
}
