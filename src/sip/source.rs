//! Where a SIP request really came from. The transport knows the packet's
//! source address; the headers only say what the sender wrote (a `Via` with
//! `received=` of its choosing passed the trunk ACL). An endpoint inspector
//! stamps every received request with the real source in a header of our own
//! (any copy the sender put there is removed first), and the ACL reads that.

use rsipstack::sip::{Header, SipMessage};
use rsipstack::transaction::endpoint::MessageInspector;
use rsipstack::transport::SipAddr;
use std::net::{IpAddr, SocketAddr};

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

/// The address a request's caller really sent it from. Straight from a
/// phone or a carrier that is the packet's source. Through a proxy listed in
/// `trusted` (a Kamailio dispatcher in front of this node) it is what that
/// proxy wrote in `header` — the last copy, the one the proxy appended after
/// any the caller forged, and the last address in it. A header from anyone
/// else is ignored: a sender cannot choose the address it is judged by.
pub fn caller_source(
    headers: &rsipstack::sip::Headers,
    trusted: &[ipnet::IpNet],
    header: &str,
) -> Option<IpAddr> {
    let hop = stamped_source(headers)?.ip();
    if !trusted.iter().any(|n| n.contains(&hop)) {
        return Some(hop);
    }
    let written = headers
        .iter()
        .filter_map(|h| match h {
            Header::Other(name, value) if name.eq_ignore_ascii_case(header) => Some(value.as_str()),
            _ => None,
        })
        .last();
    // A trusted proxy that says nothing is the caller itself (its own
    // OPTIONS, a call it originates).
    Some(written.and_then(parse_forwarded).unwrap_or(hop))
}

/// The last address of a `X-Forwarded-For`-style value: `a, b, c`, each an
/// IP, optionally with a port (`1.2.3.4:5060`, `[2001:db8::1]:5060`).
fn parse_forwarded(value: &str) -> Option<IpAddr> {
    let last = value.rsplit(',').next()?.trim();
    last.parse::<IpAddr>()
        .ok()
        .or_else(|| last.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsipstack::sip::Headers;

    fn headers(from: &str, extra: &[(&str, &str)]) -> Headers {
        let mut h = Headers::default();
        for (n, v) in extra {
            h.push(Header::Other((*n).into(), (*v).into()));
        }
        h.push(Header::Other(SOURCE_HEADER.into(), from.into()));
        h
    }

    #[test]
    fn untrusted_senders_are_judged_by_their_packets() {
        let trusted: Vec<ipnet::IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
        let h = headers("127.0.0.9:5060", &[("X-Forwarded-For", "10.1.1.1")]);
        assert_eq!(
            caller_source(&h, &trusted, "X-Forwarded-For"),
            Some("127.0.0.9".parse().unwrap())
        );
        assert_eq!(
            caller_source(&h, &[], "X-Forwarded-For"),
            Some("127.0.0.9".parse().unwrap())
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_caller_with_its_own_last_copy() {
        let trusted: Vec<ipnet::IpNet> = vec!["127.0.0.0/29".parse().unwrap()];
        // The caller forged one copy; the proxy appended the real one.
        let h = headers(
            "127.0.0.1:5080",
            &[
                ("X-Forwarded-For", "10.9.9.9"),
                ("x-forwarded-for", "192.0.2.7, 198.51.100.4:5060"),
            ],
        );
        assert_eq!(
            caller_source(&h, &trusted, "X-Forwarded-For"),
            Some("198.51.100.4".parse().unwrap())
        );
        let v6 = headers("127.0.0.1:5080", &[("X-Src", "[2001:db8::1]:5060")]);
        assert_eq!(
            caller_source(&v6, &trusted, "X-Src"),
            Some("2001:db8::1".parse().unwrap())
        );
        // Garbage or nothing from the proxy: the proxy itself.
        let junk = headers("127.0.0.1:5080", &[("X-Forwarded-For", "\x1b[31mevil")]);
        assert_eq!(
            caller_source(&junk, &trusted, "X-Forwarded-For"),
            Some("127.0.0.1".parse().unwrap())
        );
    }
}
