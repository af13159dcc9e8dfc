//! Where a SIP request really came from. The transport knows the packet's
//! source address; the headers only say what the sender wrote (a `Via` with
//! `received=` of its choosing passed the trunk ACL). An endpoint inspector
//! stamps every received request with the real source in a header of our own
//! (any copy the sender put there is removed first), and the ACL reads that.

use rsipstack::sip::{Header, SipMessage};
use rsipstack::transaction::endpoint::MessageInspector;
use rsipstack::transport::SipAddr;
use std::net::SocketAddr;

/// The header that carries the transport's source address inside voicegate.
pub const SOURCE_HEADER: &str = "X-Voicegate-Source";

fn is_source(h: &Header) -> bool {
    matches!(h, Header::Other(name, _) if name.eq_ignore_ascii_case(SOURCE_HEADER))
}

/// Stamps received requests with their real source; strips the stamp from
/// anything sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct SourceStamp;

impl MessageInspector for SourceStamp {
    fn before_send(&self, mut msg: SipMessage, _dest: Option<&SipAddr>) -> SipMessage {
        match &mut msg {
            SipMessage::Request(r) => r.headers.retain(|h| !is_source(h)),
            SipMessage::Response(r) => r.headers.retain(|h| !is_source(h)),
        }
        msg
    }

    fn after_received(&self, mut msg: SipMessage, from: Option<&SipAddr>) -> SipMessage {
        if let SipMessage::Request(r) = &mut msg {
            r.headers.retain(|h| !is_source(h));
            if let Some(addr) = from.and_then(|f| f.get_socketaddr().ok()) {
                r.headers
                    .push(Header::Other(SOURCE_HEADER.into(), addr.to_string()));
            }
        }
        msg
    }
}

/// The real source of a received request, as [`SourceStamp`] recorded it.
pub fn stamped_source(headers: &rsipstack::sip::Headers) -> Option<SocketAddr> {
    headers.iter().find_map(|h| match h {
        Header::Other(name, value) if name.eq_ignore_ascii_case(SOURCE_HEADER) => {
            value.parse().ok()
        }
        _ => None,
    })
}
