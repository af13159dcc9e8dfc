//! Where hand-overs go, as the decision core and the hand-over orchestration
//! see it: agent groups, how they are rung, routing by reason, the whisper.
//! Plain data; `config::agents` reads and validates `agents.toml` into it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The espeak-ng voice of the whisper when `agents.toml` names none.
pub const DEFAULT_WHISPER_VOICE: &str = "en-us";

/// How a group's members are rung.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingStrategy {
    /// One after the other, each for the ring timeout.
    Sequential,
    /// All at once; the first to answer wins, the others are cancelled.
    Parallel,
}

/// A group of agent extensions.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentGroup {
    /// Name used in `[routing]`.
    pub name: String,
    /// How members are rung.
    pub strategy: RingStrategy,
    /// How long one attempt rings.
    pub ring_timeout: Duration,
    /// SIP URIs of the extensions.
    pub members: Vec<String>,
}

/// The whisper played to the agent before the bridge.
#[derive(Debug, Clone, PartialEq)]
pub struct WhisperConfig {
    /// Whether the agent hears the summary first.
    pub enabled: bool,
    /// espeak-ng voice.
    pub voice: String,
    /// The agent must press 1 to take the call (2 declines).
    pub accept_with_dtmf: bool,
    /// How long the agent has to press a key after the whisper.
    pub accept_timeout: Duration,
    /// The summary's language: `caller` (the caller's own, default) or the
    /// agents' (`en`, `zh`).
    pub language: String,
}

/// `agents.toml`, validated.
#[derive(Debug, Clone)]
pub struct AgentsConfig {
    /// Send agent INVITEs through this proxy (the PBX); `None`: to each URI.
    pub outbound_proxy: Option<SocketAddr>,
    /// User part of our From towards agents.
    pub from_user: String,
    /// Digest credentials when the PBX challenges.
    pub credentials: Option<(String, String)>,
    /// The whisper.
    pub whisper: WhisperConfig,
    /// Played to the caller while agents ring (after the "connecting" words).
    pub hold_music: Option<PathBuf>,
    /// Jitter buffer on both legs once caller and agent are bridged.
    pub bridge_jitter: Duration,
    /// Groups by name, file order.
    pub groups: Vec<AgentGroup>,
    /// Reason → groups in failover order; `default` for the rest.
    pub routing: BTreeMap<String, Vec<String>>,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            outbound_proxy: None,
            from_user: "voicegate".into(),
            credentials: None,
            whisper: WhisperConfig {
                enabled: true,
                voice: DEFAULT_WHISPER_VOICE.into(),
                accept_with_dtmf: false,
                language: "caller".into(),
                accept_timeout: Duration::from_secs(10),
            },
            hold_music: None,
            bridge_jitter: Duration::from_millis(40),
            groups: Vec::new(),
            routing: BTreeMap::new(),
        }
    }
}

impl AgentsConfig {
    /// The groups to try for `reason`, in failover order.
    pub fn groups_for(&self, reason: &str) -> Vec<&AgentGroup> {
        let names = self
            .routing
            .get(reason)
            .or_else(|| self.routing.get("default"))
            .cloned()
            .unwrap_or_else(|| self.groups.iter().map(|g| g.name.clone()).collect());
        names
            .iter()
            .filter_map(|n| self.groups.iter().find(|g| &g.name == n))
            .collect()
    }
}

/// Reasons a `[routing]` key may name (plus `default`).
pub const REASONS: &[&str] = &[
    "default",
    "negative_words",
    "frustration",
    "unrecognized",
    "urgent_intent",
    "vip",
    "requested",
    "wait_timeout",
    "asr_unavailable",
    "webhook_failed",
];
