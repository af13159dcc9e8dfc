//! The answering flow before the bot exists: play the greeting, record, and
//! end the call when the caller presses `#`.

use super::event::{CallEvent, Dtmf};
use std::time::Duration;

/// Something that happened on the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowEvent {
    /// The call was answered.
    Answered,
    /// The caller pressed a key.
    Digit {
        /// The key.
        digit: char,
        /// `rfc4733`, `inband` or `sip_info`.
        source: &'static str,
    },
    /// The prompt being played reached its end.
    PromptFinished,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum FlowAction {
    /// Start playing the greeting prompt.
    PlayGreeting,
    /// Stop whatever is playing.
    StopPlayback,
    /// End the call (BYE) with a reason.
    HangUp {
        /// Why.
        reason: &'static str,
    },
    /// Write an event to `events.jsonl`.
    Log(CallEvent),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ringing,
    Greeting,
    Listening,
    Ended,
}

/// The greeting flow's state machine.
#[derive(Debug, Clone)]
pub struct GreetingFlow {
    state: State,
}

impl Default for GreetingFlow {
    fn default() -> Self {
        Self {
            state: State::Ringing,
        }
    }
}

impl GreetingFlow {
    /// Feed one event at time `now` (since answer); returns the actions to take.
    pub fn handle(&mut self, now: Duration, event: FlowEvent) -> Vec<FlowAction> {
        let _ = now;
        match (self.state, event) {
            (State::Ringing, FlowEvent::Answered) => {
                self.state = State::Greeting;
                vec![
                    FlowAction::PlayGreeting,
                    FlowAction::Log(CallEvent::PromptStarted {
                        prompt: "greeting".into(),
                    }),
                ]
            }
            (State::Greeting, FlowEvent::PromptFinished) => {
                self.state = State::Listening;
                vec![FlowAction::Log(CallEvent::PromptFinished {
                    prompt: "greeting".into(),
                })]
            }
            (State::Ended, _) => Vec::new(),
            (state, FlowEvent::Digit { digit, source }) => {
                let mut actions = vec![FlowAction::Log(CallEvent::Dtmf(Dtmf {
                    digit: digit.to_string(),
                    source: source.to_string(),
                }))];
                if digit == '#' {
                    if state == State::Greeting {
                        actions.push(FlowAction::StopPlayback);
                    }
                    self.state = State::Ended;
                    actions.push(FlowAction::HangUp {
                        reason: "caller_pressed_hash",
                    });
                }
                actions
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn greets_then_hangs_up_on_hash() {
        let mut f = GreetingFlow::default();
        assert!(f
            .handle(t(0), FlowEvent::Answered)
            .contains(&FlowAction::PlayGreeting));
        let a = f.handle(
            t(500),
            FlowEvent::Digit {
                digit: '5',
                source: "rfc4733",
            },
        );
        assert_eq!(a.len(), 1, "other digits are only logged");
        let a = f.handle(
            t(900),
            FlowEvent::Digit {
                digit: '#',
                source: "rfc4733",
            },
        );
        assert!(a.contains(&FlowAction::StopPlayback));
        assert!(a.contains(&FlowAction::HangUp {
            reason: "caller_pressed_hash"
        }));
        assert!(f
            .handle(
                t(901),
                FlowEvent::Digit {
                    digit: '#',
                    source: "rfc4733"
                }
            )
            .is_empty());
    }

    #[test]
    fn hash_after_the_greeting_needs_no_stop() {
        let mut f = GreetingFlow::default();
        f.handle(t(0), FlowEvent::Answered);
        f.handle(t(3000), FlowEvent::PromptFinished);
        let a = f.handle(
            t(4000),
            FlowEvent::Digit {
                digit: '#',
                source: "inband",
            },
        );
        assert!(!a.contains(&FlowAction::StopPlayback));
        assert!(a.contains(&FlowAction::HangUp {
            reason: "caller_pressed_hash"
        }));
    }
}
