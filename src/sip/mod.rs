//! SIP signalling pieces: SDP offer/answer, trunk digest authentication,
//! outbound registration. Transactions and dialogs come from `rsipstack`.

pub mod digest;
pub mod sdp;
pub mod source;
