//! HTTP beside the call path: the intent webhooks voicegate calls out to, and
//! the gateway's own HTTP surface (health, metrics, call API and pages, the
//! agents' screen-pop, the browser caller's page).

pub mod board;
pub mod http;
pub mod webhook;
