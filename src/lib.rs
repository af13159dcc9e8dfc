//! voicegate: a telephony voice-bot gateway.
//!
//! The tree follows the path of a call: [`sip`] terminates signalling,
//! [`media`] carries audio, [`call`] decides what happens, [`record`] keeps
//! everything; [`config`] is what the administrator edits.

pub mod api;
pub mod call;
pub mod caller;
pub mod config;
pub mod emotion;
pub mod fuzz;
pub mod gateway;
pub mod media;
pub mod record;
pub mod replay;
pub mod sip;
pub mod speech;
