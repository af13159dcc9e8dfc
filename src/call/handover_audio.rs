//! What each party hears during a hand-over, decided without I/O: hold
//! music (or the bot's last words) to the caller while agents ring, the
//! whispered summary to the answering agent only, then caller and agent both
//! ways. The live gateway reads and writes the agent legs' sockets around
//! it; the [`Transfer`](super::transfer::Transfer) orchestration says whom
//! to whisper to and when to bridge.

use super::transfer::LegId;
use crate::media::jitter::FRAME_8K;
use crate::media::prompt::{Prompt, PromptPlayer};
use std::time::Duration;

/// One 20 ms frame at 8 kHz.
pub type Frame = [i16; FRAME_8K];

/// One agent leg with media, for one tick: what the agent said (filled by
/// the shell) and what the agent hears (filled by [`HandoverAudio::tick`]).
#[derive(Debug, Clone)]
pub struct AgentFrame {
    /// The leg.
    pub leg: LegId,
    /// The agent's audio this tick (silence when nothing arrived).
    pub heard: Frame,
    /// What to send the agent this tick.
    pub out: Frame,
}

impl AgentFrame {
    /// A leg's frame for this tick, with what the agent said.
    pub fn new(leg: LegId, heard: &[i16]) -> Self {
        let mut f = AgentFrame {
            leg,
            heard: [0; FRAME_8K],
            out: [0; FRAME_8K],
        };
        let n = heard.len().min(FRAME_8K);
        f.heard[..n].copy_from_slice(&heard[..n]);
        f
    }
}

/// Something the audio did that the orchestration and the event log hear of.
#[derive(Debug, Clone, PartialEq)]
pub enum AudioEvent {
    /// The whisper's first frame went to this leg, so long after the
    /// whisper was asked for (the agent's answer).
    WhisperStarted {
        /// The agent's leg.
        leg: LegId,
        /// From the agent's answer to the first whispered frame.
        after_answer: Duration,
    },
    /// The whisper is over for this leg (played out, or never synthesised):
    /// the orchestration may bridge.
    WhisperFinished {
        /// The agent's leg.
        leg: LegId,
        /// Whether any of it was heard (false: synthesis failed).
        played: bool,
    },
}

/// The audio side of one hand-over.
pub struct HandoverAudio {
    /// The whisper once synthesised (`Some(None)`: synthesis failed).
    whisper: Option<Option<Prompt>>,
    /// The leg waiting for (or hearing) the whisper, and since when.
    whisper_for: Option<(LegId, Duration)>,
    whisper_player: Option<PromptPlayer>,
    whisper_started: bool,
    hold: Option<Prompt>,
    hold_player: Option<PromptPlayer>,
}

impl HandoverAudio {
    /// A hand-over whose caller hears `hold` (looped) while agents ring.
    pub fn new(hold: Option<Prompt>) -> Self {
        Self {
            whisper: None,
            whisper_for: None,
            whisper_player: None,
            whisper_started: false,
            hold,
            hold_player: None,
        }
    }

    /// The whisper is synthesised (`None`: synthesis failed — the agent is
    /// bridged without it rather than left waiting).
    pub fn whisper_ready(&mut self, prompt: Option<Prompt>) {
        self.whisper = Some(prompt);
    }

    /// Whisper to `leg` (it answered at `now`); it starts as soon as the
    /// whisper is synthesised.
    pub fn whisper_to(&mut self, leg: LegId, now: Duration) {
        self.whisper_for = Some((leg, now));
        self.whisper_player = None;
        self.whisper_started = false;
    }

    /// Caller and agent are bridged: no more whisper.
    pub fn bridge(&mut self) {
        self.whisper_for = None;
        self.whisper_player = None;
    }

