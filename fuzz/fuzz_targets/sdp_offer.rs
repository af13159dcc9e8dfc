#![no_main]
//! `voicegate::fuzz::sdp_offer` under libFuzzer (`make fuzz`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| voicegate::fuzz::sdp_offer(data));
