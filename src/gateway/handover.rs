//! A hand-over in progress on a live call: runs the sans-IO
//! [`Transfer`](crate::call::transfer::Transfer) orchestration against real
//! agent legs, and mixes the media — hold music to the caller while agents
//! ring, the whispered summary to the answering agent only, then both ways.

use super::agent::{AgentLeg, LegReport, ReportTo};
use super::events::EventLog;
use super::Shared;
use crate::call::handover_audio::{AgentFrame, AudioEvent, HandoverAudio};
use crate::call::transfer::{plan, Transfer, TransferAction, TransferEvent};
use crate::call::CallEvent;
use crate::media::jitter::FRAME_8K;
use crate::media::prompt::Prompt;
use crate::media::session::Inbound;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// What the call task must do after a step of the hand-over.
#[derive(Debug, PartialEq)]
pub(super) enum Outcome {
    /// Nothing for the caller's side.
    Continue,
    /// Nobody took the call: back to the bot.
    GaveUp(Vec<String>),
    /// The bridged agent hung up: end the call.
    EndCall,
}

/// One hand-over: its orchestration, its agent legs, its audio.
pub(super) struct Handover {
    machine: Transfer,
    legs: Vec<AgentLeg>,
    caller: Option<String>,
    summary: Value,
    reports: ReportTo,
    /// What each party hears (sans-IO).
    audio: HandoverAudio,
    /// Reused every tick: the agent legs' frames.
    frames: Vec<AgentFrame>,
    decided: Instant,
}

