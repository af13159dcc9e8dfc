//! The agent side of a hand-over, on the wire: one outgoing INVITE per agent
//! leg (rsipstack UAC dialog) carrying the summary as data, its own RTP
//! socket, and the SIP outcomes turned into [`TransferEvent`]s for the
//! sans-IO orchestration in [`crate::call::transfer`].

use super::Shared;
use crate::call::transfer::{LegId, TransferEvent};
use crate::config::Codec;
use crate::media::session::MediaSession;
use crate::sip::sdp;
use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::dialog::{DialogState, TerminatedReason};
use rsipstack::dialog::invitation::InviteOption;
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::{Header, StatusCode};
use serde_json::Value;
use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Where an agent leg's reports go: the call's one inbox (the call task
/// waits on a single channel, not one per kind of news).
#[derive(Clone)]
pub(super) struct ReportTo(Arc<dyn Fn(LegReport) -> bool + Send + Sync>);

impl ReportTo {
    /// Reports handed to `deliver`, which says whether the call still listens.
    pub(super) fn new(deliver: impl Fn(LegReport) -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(deliver))
    }

    /// Deliver one report; `Err` when the call has gone.
    pub(super) fn send(&self, report: LegReport) -> Result<(), ()> {
        if (self.0)(report) {
            Ok(())
        } else {
            Err(())
        }
    }
}

/// What the agent side reports to the call task.
#[derive(Debug)]
pub(super) enum LegReport {
    /// For the orchestration.
    Event(TransferEvent),
    /// 2xx with the agent's SDP: media can start.
    Answered { leg: LegId, sdp: Vec<u8> },
    /// The INVITE is on the wire (for the decision → INVITE latency).
    Sent { leg: LegId },
}

/// The summary as SIP headers: `User-to-User` (RFC 7433, hex,
/// purpose=call-center) with the compact JSON, `X-Voicegate-Reason`,
/// `X-Voicegate-Summary`, and `Call-Info` when a page URL is known.
pub fn summary_headers(summary: &Value, call_page: Option<&str>) -> Vec<Header> {
    let compact = compact_summary(summary);
    let uui = format!(
        "{};encoding=hex;purpose=call-center;content=isdn-uui",
        hex::encode(compact.to_string())
    );
    let reason = summary["reason"].as_str().unwrap_or("unknown").to_string();
    // Header values stay on one line and in plain ASCII.
    let text: String = summary["text"]
        .as_str()
        .unwrap_or("")
        .chars()
        .map(|c| match c {
            '\r' | '\n' => ' ',
            '—' | '–' => '-',
            '…' => '.',
            c if c.is_ascii() => c,
            _ => '?',
        })
        .collect();
    let mut headers = vec![
        Header::Other("User-to-User".into(), uui),
        Header::Other("X-Voicegate-Reason".into(), reason),
        Header::Other("X-Voicegate-Summary".into(), text),
    ];
    if let Some(url) = call_page {
        headers.push(Header::Other(
            "Call-Info".into(),
            format!("<{url}>;purpose=info"),
        ));
    }
    headers
}

/// The summary's data, small enough for a UDP INVITE: who, why, what they
/// want, how upset, how long they waited, their last words (trimmed).
pub fn compact_summary(summary: &Value) -> Value {
    let words: String = summary["last_words"]
        .as_str()
        .unwrap_or("")
        .split_whitespace()
        .take(24)
        .collect::<Vec<_>>()
        .join(" ");
    serde_json::json!({
        "reason": summary["reason"],
        "caller": summary["caller"],
        "name": summary["customer"]["name"],
        "tier": summary["customer"]["tier"],
        "intents": summary["intents"],
        "frustration": summary["frustration"],
        "reasons": summary["reasons"],
        "waited_s": summary["waited_s"],
        "words": words,
    })
}

/// One ringing or answered agent.
pub(super) struct AgentLeg {
    pub id: LegId,
    dialog: Option<InviteDialog>,
    pub socket: UdpSocket,
    _lease: crate::media::ports::PortLease,
    /// Set once the agent's answer SDP is known.
    pub media: Option<MediaSession>,
    pub ended: bool,
}

