//! SDP offer/answer for audio calls (RFC 3264): G.711 PCMU/PCMA, RFC 4733
//! telephone-event, ptime 20, hold detection. Parsing uses the `sdp` crate.

use crate::config::Codec;
use crate::media::session::MediaParams;
use std::io::Cursor;
use std::net::{IpAddr, SocketAddr};

/// Media direction from the peer's point of view (`a=sendrecv` …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Both ways.
    SendRecv,
    /// The peer only sends (it holds us).
    SendOnly,
    /// The peer only receives.
    RecvOnly,
    /// Nothing flows.
    Inactive,
}

impl Direction {
    /// Our answer's direction for the peer's offer.
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendRecv => Direction::SendRecv,
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
        }
    }

    /// The SDP attribute name.
    pub fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// Whether the peer has put the call on hold.
    pub fn is_hold(self) -> bool {
        matches!(self, Direction::SendOnly | Direction::Inactive)
    }
}

/// Why an offer cannot be answered, with the SIP status that says so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// Not parseable SDP, or no usable audio stream/address → 400.
    #[error("malformed SDP: {0}")]
    Malformed(String),
    /// No codec in common → 488.
    #[error("no common codec (offered: {0})")]
    NoCommonCodec(String),
}

impl OfferError {
    /// The SIP status code for this failure.
    pub fn status(&self) -> u16 {
        match self {
            OfferError::Malformed(_) => 400,
            OfferError::NoCommonCodec(_) => 488,
        }
    }
}

/// The result of negotiating one offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// What the media path uses.
    pub params: MediaParams,
    /// The peer's direction.
    pub direction: Direction,
}

