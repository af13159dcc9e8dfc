#![no_main]
//! `voicegate::fuzz::rtp` under libFuzzer (`make fuzz`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| voicegate::fuzz::rtp(data));
