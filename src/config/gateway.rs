//! `gateway.toml`: listen addresses, RTP ports, recordings, prompts.

use super::{Diagnostic, SourceFile};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    sip: SipSection,
    media: MediaSection,
    #[serde(default)]
    recording: RecordingSection,
    prompts: PromptsSection,
    #[serde(default)]
    speech: SpeechSection,
    #[serde(default)]
    http: HttpSection,
    #[serde(default)]
    shutdown: ShutdownSection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    #[serde(default = "default_http_listen")]
    listen: Spanned<String>,
    #[serde(default)]
    admin_token: Option<Spanned<String>>,
    #[serde(default)]
    public_url: Option<Spanned<String>>,
    #[serde(default)]
    agent_token: Option<Spanned<String>>,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            listen: default_http_listen(),
            admin_token: None,
            public_url: None,
            agent_token: None,
        }
    }
}

fn default_http_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:8080".into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShutdownSection {
    #[serde(default = "default_grace")]
    grace_s: Spanned<u64>,
}

impl Default for ShutdownSection {
    fn default() -> Self {
        Self {
            grace_s: default_grace(),
        }
    }
}

fn default_grace() -> Spanned<u64> {
    Spanned::new(0..0, 30)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpeechSection {
    #[serde(default = "default_true")]
    enabled: bool,
    #[serde(default = "default_model")]
    model: Spanned<String>,
    #[serde(default = "default_language")]
    language: String,
    #[serde(default)]
    workers: usize,
    #[serde(default = "default_two")]
    threads_per_worker: usize,
    #[serde(default = "default_queue")]
    queue: usize,
    #[serde(default = "default_max_latency")]
    max_latency_ms: u64,
    #[serde(default = "default_hangover")]
    vad_hangover_ms: Spanned<u64>,
    #[serde(default = "default_min_voiced")]
    vad_min_voiced_ms: Spanned<u64>,
    #[serde(default = "default_early")]
    vad_early_ms: Spanned<u64>,
    #[serde(default = "default_max_utt")]
    max_utterance_s: u64,
    #[serde(default = "default_partial")]
    partial_interval_ms: u64,
    #[serde(default = "default_partial_window")]
    partial_window_ms: u64,
    #[serde(default = "default_multilingual")]
    multilingual_model: String,
    #[serde(default = "default_encoder")]
    encoder: String,
}

impl Default for SpeechSection {
    fn default() -> Self {
        Self {
            enabled: true,
            model: default_model(),
            language: default_language(),
            workers: 0,
            threads_per_worker: 2,
            queue: default_queue(),
            max_latency_ms: default_max_latency(),
            vad_hangover_ms: default_hangover(),
            vad_min_voiced_ms: default_min_voiced(),
            vad_early_ms: default_early(),
            max_utterance_s: default_max_utt(),
            partial_interval_ms: default_partial(),
            partial_window_ms: default_partial_window(),
            multilingual_model: default_multilingual(),
            encoder: default_encoder(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_model() -> Spanned<String> {
    Spanned::new(0..0, "models/ggml-tiny.en.bin".into())
}
fn default_multilingual() -> String {
    "models/ggml-base.bin".into()
}
fn default_encoder() -> String {
    format!("models/{}", crate::speech::encoder::MODEL_FILE)
}
fn default_language() -> String {
    "en".into()
}
fn default_two() -> usize {
    2
}
fn default_queue() -> usize {
    8
}
fn default_max_latency() -> u64 {
    3000
}
fn default_hangover() -> Spanned<u64> {
    Spanned::new(0..0, 600)
}
fn default_min_voiced() -> Spanned<u64> {
    Spanned::new(0..0, 150)
}
fn default_early() -> Spanned<u64> {
    Spanned::new(0..0, 400)
}
fn default_max_utt() -> u64 {
    15
}
fn default_partial() -> u64 {
    1000
}

fn default_partial_window() -> u64 {
    3000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SipSection {
    #[serde(default)]
    udp: Vec<Spanned<String>>,
    #[serde(default)]
    tcp: Vec<Spanned<String>>,
    #[serde(default = "default_user_agent")]
    user_agent: String,
    #[serde(default)]
    answer_delay_ms: u64,
    #[serde(default = "default_ban_after")]
    auth_ban_after: u32,
    #[serde(default = "default_ban_s")]
    auth_ban_s: u64,
    #[serde(default = "default_auth_window")]
    auth_window_s: u64,
    #[serde(default = "default_user_lock_after")]
    auth_user_lock_after: u32,
    #[serde(default)]
    max_calls: usize,
    #[serde(default = "default_max_setup_calls")]
    max_setup_calls: usize,
    #[serde(default = "default_session_expires")]
    session_expires_s: u64,
    #[serde(default = "default_invite_rate")]
    invite_rate: f64,
    #[serde(default = "default_invite_burst")]
    invite_burst: f64,
    #[serde(default = "default_rate_exempt")]
    rate_exempt: Vec<Spanned<String>>,
    #[serde(default)]
    advertised_address: Option<Spanned<String>>,
    #[serde(default)]
    advertised_port: Option<u16>,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    #[serde(default = "default_proxy_source_header")]
    proxy_source_header: Spanned<String>,
}

fn default_proxy_source_header() -> Spanned<String> {
    Spanned::new(0..0, "X-Forwarded-For".into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MediaSection {
    sdp_address: Spanned<String>,
    rtp_port_min: Spanned<u16>,
    rtp_port_max: Spanned<u16>,
    #[serde(default = "default_rtp_timeout")]
    rtp_timeout_s: Spanned<u64>,
    #[serde(default = "default_hold_timeout")]
    hold_timeout_s: u64,
    #[serde(default = "default_max_call_duration")]
    max_call_duration_s: u64,
    #[serde(default = "default_overload_tick_late")]
    overload_tick_late_ms: u64,
    #[serde(default = "default_jitter")]
    jitter_buffer_ms: Spanned<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordingSection {
    #[serde(default = "default_recordings")]
    dir: String,
    #[serde(default = "default_flush")]
    flush_interval_ms: u64,
}

impl Default for RecordingSection {
    fn default() -> Self {
        Self {
            dir: default_recordings(),
            flush_interval_ms: default_flush(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptsSection {
    greeting: Spanned<String>,
}

/// No version by default: the `User-Agent`/`Server` header must not tell a
/// prober which release (and so which bugs) it talks to.
fn default_user_agent() -> String {
    "voicegate".into()
}
fn default_invite_rate() -> f64 {
    20.0
}
fn default_invite_burst() -> f64 {
    40.0
}
fn default_rate_exempt() -> Vec<Spanned<String>> {
    ["127.0.0.1/32", "::1/128"]
        .into_iter()
        .map(|s| Spanned::new(0..0, s.to_string()))
        .collect()
}
fn default_ban_after() -> u32 {
    20
}
fn default_ban_s() -> u64 {
    600
}
fn default_auth_window() -> u64 {
    300
}
fn default_user_lock_after() -> u32 {
    10
}
fn default_hold_timeout() -> u64 {
    300
}
fn default_overload_tick_late() -> u64 {
    100
}
fn default_max_call_duration() -> u64 {
    4 * 3600
}
fn default_max_setup_calls() -> usize {
    200
}
fn default_session_expires() -> u64 {
    1800
}

fn default_rtp_timeout() -> Spanned<u64> {
    Spanned::new(0..0, 30)
}
fn default_jitter() -> Spanned<u32> {
    Spanned::new(0..0, 60)
}
fn default_recordings() -> String {
    "recordings".into()
}
fn default_flush() -> u64 {
    1000
}

/// The HTTP surface: health, metrics, call pages, the agent screen-pop,
/// browser callers.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Listen address; `None` when `listen = ""` turns HTTP off.
    pub listen: Option<SocketAddr>,
    /// Bearer token for `/api/*`; `VOICEGATE_ADMIN_TOKEN` overrides it. With
    /// neither, admin routes answer 403.
    pub admin_token: Option<String>,
    /// Base URL agents and browsers reach this server at (no trailing slash).
    pub public_url: String,
    /// When set, the agents' screen-pop (`/agent`, `/agent/events`) wants
    /// `?token=` with this value (`VOICEGATE_AGENT_TOKEN` overrides it).
    pub agent_token: Option<String>,
}

/// Where SIP listens.
#[derive(Debug, Clone)]
pub struct SipListen {
    /// UDP sockets.
    pub udp: Vec<SocketAddr>,
    /// TCP listeners.
    pub tcp: Vec<SocketAddr>,
    /// `User-Agent` / `Server` header value.
    pub user_agent: String,
    /// Ring this long (180) before answering; 0 answers at once.
    pub answer_delay: Duration,
    /// Failed-authentication limits: ban a source after this many failures.
    pub auth_limits: crate::sip::digest::AuthLimits,
    /// Calls at once (in set-up or up) beyond which INVITEs get 503 with
    /// `Retry-After` and OPTIONS 503 (0: no limit but the RTP port range).
    pub max_calls: usize,
    /// Calls answered but not yet confirmed by the caller's ACK (or ringing)
    /// beyond which INVITEs get 503 with `Retry-After`: a flood of INVITEs
    /// that are never ACKed holds at most this many RTP ports and tasks
    /// (0: no cap).
    pub max_setup_calls: usize,
    /// RFC 4028 session timer: the `Session-Expires` we grant a caller that
    /// supports `timer` (it refreshes; a call not refreshed in time ends).
    /// At least [`crate::sip::session_timer::MIN_SE_S`].
    pub session_expires: Duration,
    /// Per-source INVITE rate limits.
    pub rate_limits: crate::sip::pike::RateLimits,
    /// The address peers reach this node's SIP at (Via, Contact), when it is
    /// not the listening address: a node behind NAT or listening on 0.0.0.0.
    pub advertised_address: Option<IpAddr>,
    /// The port peers reach this node's SIP at, when not the listener's.
    pub advertised_port: Option<u16>,
    /// Proxies in front of this node (a Kamailio dispatcher) whose
    /// [`proxy_source_header`](Self::proxy_source_header) is believed: for
    /// their requests the trunk ACL, bans and rate limits judge the original
    /// caller's address. Anyone else's copy of that header is ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The header a trusted proxy writes the caller's source address in.
    pub proxy_source_header: String,
}

/// RTP settings.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// The address written into SDP `c=` lines.
    pub sdp_address: IpAddr,
    /// First RTP port (even).
    pub rtp_port_min: u16,
    /// Last RTP port.
    pub rtp_port_max: u16,
    /// A call with no RTP for this long is ended with BYE.
    pub rtp_timeout: Duration,
    /// A call held (sendonly, inactive, `c=0.0.0.0`) longer than this ends,
    /// RTP or not: a caller who held and vanished does not stay up for ever.
    pub hold_timeout: Duration,
    /// The longest a call may last, whatever it does; then it ends with BYE
    /// (`max_duration`). `None`: no limit (`max_call_duration_s = 0`).
    pub max_call_duration: Option<Duration>,
    /// New calls are refused (503) while the media clock has run later than
    /// this in each of the last 3 seconds (zero: never).
    pub overload_tick_late: Duration,
    /// Jitter buffer depth.
    pub jitter_buffer: Duration,
}

/// Recording settings.
#[derive(Debug, Clone)]
pub struct RecordingConfig {
    /// Root directory; calls go under `YYYY-MM-DD/<call-id>/`.
    pub dir: PathBuf,
    /// How often WAV data and headers are flushed to disk.
    pub flush_interval: Duration,
}

/// Speech recognition settings.
#[derive(Debug, Clone)]
pub struct SpeechConfig {
    /// Whether callers are transcribed at all (off: telephony and recording only).
    pub enabled: bool,
    /// ggml Whisper model file (relative to the working directory).
    pub model: PathBuf,
    /// Language code, or `auto` (multilingual models only).
    pub language: Option<String>,
    /// ASR worker threads.
    pub workers: usize,
    /// whisper.cpp threads per worker.
    pub threads_per_worker: usize,
    /// Jobs that may wait.
    pub queue: usize,
    /// Longest acceptable wait before a job counts as overload.
    pub max_latency: Duration,
    /// Silence that ends an utterance.
    pub vad_hangover: Duration,
    /// Voiced time below which a segment is not sent to Whisper.
    pub vad_min_voiced: Duration,
    /// Silence after which the final transcription starts, before the
    /// hangover ends (zero: at the end of the hangover).
    pub vad_early: Duration,
    /// Longest utterance before a forced cut.
    pub max_utterance: Duration,
    /// Interval between partial results of a long utterance.
    pub partial_interval: Duration,
    /// The most audio a partial result decodes: the latest stretch of the
    /// utterance (`None`: all of it).
    pub partial_window: Option<Duration>,
    /// A multilingual Whisper model for callers in other languages than
    /// English when `model` is English-only (`None`: no such callers).
    pub multilingual_model: Option<PathBuf>,
    /// The sentence encoder behind semantic intents (`None`: keywords only).
    pub encoder: Option<PathBuf>,
}

impl SpeechConfig {
    /// The Whisper recogniser these settings name (`model`, `language`), with
    /// `threads` threads: how every command builds one (the live pool's
    /// workers add the multilingual model and per-call languages).
    pub fn recognizer(
        &self,
        threads: usize,
    ) -> Result<crate::speech::asr::Recognizer, crate::speech::asr::AsrError> {
        let model = crate::speech::asr::WhisperModel::load(&self.model)?;
        crate::speech::asr::Recognizer::new(&model, threads, self.language.as_deref())
    }

    /// The voice activity detector these settings describe — the same for a
    /// live call and its offline replay.
    pub fn vad(&self) -> crate::speech::vad::VadConfig {
        crate::speech::vad::VadConfig {
            hangover: self.vad_hangover,
            min_voiced: self.vad_min_voiced,
            early_after: self.vad_early,
            max_utterance: self.max_utterance,
            ..crate::speech::vad::VadConfig::default()
        }
    }
}

/// Validated `gateway.toml`.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// SIP listeners.
    pub sip: SipListen,
    /// RTP.
    pub media: MediaConfig,
    /// Recordings.
    pub recording: RecordingConfig,
    /// The greeting prompt, resolved against the config directory.
    pub greeting: PathBuf,
    /// The HTTP surface.
    pub http: HttpConfig,
    /// On SIGTERM, how long calls in progress may go on before they end with BYE.
    pub shutdown_grace: Duration,
    /// Speech recognition.
    pub speech: SpeechConfig,
}

pub(super) fn parse(
    dir: &Path,
    path: &Path,
    text: &str,
    problems: &mut Vec<Diagnostic>,
) -> Option<GatewayConfig> {
    let src = SourceFile::new(path, text);
    let file: File = match toml::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            problems.push(src.from_toml_error(&e));
            return None;
        }
    };
    let before = problems.len();
    let mut nets = |list: &[Spanned<String>], key: &str| -> Vec<ipnet::IpNet> {
        list.iter()
            .filter_map(|a| {
                let text = a.get_ref();
                match text
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(ipnet::IpNet::from))
                {
                    Ok(n) => Some(n),
                    Err(_) => {
                        problems.push(src.at(
                            Some(a.span()),
                            format!("bad sip.{key} entry {text:?}"),
                            "write an address or a network, e.g. \"10.0.0.5\" or \"10.0.0.0/24\"",
                        ));
                        None
                    }
                }
            })
            .collect()
    };
    let rate_exempt = nets(&file.sip.rate_exempt, "rate_exempt");
    let trusted_proxies = nets(&file.sip.trusted_proxies, "trusted_proxies");
    let advertised_address = match &file.sip.advertised_address {
        None => None,
        Some(a) => match a.get_ref().parse::<IpAddr>() {
            Ok(ip) if !ip.is_unspecified() => Some(ip),
            _ => {
                problems.push(src.at(
                    Some(a.span()),
                    format!("bad sip.advertised_address {:?}", a.get_ref()),
                    "write the IP address peers reach this node at, e.g. \"203.0.113.10\"",
                ));
                None
            }
        },
    };
    let proxy_source_header = file.sip.proxy_source_header.get_ref().trim().to_string();
    if proxy_source_header.is_empty()
        || !proxy_source_header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        problems.push(src.at(
            Some(file.sip.proxy_source_header.span()),
            format!("bad sip.proxy_source_header {proxy_source_header:?}"),
            "write a SIP header name, e.g. \"X-Forwarded-For\"",
        ));
    }
    let mut addrs = |list: &[Spanned<String>], what: &str| -> Vec<SocketAddr> {
        list.iter()
            .filter_map(|a| match a.get_ref().parse::<SocketAddr>() {
                Ok(s) => Some(s),
                Err(_) => {
                    problems.push(src.at(
                        Some(a.span()),
                        format!("bad {what} listen address {:?}", a.get_ref()),
                        "write IP:PORT, e.g. \"127.0.0.1:5060\" or \"[::1]:5060\"",
                    ));
                    None
                }
            })
            .collect()
    };
    let udp = addrs(&file.sip.udp, "sip.udp");
    let tcp = addrs(&file.sip.tcp, "sip.tcp");
    if file.sip.udp.is_empty() && file.sip.tcp.is_empty() {
        problems.push(src.at(
            None,
            "no SIP listen address",
            "add [sip] udp = [\"127.0.0.1:5060\"] (and/or tcp)",
        ));
    }
    let m = &file.media;
    let sdp_address = match m.sdp_address.get_ref().parse::<IpAddr>() {
        Ok(ip) => Some(ip),
        Err(_) => {
            problems.push(src.at(
                Some(m.sdp_address.span()),
                format!("bad media.sdp_address {:?}", m.sdp_address.get_ref()),
                "give the IP address callers should send RTP to, e.g. \"127.0.0.1\"",
            ));
            None
        }
    };
    let (lo, hi) = (*m.rtp_port_min.get_ref(), *m.rtp_port_max.get_ref());
    if lo >= hi || hi - lo < 2 {
        problems.push(src.at(
            Some(m.rtp_port_min.span()),
            format!("RTP port range {lo}-{hi} is empty or inverted"),
            "set rtp_port_min below rtp_port_max with room for at least one call",
        ));
    } else if lo % 2 != 0 {
        problems.push(src.at(
            Some(m.rtp_port_min.span()),
            format!("rtp_port_min {lo} is odd"),
            "RTP uses even ports: make rtp_port_min even",
        ));
    }
    for sip in udp.iter().chain(tcp.iter()) {
        if (lo..=hi).contains(&sip.port()) {
            problems.push(src.at(
                Some(m.rtp_port_min.span()),
                format!(
                    "RTP port range {lo}-{hi} overlaps the SIP port {}",
                    sip.port()
                ),
                "move the RTP range or the SIP listener so they do not overlap",
            ));
        }
    }
    if *m.rtp_timeout_s.get_ref() == 0 {
        problems.push(src.at(
            Some(m.rtp_timeout_s.span()),
            "rtp_timeout_s is 0",
            "give the seconds without RTP after which a dead call ends (default 30)",
        ));
    }
    let jb = *m.jitter_buffer_ms.get_ref();
    if !(20..=500).contains(&jb) {
        problems.push(src.at(
            Some(m.jitter_buffer_ms.span()),
            format!("jitter_buffer_ms {jb} is out of range"),
            "use 20 to 500 ms (default 60)",
        ));
    }
    let greeting = dir.join(file.prompts.greeting.get_ref());
    if let Err(e) = hound::WavReader::open(&greeting) {
        problems.push(src.at(
            Some(file.prompts.greeting.span()),
            format!("prompt file {} cannot be used: {e}", greeting.display()),
            "point prompts.greeting at a readable WAV file (path relative to the config directory)",
        ));
    }
    let sp = &file.speech;
    let model = PathBuf::from(sp.model.get_ref());
    if sp.enabled && !model.is_file() {
        problems.push(src.at(
            Some(sp.model.span()),
            format!("Whisper model {} not found", model.display()),
            "run `voicegate models install` (make run does), or name an installed ggml model",
        ));
    }
    let hangover = *sp.vad_hangover_ms.get_ref();
    if !(200..=3000).contains(&hangover) {
        problems.push(src.at(
            Some(sp.vad_hangover_ms.span()),
            format!("vad_hangover_ms {hangover} is out of range"),
            "use 200 to 3000 ms (default 600)",
        ));
    }
    let min_voiced = *sp.vad_min_voiced_ms.get_ref();
    if min_voiced > 1000 {
        problems.push(src.at(
            Some(sp.vad_min_voiced_ms.span()),
            format!("vad_min_voiced_ms {min_voiced} is out of range"),
            "use 0 to 1000 ms (default 150; 0 sends every segment to Whisper)",
        ));
    }
    let early = *sp.vad_early_ms.get_ref();
    if early != 0 && !(250..hangover.max(251)).contains(&early) {
        problems.push(src.at(
            Some(sp.vad_early_ms.span()),
            format!("vad_early_ms {early} is out of range"),
            format!(
                "use 0 (off) or 250 to {} ms, less than vad_hangover_ms (default 400)",
                hangover.saturating_sub(1).max(250)
            ),
        ));
    }
    let http = parse_http(&src, &file.http, problems);
    let grace = *file.shutdown.grace_s.get_ref();
    if grace > 3600 {
        problems.push(src.at(
            Some(file.shutdown.grace_s.span()),
            format!("shutdown.grace_s {grace} is out of range"),
            "use 0 to 3600 seconds (default 30)",
        ));
    }
    if problems.len() > before {
        return None;
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let speech = SpeechConfig {
        enabled: sp.enabled,
        model,
        language: (sp.language != "auto").then(|| sp.language.clone()),
        workers: if sp.workers == 0 {
            (cores / sp.threads_per_worker.max(1)).max(1)
        } else {
            sp.workers
        },
        threads_per_worker: sp.threads_per_worker.max(1),
        queue: sp.queue.max(1),
        max_latency: Duration::from_millis(sp.max_latency_ms.max(100)),
        vad_hangover: Duration::from_millis(hangover),
        vad_min_voiced: Duration::from_millis(min_voiced),
        vad_early: Duration::from_millis(early),
        max_utterance: Duration::from_secs(sp.max_utterance_s.clamp(2, 30)),
        partial_interval: Duration::from_millis(sp.partial_interval_ms.max(250)),
        partial_window: (sp.partial_window_ms > 0)
            .then(|| Duration::from_millis(sp.partial_window_ms.max(1000))),
        multilingual_model: (!sp.multilingual_model.is_empty())
            .then(|| PathBuf::from(&sp.multilingual_model)),
        encoder: (!sp.encoder.is_empty()).then(|| PathBuf::from(&sp.encoder)),
    };
    Some(GatewayConfig {
        sip: SipListen {
            udp,
            tcp,
            user_agent: file.sip.user_agent,
            answer_delay: Duration::from_millis(file.sip.answer_delay_ms.min(60_000)),
            auth_limits: crate::sip::digest::AuthLimits {
                ban_after: file.sip.auth_ban_after,
                ban_s: file.sip.auth_ban_s,
                window_s: file.sip.auth_window_s.max(1),
                user_lock_after: file.sip.auth_user_lock_after,
            },
            max_calls: file.sip.max_calls,
            max_setup_calls: file.sip.max_setup_calls,
            session_expires: Duration::from_secs(
                file.sip
                    .session_expires_s
                    .max(crate::sip::session_timer::MIN_SE_S),
            ),
            rate_limits: crate::sip::pike::RateLimits {
                rate: file.sip.invite_rate.max(0.0),
                burst: file.sip.invite_burst.max(1.0),
                exempt: rate_exempt,
            },
            advertised_address,
            advertised_port: file.sip.advertised_port.filter(|p| *p != 0),
            trusted_proxies,
            proxy_source_header,
        },
        media: MediaConfig {
            sdp_address: sdp_address?,
            rtp_port_min: lo,
            rtp_port_max: hi,
            rtp_timeout: Duration::from_secs(*m.rtp_timeout_s.get_ref()),
            hold_timeout: Duration::from_secs(m.hold_timeout_s.max(1)),
            overload_tick_late: Duration::from_millis(m.overload_tick_late_ms),
            max_call_duration: (m.max_call_duration_s > 0)
                .then(|| Duration::from_secs(m.max_call_duration_s)),
            jitter_buffer: Duration::from_millis(u64::from(jb)),
        },
        recording: RecordingConfig {
            dir: PathBuf::from(file.recording.dir),
            flush_interval: Duration::from_millis(file.recording.flush_interval_ms.max(100)),
        },
        greeting,
        speech,
        http: http?,
        shutdown_grace: Duration::from_secs(grace),
    })
}

/// The admin token `sip-config/gateway.toml` ships with.
const SHIPPED_TOKEN: &str = "change-me-now";

fn parse_http(
    src: &SourceFile,
    http: &HttpSection,
    problems: &mut Vec<Diagnostic>,
) -> Option<HttpConfig> {
    let listen = match http.listen.get_ref().trim() {
        "" => None,
        text => match text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                problems.push(src.at(
                    Some(http.listen.span()),
                    format!("bad http.listen address {text:?}"),
                    "write IP:PORT, e.g. \"127.0.0.1:8080\", or \"\" to turn HTTP off",
                ));
                return None;
            }
        },
    };
    let token = std::env::var("VOICEGATE_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| http.admin_token.as_ref().map(|t| t.get_ref().clone()));
    if let (Some(t), Some(span)) = (&token, http.admin_token.as_ref().map(|t| t.span())) {
        if t.len() < 8 || t.chars().any(char::is_whitespace) {
            problems.push(src.at(
                Some(span),
                "http.admin_token is too short or has spaces",
                "use at least 8 characters without spaces (or set VOICEGATE_ADMIN_TOKEN)",
            ));
            return None;
        }
    }
    // The shipped token is public: fine on loopback, never elsewhere.
    if let (Some(addr), Some(t)) = (listen, &http.admin_token) {
        if !addr.ip().is_loopback()
            && t.get_ref() == SHIPPED_TOKEN
            && token.as_deref() == Some(SHIPPED_TOKEN)
        {
            problems.push(src.at(
                Some(t.span()),
                format!("http.listen {addr} is reachable from other hosts with the shipped admin_token"),
                "set your own http.admin_token (or VOICEGATE_ADMIN_TOKEN) before listening beyond loopback",
            ));
            return None;
        }
    }
    let public_url = match &http.public_url {
        Some(u) => {
            let text = u.get_ref().trim_end_matches('/');
            if !(text.starts_with("http://") || text.starts_with("https://")) {
                problems.push(src.at(
                    Some(u.span()),
                    format!("http.public_url {:?} is not an http(s) URL", u.get_ref()),
                    "give the base URL agents reach this server at, e.g. \"http://10.0.0.5:8080\"",
                ));
                return None;
            }
            text.to_string()
        }
        None => format!(
            "http://{}",
            listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)))
        ),
    };
    let agent_token = std::env::var("VOICEGATE_AGENT_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| http.agent_token.as_ref().map(|t| t.get_ref().clone()));
    if let Some(t) = &http.agent_token {
        let v = t.get_ref();
        if v.len() < 8
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c))
        {
            problems.push(src.at(
                Some(t.span()),
                "http.agent_token is too short or has characters a URL would mangle",
                "use at least 8 letters, digits, - _ . or ~ (it travels as ?token= in the page's URL)",
            ));
            return None;
        }
    }
    Some(HttpConfig {
        listen,
        admin_token: token,
        public_url,
        agent_token,
    })
}
