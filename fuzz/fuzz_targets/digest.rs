#![no_main]
//! `voicegate::fuzz::digest` under libFuzzer (`make fuzz`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| voicegate::fuzz::digest(data));
