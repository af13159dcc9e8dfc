//! RFC 4028 session timers: the caller (or we) re-INVITE or UPDATE every so
//! often, and a call whose refreshes stop is ended — the SIP-level answer to
//! a caller that vanished without a BYE (a crashed phone, a lost NAT
//! binding), independent of RTP (which a held call does not send).
//!
//! Sans-IO: [`negotiate`] reads a request's headers and says what to answer;
//! [`SessionTimer`] says, on the call's clock, when we must refresh or when
//! the session has expired.

use rsipstack::sip::Header;
use std::time::Duration;

/// RFC 4028's floor for a session interval, and our `Min-SE`.
pub const MIN_SE_S: u64 = 90;

/// Who refreshes the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    /// The caller (the UAC of the INVITE).
    Uac,
    /// Us.
    Uas,
}

impl Refresher {
    fn name(self) -> &'static str {
        match self {
            Refresher::Uac => "uac",
            Refresher::Uas => "uas",
        }
    }
}

/// A negotiated session timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimer {
    /// The session interval.
    pub interval: Duration,
    /// Who refreshes.
    pub refresher: Refresher,
    /// The caller supports `timer` (so the 2xx may `Require` it).
    pub caller_supports: bool,
    /// The caller accepts UPDATE (our refreshes use it; else re-INVITE).
    pub caller_allows_update: bool,
}

/// What to answer a request's session-timer headers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Negotiation {
    /// No session timer on this call.
    None,
    /// Run this timer; put [`SessionTimer::response_headers`] in the 2xx.
    Timer(SessionTimer),
    /// `Session-Expires` below our minimum: answer 422 with `Min-SE`.
    TooSmall {
        /// Our minimum, for the `Min-SE` header.
        min_se: u64,
    },
}

/// What the shell must do now about the session timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerCheck {
    /// Nothing.
    Fine,
    /// We are the refresher and half the interval has passed: send a refresh.
    Refresh,
    /// No refresh came in time: end the call with BYE.
    Expired,
}

/// Each header as (name, value), whatever type the parser gave it.
fn named(headers: &rsipstack::sip::Headers) -> impl Iterator<Item = (String, String)> + '_ {
    headers.iter().filter_map(|h| {
        let line = h.to_string();
        let (name, value) = line.split_once(':')?;
        Some((name.trim().to_string(), value.trim().to_string()))
    })
}

fn header(headers: &rsipstack::sip::Headers, names: &[&str]) -> Option<String> {
    named(headers)
        .find(|(n, _)| names.iter().any(|w| n.eq_ignore_ascii_case(w)))
        .map(|(_, v)| v)
}