impl Handover {
    /// Decide → ring: build the plan for `reason` and dial its first attempt.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        shared: &Arc<Shared>,
        reason: &str,
        summary: Value,
        caller: Option<String>,
        now: Duration,
        reports: ReportTo,
        hold: Option<Prompt>,
        log: &mut EventLog<'_>,
    ) -> (Handover, Outcome) {
        let agents = &shared.config.agents;
        let (machine, actions) = Transfer::start(plan(agents, reason), &agents.whisper, now);
        let mut h = Handover {
            machine,
            legs: Vec::new(),
            caller,
            summary,
            reports,
            audio: HandoverAudio::new(hold),
            frames: Vec::new(),
            decided: Instant::now(),
        };
        log.event(CallEvent::TransferStarted {
            reason: reason.to_string(),
        });
        let outcome = h.apply(shared, now, actions, log).await;
        (h, outcome)
    }

    /// The whisper is synthesised (or failed: `None`).
    pub fn whisper_ready(&mut self, prompt: Option<Prompt>) {
        self.audio.whisper_ready(prompt);
    }

    /// Feed one orchestration event.
    pub async fn handle(
        &mut self,
        shared: &Arc<Shared>,
        now: Duration,
        event: TransferEvent,
        log: &mut EventLog<'_>,
    ) -> Outcome {
        let actions = self.machine.handle(now, event);
        self.apply(shared, now, actions, log).await
    }

    /// A report from an agent leg's SIP side.
    pub async fn on_report(
        &mut self,
        shared: &Arc<Shared>,
        now: Duration,
        report: LegReport,
        log: &mut EventLog<'_>,
    ) -> Outcome {
        match report {
            LegReport::Sent { leg } => {
                log.event(CallEvent::TransferInviteSent {
                    leg,
                    ms_after_decision: self.decided.elapsed().as_secs_f64() * 1000.0,
                });
                Outcome::Continue
            }
            LegReport::Answered { leg, sdp } => {
                let jitter = shared.config.agents.bridge_jitter;
                let started = match self.legs.iter_mut().find(|l| l.id == leg) {
                    Some(l) => l.start_media(&sdp, jitter),
                    None => Err("unknown leg".into()),
                };
                if let Err(e) = started {
                    warn!(leg, error = %e, "agent answer unusable");
                    if let Some(l) = self.legs.iter_mut().find(|l| l.id == leg) {
                        l.hang_up();
                    }
                    return self
                        .handle(
                            shared,
                            now,
                            TransferEvent::Failed {
                                leg,
                                status: 488,
                                why: format!("unusable answer SDP ({e})"),
                            },
                            log,
                        )
                        .await;
                }
                if let Some(m) = self
                    .legs
                    .iter()
                    .find(|l| l.id == leg)
                    .and_then(|l| l.media.as_ref())
                {
                    log.event(CallEvent::TransferAgentMedia {
                        leg,
                        codec: m.params().codec.name().to_string(),
                        remote_rtp: m.params().remote.to_string(),
                    });
                }
                self.handle(shared, now, TransferEvent::Answered(leg), log)
                    .await
            }
            LegReport::Event(e) => self.handle(shared, now, e, log).await,
        }
    }

    async fn apply(
        &mut self,
        shared: &Arc<Shared>,
        now: Duration,
        actions: Vec<TransferAction>,
        log: &mut EventLog<'_>,
    ) -> Outcome {
        let mut queue: std::collections::VecDeque<TransferAction> = actions.into();
        let mut outcome = Outcome::Continue;
        while let Some(action) = queue.pop_front() {
            match action {
                TransferAction::Dial { leg, uri } => {
                    match AgentLeg::dial(
                        shared,
                        leg,
                        &uri,
                        self.caller.as_deref(),
                        &self.summary,
                        self.reports.clone(),
                    )
                    .await
                    {
                        Ok(l) => self.legs.push(l),
                        Err(why) => {
                            warn!(leg, %uri, %why, "cannot call the agent");
                            queue.extend(self.machine.handle(
                                now,
                                TransferEvent::Failed {
                                    leg,
                                    status: 0,
                                    why,
                                },
                            ));
                        }
                    }
                }
                TransferAction::Cancel(leg) => {
                    if let Some(l) = self.legs.iter_mut().find(|l| l.id == leg) {
                        l.cancel();
                    }
                }
                TransferAction::HangUp(leg) => {
                    if let Some(l) = self.legs.iter_mut().find(|l| l.id == leg) {
                        l.hang_up();
                    }
                }
                TransferAction::Whisper(leg) => self.audio.whisper_to(leg, now),
                TransferAction::Bridge(leg) => {
                    self.audio.bridge();
                    info!(leg, "caller and agent bridged");
                }
                TransferAction::GiveUp { tried } => {
                    warn!(?tried, "no agent took the call: caller back with the bot");
                    outcome = Outcome::GaveUp(tried);
                }
                TransferAction::EndCall => {
                    if let Some(leg) = self.legs.iter_mut().find(|l| !l.ended && l.media.is_some())
                    {
                        leg.ended = true;
                    }
                    outcome = Outcome::EndCall;
                }
                TransferAction::Log(event) => log.event(event),
            }
        }
        self.legs.retain(|l| !l.ended || l.media.is_some());
        outcome
    }

    /// One 20 ms tick: drain agent audio, send each agent its frame (the
    /// whisper, silence, or the caller once bridged — decided by
    /// [`HandoverAudio`]), and return what the caller hears, plus the
    /// orchestration events the audio produced.
    pub fn media_tick(
        &mut self,
        now: Duration,
        caller: &[i16],
        bot: Option<[i16; FRAME_8K]>,
        log: &mut EventLog<'_>,
    ) -> ([i16; FRAME_8K], Vec<TransferEvent>) {
        let mut events = Vec::new();
        let mut buf = [0u8; 2048];
        self.frames.clear();
        for leg in self.legs.iter_mut().filter(|l| !l.ended) {
            let Some(media) = leg.media.as_mut() else {
                continue;
            };
            while let Ok((n, from)) = leg.socket.recv_from(&mut buf) {
                if let Inbound::Digit(d) = media.on_datagram(now, from, &buf[..n]) {
                    events.push(TransferEvent::AgentDigit(leg.id, d));
                }
            }
            let (heard, digit) = media.pull_frame();
            if let Some(d) = digit {
                events.push(TransferEvent::AgentDigit(leg.id, d));
            }
            self.frames.push(AgentFrame::new(leg.id, &heard));
        }
        let mut happened = Vec::new();
        let to_caller = self.audio.tick(
            now,
            self.machine.bridged(),
            caller,
            bot,
            &mut self.frames,
            &mut happened,
        );
        for frame in &self.frames {
            let Some(leg) = self.legs.iter_mut().find(|l| l.id == frame.leg) else {
                continue;
            };
            if let Some(media) = leg.media.as_mut() {
                let pkt = media.encode_frame(&frame.out);
                let _ = leg.socket.send_to(&pkt, media.destination());
            }
        }
        for e in happened {
            match e {
                AudioEvent::WhisperStarted { leg, after_answer } => {
                    log.event(CallEvent::TransferWhisperStarted {
                        leg,
                        ms_after_answer: after_answer.as_secs_f64() * 1000.0,
                    })
                }
                AudioEvent::WhisperFinished { leg, played } => {
                    if played {
                        log.event(CallEvent::TransferWhisperFinished { leg });
                    }
                    events.push(TransferEvent::WhisperFinished(leg));
                }
            }
        }
        (to_caller, events)
    }

    /// Whether caller and agent are bridged.
    pub fn bridged(&self) -> bool {
        self.machine.bridged().is_some()
    }

    /// The bridged (or last answered) agent leg's media counters.
    pub fn agent_stats(&self) -> Option<crate::media::session::MediaStats> {
        self.legs.iter().rev().find_map(AgentLeg::stats)
    }

    /// The call is over: tell the orchestration, then CANCEL or BYE every
    /// agent leg still up.
    pub async fn finish(&mut self, shared: &Arc<Shared>, now: Duration, log: &mut EventLog<'_>) {
        let _ = self
            .handle(shared, now, TransferEvent::CallerHungUp, log)
            .await;
        for leg in self.legs.iter_mut().filter(|l| !l.ended) {
            if leg.media.is_some() {
                leg.hang_up();
            } else {
                leg.cancel();
            }
        }
    }
}