impl AgentLeg {
    /// Place the INVITE to `uri`; outcomes arrive on `reports`.
    pub async fn dial(
        shared: &Arc<Shared>,
        id: LegId,
        uri: &str,
        caller: Option<&str>,
        summary: &Value,
        reports: ReportTo,
    ) -> Result<AgentLeg, String> {
        let (socket, lease) =
            crate::media::ports::bind_rtp(shared.config.gateway.media.sdp_address, &shared.ports)
                .ok_or("no free RTP port")?;
        let agents = &shared.config.agents;
        let gw = &shared.config.gateway;
        let local_sip = gw
            .sip
            .udp
            .first()
            .copied()
            .ok_or("no UDP SIP listener to call agents from")?;
        let callee = rsipstack::sip::Uri::try_from(uri).map_err(|e| e.to_string())?;
        // What the PBX reaches us at: the advertised address behind NAT or a
        // proxy, else the listener's.
        let host = gw.sip.advertised_address.unwrap_or(local_sip.ip());
        let port = gw.sip.advertised_port.unwrap_or(local_sip.port());
        let from_user = caller
            .filter(|c| !c.is_empty())
            .unwrap_or(agents.from_user.as_str());
        let caller_uri =
            rsipstack::sip::Uri::try_from(format!("sip:{from_user}@{host}:{port}").as_str())
                .map_err(|e| e.to_string())?;
        let contact = rsipstack::sip::Uri::try_from(
            format!("sip:{}@{host}:{port}", agents.from_user).as_str(),
        )
        .map_err(|e| e.to_string())?;
        let offer = sdp::build_offer(
            u64::from(rand::random::<u32>()),
            1,
            gw.media.sdp_address,
            lease.port(),
            &[Codec::Pcmu, Codec::Pcma],
            Some(101),
        );
        let destination = agents.outbound_proxy.map(Into::into);
        // The outbound proxy is also the INVITE's preloaded route (RFC 3261
        // §8.1.2, `;lr`): the SIP library sends every request built from the
        // INVITE — its CANCEL above all, which must take the INVITE's path
        // (§9.1) — to the first Route. Without it a parallel ring's losing
        // phone was CANCELled at its Request-URI's host, never through the
        // proxy, and kept ringing.
        let route_set = match agents.outbound_proxy {
            Some(proxy) => vec![rsipstack::sip::typed::Route {
                display_name: None,
                uri: rsipstack::sip::Uri {
                    params: vec![rsipstack::sip::Param::Lr],
                    ..rsipstack::sip::Uri::try_from(format!("sip:{proxy}").as_str())
                        .map_err(|e| e.to_string())?
                },
                params: vec![],
            }],
            None => vec![],
        };
        let credential = agents.credentials.as_ref().map(|(u, p)| Credential {
            username: u.clone(),
            password: p.clone(),
            realm: None,
            auth_username: None,
        });
        let opt = InviteOption {
            caller_display_name: None,
            caller_params: vec![],
            caller: caller_uri,
            callee,
            destination,
            content_type: Some("application/sdp".into()),
            offer: Some(offer.into_bytes()),
            contact,
            credential,
            headers: Some(summary_headers(summary, summary["page"].as_str())),
            support_prack: false,
            // Our own host in the Call-ID (the SIP library's default names its vendor's domain).
            call_id: Some(format!(
                "{:032x}@{}",
                rand::random::<u128>(),
                gw.media.sdp_address
            )),
            session_id: None,
            route_set,
        };
        let (state_tx, mut states) = shared.dialogs.new_dialog_state_channel();
        let (dialog, handle) = shared
            .dialogs
            .do_invite_async(opt, state_tx)
            .map_err(|e| e.to_string())?;
        let _ = reports.send(LegReport::Sent { leg: id });
        // In-dialog states: ringing, the agent's BYE, SIP INFO digits.
        {
            let reports = reports.clone();
            let dialogs = shared.dialogs.clone();
            tokio::spawn(async move {
                let mut confirmed = false;
                while let Some(state) = states.recv().await {
                    match state {
                        DialogState::Early(..) => {
                            let _ = reports.send(LegReport::Event(TransferEvent::Ringing(id)));
                        }
                        DialogState::Confirmed(..) => confirmed = true,
                        DialogState::Info(_, req, handle) => {
                            let _ = handle.reply(StatusCode::OK).await;
                            let body = String::from_utf8_lossy(&req.body).to_string();
                            if let Some(d) = body
                                .lines()
                                .find_map(|l| l.trim().strip_prefix("Signal="))
                                .and_then(|s| s.trim().chars().next())
                            {
                                let _ = reports
                                    .send(LegReport::Event(TransferEvent::AgentDigit(id, d)));
                            }
                        }
                        DialogState::Options(_, _, handle) => {
                            let _ = handle.reply(StatusCode::OK).await;
                        }
                        DialogState::Updated(_, _, handle)
                        | DialogState::Refer(_, _, handle)
                        | DialogState::Notify(_, _, handle)
                        | DialogState::Message(_, _, handle)
                        | DialogState::Publish(_, _, handle) => {
                            // The agent leg's media stays as negotiated.
                            let _ = handle.reply(StatusCode::NotAcceptableHere).await;
                        }
                        DialogState::Terminated(did, reason) => {
                            dialogs.remove_dialog(&did);
                            if confirmed && matches!(reason, TerminatedReason::UasBye) {
                                let _ =
                                    reports.send(LegReport::Event(TransferEvent::AgentHungUp(id)));
                            }
                            break;
                        }
                        _ => {}
                    }
                }
            });
        }
        // The final answer.
        tokio::spawn(async move {
            let report = match handle.await {
                Ok(Ok((_, Some(resp)))) if resp.status_code.code() / 100 == 2 => {
                    LegReport::Answered {
                        leg: id,
                        sdp: resp.body.clone(),
                    }
                }
                Ok(Ok((_, Some(resp)))) => {
                    let code = resp.status_code.code();
                    LegReport::Event(TransferEvent::Failed {
                        leg: id,
                        status: code,
                        why: describe(code),
                    })
                }
                Ok(Ok((_, None))) => LegReport::Event(TransferEvent::Failed {
                    leg: id,
                    status: 0,
                    why: "no final response".into(),
                }),
                Ok(Err(e)) => LegReport::Event(TransferEvent::Failed {
                    leg: id,
                    status: 0,
                    why: format!("unreachable ({e})"),
                }),
                Err(e) => LegReport::Event(TransferEvent::Failed {
                    leg: id,
                    status: 0,
                    why: format!("INVITE task failed ({e})"),
                }),
            };
            let _ = reports.send(report);
        });
        info!(leg = id, %uri, "agent INVITE sent");
        Ok(AgentLeg {
            id,
            dialog: Some(dialog),
            socket,
            _lease: lease,
            media: None,
            ended: false,
        })
    }

