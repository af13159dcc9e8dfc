//! One call's RTP endpoint as a sans-IO state machine: datagrams in (with the
//! time), decoded 20 ms frames and DTMF digits out, outgoing audio and
//! telephone-events packetised. The tokio driver owns the socket and the clock.

use super::dtmf::{self, EventReceiver, InbandDetector};
use super::g711;
use super::jitter::{JitterBuffer, JitterStats, FRAME_8K};
use crate::config::Codec;
use bytes::Bytes;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use webrtc_util::marshal::Marshal;

/// An RTP header without CSRCs or extensions.
const RTP_HEADER: usize = 12;

/// What was negotiated in SDP for this call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaParams {
    /// Audio codec.
    pub codec: Codec,
    /// Payload type of telephone-event, when the peer offered it.
    pub dtmf_payload_type: Option<u8>,
    /// Where the peer said it wants RTP (before latching).
    pub remote: SocketAddr,
}

/// What a datagram produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Audio queued for playout.
    Audio,
    /// A DTMF digit (RFC 4733).
    Digit(char),
    /// Ignored: not RTP, unknown payload type, or from an unlatched source.
    Dropped(DropReason),
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not a parseable RTP packet.
    Malformed,
    /// From a source other than the latched one.
    WrongSource,
    /// A payload type that was not negotiated.
    UnknownPayload,
}

/// Counters reported at the end of a call.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct MediaStats {
    /// Jitter buffer counters.
    pub jitter: JitterStats,
    /// Datagrams dropped as malformed.
    pub malformed: u64,
    /// Datagrams dropped from a foreign source.
    pub wrong_source: u64,
    /// Packets sent.
    pub sent: u64,
}

/// How long the latched source must have been silent before another port of
/// the same address may take over.
const RELATCH_AFTER_QUIET: Duration = Duration::from_millis(500);
/// Packets in a row the new port must send to take over.
const RELATCH_PACKETS: u32 = 3;

/// The addresses media is accepted from: the SDP's (unless unspecified) and
/// SIP's source; empty (anyone, the first packet latches) only when neither
/// is known.
fn allowed_sources(sdp: IpAddr, signalling: Option<IpAddr>) -> Vec<IpAddr> {
    let mut out = Vec::with_capacity(2);
    if !sdp.is_unspecified() {
        out.push(sdp);
    }
    if let Some(sig) = signalling.filter(|s| !out.contains(s)) {
        out.push(sig);
    }
    out
}

/// A call's RTP endpoint.
#[derive(Debug)]
pub struct MediaSession {
    params: MediaParams,
    latched: Option<SocketAddr>,
    /// Where SIP came from: trusted for media when the SDP address is private
    /// or unspecified (a caller behind NAT).
    signalling: Option<IpAddr>,
    /// The addresses media is accepted from (any port until latched); empty:
    /// anyone (the first packet latches).
    allowed: Vec<IpAddr>,
    /// Another port of the allowed address asking to take over: its address
    /// and how many packets in a row it sent.
    relatch: Option<(SocketAddr, u32)>,
    jitter: JitterBuffer,
    events: EventReceiver,
    inband: InbandDetector,
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    last_rx: Duration,
    rfc4733_seen: bool,
    stats: MediaStats,
    scratch: Vec<u8>,
}

impl MediaSession {
    /// A session for negotiated `params`, answering at `now`.
    pub fn new(params: MediaParams, jitter_depth: Duration, ssrc: u32, now: Duration) -> Self {
        let depth = (jitter_depth.as_millis() / 20).max(1) as usize;
        let allowed = allowed_sources(params.remote.ip(), None);
        Self {
            params,
            latched: None,
            signalling: None,
            allowed,
            relatch: None,
            jitter: JitterBuffer::new(depth),
            events: EventReceiver::default(),
            inband: InbandDetector::default(),
            ssrc,
            seq: (ssrc >> 16) as u16,
            timestamp: ssrc.rotate_left(7),
            last_rx: now,
            rfc4733_seen: false,
            stats: MediaStats::default(),
            scratch: Vec::with_capacity(RTP_HEADER + FRAME_8K),
        }
    }

    /// Media is also accepted from where SIP came from (a caller behind NAT
    /// whose SDP names a private address, a multi-homed phone whose SDP names
    /// another interface) — never from a third address.
    pub fn with_signalling_source(mut self, source: Option<IpAddr>) -> Self {
        self.signalling = source;
        self.allowed = allowed_sources(self.params.remote.ip(), source);
        // New addresses, a fresh latch (`on_datagram` trusts a latched source).
        self.latched = None;
        self.relatch = None;
        self
    }

