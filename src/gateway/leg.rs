//! The caller's side of a call: a SIP dialog with its RTP socket, or a
//! browser's WebRTC peer connection, behind the same few verbs the call's
//! media clock uses.

use super::events::EventLog;
use super::Shared;
use crate::call::event::{Answered, CallEvent};
use crate::config::TrunkConfig;
use crate::media::jitter::FRAME_8K;
use crate::media::session::{Inbound, MediaSession};
use crate::sip::sdp::{self, Direction};
use crate::sip::session_timer::{Negotiation, SessionTimer, TimerCheck};
use rsipstack::dialog::dialog::{DialogState, TerminatedReason};
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::{Header, StatusCode};
use std::net::UdpSocket;
use std::time::Duration;
use tracing::{info, warn};

/// The caller's side of a call: a SIP dialog with RTP, or a browser's WebRTC
/// peer connection. Both give the call 20 ms frames of 8 kHz audio and take
/// the same back, so the bot, the hand-over and the recording are one code.
pub(super) enum CallerLeg {
    /// A SIP caller (trunk or PBX), G.711 over RTP.
    Sip(Box<SipLeg>),
    /// A browser caller, Opus over DTLS-SRTP.
    Web(super::web_leg::WebLeg),
}

/// A SIP caller's dialog and RTP.
///
/// What every 20 ms tick reads comes first, together (`repr(C)`): the leg is
/// cold when its tick comes round, and each cache line it touches is a wait
/// on memory. The dialog and the trunk, read only by signalling, come last.
#[repr(C)]
pub(super) struct SipLeg {
    pub(super) socket: UdpSocket,
    pub(super) held: bool,
    /// When the current hold began (on the call's clock).
    pub(super) held_since: Option<Duration>,
    /// The RFC 4028 session timer, when the caller (or a proxy) asked for one.
    pub(super) timer: Option<SessionTimer>,
    /// The last refresh (or the answer), on the call's clock.
    pub(super) refreshed_at: Duration,
    /// Our refresh in flight: whether it was answered 2xx.
    pub(super) refreshing: Option<tokio::sync::oneshot::Receiver<bool>>,
    pub(super) media: MediaSession,
    pub(super) lease: crate::media::ports::PortLease,
    pub(super) dialog: InviteDialog,
    /// The dialog's state changes, until [`CallerLeg::take_signals`].
    pub(super) states: Option<rsipstack::dialog::dialog::DialogStateReceiver>,
    pub(super) sdp_version: u64,
    pub(super) session_id: u64,
    pub(super) trunk: TrunkConfig,
}

/// Where the caller's signalling arrives.
pub(super) enum Signals {
    /// The SIP dialog's state changes.
    Sip(rsipstack::dialog::dialog::DialogStateReceiver),
    /// The browser's end (hang-up or failed connection).
    Web(tokio::sync::mpsc::UnboundedReceiver<&'static str>),
    /// Already taken: no signalling left.
    Gone,
}

impl Signals {
    /// The next signalling event; `None` when the signalling is gone.
    pub(super) async fn next(&mut self) -> Option<LegSignal> {
        match self {
            Signals::Sip(states) => states.recv().await.map(|st| LegSignal::Sip(Box::new(st))),
            Signals::Web(ended) => ended.recv().await.map(LegSignal::WebEnded),
            Signals::Gone => None,
        }
    }
}

/// Something the caller's signalling said.
pub(super) enum LegSignal {
    /// A SIP dialog state change.
    Sip(Box<DialogState>),
    /// The browser hung up or its connection failed.
    WebEnded(&'static str),
}

impl CallerLeg {
    /// What `call.answered` logs about the leg.
    pub(super) fn describe(&self) -> Answered {
        match self {
            CallerLeg::Sip(s) => Answered {
                local_rtp_port: Some(s.lease.port()),
                ..Answered::default()
            },
            CallerLeg::Web(w) => w.describe(),
        }
    }