    /// Media counters of this leg, if it was answered.
    pub fn stats(&self) -> Option<crate::media::session::MediaStats> {
        self.media.as_ref().map(MediaSession::stats)
    }

    /// The agent answered with `answer`: start media towards them.
    pub fn start_media(&mut self, answer: &[u8], jitter: Duration) -> Result<(), String> {
        let n = sdp::negotiate(answer, &[Codec::Pcmu, Codec::Pcma]).map_err(|e| e.to_string())?;
        // An agent leg is one we placed through our own PBX: its phone's SDP
        // may name an interface its RTP does not leave from, so the first
        // packet latches (the strict rule guards callers' legs).
        self.media = Some(
            MediaSession::new(n.params, jitter, rand::random(), Duration::ZERO)
                .learning_any_source(),
        );
        Ok(())
    }

    /// CANCEL while ringing. The transaction runs on its own task: the
    /// call's media clock never waits on the network.
    pub fn cancel(&mut self) {
        if let Some(d) = self.dialog.clone() {
            let id = self.id;
            tokio::spawn(async move {
                if let Err(e) = d.cancel().await {
                    warn!(leg = id, error = %e, "CANCEL failed");
                }
            });
        }
        self.ended = true;
    }

    /// BYE once answered (on its own task, like [`AgentLeg::cancel`]).
    pub fn hang_up(&mut self) {
        if let Some(d) = self.dialog.take() {
            let id = self.id;
            tokio::spawn(async move {
                if let Err(e) = d.bye().await {
                    warn!(leg = id, error = %e, "BYE to the agent failed");
                }
            });
        }
        self.ended = true;
    }
}

fn describe(code: u16) -> String {
    match code {
        486 | 600 => "busy".into(),
        603 => "declined".into(),
        404 | 480 => "not registered".into(),
        408 => "no answer".into(),
        487 => "cancelled".into(),
        c => format!("SIP {c}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_travels_as_hex_user_to_user_and_plain_headers() {
        let summary = serde_json::json!({
            "text": "VIP Dana Whitfield, billing, negative words — upset 70%, waited 12s. Said: \"this is ridiculous…\"",
            "reason": "negative_words",
            "caller": "+15550199",
            "customer": {"name": "Dana Whitfield", "tier": "vip"},
            "intents": ["billing"],
            "frustration": 0.7,
            "reasons": ["2 negative words: ridiculous, angry"],
            "waited_s": 12.0,
            "last_words": "this is ridiculous and I am angry",
        });
        let h = summary_headers(&summary, Some("http://gw/calls/1"));
        let get = |name: &str| {
            h.iter().find_map(|h| match h {
                Header::Other(n, v) if n == name => Some(v.clone()),
                _ => None,
            })
        };
        let uui = get("User-to-User").expect("UUI");
        let (hexed, params) = uui.split_once(';').expect("params");
        assert!(params.contains("encoding=hex") && params.contains("purpose=call-center"));
        let data: Value = serde_json::from_slice(&hex::decode(hexed).expect("hex")).expect("json");
        assert_eq!(data["reason"], "negative_words");
        assert_eq!(data["name"], "Dana Whitfield");
        assert_eq!(data["words"], "this is ridiculous and I am angry");
        assert_eq!(get("X-Voicegate-Reason").as_deref(), Some("negative_words"));
        let text = get("X-Voicegate-Summary").expect("summary");
        assert!(text.is_ascii() && text.contains("Dana Whitfield") && text.contains(" - upset"));
        assert_eq!(
            get("Call-Info").as_deref(),
            Some("<http://gw/calls/1>;purpose=info")
        );
        assert!(hexed.len() < 900, "fits a UDP INVITE: {}", hexed.len());
    }
}