    /// Latch to the first packet from anywhere (a leg we placed ourselves
    /// through a trusted PBX, whose SDP may name an address its RTP does not
    /// come from).
    pub fn learning_any_source(mut self) -> Self {
        self.allowed.clear();
        self
    }

    /// Change the jitter buffer's playout depth.
    pub fn set_jitter_depth(&mut self, depth: Duration) {
        self.jitter
            .set_depth((depth.as_millis() / 20).max(1) as usize);
    }

    /// The negotiated parameters.
    pub fn params(&self) -> &MediaParams {
        &self.params
    }

    /// New parameters from a re-INVITE; the source is latched afresh.
    pub fn renegotiate(&mut self, params: MediaParams) {
        if params.remote != self.params.remote {
            self.latched = None;
            self.relatch = None;
            if !self.allowed.is_empty() {
                self.allowed = allowed_sources(params.remote.ip(), self.signalling);
            }
        }
        self.params = params;
    }

    /// Where to send: the latched source, else the SDP address.
    pub fn destination(&self) -> SocketAddr {
        self.latched.unwrap_or(self.params.remote)
    }

    /// How long since the last accepted packet.
    pub fn idle_for(&self, now: Duration) -> Duration {
        now.saturating_sub(self.last_rx)
    }

    /// Counters so far.
    pub fn stats(&self) -> MediaStats {
        MediaStats {
            jitter: self.jitter.stats(),
            ..self.stats
        }
    }

    /// Feed one received datagram.
    pub fn on_datagram(&mut self, now: Duration, from: SocketAddr, data: &[u8]) -> Inbound {
        let Ok(packet) = crate::media::rtp_packet::RtpView::parse(data) else {
            self.stats.malformed += 1;
            return Inbound::Dropped(DropReason::Malformed);
        };
        let pt = packet.payload_type;
        let is_audio = pt == self.params.codec.payload_type();
        let is_dtmf = Some(pt) == self.params.dtmf_payload_type;
        if !is_audio && !is_dtmf {
            return Inbound::Dropped(DropReason::UnknownPayload);
        }
        // Strict source: only the negotiated address is ever heard (a spray
        // from elsewhere before the caller's first packet cannot take the
        // call); the first packet from it latches its port; another port of
        // that address takes over only once the latched one has gone quiet
        // and the new one is steady.
        // The latched source passed this check when it latched (and a new
        // list of addresses unlatches): the usual packet skips the list.
        if self.latched != Some(from)
            && !self.allowed.is_empty()
            && !self.allowed.contains(&from.ip())
        {
            self.stats.wrong_source += 1;
            return Inbound::Dropped(DropReason::WrongSource);
        }
        match self.latched {
            Some(src) if src != from => {
                let quiet = now.saturating_sub(self.last_rx) >= RELATCH_AFTER_QUIET;
                let run = match self.relatch {
                    Some((c, n)) if c == from => n + 1,
                    _ => 1,
                };
                self.relatch = Some((from, run));
                if !(quiet && run >= RELATCH_PACKETS) {
                    self.stats.wrong_source += 1;
                    return Inbound::Dropped(DropReason::WrongSource);
                }
                self.latched = Some(from);
                self.relatch = None;
            }
            None => self.latched = Some(from),
            _ => self.relatch = None,
        }
        self.last_rx = now;
        if is_dtmf {
            self.rfc4733_seen = true;
            return match self.events.on_packet(packet.timestamp, packet.payload) {
                Some(d) => Inbound::Digit(d),
                None => Inbound::Audio,
            };
        }
        let codec = self.params.codec;
        self.jitter
            .push_with(packet.sequence_number, packet.payload.len(), |pcm| {
                g711::decode_into(codec, packet.payload, pcm);
            });
        Inbound::Audio
    }

    /// The caller's next 20 ms of audio (silence when none is playing), plus an
    /// in-band DTMF digit. In-band detection is the fallback: it stops once the
    /// peer has sent an RFC 4733 event, so no key press is counted twice.
    pub fn pull_frame(&mut self) -> ([i16; FRAME_8K], Option<char>) {
        let mut frame = [0; FRAME_8K];
        if let Some(played) = self.jitter.pop_frame() {
            frame.copy_from_slice(played);
        }
        let digit = if !self.rfc4733_seen {
            self.inband.on_frame(&frame)
        } else {
            None
        };
        (frame, digit)
    }

