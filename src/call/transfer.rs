//! Transfer orchestration, sans-IO: ring agents group by group (one after the
//! other or all at once), whisper the summary to the one who answers, wait
//! for their accept key if asked, then bridge — or move on to the next agent
//! on busy, no answer, decline, failure or an agent who hangs up during the
//! whisper. When nobody is left the caller goes back to the bot. SIP outcomes
//! and time come in as events; what to do on the wire goes out as actions.

use super::agents::{AgentsConfig, RingStrategy};
use super::event::{CallEvent, Party};
use std::time::Duration;

/// One agent call attempt (an outgoing INVITE).
pub type LegId = u32;

/// One ring attempt: these extensions ring together for `ring_timeout`.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// The group they belong to.
    pub group: String,
    /// SIP URIs.
    pub targets: Vec<String>,
    /// How long they ring.
    pub ring_timeout: Duration,
}

/// The ring plan for one hand-over, in failover order.
pub fn plan(agents: &AgentsConfig, reason: &str) -> Vec<Attempt> {
    let mut out = Vec::new();
    for g in agents.groups_for(reason) {
        match g.strategy {
            RingStrategy::Parallel => out.push(Attempt {
                group: g.name.clone(),
                targets: g.members.clone(),
                ring_timeout: g.ring_timeout,
            }),
            RingStrategy::Sequential => out.extend(g.members.iter().map(|m| Attempt {
                group: g.name.clone(),
                targets: vec![m.clone()],
                ring_timeout: g.ring_timeout,
            })),
        }
    }
    out
}

/// What happened on the agent side (or to the caller).
#[derive(Debug, Clone, PartialEq)]
pub enum TransferEvent {
    /// The agent's phone rings (180/183).
    Ringing(LegId),
    /// The agent answered (2xx) and media is up.
    Answered(LegId),
    /// The attempt ended without an answer: SIP status (0: no response /
    /// unreachable) and a short reason.
    Failed {
        /// The leg.
        leg: LegId,
        /// Final status code, 0 when there was none.
        status: u16,
        /// Why, in words.
        why: String,
    },
    /// The whisper has been played out to the agent.
    WhisperFinished(LegId),
    /// The agent pressed a key.
    AgentDigit(LegId, char),
    /// The agent hung up.
    AgentHungUp(LegId),
    /// The caller hung up.
    CallerHungUp,
    /// Time passes.
    Tick,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum TransferAction {
    /// Send an INVITE to `uri` as leg `leg`.
    Dial {
        /// New leg id.
        leg: LegId,
        /// Agent URI.
        uri: String,
    },
    /// CANCEL a ringing leg.
    Cancel(LegId),
    /// BYE an answered leg.
    HangUp(LegId),
    /// Play the whisper to this agent (the caller hears hold).
    Whisper(LegId),
    /// Connect caller and agent both ways.
    Bridge(LegId),
    /// Nobody took the call: the caller goes back to the bot.
    GiveUp {
        /// Every agent tried, with what happened.
        tried: Vec<String>,
    },
    /// The bridged agent hung up: end the caller's call too.
    EndCall,
    /// Record this step in `events.jsonl`.
    Log(CallEvent),
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Attempt `step` is ringing `legs` until `deadline`.
    Ringing {
        legs: Vec<(LegId, String)>,
        deadline: Duration,
    },
    /// The agent on `leg` hears the whisper.
    Whispering { leg: LegId },
    /// Whisper done; waiting for the agent's 1 (accept) or 2 (decline).
    AwaitingAccept { leg: LegId, deadline: Duration },
    /// Caller and agent talk.
    Bridged { leg: LegId },
    /// Over: bridged call ended, given up, or the caller left.
    Done,
}

/// One hand-over's orchestration.
#[derive(Debug, Clone)]
pub struct Transfer {
    plan: Vec<Attempt>,
    step: usize,
    phase: Phase,
    next_leg: LegId,
    whisper: bool,
    accept_with_dtmf: bool,
    accept_timeout: Duration,
    /// URI by leg, for logs.
    uris: Vec<(LegId, String)>,
    tried: Vec<String>,
    started: Duration,
}

impl Transfer {
    /// Start ringing `plan` at `now`.
    pub fn start(
        plan: Vec<Attempt>,
        whisper: &super::agents::WhisperConfig,
        now: Duration,
    ) -> (Transfer, Vec<TransferAction>) {
        let mut t = Transfer {
            plan,
            step: 0,
            phase: Phase::Done,
            next_leg: 1,
            whisper: whisper.enabled,
            accept_with_dtmf: whisper.accept_with_dtmf,
            accept_timeout: whisper.accept_timeout,
            uris: Vec::new(),
            tried: Vec::new(),
            started: now,
        };
        let mut out = Vec::new();
        t.ring_step(now, &mut out);
        (t, out)
    }

