//! `sip-config/`: what a PBX administrator edits. Loading, validation and the
//! `file:line: problem — fix` diagnostics behind `voicegate config check`.

mod agents;
mod diagnostic;
mod gateway;
mod policy;
mod trunks;

pub use agents::{AgentGroup, AgentsConfig, RingStrategy, WhisperConfig};
pub use diagnostic::{Diagnostic, SourceFile};
pub use gateway::{GatewayConfig, MediaConfig, RecordingConfig, SipListen, SpeechConfig};
pub use policy::load_policy;
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
    /// `agents.toml`: where hand-overs go (shared by every call of this
    /// configuration generation).
    pub agents: std::sync::Arc<AgentsConfig>,
    /// The bot, rules, lexicons and customers.
    pub policy: std::sync::Arc<crate::call::policy::Policy>,
    /// The sentence encoder behind semantic intents, when installed (shared
    /// by every configuration generation and call).
    pub encoder: Option<std::sync::Arc<crate::speech::encoder::SentenceEncoder>>,
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
        let policy = load_policy(dir).map_err(|e| problems.extend(e)).ok();
        if let (Some(gateway), Some(trunks), Some(agents), Some(policy)) =
            (gateway, trunks, agents, policy)
        {
            if problems.is_empty() {
                let (policy, encoder) = with_semantic_intents(policy, &gateway);
                return Ok(Config {
                    dir: dir.to_path_buf(),
                    gateway,
                    trunks,
                    agents: std::sync::Arc::new(agents),
                    policy: std::sync::Arc::new(policy),
                    encoder,
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

/// Embed the flow's examples with the sentence encoder `[speech] encoder`
/// names, when it is installed; without it keywords alone decide (logged).
fn with_semantic_intents(
    mut policy: crate::call::policy::Policy,
    gateway: &GatewayConfig,
) -> (
    crate::call::policy::Policy,
    Option<std::sync::Arc<crate::speech::encoder::SentenceEncoder>>,
) {
    use crate::call::semantic::{Example, SemanticIndex};
    use crate::speech::encoder::SentenceEncoder;
    let Some(path) = gateway.speech.encoder.as_ref() else {
        return (policy, None);
    };
    let encoder = match SentenceEncoder::shared(path) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "semantic intents off: keywords alone decide");
            return (policy, None);
        }
    };
    let sentences = policy.example_sentences();
    let texts: Vec<&str> = sentences.iter().map(|(_, t)| t.as_str()).collect();
    match encoder.embed_remembered(&texts) {
        Ok(vectors) => {
            let examples = sentences
                .into_iter()
                .zip(vectors)
                .map(|((intent, text), vector)| Example {
                    intent,
                    text,
                    vector,
                })
                .collect();
            policy.semantic = Some(std::sync::Arc::new(SemanticIndex::new(examples)));
            (policy, Some(encoder))
        }
        Err(e) => {
            tracing::warn!(error = %e, "semantic intents off: the examples could not be embedded");
            (policy, None)
        }
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

/// The bot's voice for a configuration generation: the operator's recorded
/// replies first, then `synthesizer` (shared, with its cache, by every
/// generation). Live calls and replay speak with it alike.
pub fn bot_voice(
    config: &Config,
    synthesizer: std::sync::Arc<dyn crate::speech::tts::Synthesizer>,
) -> std::sync::Arc<dyn crate::speech::tts::Synthesizer> {
    let replies: Vec<(String, String)> = config
        .policy
        .flow
        .intent
        .iter()
        .flat_map(|i| i.recorded_replies())
        .collect();
    std::sync::Arc::new(crate::speech::tts::RecordedFirst::new(
        crate::speech::tts::RecordedFirst::load(&config.dir, &replies),
        synthesizer,
    ))
}

/// Load `dir` for a command, or print every problem (`file:line: problem —
/// fix`) to stderr and give the exit code 2.
pub fn load_or_explain(dir: &Path) -> Result<Config, std::process::ExitCode> {
    Config::load(dir).map_err(|errors| {
        eprint!("{errors}");
        eprintln!("{}: {} problem(s) found", dir.display(), errors.0.len());
        std::process::ExitCode::from(2)
    })
}

/// Parse configuration file texts as `config check` would, without files:
/// the number of problems found. For the fuzzers (`src/fuzz.rs`): whatever
/// the text, this returns (a diagnostic), never panics.
#[doc(hidden)]
pub fn check_texts(gateway_toml: &str, trunks_toml: &str, agents_toml: &str) -> usize {
    let dir = Path::new("/nonexistent/voicegate-fuzz");
    let mut problems = Vec::new();
    let _ = gateway::parse(dir, &dir.join("gateway.toml"), gateway_toml, &mut problems);
    let _ = trunks::parse(&dir.join("trunks.toml"), trunks_toml, &mut problems);
    let _ = agents::parse(dir, &dir.join("agents.toml"), agents_toml, &mut problems);
    for p in &problems {
        let _ = p.to_string();
    }
    problems.len()
}
