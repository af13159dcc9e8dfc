//! A hand-over in progress on a live call: runs the sans-IO
//! [`Transfer`](crate::call::transfer::Transfer) orchestration against real
//! agent legs, and mixes the media — hold music to the caller while agents
//! ring, the whispered summary to the answering agent only, then both ways.

use super::agent::{AgentLeg, LegReport, ReportTo};
use super::events::EventLog;
use super::Shared;
use crate::call::transfer::{plan, LegId, Transfer, TransferAction, TransferEvent};
use crate::media::jitter::FRAME_8K;
use crate::media::prompt::{Prompt, PromptPlayer};
use crate::media::session::Inbound;
use serde_json::{json, Value};
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
    /// The whisper once synthesised (`Some(None)`: synthesis failed).
    whisper: Option<Option<Prompt>>,
    /// The leg waiting for (or hearing) the whisper.
    whisper_for: Option<LegId>,
    whisper_player: Option<PromptPlayer>,
    whisper_started: bool,
    hold: Option<Prompt>,
    hold_player: Option<PromptPlayer>,
    decided: Instant,
    answered: Option<Instant>,
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
            whisper: None,
            whisper_for: None,
            whisper_player: None,
            whisper_started: false,
            hold,
            hold_player: None,
            decided: Instant::now(),
            answered: None,
        };
        log.event("transfer.started", json!({"reason": reason}));
        let outcome = h.apply(shared, now, actions, log).await;
        (h, outcome)
    }

    /// The whisper is synthesised (or failed: `None`).
    pub fn whisper_ready(&mut self, prompt: Option<Prompt>) {
        self.whisper = Some(prompt);
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
                log.event(
                    "transfer.invite_sent",
                    json!({"leg": leg, "ms_after_decision": self.decided.elapsed().as_secs_f64() * 1000.0}),
                );
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
                    log.event(
                        "transfer.agent_media",
                        json!({"leg": leg, "codec": m.params().codec.name(), "remote_rtp": m.params().remote.to_string()}),
                    );
                }
                self.answered = Some(Instant::now());
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
                TransferAction::Whisper(leg) => {
                    self.whisper_for = Some(leg);
                    self.whisper_player = None;
                    self.whisper_started = false;
                }
                TransferAction::Bridge(leg) => {
                    self.whisper_for = None;
                    self.whisper_player = None;
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
                TransferAction::Log { kind, fields } => log.event(kind, fields),
            }
        }
        self.legs.retain(|l| !l.ended || l.media.is_some());
        outcome
    }

    /// One 20 ms tick: drain agent audio, send each agent its frame (the
    /// whisper, silence, or the caller once bridged), and return what the
    /// caller hears — the agent once bridged; otherwise the bot's words
    /// (`bot`) or hold music — plus the agent events the audio produced.
    pub fn media_tick(
        &mut self,
        now: Duration,
        caller: &[i16],
        bot: Option<[i16; FRAME_8K]>,
        log: &mut EventLog<'_>,
    ) -> ([i16; FRAME_8K], Vec<TransferEvent>) {
        let mut events = Vec::new();
        let bridged = self.machine.bridged();
        let mut to_caller = [0i16; FRAME_8K];
        let mut buf = [0u8; 2048];
        // The whisper starts as soon as it is both wanted and synthesised.
        if let (Some(leg), None, Some(w)) = (self.whisper_for, &self.whisper_player, &self.whisper)
        {
            match w {
                Some(p) => self.whisper_player = Some(PromptPlayer::new(p.clone())),
                None => {
                    events.push(TransferEvent::WhisperFinished(leg));
                    self.whisper_for = None;
                }
            }
        }
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
            let mut out = [0i16; FRAME_8K];
            if bridged == Some(leg.id) {
                to_caller.copy_from_slice(&heard[..FRAME_8K.min(heard.len())]);
                out[..caller.len().min(FRAME_8K)]
                    .copy_from_slice(&caller[..caller.len().min(FRAME_8K)]);
            } else if self.whisper_for == Some(leg.id) {
                match self.whisper_player.as_mut().map(|p| p.next_frame()) {
                    Some(Some(f)) => {
                        out = f;
                        if !self.whisper_started {
                            self.whisper_started = true;
                            let ms = self
                                .answered
                                .map(|a| a.elapsed().as_secs_f64() * 1000.0)
                                .unwrap_or(0.0);
                            log.event(
                                "transfer.whisper_started",
                                json!({"leg": leg.id, "ms_after_answer": ms}),
                            );
                        }
                    }
                    Some(None) => {
                        log.event("transfer.whisper_finished", json!({"leg": leg.id}));
                        events.push(TransferEvent::WhisperFinished(leg.id));
                        self.whisper_for = None;
                        self.whisper_player = None;
                    }
                    None => {} // still synthesising: silence
                }
            }
            let pkt = media.encode_frame(&out);
            let _ = leg.socket.send_to(&pkt, media.destination());
        }
        if bridged.is_none() {
            to_caller = match bot {
                Some(f) => f,
                None => {
                    if self.hold_player.as_ref().is_none_or(|p| p.finished()) {
                        self.hold_player = self.hold.clone().map(PromptPlayer::new);
                    }
                    self.hold_player
                        .as_mut()
                        .and_then(|p| p.next_frame())
                        .unwrap_or([0; FRAME_8K])
                }
            };
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
