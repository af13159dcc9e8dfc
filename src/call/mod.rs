//! The per-call decision core: a plain state machine fed events with the time
//! passed in, returning actions. No sockets, no tokio, no wall clock — the
//! live gateway and offline replay drive the same code.

pub mod agents;
pub mod conversation;
pub mod core;
pub mod event;
pub mod greeting;
pub mod handover_audio;
pub mod intents;
pub mod policy;
pub mod semantic;
pub mod transfer;

pub use conversation::{Call, CallSetup, Input, Output};
pub use event::{CallEvent, Party};
pub use greeting::{FlowAction, FlowEvent, GreetingFlow};

/// How a call ended, as the call board, `/metrics`
/// (`voicegate_calls_total{outcome}`) and `voicegate replay` all name it —
/// one rule, so live and offline reports agree: `transferred` once a
/// hand-over was decided, else `bot_resolved` if the bot recognised a
/// request, else `caller_hung_up`.
pub fn outcome(handed_over: bool, recognised_intent: bool) -> &'static str {
    if handed_over {
        "transferred"
    } else if recognised_intent {
        "bot_resolved"
    } else {
        "caller_hung_up"
    }
}