/// Negotiate an audio offer against the trunk's codecs (in preference order).
pub fn negotiate(offer: &[u8], allowed: &[Codec]) -> Result<Negotiated, OfferError> {
    let text = std::str::from_utf8(offer)
        .map_err(|_| OfferError::Malformed("body is not UTF-8".into()))?;
    // The parser wants CRLF or LF line ends and a trailing newline.
    let mut normalised = text.replace("\r\n", "\n");
    if !normalised.ends_with('\n') {
        normalised.push('\n');
    }
    let normalised = normalised.replace('\n', "\r\n");
    let sd = sdp::SessionDescription::unmarshal(&mut Cursor::new(normalised.as_bytes()))
        .map_err(|e| OfferError::Malformed(e.to_string()))?;
    let audio = sd
        .media_descriptions
        .iter()
        .find(|m| m.media_name.media == "audio" && m.media_name.port.value > 0)
        .ok_or_else(|| OfferError::Malformed("no audio stream".into()))?;
    let conn = audio
        .connection_information
        .as_ref()
        .or(sd.connection_information.as_ref())
        .and_then(|c| c.address.as_ref())
        .ok_or_else(|| OfferError::Malformed("no connection address (c=)".into()))?;
    let ip: IpAddr = conn
        .address
        .parse()
        .map_err(|_| OfferError::Malformed(format!("bad connection address {}", conn.address)))?;
    let port = u16::try_from(audio.media_name.port.value)
        .map_err(|_| OfferError::Malformed("bad media port".into()))?;

    // Payload type → encoding name, from rtpmap or the static table.
    let rtpmap = |pt: u8| -> Option<String> {
        audio
            .attributes
            .iter()
            .filter(|a| a.key == "rtpmap")
            .filter_map(|a| a.value.as_deref())
            .find_map(|v| {
                let (num, rest) = v.split_once(' ')?;
                (num.parse::<u8>().ok()? == pt)
                    .then(|| rest.split('/').next().unwrap_or("").to_string())
            })
    };
    let mut offered = Vec::new();
    for f in &audio.media_name.formats {
        let Ok(pt) = f.parse::<u8>() else { continue };
        let name = rtpmap(pt).unwrap_or_else(|| match pt {
            0 => "PCMU".into(),
            8 => "PCMA".into(),
            _ => format!("pt{pt}"),
        });
        offered.push((pt, name));
    }
    let codec = allowed
        .iter()
        .copied()
        .find(|c| {
            offered
                .iter()
                .any(|(pt, name)| *pt == c.payload_type() && name.eq_ignore_ascii_case(c.name()))
        })
        .ok_or_else(|| {
            OfferError::NoCommonCodec(
                offered
                    .iter()
                    .map(|(_, n)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })?;
    let dtmf_payload_type = offered
        .iter()
        .find(|(_, n)| n.eq_ignore_ascii_case("telephone-event"))
        .map(|(pt, _)| *pt);
    let attr = |k: &str| audio.attributes.iter().any(|a| a.key == k) || sd.has_attribute(k);
    let mut direction = if attr("inactive") {
        Direction::Inactive
    } else if attr("sendonly") {
        Direction::SendOnly
    } else if attr("recvonly") {
        Direction::RecvOnly
    } else {
        Direction::SendRecv
    };
    if ip.is_unspecified() && direction == Direction::SendRecv {
        direction = Direction::SendOnly; // RFC 2543 hold: c=0.0.0.0
    }
    Ok(Negotiated {
        params: MediaParams {
            codec,
            dtmf_payload_type,
            remote: SocketAddr::new(ip, port),
        },
        direction,
    })
}

/// Build our answer (or offer) SDP.
pub fn build(
    session_id: u64,
    version: u64,
    address: IpAddr,
    port: u16,
    codec: Codec,
    dtmf_payload_type: Option<u8>,
    direction: Direction,
) -> String {
    let ip_kind = if address.is_ipv6() { "IP6" } else { "IP4" };
    let mut formats = codec.payload_type().to_string();
    if let Some(pt) = dtmf_payload_type {
        formats.push_str(&format!(" {pt}"));
    }
    let mut s = format!(
        "v=0\r\no=voicegate {session_id} {version} IN {ip_kind} {address}\r\ns=voicegate\r\n\
         c=IN {ip_kind} {address}\r\nt=0 0\r\nm=audio {port} RTP/AVP {formats}\r\n\
         a=rtpmap:{} {}/8000\r\n",
        codec.payload_type(),
        codec.name()
    );
    if let Some(pt) = dtmf_payload_type {
        s.push_str(&format!(
            "a=rtpmap:{pt} telephone-event/8000\r\na=fmtp:{pt} 0-16\r\n"
        ));
    }
    s.push_str(&format!("a=ptime:20\r\na={}\r\n", direction.attribute()));
    s
}

/// Build an offer listing several codecs (our preference first), as sent to
/// an agent: whatever they pick, the gateway transcodes through PCM.
pub fn build_offer(
    session_id: u64,
    version: u64,
    address: IpAddr,
    port: u16,
    codecs: &[Codec],
    dtmf_payload_type: Option<u8>,
) -> String {
    let ip_kind = if address.is_ipv6() { "IP6" } else { "IP4" };
    let mut formats: Vec<String> = codecs
        .iter()
        .map(|c| c.payload_type().to_string())
        .collect();
    if let Some(pt) = dtmf_payload_type {
        formats.push(pt.to_string());
    }
    let mut s = format!(
        "v=0\r\no=voicegate {session_id} {version} IN {ip_kind} {address}\r\ns=voicegate\r\n\
         c=IN {ip_kind} {address}\r\nt=0 0\r\nm=audio {port} RTP/AVP {}\r\n",
        formats.join(" ")
    );
    for c in codecs {
        s.push_str(&format!(
            "a=rtpmap:{} {}/8000\r\n",
            c.payload_type(),
            c.name()
        ));
    }
    if let Some(pt) = dtmf_payload_type {
        s.push_str(&format!(
            "a=rtpmap:{pt} telephone-event/8000\r\na=fmtp:{pt} 0-16\r\n"
        ));
    }
    s.push_str("a=ptime:20\r\na=sendrecv\r\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
        m=audio 4000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n";

    #[test]
    fn an_offer_to_an_agent_lists_both_laws_and_dtmf_and_parses_back() {
        let o = build_offer(
            7,
            1,
            "127.0.0.1".parse().unwrap(),
            30000,
            &[Codec::Pcmu, Codec::Pcma],
            Some(101),
        );
        assert!(o.contains("m=audio 30000 RTP/AVP 0 8 101\r\n"), "{o}");
        let n = negotiate(o.as_bytes(), &[Codec::Pcma]).unwrap();
        assert_eq!(n.params.codec, Codec::Pcma);
        assert_eq!(n.params.dtmf_payload_type, Some(101));
    }

    #[test]
    fn picks_our_preferred_common_codec_and_dtmf() {
        let n = negotiate(OFFER.as_bytes(), &[Codec::Pcmu, Codec::Pcma]).unwrap();
        assert_eq!(n.params.codec, Codec::Pcmu);
        assert_eq!(n.params.dtmf_payload_type, Some(101));
        assert_eq!(
            n.params.remote,
            "10.0.0.5:4000".parse::<std::net::SocketAddr>().unwrap()
        );
        assert_eq!(n.direction, Direction::SendRecv);
        let n = negotiate(OFFER.as_bytes(), &[Codec::Pcma]).unwrap();
        assert_eq!(n.params.codec, Codec::Pcma);
    }

    #[test]
    fn no_common_codec_is_488_and_garbage_is_400() {
        let g722 = OFFER.replace("8 0 101", "9").replace("a=rtpmap:8", "a=x:8");
        let e = negotiate(g722.as_bytes(), &[Codec::Pcmu]).unwrap_err();
        assert_eq!(e.status(), 488);
        assert_eq!(
            negotiate(b"hello", &[Codec::Pcmu]).unwrap_err().status(),
            400
        );
        assert_eq!(
            negotiate(&[0xff, 0xfe], &[Codec::Pcmu])
                .unwrap_err()
                .status(),
            400
        );
        let no_c = OFFER.replace("c=IN IP4 10.0.0.5\r\n", "");
        assert_eq!(
            negotiate(no_c.as_bytes(), &[Codec::Pcmu])
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn hold_is_detected() {
        let hold = OFFER.replace("a=sendrecv", "a=sendonly");
        let n = negotiate(hold.as_bytes(), &[Codec::Pcmu]).unwrap();
        assert!(n.direction.is_hold());
        assert_eq!(n.direction.answer(), Direction::RecvOnly);
        let old = OFFER.replace("c=IN IP4 10.0.0.5", "c=IN IP4 0.0.0.0");
        assert!(negotiate(old.as_bytes(), &[Codec::Pcmu])
            .unwrap()
            .direction
            .is_hold());
    }

    #[test]
    fn answer_round_trips_through_the_parser() {
        let a = build(
            1,
            1,
            "127.0.0.1".parse().unwrap(),
            20000,
            Codec::Pcma,
            Some(101),
            Direction::SendRecv,
        );
        let n = negotiate(a.as_bytes(), &[Codec::Pcma]).unwrap();
        assert_eq!(n.params.remote.port(), 20000);
        assert_eq!(n.params.dtmf_payload_type, Some(101));
    }
}