    /// Take in what arrived since the last tick; the DTMF digits in it are
    /// added to `digits`.
    pub(super) fn receive(&mut self, now: Duration, digits: &mut Vec<char>) {
        match self {
            CallerLeg::Sip(s) => {
                // Drain what arrived since the last tick: one read pass per
                // 20 ms per call instead of one wake-up per packet.
                let media = &mut s.media;
                crate::media::drain::drain(&s.socket, |from, datagram| {
                    if let Inbound::Digit(d) = media.on_datagram(now, from, datagram) {
                        digits.push(d);
                    }
                });
            }
            CallerLeg::Web(w) => digits.extend(w.receive(now)),
        }
    }

    /// The caller's next 20 ms, and an in-band digit.
    pub(super) fn pull_frame(&mut self) -> ([i16; FRAME_8K], Option<char>) {
        match self {
            CallerLeg::Sip(s) => s.media.pull_frame(),
            CallerLeg::Web(w) => {
                let mut frame = [0; FRAME_8K];
                let heard = w.pull_frame();
                let n = heard.len().min(FRAME_8K);
                frame[..n].copy_from_slice(&heard[..n]);
                (frame, None)
            }
        }
    }

    /// Send 20 ms to the caller (nothing while the caller holds).
    pub(super) fn send_frame(&mut self, frame: &[i16]) {
        match self {
            CallerLeg::Sip(s) => {
                if !s.held {
                    let dest = s.media.destination();
                    let pkt = s.media.encode_frame(frame);
                    let _ = s.socket.send_to(pkt, dest);
                }
            }
            CallerLeg::Web(w) => w.send_frame(frame),
        }
    }

    pub(super) fn set_jitter_depth(&mut self, depth: Duration) {
        match self {
            CallerLeg::Sip(s) => s.media.set_jitter_depth(depth),
            CallerLeg::Web(w) => w.set_jitter_depth(depth),
        }
    }

    pub(super) fn jitter_stats(&self) -> crate::media::jitter::JitterStats {
        match self {
            CallerLeg::Sip(s) => s.media.stats().jitter,
            CallerLeg::Web(w) => w.jitter_stats(),
        }
    }

    /// How long the caller's media has been silent on the wire; `None` while
    /// on hold (no media is expected).
    pub(super) fn idle_for(&self, now: Duration) -> Option<Duration> {
        match self {
            CallerLeg::Sip(s) => (!s.held).then(|| s.media.idle_for(now)),
            CallerLeg::Web(w) => Some(w.idle_for(now)),
        }
    }

    /// How long the caller has held the call (sendonly, inactive or
    /// `c=0.0.0.0`), whether or not RTP flows meanwhile; `None` when not held.
    pub(super) fn held_for(&mut self, now: Duration) -> Option<Duration> {
        match self {
            CallerLeg::Sip(s) if s.held => {
                Some(now.saturating_sub(*s.held_since.get_or_insert(now)))
            }
            CallerLeg::Sip(s) => {
                s.held_since = None;
                None
            }
            CallerLeg::Web(_) => None,
        }
    }

    /// The leg's signalling, taken out to be waited on by the call's task
    /// while the media engine steps the rest; taken twice, it is [`Signals::Gone`].
    /// (A placeholder channel in its place cost ~10 KiB per call: tokio
    /// allocates a block of 32 dialog states when a channel is made.)
    pub(super) fn take_signals(&mut self) -> Signals {
        let taken = match self {
            CallerLeg::Sip(s) => s.states.take().map(Signals::Sip),
            CallerLeg::Web(w) => w.ended.take().map(Signals::Web),
        };
        taken.unwrap_or(Signals::Gone)
    }

    pub(super) async fn on_signal(
        &mut self,
        now: Duration,
        signal: LegSignal,
        shared: &Shared,
        log: &mut EventLog,
    ) -> DialogOutcome {
        match (self, signal) {
            (CallerLeg::Sip(s), LegSignal::Sip(state)) => {
                on_dialog_state(now, *state, s, shared, log).await
            }
            (_, LegSignal::WebEnded(reason)) => DialogOutcome::Ended(reason),
            (_, LegSignal::Sip(_)) => DialogOutcome::Continue,
        }
    }

