//! Entry points for fuzzing the input paths voicegate owns: what a peer, a
//! recording or an administrator can hand us. Each takes arbitrary bytes and
//! must return — no panic, no abort, no unbounded allocation.
//!
//! Driven by the libFuzzer targets in `fuzz/` (`make fuzz`, nightly,
//! coverage-guided) and by `tests/fuzz_smoke.rs` on stable (the committed
//! corpus plus seeded mutations, in `make test`).

use crate::config::Codec;
use crate::media::session::{MediaParams, MediaSession};
use std::net::SocketAddr;
use std::time::Duration;

/// A fuzz target: arbitrary bytes in, no panic out.
pub type Target = fn(&[u8]);

/// The targets, by name (the `fuzz/fuzz_targets/*.rs` and corpus names).
pub const TARGETS: &[(&str, Target)] = &[
    ("sip_request", sip_request),
    ("sdp_offer", sdp_offer),
    ("digest", digest),
    ("rtp", rtp),
    ("wav", wav),
    ("config", config),
];

/// A SIP request as the transport hands it to us, then everything we do
/// with its headers: the caller's source (Via received/rport, a trusted
/// proxy's header), the session timer, the SDP body, the log-safe Call-ID,
/// the credentials.
pub fn sip_request(data: &[u8]) {
    let Ok(req) = rsipstack::sip::Request::try_from(data) else {
        return;
    };
    let trusted: Vec<ipnet::IpNet> = vec!["127.0.0.0/8".parse().expect("literal CIDR")];
    let _ = crate::sip::source::caller_source(&req.headers, &trusted, "X-Forwarded-For");
    let _ = crate::sip::session_timer::negotiate(
        &req.headers,
        Duration::from_secs(1800),
        crate::sip::session_timer::MIN_SE_S,
    );
    let _ = crate::sip::sdp::negotiate(&req.body, &[Codec::Pcmu, Codec::Pcma]);
    for h in req.headers.iter() {
        let _ = crate::sip::log_safe(&h.to_string());
    }
    let auth = req.headers.iter().find_map(|h| match h {
        rsipstack::sip::Header::Authorization(a) => Some(a.to_string()),
        _ => None,
    });
    if let Some(a) = auth {
        let value = a.split_once(':').map_or(a.as_str(), |(_, v)| v.trim());
        digest(value.as_bytes());
    }
}

/// An SDP offer (initial INVITE or re-INVITE), against every codec order.
pub fn sdp_offer(data: &[u8]) {
    for allowed in [&[Codec::Pcmu, Codec::Pcma][..], &[Codec::Pcma][..], &[][..]] {
        if let Ok(n) = crate::sip::sdp::negotiate(data, allowed) {
            let _ = n.direction.answer();
            let _ = crate::sip::sdp::build(
                1,
                1,
                "127.0.0.1".parse().expect("literal address"),
                20000,
                n.params.codec,
                n.params.dtmf_payload_type,
                n.direction.answer(),
            );
        }
    }
}

/// An `Authorization` header value against a fresh challenge.
pub fn digest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let issuer = crate::sip::digest::NonceIssuer::new();
    let source = "127.0.0.1".parse().expect("literal address");
    let _ = issuer.challenge("voicegate", source, 1000);
    let _ = issuer.verify(
        Some(text),
        &rsipstack::sip::Method::Invite,
        ("carrier", "secret", "voicegate"),
        source,
        "fuzz-call",
        crate::sip::digest::AuthLimits::default(),
        1000,
    );
}

/// RTP, RTCP, RFC 4733 events and G.711 audio as they reach a call's
/// socket: the input is cut into datagrams (a length byte before each), fed
/// to a media session with the jitter buffer, latching and DTMF detection,
/// and the frames played out.
pub fn rtp(data: &[u8]) {
    let remote: SocketAddr = "127.0.0.1:40000".parse().expect("literal address");
    for (codec, dtmf) in [(Codec::Pcmu, Some(101)), (Codec::Pcma, None)] {
        let mut media = MediaSession::new(
            MediaParams {
                codec,
                dtmf_payload_type: dtmf,
                remote,
            },
            Duration::from_millis(60),
            7,
            Duration::ZERO,
        );
        let mut rest = data;
        let mut now = Duration::ZERO;
        while let Some((&len, tail)) = rest.split_first() {
            let take = usize::from(len).min(tail.len());
            let (datagram, tail) = tail.split_at(take);
            now += Duration::from_millis(20);
            let _ = media.on_datagram(now, remote, datagram);
            let _ = media.pull_frame();
            rest = tail;
        }
        let _ = crate::media::dtmf::TelephoneEvent::parse(data);
        let mut out = Vec::new();
        crate::media::g711::decode(codec, data, &mut out);
    }
}

/// A WAV file handed to `voicegate replay` or `mine`.
pub fn wav(data: &[u8]) {
    // A header may claim gigabytes: what is read is bounded by the bytes.
    let _ = crate::speech::pipeline::read_caller_track(std::io::Cursor::new(data));
}

/// Configuration texts: `gateway.toml`, `trunks.toml` and `agents.toml`,
/// separated by NUL bytes.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let gateway = parts.next().unwrap_or("");
    let trunks = parts.next().unwrap_or("");
    let agents = parts.next().unwrap_or("");
    let _ = crate::config::check_texts(gateway, trunks, agents);
}
