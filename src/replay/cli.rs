//! `voicegate replay` and `voicegate mine`: the command-line drivers of
//! offline replay (argument handling, progress, tables and exit codes).

use std::path::Path;
use std::process::ExitCode;

/// `voicegate replay` options.
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// A WAV file (stereo recordings: the caller's left channel), or a
    /// directory of them (recursive).
    pub file: std::path::PathBuf,
    /// Caller ID to present.
    #[arg(long)]
    pub caller: Option<String>,
    /// Configuration directory (flow, rules, lexicons, customers, model).
    #[arg(long, default_value = "sip-config")]
    pub config: std::path::PathBuf,
    /// Print one JSON object per call.
    #[arg(long)]
    pub json: bool,
    /// Check each call against the `.toml` beside its WAV; exit non-zero
    /// on any miss (a regression suite for rule changes).
    #[arg(long)]
    pub expect: bool,
    /// Write an HTML report (a page per call and an index) into this directory.
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,
    /// The callers' language (en, zh, … or auto); default: each call's
    /// `.toml` `language`, else `[speech] language`.
    #[arg(long)]
    pub language: Option<String>,
    /// CPU threads for Whisper (several replays side by side on a small box
    /// finish sooner with one each).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// `voicegate replay`: replay the calls `a` names; a line (or JSON object)
