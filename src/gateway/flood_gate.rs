//! The INVITE rate limit at the transport: a flooding source's INVITEs are
//! dropped before the SIP stack builds a transaction for them, as Kamailio's
//! `pike` runs at the top of the request route, before `tm`.
//!
//! Judged here: the packet's real source, for INVITEs that open a dialog.
//! Packets from a trusted proxy pass; their caller (named in the proxy's
//! header) is judged by `dispatch` once the request is parsed into a
//! transaction. Either way each INVITE takes one token from one bucket.

use super::Running;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Method, SipMessage};
use rsipstack::transaction::endpoint::TransportEventInspector;
use rsipstack::transport::TransportEvent;
use std::sync::{Arc, OnceLock};

/// The transport inspector; reads the running configuration (its limits and
/// trusted proxies follow reloads) once the gateway is up.
pub(super) struct FloodGate {
    running: Arc<OnceLock<Arc<Running>>>,
}

impl FloodGate {
    /// A gate that lets everything through until `running` is set.
    pub(super) fn new(running: Arc<OnceLock<Arc<Running>>>) -> Self {
        Self { running }
    }
}

fn opens_dialog(msg: &SipMessage) -> bool {
    let SipMessage::Request(req) = msg else {
        return false;
    };
    req.method == Method::Invite
        && req
            .to_header()
            .ok()
            .and_then(|t| t.tag().ok().flatten())
            .is_none()
}

#[async_trait::async_trait]
impl TransportEventInspector for FloodGate {
    async fn handle(&self, event: TransportEvent) -> Option<TransportEvent> {
        let TransportEvent::Incoming(msg, _, from) = &event else {
            return Some(event);
        };
        if !opens_dialog(msg) {
            return Some(event);
        }
        let (Some(running), Ok(from)) = (self.running.get(), from.get_socketaddr()) else {
            return Some(event);
        };
        let shared = running.current.load();
        let sip = &shared.config.gateway.sip;
        let ip = from.ip();
        if sip.trusted_proxies.iter().any(|n| n.contains(&ip)) {
            return Some(event);
        }
        if shared
            .pike
            .allow(ip, shared.started.elapsed(), &sip.rate_limits)
        {
            Some(event)
        } else {
            shared.board.rejected("rate");
            None
        }
    }
}
