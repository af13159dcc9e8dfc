//! Local speech: the Whisper model (converted from a registry package by our
//! own code), voice activity detection, the ASR worker pool, speech rate.

pub mod asr;
pub mod chinese;
pub mod cli;
pub mod convert;
pub mod encoder;
pub mod models;
pub mod pipeline;
pub mod pool;
pub mod quantize;
pub mod tts;
pub mod vad;