    /// The leg bridged to the caller, if any.
    pub fn bridged(&self) -> Option<LegId> {
        match self.phase {
            Phase::Bridged { leg } => Some(leg),
            _ => None,
        }
    }

    /// The leg hearing the whisper, if any.
    pub fn whispering(&self) -> Option<LegId> {
        match self.phase {
            Phase::Whispering { leg } | Phase::AwaitingAccept { leg, .. } => Some(leg),
            _ => None,
        }
    }

    /// Whether the transfer is over (bridged call ended, given up, abandoned).
    pub fn done(&self) -> bool {
        self.phase == Phase::Done
    }

    fn uri(&self, leg: LegId) -> String {
        self.uris
            .iter()
            .find(|(l, _)| *l == leg)
            .map(|(_, u)| u.clone())
            .unwrap_or_default()
    }

    fn ring_step(&mut self, now: Duration, out: &mut Vec<TransferAction>) {
        let Some(attempt) = self.plan.get(self.step).cloned() else {
            self.phase = Phase::Done;
            out.push(TransferAction::Log(CallEvent::TransferFailed {
                tried: self.tried.clone(),
                after_s: secs(now - self.started),
            }));
            out.push(TransferAction::GiveUp {
                tried: self.tried.clone(),
            });
            return;
        };
        let mut legs = Vec::new();
        for uri in &attempt.targets {
            let leg = self.next_leg;
            self.next_leg += 1;
            self.uris.push((leg, uri.clone()));
            legs.push((leg, uri.clone()));
            out.push(TransferAction::Log(CallEvent::TransferDial {
                leg,
                uri: uri.clone(),
                group: attempt.group.clone(),
                ring_timeout_s: attempt.ring_timeout.as_secs_f64(),
            }));
            out.push(TransferAction::Dial {
                leg,
                uri: uri.clone(),
            });
        }
        self.phase = Phase::Ringing {
            legs,
            deadline: now + attempt.ring_timeout,
        };
    }

    fn next_step(&mut self, now: Duration, out: &mut Vec<TransferAction>) {
        self.step += 1;
        self.ring_step(now, out);
    }

    fn note(&mut self, leg: LegId, what: &str) {
        let uri = self.uri(leg);
        self.tried.push(format!("{uri}: {what}"));
    }