    /// The next packet's header (its sequence number taken, counted as sent).
    fn next_header(
        &mut self,
        payload_type: u8,
        marker: bool,
        timestamp: u32,
    ) -> rtp::header::Header {
        let header = rtp::header::Header {
            version: 2,
            marker,
            payload_type,
            sequence_number: self.seq,
            timestamp,
            ssrc: self.ssrc,
            ..Default::default()
        };
        self.seq = self.seq.wrapping_add(1);
        self.stats.sent += 1;
        header
    }

    fn packet(&mut self, payload_type: u8, marker: bool, timestamp: u32, payload: Bytes) -> Bytes {
        let packet = rtp::packet::Packet {
            header: self.next_header(payload_type, marker, timestamp),
            payload,
        };
        packet.marshal().unwrap_or_default()
    }

    /// Packetise 20 ms of outgoing audio: the RTP packet, in a buffer the
    /// session reuses (no allocation per packet on the media path).
    pub fn encode_frame(&mut self, samples: &[i16]) -> &[u8] {
        let header = self.next_header(self.params.codec.payload_type(), false, self.timestamp);
        self.timestamp = self.timestamp.wrapping_add(samples.len() as u32);
        self.scratch.clear();
        self.scratch.resize(RTP_HEADER, 0);
        // A plain header (no CSRC, no extension) is always 12 bytes; were
        // it refused, an empty datagram goes out rather than a headless one.
        match header.marshal_to(&mut self.scratch) {
            Ok(n) => self.scratch.truncate(n),
            Err(_) => {
                self.scratch.clear();
                return &self.scratch;
            }
        }
        g711::encode(self.params.codec, samples, &mut self.scratch);
        &self.scratch
    }

