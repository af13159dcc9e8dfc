//! Media: RTP in and out, G.711, jitter buffer, DTMF, prompts, resampling.

pub mod drain;
pub mod dtmf;
pub mod g711;
pub mod jitter;
pub mod load;
pub mod ports;
pub mod prompt;
pub mod resample;
pub mod rtp_packet;
pub mod session;
