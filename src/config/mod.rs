//! `sip-config/`: what a PBX administrator edits. Loading, validation and the
//! `file:line: problem — fix` diagnostics behind `voicegate config check`.

mod agents;
mod diagnostic;
mod gateway;
mod trunks;

pub use agents::{AgentGroup, AgentsConfig, RingStrategy, WhisperConfig};
pub use diagnostic::{Diagnostic, SourceFile};
pub use gateway::{GatewayConfig, MediaConfig, RecordingConfig, SipListen, SpeechConfig};
pub use trunks::{Codec, RegisterConfig, TrunkAuth, TrunkConfig};

use std::path::{Path, PathBuf};

/// The whole, validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The directory it was loaded from.
    pub dir: PathBuf,
    /// `gateway.toml`.
    pub gateway: GatewayConfig,
    /// `trunks.toml`.
    pub trunks: Vec<TrunkConfig>,
    /// `agents.toml`: where hand-overs go.
    pub agents: AgentsConfig,
    /// The bot, rules, lexicons and customers.
    pub policy: std::sync::Arc<crate::call::policy::Policy>,
}

/// Loading failed: every problem found, each with its file and line.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<Diagnostic>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Load and validate every file in `dir`, collecting all problems.
    pub fn load(dir: &Path) -> Result<Config, ConfigErrors> {
        let mut problems = Vec::new();
        let gateway = read_file(dir, "gateway.toml", &mut problems)
            .and_then(|(path, text)| gateway::parse(dir, &path, &text, &mut problems));
        let trunks = read_file(dir, "trunks.toml", &mut problems)
            .and_then(|(path, text)| trunks::parse(&path, &text, &mut problems));
        let agents = if dir.join("agents.toml").exists() {
            read_file(dir, "agents.toml", &mut problems)
                .and_then(|(path, text)| agents::parse(dir, &path, &text, &mut problems))
        } else {
            Some(AgentsConfig::default())
        };
        let policy = crate::call::policy::Policy::load(dir)
            .map_err(|e| problems.extend(e))
            .ok();
        if let (Some(gateway), Some(trunks), Some(agents), Some(policy)) =
            (gateway, trunks, agents, policy)
        {
            if problems.is_empty() {
                return Ok(Config {
                    dir: dir.to_path_buf(),
                    gateway,
                    trunks,
                    agents,
                    policy: std::sync::Arc::new(policy),
                });
            }
        }
        Err(ConfigErrors(problems))
    }

    /// The trunk whose ACL admits `ip`, first match in file order.
    pub fn trunk_for(&self, ip: std::net::IpAddr) -> Option<&TrunkConfig> {
        self.trunks.iter().find(|t| t.admits(ip))
    }
}

fn read_file(dir: &Path, name: &str, problems: &mut Vec<Diagnostic>) -> Option<(PathBuf, String)> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Some((path, text)),
        Err(e) => {
            problems.push(Diagnostic {
                file: path,
                line: 1,
                problem: format!("cannot read the file: {e}"),
                fix: format!("create {name} (copy it from the shipped sip-config/)"),
            });
            None
        }
    }
}
