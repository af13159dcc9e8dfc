//! `voicegate transcribe`: one file through VAD and Whisper, printed.

use std::process::ExitCode;

/// Transcribe `file` with `model` and print the utterances (or JSON).
pub fn transcribe(
    file: &std::path::Path,
    json: bool,
    model: &std::path::Path,
    language: Option<&str>,
    threads: usize,
) -> ExitCode {
    use crate::speech::{asr, pipeline, vad};
    let track = match pipeline::load_caller_track(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("voicegate transcribe: {e}");
            return ExitCode::from(2);
        }
    };
    let model = match asr::WhisperModel::load(model) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("voicegate transcribe: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut recognizer = match asr::Recognizer::new(&model, threads, language) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("voicegate transcribe: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = std::time::Instant::now();
    let utterances = match pipeline::transcribe_track(
        &track.samples,
        vad::VadConfig::default(),
        &mut recognizer,
        language,
    ) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("voicegate transcribe: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    let duration = track.duration.as_secs_f64();
    if json {
        let out = serde_json::json!({
            "file": file.display().to_string(),
            "duration_s": duration,
            "utterances": utterances,
            "text": utterances.iter().map(|u| u.text.as_str()).collect::<Vec<_>>().join(" "),
            "processing_s": elapsed,
            "real_time_factor": elapsed / duration.max(1e-9),
        });
        println!("{out}");
    } else {
        for u in &utterances {
            println!(
                "[{:7.2} - {:7.2}] {}  ({:.2} words/s, {:.1} dBFS)",
                u.start_s, u.end_s, u.text, u.words_per_s, u.loudness_dbfs
            );
        }
    }
    ExitCode::SUCCESS
}