    /// Feed one event at `now`.
    pub fn handle(&mut self, now: Duration, event: TransferEvent) -> Vec<TransferAction> {
        let mut out = Vec::new();
        match (&mut self.phase, event) {
            (Phase::Ringing { legs, .. }, TransferEvent::Ringing(leg))
                if legs.iter().any(|(l, _)| *l == leg) =>
            {
                out.push(TransferAction::Log(CallEvent::TransferRinging { leg }));
            }
            (Phase::Ringing { legs, .. }, TransferEvent::Answered(leg)) => {
                if !legs.iter().any(|(l, _)| *l == leg) {
                    // A leg we already gave up on answered late.
                    out.push(TransferAction::HangUp(leg));
                    return out;
                }
                for (other, _) in legs.iter().filter(|(l, _)| *l != leg) {
                    out.push(TransferAction::Cancel(*other));
                }
                out.push(TransferAction::Log(CallEvent::TransferAnswered {
                    leg,
                    uri: self.uri(leg),
                    after_s: secs(now - self.started),
                }));
                if self.whisper {
                    self.phase = Phase::Whispering { leg };
                    out.push(TransferAction::Whisper(leg));
                } else {
                    self.bridge(leg, now, &mut out);
                }
            }
            (Phase::Ringing { legs, .. }, TransferEvent::Failed { leg, status, why }) => {
                if let Some(pos) = legs.iter().position(|(l, _)| *l == leg) {
                    legs.remove(pos);
                    let empty = legs.is_empty();
                    out.push(TransferAction::Log(CallEvent::TransferAttemptFailed {
                        leg,
                        uri: self.uri(leg),
                        status,
                        why: why.clone(),
                    }));
                    self.note(leg, &why);
                    if empty {
                        self.next_step(now, &mut out);
                    }
                }
            }
            (Phase::Ringing { legs, deadline }, TransferEvent::Tick) if now >= *deadline => {
                let legs = std::mem::take(legs);
                for (leg, _) in &legs {
                    out.push(TransferAction::Cancel(*leg));
                    out.push(TransferAction::Log(CallEvent::TransferAttemptFailed {
                        leg: *leg,
                        uri: self.uri(*leg),
                        status: 0,
                        why: "no answer".into(),
                    }));
                    self.note(*leg, "no answer");
                }
                self.next_step(now, &mut out);
            }
            (Phase::Ringing { legs, .. }, TransferEvent::CallerHungUp) => {
                for (leg, _) in legs.iter() {
                    out.push(TransferAction::Cancel(*leg));
                }
                out.push(TransferAction::Log(CallEvent::TransferAbandoned {
                    during: "ringing".into(),
                }));
                self.phase = Phase::Done;
            }
            (Phase::Whispering { leg }, TransferEvent::WhisperFinished(l)) if *leg == l => {
                let leg = *leg;
                if self.accept_with_dtmf {
                    self.phase = Phase::AwaitingAccept {
                        leg,
                        deadline: now + self.accept_timeout,
                    };
                    out.push(TransferAction::Log(CallEvent::TransferAwaitingAccept {
                        leg,
                    }));
                } else {
                    self.bridge(leg, now, &mut out);
                }
            }
            (
                Phase::Whispering { leg } | Phase::AwaitingAccept { leg, .. },
                TransferEvent::AgentDigit(l, d),
            ) if *leg == l && self.accept_with_dtmf => {
                let leg = *leg;
                match d {
                    '1' => self.bridge(leg, now, &mut out),
                    '2' => {
                        out.push(TransferAction::HangUp(leg));
                        out.push(TransferAction::Log(CallEvent::TransferDeclined {
                            leg,
                            uri: self.uri(leg),
                            why: None,
                        }));
                        self.note(leg, "declined");
                        self.next_step(now, &mut out);
                    }
                    _ => {}
                }
            }
            (Phase::AwaitingAccept { leg, deadline }, TransferEvent::Tick) if now >= *deadline => {
                let leg = *leg;
                out.push(TransferAction::HangUp(leg));
                out.push(TransferAction::Log(CallEvent::TransferDeclined {
                    leg,
                    uri: self.uri(leg),
                    why: Some("no key pressed".into()),
                }));
                self.note(leg, "did not accept");
                self.next_step(now, &mut out);
            }
            (
                Phase::Whispering { leg } | Phase::AwaitingAccept { leg, .. },
                TransferEvent::AgentHungUp(l),
            ) if *leg == l => {
                out.push(TransferAction::Log(CallEvent::TransferAttemptFailed {
                    leg: l,
                    uri: self.uri(l),
                    status: 0,
                    why: "agent hung up during the whisper".into(),
                }));
                self.note(l, "hung up during the whisper");
                self.next_step(now, &mut out);
            }
            (
                Phase::Whispering { leg } | Phase::AwaitingAccept { leg, .. },
                TransferEvent::CallerHungUp,
            ) => {
                out.push(TransferAction::HangUp(*leg));
                out.push(TransferAction::Log(CallEvent::TransferAbandoned {
                    during: "whisper".into(),
                }));
                self.phase = Phase::Done;
            }
            (Phase::Bridged { leg }, TransferEvent::AgentHungUp(l)) if *leg == l => {
                out.push(TransferAction::Log(CallEvent::TransferEnded {
                    by: Party::Agent,
                    leg: l,
                }));
                out.push(TransferAction::EndCall);
                self.phase = Phase::Done;
            }
            (Phase::Bridged { leg }, TransferEvent::CallerHungUp) => {
                out.push(TransferAction::HangUp(*leg));
                out.push(TransferAction::Log(CallEvent::TransferEnded {
                    by: Party::Caller,
                    leg: *leg,
                }));
                self.phase = Phase::Done;
            }
            (_, TransferEvent::Answered(leg)) => {
                // Answered after we moved on (CANCEL crossed the 200): let it go.
                out.push(TransferAction::HangUp(leg));
            }
            _ => {}
        }
        out
    }

