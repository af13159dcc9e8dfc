//! `agents.toml`: the human side of a hand-over — the PBX that reaches agent
//! extensions, groups with a ring strategy and timeout, routing by reason,
//! the whisper, and what the caller hears meanwhile.

use super::{Diagnostic, SourceFile};
pub use crate::call::agents::{AgentGroup, AgentsConfig, RingStrategy, WhisperConfig, REASONS};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    pbx: PbxEntry,
    #[serde(default)]
    whisper: WhisperEntry,
    #[serde(default)]
    hold_music: Option<Spanned<String>>,
    #[serde(default)]
    bridge: Option<BridgeEntry>,
    #[serde(default)]
    group: Vec<GroupEntry>,
    #[serde(default)]
    routing: BTreeMap<String, Spanned<Vec<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PbxEntry {
    #[serde(default)]
    outbound_proxy: Option<Spanned<String>>,
    #[serde(default)]
    from_user: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WhisperEntry {
    #[serde(default = "on")]
    enabled: bool,
    #[serde(default = "default_voice")]
    voice: String,
    #[serde(default)]
    accept_with_dtmf: bool,
    #[serde(default = "default_accept_timeout")]
    accept_timeout_s: f64,
    #[serde(default = "default_whisper_language")]
    language: String,
}

impl Default for WhisperEntry {
    fn default() -> Self {
        Self {
            enabled: true,
            voice: default_voice(),
            accept_with_dtmf: false,
            accept_timeout_s: default_accept_timeout(),
            language: default_whisper_language(),
        }
    }
}

fn on() -> bool {
    true
}
fn default_voice() -> String {
    crate::call::agents::DEFAULT_WHISPER_VOICE.into()
}
fn default_whisper_language() -> String {
    "caller".into()
}
fn default_accept_timeout() -> f64 {
    10.0
}
fn default_ring_timeout() -> Spanned<f64> {
    Spanned::new(0..0, 20.0)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BridgeEntry {
    jitter_buffer_ms: Spanned<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupEntry {
    name: Spanned<String>,
    #[serde(default)]
    strategy: Option<Spanned<String>>,
    #[serde(default = "default_ring_timeout")]
    ring_timeout_s: Spanned<f64>,
    members: Spanned<Vec<String>>,
}

/// Parse `agents.toml` (absent: no agents, hand-overs fail over to the callback).
pub(super) fn parse(
    dir: &Path,
    path: &Path,
    text: &str,
    problems: &mut Vec<Diagnostic>,
) -> Option<AgentsConfig> {
    let src = SourceFile::new(path, text);
    let file: File = match toml::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            problems.push(src.from_toml_error(&e));
            return None;
        }
    };
    let before = problems.len();
    let mut cfg = AgentsConfig::default();
    if let Some(proxy) = &file.pbx.outbound_proxy {
        let raw = proxy.get_ref().trim_start_matches("udp:");
        match raw.parse::<SocketAddr>() {
            Ok(a) => cfg.outbound_proxy = Some(a),
            Err(_) => problems.push(src.at(
                Some(proxy.span()),
                format!("outbound_proxy {:?} is not an address", proxy.get_ref()),
                "write it as ip:port, e.g. \"127.0.0.1:5070\"",
            )),
        }
    }
    if let Some(u) = file.pbx.from_user {
        cfg.from_user = u;
    }
    match (file.pbx.username, file.pbx.password) {
        (Some(u), Some(p)) => cfg.credentials = Some((u, p)),
        (None, None) => {}
        _ => problems.push(src.at(
            None,
            "[pbx] has a username without a password (or the reverse)",
            "give both username and password, or neither",
        )),
    }
    let w = file.whisper;
    if !(0.5..=120.0).contains(&w.accept_timeout_s) {
        problems.push(src.at(
            None,
            format!(
                "[whisper] accept_timeout_s = {} is out of range",
                w.accept_timeout_s
            ),
            "use 0.5 to 120 seconds",
        ));
    }
    cfg.whisper = WhisperConfig {
        enabled: w.enabled,
        voice: w.voice,
        accept_with_dtmf: w.accept_with_dtmf,
        accept_timeout: Duration::from_secs_f64(w.accept_timeout_s.clamp(0.5, 120.0)),
        language: w.language,
    };
    if let Some(music) = &file.hold_music {
        let p = dir.join(music.get_ref());
        match crate::media::prompt::Prompt::load(&p) {
            Ok(_) => cfg.hold_music = Some(p),
            Err(e) => problems.push(src.at(
                Some(music.span()),
                format!("hold_music {}: {e}", p.display()),
                "give a readable WAV file (any rate, mono or stereo), relative to sip-config/",
            )),
        }
    }
    if let Some(b) = &file.bridge {
        let ms = *b.jitter_buffer_ms.get_ref();
        if !(20..=200).contains(&ms) {
            problems.push(src.at(
                Some(b.jitter_buffer_ms.span()),
                format!("[bridge] jitter_buffer_ms = {ms} is out of range"),
                "use 20 to 200 ms (40 keeps the bridge under 40 ms one way)",
            ));
        }
        cfg.bridge_jitter = Duration::from_millis(u64::from(ms.clamp(20, 200)));
    }
    let mut names = HashSet::new();
    for g in file.group {
        if !names.insert(g.name.get_ref().clone()) {
            problems.push(src.at(
                Some(g.name.span()),
                format!("group name {:?} is used twice", g.name.get_ref()),
                "give every [[group]] its own name",
            ));
        }
        let strategy = match g.strategy.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("sequential") => RingStrategy::Sequential,
            Some("parallel") | Some("all") => RingStrategy::Parallel,
            Some(other) => {
                problems.push(src.at(
                    g.strategy.as_ref().map(|s| s.span()),
                    format!("strategy {other:?} is unknown"),
                    "use \"sequential\" or \"parallel\"",
                ));
                RingStrategy::Sequential
            }
        };
        let timeout = *g.ring_timeout_s.get_ref();
        if !(1.0..=300.0).contains(&timeout) {
            problems.push(src.at(
                Some(g.ring_timeout_s.span()),
                format!("ring_timeout_s = {timeout} is out of range"),
                "use 1 to 300 seconds",
            ));
        }
        if g.members.get_ref().is_empty() {
            problems.push(src.at(
                Some(g.members.span()),
                format!("group {:?} has no members", g.name.get_ref()),
                "list at least one SIP URI, e.g. \"sip:1001@127.0.0.1:5070\"",
            ));
        }
        for m in g.members.get_ref() {
            let ok = m.starts_with("sip:") && rsipstack::sip::Uri::try_from(m.as_str()).is_ok();
            if !ok {
                problems.push(src.at(
                    Some(g.members.span()),
                    format!("member {m:?} is not a SIP URI"),
                    "write it as sip:extension@host[:port]",
                ));
            }
        }
        cfg.groups.push(AgentGroup {
            name: g.name.into_inner(),
            strategy,
            ring_timeout: Duration::from_secs_f64(timeout.clamp(1.0, 300.0)),
            members: g.members.into_inner(),
        });
    }
    for (reason, groups) in &file.routing {
        if !REASONS.contains(&reason.as_str()) {
            problems.push(src.at(
                Some(groups.span()),
                format!("[routing] {reason:?} is not a hand-over reason"),
                format!("use one of: {}", REASONS.join(", ")),
            ));
        }
        for g in groups.get_ref() {
            if !names.contains(g) {
                problems.push(src.at(
                    Some(groups.span()),
                    format!("[routing] {reason} names unknown group {g:?}"),
                    "use the name of a [[group]] in this file",
                ));
            }
        }
        cfg.routing.insert(reason.clone(), groups.get_ref().clone());
    }
    (problems.len() == before).then_some(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<AgentsConfig, Vec<Diagnostic>> {
        let mut p = Vec::new();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sip-config");
        parse(&dir, &dir.join("agents.toml"), text, &mut p).ok_or(p)
    }

    #[test]
    fn shipped_file_routes_every_reason_to_extension_1001() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sip-config");
        let text = std::fs::read_to_string(dir.join("agents.toml")).expect("agents.toml");
        let cfg = load(&text).expect("valid");
        for reason in REASONS {
            let groups = cfg.groups_for(reason);
            assert!(!groups.is_empty(), "{reason}");
            assert!(groups
                .iter()
                .any(|g| g.members.iter().any(|m| m.contains("1001@127.0.0.1:5070"))));
        }
        assert!(cfg.whisper.enabled);
    }

    #[test]
    fn mistakes_get_lines_and_fixes() {
        let e = load(
            "[[group]]\nname = \"a\"\nstrategy = \"random\"\nmembers = [\"1001\"]\n\n[routing]\nvip = [\"b\"]\nangry = [\"a\"]\n",
        )
        .expect_err("invalid");
        let text: Vec<String> = e.iter().map(|d| d.to_string()).collect();
        let has =
            |line: usize, what: &str| e.iter().any(|d| d.line == line && d.problem.contains(what));
        assert!(has(3, "strategy \"random\""), "{text:?}");
        assert!(has(4, "not a SIP URI"), "{text:?}");
        assert!(has(7, "unknown group \"b\""), "{text:?}");
        assert!(has(8, "not a hand-over reason"), "{text:?}");
    }
}
