//! Reading an RTP socket dry once per tick, in as few system calls as
//! possible.
//!
//! A call's socket is read once every 20 ms. With one `recvfrom` per
//! datagram, the pass always ends with one more that finds the queue empty
//! (`EAGAIN`): two system calls for the usual single packet. On Linux,
//! `recvmmsg` takes up to [`BATCH`] datagrams in one call and says, by taking
//! fewer, that the queue is empty: one system call per socket per tick.

use std::net::{SocketAddr, UdpSocket};

/// Datagrams taken per system call (at 20 ms packets, a tick normally finds
/// one; more only after a stall on the way).
pub const BATCH: usize = 4;
/// Room for one datagram; a longer one is cut short (as `recv_from` with a
/// buffer this size would), which RTP parsing then rejects or bounds.
pub const DATAGRAM: usize = 2048;

/// Read every datagram waiting on `socket` without blocking and hand each to
/// `on_packet` with its source. A socket error ends the pass (as a
/// `recv_from` loop would); it is reported once by the kernel and the next
/// tick reads on.
pub fn drain(socket: &UdpSocket, on_packet: impl FnMut(SocketAddr, &[u8])) {
    imp::drain(socket, on_packet)
}

#[cfg(target_os = "linux")]
mod imp {
    use super::{BATCH, DATAGRAM};
    use std::cell::RefCell;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
    use std::os::fd::AsRawFd;

    /// One media thread's receive buffers and the kernel's message headers
    /// for them, shared by every call it steps (a call does not carry its
    /// own). Kept between passes: only the pointers and lengths are set
    /// again for each `recvmmsg`, nothing is zeroed.
    struct Batch {
        buffers: [[u8; DATAGRAM]; BATCH],
        names: [libc::sockaddr_storage; BATCH],
        iovecs: [libc::iovec; BATCH],
        headers: [libc::mmsghdr; BATCH],
    }

    thread_local! {
        static BATCH_BUFFERS: RefCell<Box<Batch>> = RefCell::new(Box::new(Batch {
            buffers: [[0; DATAGRAM]; BATCH],
            // SAFETY: all-zero is a valid value for these plain C structs.
            names: unsafe { std::mem::zeroed() },
            iovecs: unsafe { std::mem::zeroed() },
            headers: unsafe { std::mem::zeroed() },
        }));
    }

    pub(super) fn drain(socket: &UdpSocket, mut on_packet: impl FnMut(SocketAddr, &[u8])) {
        BATCH_BUFFERS.with_borrow_mut(|batch| loop {
            let taken = receive_batch(socket, batch, &mut on_packet);
            if taken < BATCH {
                return;
            }
        });
    }

    /// One `recvmmsg`; how many datagrams it took (0 on `EAGAIN` or error).
    fn receive_batch(
        socket: &UdpSocket,
        batch: &mut Batch,
        on_packet: &mut impl FnMut(SocketAddr, &[u8]),
    ) -> usize {
        let Batch {
            buffers,
            names,
            iovecs,
            headers,
        } = batch;
        for (((buffer, iovec), name), header) in buffers
            .iter_mut()
            .zip(iovecs.iter_mut())
            .zip(names.iter_mut())
            .zip(headers.iter_mut())
        {
            iovec.iov_base = buffer.as_mut_ptr().cast();
            iovec.iov_len = DATAGRAM;
            let h = &mut header.msg_hdr;
            h.msg_name = (name as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            h.msg_iov = iovec;
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            header.msg_len = 0;
        }
        // SAFETY: every header points at a live buffer of `DATAGRAM` bytes
        // and a `sockaddr_storage`, all in `batch`, borrowed mutably here
        // and not otherwise until the call returns; the kernel writes at
        // most `iov_len` / `msg_namelen` bytes into them.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let Ok(taken) = usize::try_from(n) else {
            return 0;
        };
        for ((header, name), buffer) in headers
            .iter()
            .zip(names.iter())
            .zip(buffers.iter())
            .take(taken)
        {
            let len = (header.msg_len as usize).min(DATAGRAM);
            if let Some(from) = socket_addr(name) {
                on_packet(from, &buffer[..len]);
            }
        }
        taken
    }

    /// The source address the kernel wrote.
    fn socket_addr(name: &libc::sockaddr_storage) -> Option<SocketAddr> {
        match libc::c_int::from(name.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in,
                // which is smaller than sockaddr_storage and less aligned.
                let a = unsafe {
                    &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()
                };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(a.sin_addr.s_addr.to_ne_bytes()),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: as above, for sockaddr_in6.
                let a = unsafe {
                    &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
                };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::DATAGRAM;
    use std::net::{SocketAddr, UdpSocket};

    pub(super) fn drain(socket: &UdpSocket, mut on_packet: impl FnMut(SocketAddr, &[u8])) {
        let mut buf = [0u8; DATAGRAM];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            on_packet(from, &buf[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every datagram waiting is read, in order, with its source, across
    /// more than one batch; datagrams from two sockets (v4) keep their
    /// senders apart; an empty socket reads nothing and does not block.
    #[test]
    fn a_drain_reads_every_waiting_datagram_in_order_with_its_source() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let mut sent = Vec::new();
        for i in 0..(3 * BATCH + 1) {
            let from = if i % 3 == 0 { &b } else { &a };
            let body = vec![i as u8; 10 + i];
            from.send_to(&body, to).unwrap();
            sent.push((from.local_addr().unwrap(), body));
        }
        // Loopback delivers synchronously; wait for the last one anyway.
        let mut got = Vec::new();
        for _ in 0..100 {
            drain(&rx, |from, data| got.push((from, data.to_vec())));
            if got.len() >= sent.len() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(got, sent);
        let mut more = 0;
        drain(&rx, |_, _| more += 1);
        assert_eq!(more, 0);
    }

    #[test]
    fn a_drain_reads_v6_sources_and_cuts_an_oversized_datagram() {
        let Ok(rx) = UdpSocket::bind("[::1]:0") else {
            return; // no IPv6 loopback on this host
        };
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("[::1]:0").unwrap();
        tx.send_to(&vec![7u8; DATAGRAM + 100], rx.local_addr().unwrap())
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..100 {
            drain(&rx, |from, data| got.push((from, data.len())));
            if !got.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(got, vec![(tx.local_addr().unwrap(), DATAGRAM)]);
    }
}