    fn bridge(&mut self, leg: LegId, now: Duration, out: &mut Vec<TransferAction>) {
        self.phase = Phase::Bridged { leg };
        out.push(TransferAction::Bridge(leg));
        out.push(TransferAction::Log(CallEvent::TransferBridged {
            leg,
            uri: self.uri(leg),
            after_s: secs(now - self.started),
        }));
    }
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::agents::{AgentGroup, WhisperConfig};

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    fn agents(strategy: RingStrategy) -> AgentsConfig {
        let mut a = AgentsConfig {
            groups: vec![
                AgentGroup {
                    name: "vip".into(),
                    strategy,
                    ring_timeout: s(10.0),
                    members: vec!["sip:2001@pbx".into(), "sip:2002@pbx".into()],
                },
                AgentGroup {
                    name: "support".into(),
                    strategy: RingStrategy::Sequential,
                    ring_timeout: s(20.0),
                    members: vec!["sip:1001@pbx".into()],
                },
            ],
            ..AgentsConfig::default()
        };
        a.routing
            .insert("vip".into(), vec!["vip".into(), "support".into()]);
        a.routing.insert("default".into(), vec!["support".into()]);
        a
    }

    fn whisper(accept: bool) -> WhisperConfig {
        WhisperConfig {
            enabled: true,
            voice: "en-us".into(),
            accept_with_dtmf: accept,
            accept_timeout: s(5.0),
            language: "caller".into(),
        }
    }

    fn wire(actions: &[TransferAction]) -> Vec<TransferAction> {
        actions
            .iter()
            .filter(|a| !matches!(a, TransferAction::Log { .. }))
            .cloned()
            .collect()
    }

    fn dial(leg: LegId, uri: &str) -> TransferAction {
        TransferAction::Dial {
            leg,
            uri: uri.into(),
        }
    }

    #[test]
    fn plans_follow_routing_and_strategy() {
        let p = plan(&agents(RingStrategy::Sequential), "vip");
        let targets: Vec<_> = p.iter().map(|a| a.targets.clone()).collect();
        assert_eq!(
            targets,
            vec![
                vec!["sip:2001@pbx"],
                vec!["sip:2002@pbx"],
                vec!["sip:1001@pbx"]
            ]
        );
        let p = plan(&agents(RingStrategy::Parallel), "vip");
        assert_eq!(p[0].targets.len(), 2);
        assert_eq!(p.len(), 2);
        let p = plan(&agents(RingStrategy::Parallel), "negative_words");
        assert_eq!(p.len(), 1, "default route");
    }

    #[test]
    fn busy_then_no_answer_then_answer_whisper_and_bridge() {
        let (mut t, a) = Transfer::start(
            plan(&agents(RingStrategy::Sequential), "vip"),
            &whisper(false),
            s(10.0),
        );
        assert_eq!(wire(&a), vec![dial(1, "sip:2001@pbx")]);
        let a = t.handle(
            s(10.2),
            TransferEvent::Failed {
                leg: 1,
                status: 486,
                why: "busy".into(),
            },
        );
        assert_eq!(wire(&a), vec![dial(2, "sip:2002@pbx")]);
        assert!(wire(&t.handle(s(20.1), TransferEvent::Tick)).is_empty());
        let a = t.handle(s(20.2), TransferEvent::Tick);
        assert_eq!(
            wire(&a),
            vec![TransferAction::Cancel(2), dial(3, "sip:1001@pbx")],
            "ring timeout: CANCEL, next"
        );
        let a = t.handle(s(21.0), TransferEvent::Answered(3));
        assert_eq!(wire(&a), vec![TransferAction::Whisper(3)]);
        assert_eq!(t.whispering(), Some(3));
        let a = t.handle(s(25.0), TransferEvent::WhisperFinished(3));
        assert_eq!(wire(&a), vec![TransferAction::Bridge(3)]);
        assert_eq!(t.bridged(), Some(3));
        let a = t.handle(s(60.0), TransferEvent::AgentHungUp(3));
        assert_eq!(wire(&a), vec![TransferAction::EndCall]);
        assert!(t.done());
    }

