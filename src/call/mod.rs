//! The per-call decision core: a plain state machine fed events with the time
//! passed in, returning actions. No sockets, no tokio, no wall clock — the
//! live gateway and offline replay drive the same code.

pub mod agents;
pub mod conversation;
pub mod core;
pub mod greeting;
pub mod intents;
pub mod policy;
pub mod semantic;
pub mod transfer;

pub use conversation::{Call, CallSetup, Input, Output};
pub use greeting::{CallAction, CallEvent, GreetingFlow};
