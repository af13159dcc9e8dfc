#![no_main]
//! `voicegate::fuzz::config` under libFuzzer (`make fuzz`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| voicegate::fuzz::config(data));