/// per call, an HTML report on request, exit non-zero on a miss.
pub fn replay(a: ReplayArgs) -> ExitCode {
    let ReplayArgs {
        file: path,
        caller,
        config,
        json,
        expect,
        report,
        language,
        threads,
    } = a;
    let (path, config, report, language) = (
        path.as_path(),
        config.as_path(),
        report.as_deref(),
        language.as_deref(),
    );
    use crate::replay::batch::{self, BatchItem, Expectation};
    use crate::speech::{asr, pipeline};
    use std::io::IsTerminal;
    let cfg = match crate::config::load_or_explain(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let files = match batch::inputs(path) {
        Ok(f) if f.is_empty() => {
            eprintln!("voicegate replay: {}: no WAV files", path.display());
            return ExitCode::from(2);
        }
        Ok(f) => f,
        Err(e) => {
            eprintln!("voicegate replay: {e}");
            return ExitCode::from(2);
        }
    };
    let sp = &cfg.gateway.speech;
    let mut recognizers = asr::Recognizers::new(
        &sp.model,
        sp.multilingual_model.as_deref(),
        threads,
        sp.language.as_deref(),
    );
    // The model must load before any call is replayed: a missing model is
    // the set-up's fault, not the calls'.
    if let Err(e) = recognizers.get(None) {
        eprintln!("voicegate replay: {e}");
        return ExitCode::FAILURE;
    }
    // The bot speaks in replay as it does live (its voice decides when it is
    // talking: barge-in, the goodbye hold), and greets with the same prompt.
    let voice = crate::config::bot_voice(
        &cfg,
        std::sync::Arc::new(crate::speech::tts::CachedSynthesizer::new(
            crate::speech::tts::Espeak,
            256,
        )),
    );
    let greeting = crate::media::prompt::Prompt::load(&cfg.gateway.greeting)
        .map_err(|e| eprintln!("voicegate replay: greeting: {e}"))
        .ok();
    let single = files.len() == 1 && path.is_file();
    let progress = !single && std::io::stderr().is_terminal();
    let mut items = Vec::new();
    for (n, file) in files.iter().enumerate() {
        if progress {
            eprint!(
                "\r[{:>4}/{}] {:<60.60}",
                n + 1,
                files.len(),
                file.display().to_string()
            );
        }
        let expectation = expect.then(|| Expectation::beside(file)).flatten();
        let who = caller
            .clone()
            .or_else(|| {
                expectation
                    .as_ref()
                    .and_then(|e| e.as_ref().ok())
                    .and_then(|e| e.caller.clone())
            })
            .or_else(|| batch::recorded_caller(file));
        let started = std::time::Instant::now();
        let track = pipeline::load_caller_track(file).map_err(|e| e.to_string());
        let audio_s = track
            .as_ref()
            .map(|t| t.duration.as_secs_f64())
            .unwrap_or(0.0);
        let call_language = language
            .map(str::to_string)
            .or_else(|| batch::call_language(file))
            .or_else(|| sp.language.clone())
            .unwrap_or_else(|| "auto".into());
        let result = track.and_then(|t| {
            let recognizer = recognizers
                .get(Some(&call_language))
                .map_err(|e| e.to_string())?;
            crate::replay::replay(
                &t,
                who,
                cfg.policy.clone(),
                crate::replay::Listening {
                    recognizer,
                    language: Some(&call_language),
                    encoder: cfg.encoder.as_deref(),
                    vad: sp.vad(),
                    voice: Some(voice.clone()),
                    greeting: greeting.clone(),
                    keys: batch::recorded_keys(file),
                    refused: batch::recorded_refusals(file),
                    max_duration: cfg.gateway.media.max_call_duration,
                },
            )
            .map_err(|e| e.to_string())
        });
        let cpu_s = started.elapsed().as_secs_f64();
        let name = file.display().to_string();
        let misses = match (&expectation, &result) {
            (Some(Ok(exp)), Ok(report)) => Some(exp.check(&report.to_json(&name))),
            (Some(Err(e)), _) => Some(vec![e.clone()]),
            _ if expect => None,
            _ => None,
        };
        match &result {
            Ok(report) if json => println!("{}", report.to_json(&name)),
            Ok(report) if single => println!(
                "{}",
                serde_json::to_string_pretty(&report.to_json(&name)).unwrap_or_default()
            ),
            Ok(report) if !progress => eprintln!(
                "{name}: {}{}",
                report.outcome,
                report
                    .reason
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
            Ok(_) => {}
            Err(e) => eprintln!(
                "{}voicegate replay: {name}: {e}",
                if progress { "\n" } else { "" }
            ),
        }
        items.push(BatchItem {
            file: file.clone(),
            result,
            audio_s,
            cpu_s,
            misses,
        });
    }
    if progress {
        eprintln!();
    }
    let table = batch::summary(&items);
    if !single || expect {
        if json {
            eprint!("{table}");
        } else {
            print!("{table}");
        }
    }
    if let Some(dir) = report {
        let calls: Vec<crate::replay::report::ReportCall<'_>> = items
            .iter()
            .map(|i| crate::replay::report::ReportCall {
                file: &i.file,
                result: i.result.as_ref().map_err(String::as_str),
                audio_s: i.audio_s,
                misses: i.misses.as_deref(),
            })
            .collect();
        match crate::replay::report::write(dir, &calls) {
            Ok(index) => eprintln!("report: {}", index.display()),
            Err(e) => {
                eprintln!(
                    "voicegate replay: cannot write the report in {}: {e}",
                    dir.display()
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let unreadable = items.iter().any(|i| i.result.is_err());
    let missed = items
        .iter()
        .any(|i| i.misses.as_ref().is_some_and(|m| !m.is_empty()));
    if unreadable || missed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `voicegate mine DIR`: the requests the bot did not understand in a
/// directory of recordings, as a `flow.toml` snippet on stdout.
pub fn mine(dir: &Path, config: &Path) -> ExitCode {
    let cfg = match crate::config::load_or_explain(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if !dir.is_dir() {
        eprintln!("voicegate mine: {}: not a directory", dir.display());
        return ExitCode::from(2);
    }
    let sp = &cfg.gateway.speech;
    let mut recognizer = match sp.recognizer(2) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("voicegate mine: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mined = crate::replay::mine::mine(dir, &cfg.policy, &mut recognizer);
    print!("{}", crate::replay::mine::snippet(&mined, dir));
    ExitCode::SUCCESS
}