    /// The RFC 4733 packets for one digit (send one every 20 ms; the end
    /// packets may go together). Empty when the peer has no telephone-event.
    pub fn encode_digit(&mut self, digit: char, duration_ms: u32) -> Vec<Bytes> {
        let Some(pt) = self.params.dtmf_payload_type else {
            return Vec::new();
        };
        let ts = self.timestamp;
        let packets: Vec<Bytes> = dtmf::event_payloads(digit, duration_ms)
            .into_iter()
            .map(|(marker, payload)| self.packet(pt, marker, ts, Bytes::copy_from_slice(&payload)))
            .collect();
        self.timestamp = self.timestamp.wrapping_add(duration_ms.max(40) * 8);
        packets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> MediaParams {
        MediaParams {
            codec: Codec::Pcmu,
            dtmf_payload_type: Some(101),
            remote: "127.0.0.1:4000".parse().unwrap(),
        }
    }

    #[test]
    fn latches_to_first_source_and_drops_others() {
        let mut tx = MediaSession::new(params(), Duration::from_millis(20), 7, Duration::ZERO);
        let mut rx = MediaSession::new(params(), Duration::from_millis(20), 9, Duration::ZERO);
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        let pkt = tx.encode_frame(&[1000; 160]);
        assert_eq!(
            rx.on_datagram(Duration::from_millis(20), a, pkt),
            Inbound::Audio
        );
        assert_eq!(rx.destination(), a);
        let pkt = tx.encode_frame(&[1000; 160]);
        assert_eq!(
            rx.on_datagram(Duration::from_millis(40), b, pkt),
            Inbound::Dropped(DropReason::WrongSource)
        );
        let (frame, _) = rx.pull_frame();
        assert!((i32::from(frame[0]) - 1000).abs() < 40);
        assert_eq!(
            rx.idle_for(Duration::from_millis(1040)),
            Duration::from_millis(1020)
        );
    }

    #[test]
    fn only_the_negotiated_address_is_heard_and_a_quiet_port_hands_over() {
        let mut tx = MediaSession::new(params(), Duration::from_millis(20), 7, Duration::ZERO);
        let mut rx = MediaSession::new(params(), Duration::from_millis(20), 9, Duration::ZERO);
        let attacker: SocketAddr = "127.0.0.2:4000".parse().unwrap();
        let caller: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let moved: SocketAddr = "127.0.0.1:4010".parse().unwrap();
        let ms = Duration::from_millis;
        // A spray before the caller's first packet does not latch.
        for t in 0..5 {
            let pkt = tx.encode_frame(&[9000; 160]);
            assert_eq!(
                rx.on_datagram(ms(t * 20), attacker, pkt),
                Inbound::Dropped(DropReason::WrongSource)
            );
        }
        assert_eq!(
            rx.destination(),
            "127.0.0.1:4000".parse::<SocketAddr>().unwrap(),
            "the SDP's address"
        );
        let pkt = tx.encode_frame(&[100; 160]);
        assert_eq!(rx.on_datagram(ms(120), caller, pkt), Inbound::Audio);
        assert_eq!(rx.destination(), caller);
        // Another port of the caller's address while the caller talks: ignored.
        for t in 0..5 {
            let pkt = tx.encode_frame(&[100; 160]);
            assert_eq!(
                rx.on_datagram(ms(140 + t), moved, pkt),
                Inbound::Dropped(DropReason::WrongSource)
            );
            let pkt = tx.encode_frame(&[100; 160]);
            assert_eq!(rx.on_datagram(ms(141 + t), caller, pkt), Inbound::Audio);
        }
        // The caller's NAT moved them: after 500 ms of quiet, three in a row take over.
        let mut last = Inbound::Audio;
        for t in 0..3 {
            let pkt = tx.encode_frame(&[100; 160]);
            last = rx.on_datagram(ms(800 + t * 20), moved, pkt);
        }
        assert_eq!(last, Inbound::Audio);
        assert_eq!(rx.destination(), moved);
    }

    /// The latched source skips the allowed-address check; a re-INVITE to
    /// another address must unlatch it, so the old source is not heard.
    #[test]
    fn a_reinvite_to_another_address_stops_hearing_the_latched_source() {
        let mut tx = MediaSession::new(params(), Duration::from_millis(20), 7, Duration::ZERO);
        let mut rx = MediaSession::new(params(), Duration::from_millis(20), 9, Duration::ZERO);
        let old: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let new: SocketAddr = "127.0.0.3:4400".parse().unwrap();
        let ms = Duration::from_millis;
        let pkt = tx.encode_frame(&[100; 160]);
        assert_eq!(rx.on_datagram(ms(0), old, pkt), Inbound::Audio);
        assert_eq!(rx.destination(), old);
        let mut moved = params();
        moved.remote = new;
        rx.renegotiate(moved);
        assert_eq!(rx.destination(), new, "unlatched: the new SDP address");
        let pkt = tx.encode_frame(&[100; 160]);
        assert_eq!(
            rx.on_datagram(ms(20), old, pkt),
            Inbound::Dropped(DropReason::WrongSource),
            "the old address is no longer negotiated"
        );
        let pkt = tx.encode_frame(&[100; 160]);
        assert_eq!(rx.on_datagram(ms(40), new, pkt), Inbound::Audio);
        assert_eq!(rx.destination(), new);
    }

    #[test]
    fn a_caller_behind_nat_is_heard_from_where_sip_came() {
        let mut natted = params();
        natted.remote = "192.168.1.20:4000".parse().unwrap();
        let mut tx = MediaSession::new(params(), Duration::from_millis(20), 7, Duration::ZERO);
        let mut rx = MediaSession::new(natted, Duration::from_millis(20), 9, Duration::ZERO)
            .with_signalling_source(Some("203.0.113.7".parse().unwrap()));
        let pkt = tx.encode_frame(&[100; 160]);
        let public: SocketAddr = "203.0.113.7:31000".parse().unwrap();
        assert_eq!(rx.on_datagram(Duration::ZERO, public, pkt), Inbound::Audio);
        assert_eq!(rx.destination(), public);
        let pkt = tx.encode_frame(&[100; 160]);
        assert_eq!(
            rx.on_datagram(Duration::ZERO, "198.51.100.9:31000".parse().unwrap(), pkt),
            Inbound::Dropped(DropReason::WrongSource)
        );
    }

    #[test]
    fn garbage_is_dropped_not_fatal() {
        let mut rx = MediaSession::new(params(), Duration::from_millis(20), 9, Duration::ZERO);
        let from: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(
            rx.on_datagram(Duration::ZERO, from, &[0xff, 1, 2]),
            Inbound::Dropped(DropReason::Malformed)
        );
        assert_eq!(rx.stats().malformed, 1);
    }

    #[test]
    fn digits_survive_the_wire() {
        let mut tx = MediaSession::new(params(), Duration::from_millis(20), 7, Duration::ZERO);
        let mut rx = MediaSession::new(params(), Duration::from_millis(20), 9, Duration::ZERO);
        let from: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let digits: Vec<Inbound> = tx
            .encode_digit('#', 100)
            .iter()
            .map(|p| rx.on_datagram(Duration::ZERO, from, p))
            .filter(|i| matches!(i, Inbound::Digit(_)))
            .collect();
        assert_eq!(digits, vec![Inbound::Digit('#')]);
    }
}
