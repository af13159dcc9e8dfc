//! The answering flow before the bot exists: play the greeting, record, and
//! end the call when the caller presses `#`.

use std::time::Duration;

/// Something that happened on the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallAction {
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
    Log {
        /// Event kind.
        kind: &'static str,
        /// Extra fields.
        fields: serde_json::Value,
    },
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
    pub fn handle(&mut self, now: Duration, event: CallEvent) -> Vec<CallAction> {
        let _ = now;
        match (self.state, event) {
            (State::Ringing, CallEvent::Answered) => {
                self.state = State::Greeting;
                vec![
                    CallAction::PlayGreeting,
                    CallAction::Log {
                        kind: "prompt.started",
                        fields: serde_json::json!({"prompt": "greeting"}),
                    },
                ]
            }
            (State::Greeting, CallEvent::PromptFinished) => {
                self.state = State::Listening;
                vec![CallAction::Log {
                    kind: "prompt.finished",
                    fields: serde_json::json!({"prompt": "greeting"}),
                }]
            }
            (State::Ended, _) => Vec::new(),
            (state, CallEvent::Digit { digit, source }) => {
                let mut actions = vec![CallAction::Log {
                    kind: "dtmf",
                    fields: serde_json::json!({"digit": digit.to_string(), "source": source}),
                }];
                if digit == '#' {
                    if state == State::Greeting {
                        actions.push(CallAction::StopPlayback);
                    }
                    self.state = State::Ended;
                    actions.push(CallAction::HangUp {
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
            .handle(t(0), CallEvent::Answered)
            .contains(&CallAction::PlayGreeting));
        let a = f.handle(
            t(500),
            CallEvent::Digit {
                digit: '5',
                source: "rfc4733",
            },
        );
        assert_eq!(a.len(), 1, "other digits are only logged");
        let a = f.handle(
            t(900),
            CallEvent::Digit {
                digit: '#',
                source: "rfc4733",
            },
        );
        assert!(a.contains(&CallAction::StopPlayback));
        assert!(a.contains(&CallAction::HangUp {
            reason: "caller_pressed_hash"
        }));
        assert!(f
            .handle(
                t(901),
                CallEvent::Digit {
                    digit: '#',
                    source: "rfc4733"
                }
            )
            .is_empty());
    }

    #[test]
    fn hash_after_the_greeting_needs_no_stop() {
        let mut f = GreetingFlow::default();
        f.handle(t(0), CallEvent::Answered);
        f.handle(t(3000), CallEvent::PromptFinished);
        let a = f.handle(
            t(4000),
            CallEvent::Digit {
                digit: '#',
                source: "inband",
            },
        );
        assert!(!a.contains(&CallAction::StopPlayback));
        assert!(a.contains(&CallAction::HangUp {
            reason: "caller_pressed_hash"
        }));
    }
}