    /// The session timer at `now`: refresh it ourselves when it is our turn
    /// (UPDATE where the caller allows it, else re-INVITE with our current
    /// SDP), or say it expired — no refresh from the caller, or ours failed.
    pub(super) fn session_check(&mut self, now: Duration, shared: &Shared) -> TimerCheck {
        let CallerLeg::Sip(s) = self else {
            return TimerCheck::Fine;
        };
        let Some(timer) = s.timer else {
            return TimerCheck::Fine;
        };
        if let Some(rx) = s.refreshing.as_mut() {
            match rx.try_recv() {
                Ok(true) => {
                    s.refreshing = None;
                    s.refreshed_at = now;
                    return TimerCheck::Fine;
                }
                Ok(false) | Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                    s.refreshing = None;
                    warn!("our session refresh failed: ending the call");
                    return TimerCheck::Expired;
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
            }
        }
        match timer.check(now.saturating_sub(s.refreshed_at)) {
            TimerCheck::Refresh if s.refreshing.is_none() => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                s.refreshing = Some(rx);
                let dialog = s.dialog.clone();
                let headers = timer.refresh_headers();
                let offer = (!timer.caller_allows_update).then(|| {
                    sdp::build(
                        s.session_id,
                        s.sdp_version,
                        shared.config.gateway.media.sdp_address,
                        s.lease.port(),
                        s.media.params().codec,
                        s.media.params().dtmf_payload_type,
                        if s.held {
                            Direction::RecvOnly
                        } else {
                            Direction::SendRecv
                        },
                    )
                });
                tokio::spawn(async move {
                    let result = match offer {
                        None => dialog.update(Some(headers), None).await,
                        Some(sdp) => {
                            let mut headers = headers;
                            headers.push(Header::ContentType("application/sdp".into()));
                            dialog.reinvite(Some(headers), Some(sdp.into_bytes())).await
                        }
                    };
                    let ok = matches!(&result, Ok(Some(r)) if r.status_code.kind() == rsipstack::sip::StatusCodeKind::Successful);
                    if !ok {
                        warn!(result = ?result.as_ref().map(|r| r.as_ref().map(|r| r.status_code.clone())), "session refresh not accepted");
                    }
                    let _ = tx.send(ok);
                });
                TimerCheck::Refresh
            }
            TimerCheck::Refresh => TimerCheck::Fine,
            other => other,
        }
    }

    /// The gateway ends the call (BYE, or closing the peer connection).
    pub(super) async fn hang_up(&mut self) {
        match self {
            CallerLeg::Sip(s) => {
                if let Err(e) = s.dialog.bye().await {
                    warn!(error = %e, "BYE failed");
                }
            }
            CallerLeg::Web(w) => w.hang_up().await,
        }
    }

