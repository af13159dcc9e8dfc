#![no_main]
//! `voicegate::fuzz::sip_request` under libFuzzer (`make fuzz`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| voicegate::fuzz::sip_request(data));
