#![no_main]
//! `voicegate::fuzz::wav` under libFuzzer (`make fuzz`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| voicegate::fuzz::wav(data));
