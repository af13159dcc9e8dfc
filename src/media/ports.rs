//! RTP port allocation within the configured range (even ports, RTCP = +1).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// Hands out even RTP ports round-robin and takes them back when a call ends.
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

    /// Candidate ports to try binding, in order; each is leased when returned.
    pub fn lease(&self) -> Option<PortLease> {
        let mut inner = self.inner.lock().ok()?;
        let span = (inner.max.saturating_sub(inner.min) / 2 + 1) as usize;
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
    fn leases_even_ports_and_reuses_after_drop() {
        let pool = PortPool::new(20000, 20005);
        let a = pool.lease().unwrap();
        let b = pool.lease().unwrap();
        let c = pool.lease().unwrap();
        assert_eq!((a.port(), b.port(), c.port()), (20000, 20002, 20004));
        assert!(pool.lease().is_none());
        drop(b);
        assert_eq!(pool.lease().map(|l| l.port()), Some(20002));
    }
}