    /// The leg's media counters for `call.ended`.
    pub(super) fn stats_json(&self) -> serde_json::Value {
        match self {
            CallerLeg::Sip(s) => serde_json::to_value(s.media.stats()).unwrap_or_default(),
            CallerLeg::Web(w) => w.stats_json(),
        }
    }
}

pub(super) enum DialogOutcome {
    Continue,
    Digit(char),
    Ended(&'static str),
}

async fn on_dialog_state(
    now: Duration,
    state: DialogState,
    leg: &mut SipLeg,
    shared: &Shared,
    log: &mut EventLog,
) -> DialogOutcome {
    let port = leg.lease.port();
    let session_id = leg.session_id;
    let trunk = &leg.trunk;
    let media = &mut leg.media;
    let held = &mut leg.held;
    let sdp_version = &mut leg.sdp_version;
    match state {
        DialogState::Terminated(_, reason) => DialogOutcome::Ended(match reason {
            TerminatedReason::UacBye => "caller_bye",
            TerminatedReason::UacCancel => "caller_cancel",
            TerminatedReason::Timeout => "sip_timeout",
            _ => "terminated",
        }),
        DialogState::Confirmed(..) => {
            log.event(CallEvent::Confirmed);
            DialogOutcome::Continue
        }
        DialogState::Updated(_, req, handle) => {
            // Any re-INVITE or UPDATE refreshes the session (RFC 4028 §9);
            // the answer restates the timer.
            let sip = &shared.config.gateway.sip;
            let mut timer_headers = Vec::new();
            match crate::sip::session_timer::negotiate(
                &req.headers,
                sip.session_expires,
                crate::sip::session_timer::MIN_SE_S,
            ) {
                Negotiation::Timer(t) => {
                    timer_headers = t.response_headers();
                    leg.timer = Some(t);
                }
                Negotiation::TooSmall { min_se } => {
                    let _ = handle
                        .respond(
                            StatusCode::Other(422, "Session Interval Too Small".into()),
                            Some(vec![Header::Other("Min-SE".into(), min_se.to_string())]),
                            None,
                        )
                        .await;
                    return DialogOutcome::Continue;
                }
                Negotiation::None => {
                    if let Some(t) = leg.timer {
                        timer_headers = t.response_headers();
                    }
                }
            }
            leg.refreshed_at = now;
            if req.method == rsipstack::sip::Method::Update && req.body.is_empty() {
                // A session refresh: no offer, so no answer.
                let _ = handle
                    .respond(StatusCode::OK, Some(timer_headers), None)
                    .await;
                return DialogOutcome::Continue;
            }
            if req.body.is_empty() {
                // Offerless re-INVITE: offer what we have.
                *sdp_version += 1;
                let offer = sdp::build(
                    session_id,
                    *sdp_version,
                    shared.config.gateway.media.sdp_address,
                    port,
                    media.params().codec,
                    media.params().dtmf_payload_type,
                    Direction::SendRecv,
                );
                timer_headers.push(Header::ContentType("application/sdp".into()));
                let _ = handle
                    .respond(
                        StatusCode::OK,
                        Some(timer_headers),
                        Some(offer.into_bytes()),
                    )
                    .await;
                return DialogOutcome::Continue;
            }
            match sdp::negotiate(&req.body, &trunk.codecs) {
                Ok(n) => {
                    *held = n.direction.is_hold();
                    *sdp_version += 1;
                    let answer = sdp::build(
                        session_id,
                        *sdp_version,
                        shared.config.gateway.media.sdp_address,
                        port,
                        n.params.codec,
                        n.params.dtmf_payload_type,
                        n.direction.answer(),
                    );
                    log.event(CallEvent::SipReinvite {
                        hold: *held,
                        direction: n.direction.attribute().to_string(),
                        codec: n.params.codec.name().to_string(),
                        remote_rtp: n.params.remote.to_string(),
                    });
                    info!(hold = *held, codec = n.params.codec.name(), "re-INVITE");
                    media.renegotiate(n.params);
                    timer_headers.push(Header::ContentType("application/sdp".into()));
                    let _ = handle
                        .respond(
                            StatusCode::OK,
                            Some(timer_headers),
                            Some(answer.into_bytes()),
                        )
                        .await;
                }
                Err(e) => {
                    warn!(error = %e, "re-INVITE refused; the call goes on as before");
                    log.event(CallEvent::SipReinviteRefused {
                        error: e.to_string(),
                    });
                    let status = if e.status() == 400 {
                        StatusCode::BadRequest
                    } else {
                        StatusCode::NotAcceptableHere
                    };
                    let _ = handle.reply(status).await;
                }
            }
            DialogOutcome::Continue
        }
        DialogState::Info(_, req, handle) => {
            let _ = handle.reply(StatusCode::OK).await;
            let body = String::from_utf8_lossy(&req.body);
            let digit = body
                .lines()
                .find_map(|l| l.trim().strip_prefix("Signal="))
                .and_then(|s| s.trim().chars().next());
            digit.map_or(DialogOutcome::Continue, DialogOutcome::Digit)
        }
        DialogState::Options(_, _, handle) => {
            let _ = handle.reply(StatusCode::OK).await;
            DialogOutcome::Continue
        }
        DialogState::Message(_, _, handle)
        | DialogState::Notify(_, _, handle)
        | DialogState::Refer(_, _, handle)
        | DialogState::Publish(_, _, handle) => {
            let _ = handle.reply(StatusCode::NotImplemented).await;
            DialogOutcome::Continue
        }
        _ => DialogOutcome::Continue,
    }
}