fn lists(headers: &rsipstack::sip::Headers, names: &[&str], token: &str) -> bool {
    named(headers)
        .filter(|(n, _)| names.iter().any(|w| n.eq_ignore_ascii_case(w)))
        .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// `90;refresher=uac` → (90, Some(Uac)). Garbage → `None`.
fn parse_session_expires(value: &str) -> Option<(u64, Option<Refresher>)> {
    let mut parts = value.split(';');
    let delta = parts.next()?.trim().parse::<u64>().ok()?;
    let mut refresher = None;
    for p in parts {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        if k.trim().eq_ignore_ascii_case("refresher") {
            refresher = match v.trim().to_ascii_lowercase().as_str() {
                "uac" => Some(Refresher::Uac),
                "uas" => Some(Refresher::Uas),
                _ => None,
            };
        }
    }
    Some((delta, refresher))
}

/// Decide the session timer for an INVITE (or a refreshing re-INVITE or
/// UPDATE) with `headers`, given our `configured` interval and our minimum
/// `min_se` (seconds).
///
/// A caller that supports `timer` gets one: the interval it asked for, no
/// longer than ours and no shorter than either side's minimum; the refresher
/// it named, else the caller. A request that carries `Session-Expires`
/// without supporting `timer` (a proxy inserted it) makes us the refresher.
/// Neither: no timer (RTP, hold and duration limits still end a vanished
/// caller's call).
pub fn negotiate(
    headers: &rsipstack::sip::Headers,
    configured: Duration,
    min_se: u64,
) -> Negotiation {
    let supports = lists(headers, &["Supported", "k"], "timer");
    let requested = header(headers, &["Session-Expires", "x"]).map(|v| parse_session_expires(&v));
    let their_min = header(headers, &["Min-SE"])
        .and_then(|v| {
            v.split(';')
                .next()
                .and_then(|d| d.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    let (asked, refresher) = match requested {
        // An unreadable Session-Expires is ignored, as if absent.
        Some(None) | None if !supports => return Negotiation::None,
        Some(Some((delta, refresher))) => (Some(delta), refresher),
        _ => (None, None),
    };
    if asked.is_some_and(|d| d < min_se) {
        return Negotiation::TooSmall { min_se };
    }
    let ours = configured.as_secs().max(min_se);
    let interval = asked
        .map_or(ours, |d| d.min(ours))
        .max(their_min)
        .max(min_se);
    let refresher = match (supports, refresher) {
        (false, _) => Refresher::Uas,
        (true, Some(r)) => r,
        (true, None) => Refresher::Uac,
    };
    Negotiation::Timer(SessionTimer {
        interval: Duration::from_secs(interval),
        refresher,
        caller_supports: supports,
        caller_allows_update: lists(headers, &["Allow"], "UPDATE"),
    })
}

impl SessionTimer {
    /// The headers for our 2xx: `Session-Expires` (and `Require: timer` when
    /// the caller refreshes).
    pub fn response_headers(&self) -> Vec<Header> {
        let mut h = vec![Header::Other(
            "Session-Expires".into(),
            format!(
                "{};refresher={}",
                self.interval.as_secs(),
                self.refresher.name()
            ),
        )];
        if self.caller_supports {
            h.push(Header::Other("Require".into(), "timer".into()));
        }
        h
    }

    /// The headers for a refresh we send.
    pub fn refresh_headers(&self) -> Vec<Header> {
        vec![
            Header::Other(
                "Session-Expires".into(),
                format!("{};refresher=uas", self.interval.as_secs()),
            ),
            Header::Other("Supported".into(), "timer".into()),
        ]
    }

    /// Where the session stands `since_refresh` after the last refresh (or
    /// the answer). The refresher refreshes at half the interval; the other
    /// side gives up at the interval less min(32 s, a third) (RFC 4028 §10).
    pub fn check(&self, since_refresh: Duration) -> TimerCheck {
        let give_up = self
            .interval
            .saturating_sub(Duration::from_secs(32).min(self.interval / 3));
        match self.refresher {
            Refresher::Uac if since_refresh >= give_up => TimerCheck::Expired,
            // Our own refresh is unanswered by the end of the interval.
            Refresher::Uas if since_refresh >= self.interval => TimerCheck::Expired,
            Refresher::Uas if since_refresh >= self.interval / 2 => TimerCheck::Refresh,
            _ => TimerCheck::Fine,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(lines: &[(&str, &str)]) -> rsipstack::sip::Headers {
        lines
            .iter()
            .map(|(n, v)| Header::Other((*n).into(), (*v).into()))
            .collect::<Vec<_>>()
            .into()
    }

    const OURS: Duration = Duration::from_secs(1800);

    fn timer(n: Negotiation) -> SessionTimer {
        match n {
            Negotiation::Timer(t) => t,
            other => panic!("no timer: {other:?}"),
        }
    }

    #[test]
    fn the_callers_request_is_granted_within_our_limits() {
        let t = timer(negotiate(
            &h(&[
                ("Supported", "replaces, timer"),
                ("Session-Expires", "600;refresher=uac"),
            ]),
            OURS,
            90,
        ));
        assert_eq!(t.interval, Duration::from_secs(600));
        assert_eq!(t.refresher, Refresher::Uac);
        let resp = t.response_headers();
        assert_eq!(resp[0].value(), "600;refresher=uac");
        assert_eq!(resp[1].value(), "timer");
        // Longer than ours: lowered to ours. No refresher named: the caller.
        let t = timer(negotiate(&h(&[("k", "timer"), ("x", "7200")]), OURS, 90));
        assert_eq!(t.interval, OURS);
        assert_eq!(t.refresher, Refresher::Uac);
        // Supported alone: our interval.
        let t = timer(negotiate(&h(&[("Supported", "timer")]), OURS, 90));
        assert_eq!(t.interval, OURS);
        // The caller asks us to refresh, and allows UPDATE.
        let t = timer(negotiate(
            &h(&[
                ("Supported", "timer"),
                ("Session-Expires", "120; refresher=UAS"),
                ("Allow", "INVITE, ACK, BYE, UPDATE"),
            ]),
            OURS,
            90,
        ));
        assert_eq!(
            (t.refresher, t.caller_allows_update),
            (Refresher::Uas, true)
        );
        // Their Min-SE above what they asked is honoured.
        let t = timer(negotiate(
            &h(&[
                ("Supported", "timer"),
                ("Session-Expires", "100"),
                ("Min-SE", "300"),
            ]),
            OURS,
            90,
        ));
        assert_eq!(t.interval, Duration::from_secs(300));
    }

    #[test]
    fn too_small_no_support_and_garbage() {
        assert_eq!(
            negotiate(
                &h(&[("Supported", "timer"), ("Session-Expires", "30")]),
                OURS,
                90
            ),
            Negotiation::TooSmall { min_se: 90 }
        );
        assert_eq!(negotiate(&h(&[]), OURS, 90), Negotiation::None);
        assert_eq!(
            negotiate(&h(&[("Session-Expires", "banana")]), OURS, 90),
            Negotiation::None
        );
        // A proxy asked for a timer the caller does not support: we refresh.
        let t = timer(negotiate(&h(&[("Session-Expires", "900")]), OURS, 90));
        assert_eq!((t.refresher, t.caller_supports), (Refresher::Uas, false));
        assert_eq!(t.response_headers().len(), 1, "no Require: timer");
        // Absurd values do not overflow.
        let t = timer(negotiate(
            &h(&[
                ("Supported", "timer"),
                ("Session-Expires", "18446744073709551615"),
            ]),
            OURS,
            90,
        ));
        assert_eq!(t.interval, OURS);
    }

    #[test]
    fn when_to_refresh_and_when_to_give_up() {
        let s = Duration::from_secs;
        let uac = SessionTimer {
            interval: s(90),
            refresher: Refresher::Uac,
            caller_supports: true,
            caller_allows_update: false,
        };
        assert_eq!(uac.check(s(59)), TimerCheck::Fine);
        assert_eq!(uac.check(s(60)), TimerCheck::Expired, "90 - min(32, 30)");
        let long = SessionTimer {
            interval: s(1800),
            ..uac
        };
        assert_eq!(long.check(s(1767)), TimerCheck::Fine);
        assert_eq!(long.check(s(1768)), TimerCheck::Expired, "1800 - 32");
        let uas = SessionTimer {
            refresher: Refresher::Uas,
            ..uac
        };
        assert_eq!(uas.check(s(44)), TimerCheck::Fine);
        assert_eq!(uas.check(s(45)), TimerCheck::Refresh);
        assert_eq!(uas.check(s(90)), TimerCheck::Expired);
    }
}