    #[test]
    fn parallel_ringing_cancels_the_others_when_one_answers() {
        let (mut t, a) = Transfer::start(
            plan(&agents(RingStrategy::Parallel), "vip"),
            &whisper(false),
            s(0.0),
        );
        assert_eq!(
            wire(&a),
            vec![dial(1, "sip:2001@pbx"), dial(2, "sip:2002@pbx")]
        );
        let a = t.handle(s(3.0), TransferEvent::Answered(2));
        assert_eq!(
            wire(&a),
            vec![TransferAction::Cancel(1), TransferAction::Whisper(2)]
        );
        let a = t.handle(s(3.1), TransferEvent::Answered(1));
        assert_eq!(wire(&a), vec![TransferAction::HangUp(1)], "late answer");
    }

    #[test]
    fn decline_or_silence_after_the_whisper_moves_on_and_everyone_failing_gives_up() {
        let (mut t, _) = Transfer::start(
            plan(&agents(RingStrategy::Sequential), "vip"),
            &whisper(true),
            s(0.0),
        );
        t.handle(s(1.0), TransferEvent::Answered(1));
        t.handle(s(4.0), TransferEvent::WhisperFinished(1));
        let a = t.handle(s(5.0), TransferEvent::AgentDigit(1, '2'));
        assert_eq!(
            wire(&a),
            vec![TransferAction::HangUp(1), dial(2, "sip:2002@pbx")]
        );
        t.handle(s(6.0), TransferEvent::Answered(2));
        t.handle(s(9.0), TransferEvent::WhisperFinished(2));
        assert!(wire(&t.handle(s(13.9), TransferEvent::Tick)).is_empty());
        let a = t.handle(s(14.0), TransferEvent::Tick);
        assert_eq!(
            wire(&a),
            vec![TransferAction::HangUp(2), dial(3, "sip:1001@pbx")],
            "no key within accept_timeout"
        );
        let a = t.handle(
            s(14.1),
            TransferEvent::Failed {
                leg: 3,
                status: 404,
                why: "not registered".into(),
            },
        );
        let Some(TransferAction::GiveUp { tried }) = wire(&a).pop() else {
            panic!("{a:?}")
        };
        assert_eq!(
            tried,
            vec![
                "sip:2001@pbx: declined",
                "sip:2002@pbx: did not accept",
                "sip:1001@pbx: not registered"
            ]
        );
        assert!(t.done());
    }

    #[test]
    fn accept_key_bridges_and_caller_hang_up_cancels_ringing_agents() {
        let (mut t, _) = Transfer::start(
            plan(&agents(RingStrategy::Parallel), "vip"),
            &whisper(true),
            s(0.0),
        );
        t.handle(s(1.0), TransferEvent::Answered(1));
        let a = t.handle(s(2.0), TransferEvent::AgentDigit(1, '1'));
        assert_eq!(
            wire(&a),
            vec![TransferAction::Bridge(1)],
            "1 during the whisper"
        );
        let (mut t, _) = Transfer::start(
            plan(&agents(RingStrategy::Parallel), "vip"),
            &whisper(true),
            s(0.0),
        );
        let a = t.handle(s(2.0), TransferEvent::CallerHungUp);
        assert_eq!(
            wire(&a),
            vec![TransferAction::Cancel(1), TransferAction::Cancel(2)]
        );
        assert!(t.done());
    }

    #[test]
    fn no_agents_at_all_gives_up_at_once() {
        let (t, a) = Transfer::start(Vec::new(), &whisper(false), s(0.0));
        assert!(matches!(
            wire(&a).as_slice(),
            [TransferAction::GiveUp { .. }]
        ));
        assert!(t.done());
    }
}
