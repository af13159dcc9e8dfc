//! The agent legs of a live call's hand-overs: their SIP dialogs and RTP
//! sockets. What happens — who is rung, when to give up, the whisper, the
//! bridge, what each party hears — is decided by the sans-IO
//! [`Call`](crate::call::Call); this only does the I/O it asks for
//! ([`Output::DialAgent`](crate::call::Output::DialAgent), …) and hands the
//! legs' outcomes and audio back.

use super::agent::{AgentLeg, LegReport, ReportTo};
use super::events::EventLog;
use super::Shared;
use crate::call::handover_audio::AgentFrame;
use crate::call::transfer::{LegId, TransferEvent};
use crate::call::CallEvent;
use crate::media::session::Inbound;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;
use tracing::warn;

/// Every agent leg a call placed, and what they are called with.
pub(super) struct AgentLegs {
    legs: Vec<AgentLeg>,
    caller: Option<String>,
    /// The agent summary (with the call page's link) sent on each INVITE.
    summary: Value,
    reports: ReportTo,
    /// When the current hand-over was decided (decision → INVITE latency).
    decided: Instant,
    /// Reused every tick: the agent legs' frames.
    frames: Vec<AgentFrame>,
}

impl AgentLegs {
    /// No legs yet; their SIP outcomes will go to `reports`.
    pub fn new(caller: Option<String>, reports: ReportTo) -> Self {
        Self {
            legs: Vec::new(),
            caller,
            summary: Value::Null,
            reports,
            decided: Instant::now(),
            frames: Vec::new(),
        }
    }

    /// A hand-over was decided: the summary agents are called with.
    pub fn decided(&mut self, summary: Value) {
        self.summary = summary;
        self.decided = Instant::now();
    }

    /// INVITE an agent. `Err`: the INVITE could not be sent (for the
    /// orchestration, a failed leg).
    pub async fn dial(
        &mut self,
        shared: &Arc<Shared>,
        leg: LegId,
        uri: &str,
    ) -> Result<(), String> {
        let l = AgentLeg::dial(
            shared,
            leg,
            uri,
            self.caller.as_deref(),
            &self.summary,
            self.reports.clone(),
        )
        .await
        .map_err(|why| {
            warn!(leg, %uri, %why, "cannot call the agent");
            why
        })?;
        self.legs.push(l);
        Ok(())
    }

    /// CANCEL a ringing leg.
    pub fn cancel(&mut self, leg: LegId) {
        if let Some(l) = self.find(leg) {
            l.cancel();
        }
    }

    /// BYE an answered leg.
    pub fn hang_up(&mut self, leg: LegId) {
        if let Some(l) = self.find(leg) {
            l.hang_up();
        }
    }

    fn find(&mut self, leg: LegId) -> Option<&mut AgentLeg> {
        self.legs.iter_mut().find(|l| l.id == leg)
    }

    /// A report from an agent leg's SIP side, turned into what the `Call`
    /// is told (`None`: nothing for it).
    pub fn on_report(
        &mut self,
        shared: &Arc<Shared>,
        report: LegReport,
        log: &mut EventLog,
    ) -> Option<TransferEvent> {
        match report {
            LegReport::Sent { leg } => {
                log.event(CallEvent::TransferInviteSent {
                    leg,
                    ms_after_decision: self.decided.elapsed().as_secs_f64() * 1000.0,
                });
                None
            }
            LegReport::Answered { leg, sdp } => {
                let jitter = shared.config.agents.bridge_jitter;
                let Some(l) = self.find(leg) else {
                    // Not ours (any more): the `Call` lets it go.
                    return Some(TransferEvent::Answered(leg));
                };
                match l.start_media(&sdp, jitter) {
                    Ok(()) => {
                        if let Some(m) = l.media.as_ref() {
                            log.event(CallEvent::TransferAgentMedia {
                                leg,
                                codec: m.params().codec.name().to_string(),
                                remote_rtp: m.params().remote.to_string(),
                            });
                        }
                        Some(TransferEvent::Answered(leg))
                    }
                    Err(e) => {
                        warn!(leg, error = %e, "agent answer unusable");
                        l.hang_up();
                        Some(TransferEvent::Failed {
                            leg,
                            status: 488,
                            why: format!("unusable answer SDP ({e})"),
                        })
                    }
                }
            }
            LegReport::Event(e) => {
                if let TransferEvent::AgentHungUp(leg) = e {
                    // Their BYE ended the dialog: nothing more to send.
                    if let Some(l) = self.find(leg) {
                        l.ended = true;
                    }
                }
                Some(e)
            }
        }
    }

    /// Read what each answered agent sent since the last tick: their frames
    /// (to mix) and the keys they pressed.
    pub fn receive(
        &mut self,
        now: std::time::Duration,
        digits: &mut Vec<TransferEvent>,
    ) -> &mut [AgentFrame] {
        self.frames.clear();
        if self.legs.is_empty() {
            // No hand-over: nothing to read (the common case, every tick).
            return &mut self.frames;
        }
        for leg in self.legs.iter_mut().filter(|l| !l.ended) {
            let Some(media) = leg.media.as_mut() else {
                continue;
            };
            let id = leg.id;
            crate::media::drain::drain(&leg.socket, |from, datagram| {
                if let Inbound::Digit(d) = media.on_datagram(now, from, datagram) {
                    digits.push(TransferEvent::AgentDigit(id, d));
                }
            });
            let (heard, digit) = media.pull_frame();
            if let Some(d) = digit {
                digits.push(TransferEvent::AgentDigit(leg.id, d));
            }
            self.frames.push(AgentFrame::new(leg.id, &heard));
        }
        &mut self.frames
    }

    /// Send each agent its frame (as filled in by the `Call`).
    pub fn send(&mut self) {
        for frame in &self.frames {
            let Some(leg) = self.legs.iter_mut().find(|l| l.id == frame.leg) else {
                continue;
            };
            if let Some(media) = leg.media.as_mut() {
                let dest = media.destination();
                let pkt = media.encode_frame(&frame.out);
                let _ = leg.socket.send_to(pkt, dest);
            }
        }
    }

    /// Legs done with (ended before their media started) are dropped.
    pub fn prune(&mut self) {
        self.legs.retain(|l| !l.ended || l.media.is_some());
    }

    /// The bridged (or last answered) agent leg's media counters.
    pub fn agent_stats(&self) -> Option<crate::media::session::MediaStats> {
        self.legs.iter().rev().find_map(AgentLeg::stats)
    }

    /// The call is over: CANCEL or BYE every agent leg still up (the `Call`
    /// has already asked for those it knew of).
    pub fn finish(&mut self) {
        for leg in self.legs.iter_mut().filter(|l| !l.ended) {
            if leg.media.is_some() {
                leg.hang_up();
            } else {
                leg.cancel();
            }
        }
    }
}
