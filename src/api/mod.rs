//! HTTP beside the call path: the intent webhooks voicegate calls out to.

pub mod webhook;