    /// One 20 ms tick at `now`. `caller` is the caller's frame, `bot` what
    /// the bot is saying (if anything), `bridged` the agent leg bridged to
    /// the caller. Fills each agent's `out` and returns what the caller
    /// hears, with what happened.
    pub fn tick(
        &mut self,
        now: Duration,
        bridged: Option<LegId>,
        caller: &[i16],
        bot: Option<Frame>,
        agents: &mut [AgentFrame],
        events: &mut Vec<AudioEvent>,
    ) -> Frame {
        // The whisper starts as soon as it is both wanted and synthesised.
        if let (Some((leg, _)), None, Some(w)) =
            (self.whisper_for, &self.whisper_player, &self.whisper)
        {
            match w {
                Some(p) => self.whisper_player = Some(PromptPlayer::new(p.clone())),
                None => {
                    events.push(AudioEvent::WhisperFinished { leg, played: false });
                    self.whisper_for = None;
                }
            }
        }
        let mut to_caller = None;
        for agent in agents.iter_mut() {
            agent.out = [0; FRAME_8K];
            if bridged == Some(agent.leg) {
                to_caller = Some(agent.heard);
                let n = caller.len().min(FRAME_8K);
                agent.out[..n].copy_from_slice(&caller[..n]);
                continue;
            }
            let Some((leg, asked)) = self.whisper_for.filter(|(l, _)| *l == agent.leg) else {
                continue; // ringing or waiting its turn: silence
            };
            match self.whisper_player.as_mut().map(|p| p.next_frame()) {
                Some(Some(f)) => {
                    agent.out = f;
                    if !self.whisper_started {
                        self.whisper_started = true;
                        events.push(AudioEvent::WhisperStarted {
                            leg,
                            after_answer: now.saturating_sub(asked),
                        });
                    }
                }
                Some(None) => {
                    events.push(AudioEvent::WhisperFinished { leg, played: true });
                    self.whisper_for = None;
                    self.whisper_player = None;
                }
                None => {} // still synthesising: silence
            }
        }
        if let Some(f) = to_caller {
            return f;
        }
        if bridged.is_some() {
            // Bridged, but the agent's media is not up (yet): silence.
            return [0; FRAME_8K];
        }
        match bot {
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(20);

    fn prompt(value: i16, frames: usize) -> Prompt {
        Prompt::from_samples(vec![value; FRAME_8K * frames])
    }

    /// Run `n` ticks from `from`; the caller's frames are all `7`, the agent
    /// legs say their own id. Returns what the caller heard, what each leg
    /// heard (by tick), and the events.
    #[allow(clippy::type_complexity)]
    fn run(
        a: &mut HandoverAudio,
        from: usize,
        n: usize,
        bridged: Option<LegId>,
        legs: &[LegId],
        bot: Option<i16>,
    ) -> (Vec<i16>, Vec<Vec<i16>>, Vec<AudioEvent>) {
        let mut caller_heard = Vec::new();
        let mut legs_heard = vec![Vec::new(); legs.len()];
        let mut events = Vec::new();
        for i in from..from + n {
            let mut frames: Vec<AgentFrame> = legs
                .iter()
                .map(|&l| AgentFrame::new(l, &[l as i16 * 100; FRAME_8K]))
                .collect();
            let f = a.tick(
                T * i as u32,
                bridged,
                &[7; FRAME_8K],
                bot.map(|v| [v; FRAME_8K]),
                &mut frames,
                &mut events,
            );
            caller_heard.push(f[0]);
            for (k, fr) in frames.iter().enumerate() {
                legs_heard[k].push(fr.out[0]);
            }
        }
        (caller_heard, legs_heard, events)
    }

    #[test]
    fn while_agents_ring_the_caller_hears_hold_music_or_the_bot_and_agents_hear_silence() {
        let mut a = HandoverAudio::new(Some(prompt(5, 3)));
        let (caller, legs, events) = run(&mut a, 0, 7, None, &[1, 2], None);
        // Hold music loops (3 frames, then again); never the agents' audio.
        assert!(caller.iter().all(|&s| s == 5), "{caller:?}");
        assert!(legs.iter().flatten().all(|&s| s == 0), "{legs:?}");
        assert!(events.is_empty());
        // The bot's words win over hold music.
        let (caller, _, _) = run(&mut a, 7, 2, None, &[1, 2], Some(9));
        assert_eq!(caller, vec![9, 9]);
    }

    #[test]
    fn only_the_answering_agent_hears_the_whisper_and_the_caller_never_does() {
        let mut a = HandoverAudio::new(Some(prompt(5, 50)));
        a.whisper_to(2, T * 3);
        // Not synthesised yet: agent 2 waits in silence.
        let (_, legs, events) = run(&mut a, 3, 2, None, &[1, 2], None);
        assert_eq!(legs[1], vec![0, 0]);
        assert!(events.is_empty());
        a.whisper_ready(Some(prompt(3, 4)));
        let (caller, legs, events) = run(&mut a, 5, 6, None, &[1, 2], None);
        assert_eq!(legs[1], vec![3, 3, 3, 3, 0, 0], "agent 2 hears the whisper");
        assert!(
            legs[0].iter().all(|&s| s == 0),
            "agent 1 hears nothing: {legs:?}"
        );
        assert!(
            caller.iter().all(|&s| s == 5),
            "the caller stays on hold: {caller:?}"
        );
        assert_eq!(
            events,
            vec![
                AudioEvent::WhisperStarted {
                    leg: 2,
                    after_answer: T * 2
                },
                AudioEvent::WhisperFinished {
                    leg: 2,
                    played: true
                },
            ]
        );
    }

    #[test]
    fn a_whisper_that_could_not_be_synthesised_finishes_at_once() {
        let mut a = HandoverAudio::new(None);
        a.whisper_to(1, Duration::ZERO);
        a.whisper_ready(None);
        let (caller, legs, events) = run(&mut a, 0, 2, None, &[1], None);
        assert_eq!(
            events,
            vec![AudioEvent::WhisperFinished {
                leg: 1,
                played: false
            }]
        );
        assert_eq!(legs[0], vec![0, 0]);
        assert_eq!(caller, vec![0, 0], "no hold music configured: silence");
    }

    #[test]
    fn once_bridged_caller_and_agent_hear_each_other_and_nothing_else() {
        let mut a = HandoverAudio::new(Some(prompt(5, 50)));
        a.whisper_to(2, Duration::ZERO);
        a.whisper_ready(Some(prompt(3, 100)));
        let _ = run(&mut a, 0, 2, None, &[2], None);
        a.bridge();
        // The bot is still finishing a sentence: once bridged, the agent wins.
        let (caller, legs, events) = run(&mut a, 2, 3, Some(2), &[1, 2], Some(9));
        assert_eq!(caller, vec![200, 200, 200], "the caller hears agent 2");
        assert_eq!(
            legs[1],
            vec![7, 7, 7],
            "agent 2 hears the caller, no whisper"
        );
        assert_eq!(legs[0], vec![0, 0, 0], "agent 1 hears nothing");
        assert!(events.is_empty(), "{events:?}");
        // The bridged leg's media is gone: silence, not hold music.
        let (caller, _, _) = run(&mut a, 5, 1, Some(2), &[], None);
        assert_eq!(caller, vec![0]);
    }
}
