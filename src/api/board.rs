//! The call board: what the HTTP surface shows about calls. Live calls and
//! the most recent finished ones, built from the very events each call writes
//! to its `events.jsonl` (one source of truth), plus the Prometheus metrics
//! and the agents' screen-pop feed derived from them.
//!
//! Plain data and a mutex: no sockets, no clock (times come with the events).

use crate::call::core::DecisionKind;
use crate::call::CallEvent;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

/// How many finished calls `/api/calls` keeps.
const RECENT: usize = 200;
/// Of those, how many may be calls that never connected (cancelled while
/// ringing, never ACKed).
const RECENT_NEVER_CONNECTED: usize = 20;

/// One call as the board shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CallView {
    /// The call's id (SIP Call-ID, or the browser session's id).
    pub id: String,
    /// Unguessable key that opens the call's page without the admin token.
    #[serde(skip)]
    pub key: String,
    /// "sip" or "webrtc".
    pub channel: &'static str,
    /// Caller ID (user part of From), when known.
    pub from: String,
    /// Dialled number.
    pub to: String,
    /// Trunk the call came in on.
    pub trunk: String,
    /// When the call arrived, Unix ms.
    pub started_unix_ms: i64,
    /// "ringing", "bot", "handing_over", "bridged" or "ended".
    pub state: &'static str,
    /// The hand-over reason, once decided.
    pub handover_reason: Option<String>,
    /// The agent's extension being rung or bridged.
    pub agent: Option<String>,
    /// The summary given to the agent.
    pub summary: Option<Value>,
    /// What caller and bot said: `{speaker, at_s, text}`.
    pub transcript: Vec<Value>,
    /// The decision core's decisions, as logged.
    pub decisions: Vec<Value>,
    /// "transferred", "bot_resolved" or "caller_hung_up" once ended.
    pub outcome: Option<&'static str>,
    /// Why the call ended.
    pub ended_reason: Option<String>,
    /// Seconds from answer to the end.
    pub duration_s: Option<f64>,
    #[serde(skip)]
    recognised_intent: bool,
    /// The call ended before it was confirmed (a caller who cancelled while
    /// it rang, an INVITE never ACKed — a scanner's flood).
    #[serde(skip)]
    never_connected: bool,
}

/// A screen-pop update for one extension.
#[derive(Debug, Clone)]
pub struct AgentPop {
    /// The extension the call is handed to.
    pub ext: String,
    /// The call as the agent should see it now.
    pub call: Value,
}

/// What the running gateway reports at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Utterances waiting for a Whisper worker.
    pub asr_queue: usize,
    /// Calls admitted and not yet confirmed by an ACK.
    pub calls_setting_up: usize,
    /// SIP transactions the stack is running (each ends with its exchange,
    /// an answered INVITE's with its call: a number that only grows is a leak).
    pub sip_transactions: usize,
    /// SIP dialogs the stack holds.
    pub sip_dialogs: usize,
    /// Descriptors open now.
    pub fds_open: Option<u64>,
    /// The descriptor limit in force.
    pub fd_limit: Option<u64>,
    /// Sources banned now for failed authentications.
    pub banned_sources: usize,
    /// The latest any call's media tick ran in the last full second.
    pub media_tick_late: std::time::Duration,
    /// Every media tick's lateness since start.
    pub media_tick_histogram: crate::media::load::LatenessHistogram,
}

/// `voicegate_media_tick_lateness_distribution_seconds`, in the text format,
/// from the media clock's own lock-free counters (a registry histogram would
/// take a lock on every call's every tick).
fn tick_histogram_text(h: &crate::media::load::LatenessHistogram) -> String {
    use std::fmt::Write;
    let name = "voicegate_media_tick_lateness_distribution_seconds";
    let mut out = format!(
        "# HELP {name} How late each call's 20 ms media tick ran, every tick since start.\n\
         # TYPE {name} histogram\n"
    );
    let bounds = crate::media::load::LATENESS_BUCKETS_US;
    for (i, count) in h.cumulative.iter().enumerate() {
        let le = bounds
            .get(i)
            .map_or_else(|| "+Inf".to_string(), |us| format!("{}", *us as f64 / 1e6));
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_sum {}", h.sum_us as f64 / 1e6);
    let _ = writeln!(
        out,
        "{name}_count {}",
        h.cumulative.last().copied().unwrap_or(0)
    );
    out
}

struct Metrics {
    registry: Registry,
    active: Gauge,
    calls: Family<Vec<(String, String)>, Counter>,
    never_connected: Family<Vec<(String, String)>, Counter>,
    handovers: Family<Vec<(String, String)>, Counter>,
    wait: Histogram,
    asr_latency: Histogram,
    asr_queue_wait: Histogram,
    asr_decode: Histogram,
    asr_stage: HistogramFamily,
    asr_queue: Gauge,
    setting_up: Gauge,
    sip_transactions: Gauge,
    sip_dialogs: Gauge,
    fds_open: Gauge,
    fd_limit: Gauge,
    banned_sources: Gauge,
    tick_late: Gauge<f64, std::sync::atomic::AtomicU64>,
    rtp_received: Counter,
    rtp_lost: Counter,
    rtp_late: Counter,
    rtp_jitter_hold: Histogram,
    registrations: Family<Vec<(String, String)>, Gauge>,
    rejections: Family<Vec<(String, String)>, Counter>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("voicegate");
        let active = Gauge::default();
        registry.register("active_calls", "Calls in progress", active.clone());
        let calls = Family::default();
        registry.register(
            "calls",
            "Finished calls by outcome (transferred, bot_resolved, caller_hung_up)",
            calls.clone(),
        );
        let never_connected = Family::default();
        registry.register(
            "calls_never_connected",
            "Calls that ended before the caller confirmed them, by reason (caller_cancel, no_ack, …): not in voicegate_calls",
            never_connected.clone(),
        );
        let handovers = Family::default();
        registry.register(
            "handovers",
            "Hand-overs to a human by reason",
            handovers.clone(),
        );
        let wait = Histogram::new([1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0]);
        registry.register(
            "wait_before_handover_seconds",
            "From answer until a human is on the line",
            wait.clone(),
        );
        let asr_latency = Histogram::new([0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 3.0, 5.0]);
        registry.register(
            "asr_latency_seconds",
            "End of utterance to final transcript",
            asr_latency.clone(),
        );
        let asr_queue_wait = Histogram::new([0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 5.0]);
        registry.register(
            "asr_queue_wait_seconds",
            "End of utterance to a worker taking it (final transcripts)",
            asr_queue_wait.clone(),
        );
        let asr_decode = Histogram::new([0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 3.0]);
        registry.register(
            "asr_decode_seconds",
            "Whisper's time on one final utterance (mel, encoder, decoder) plus its embedding",
            asr_decode.clone(),
        );
        let asr_stage: HistogramFamily = Family::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0])
        });
        registry.register(
            "asr_stage_seconds",
            "Whisper's time on one final utterance by stage: mel, encoder, decoder (queue: asr_queue_wait_seconds)",
            asr_stage.clone(),
        );
        let asr_queue = Gauge::default();
        registry.register(
            "asr_queue_depth",
            "Utterances waiting for a Whisper worker",
            asr_queue.clone(),
        );
        let sip_transactions = Gauge::default();
        registry.register(
            "sip_transactions",
            "SIP transactions running in the stack (an answered INVITE's ends with its call)",
            sip_transactions.clone(),
        );
        let sip_dialogs = Gauge::default();
        registry.register(
            "sip_dialogs",
            "SIP dialogs held by the stack",
            sip_dialogs.clone(),
        );
        let setting_up = Gauge::default();
        registry.register(
            "calls_setting_up",
            "Half-open calls: answered or ringing, not yet confirmed by the caller's ACK",
            setting_up.clone(),
        );
        let fds_open = Gauge::default();
        registry.register(
            "open_fds",
            "File descriptors the process has open",
            fds_open.clone(),
        );
        let fd_limit = Gauge::default();
        registry.register(
            "max_fds",
            "The process's file descriptor limit (soft, after raising it to the hard limit)",
            fd_limit.clone(),
        );
        let banned_sources = Gauge::default();
        registry.register(
            "banned_sources",
            "Sources banned now for failed authentications",
            banned_sources.clone(),
        );
        let tick_late = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "media_tick_lateness_seconds",
            "The latest any call's 20 ms media tick ran in the last full second (admission refuses new calls while it stays above [media] overload_tick_late_ms)",
            tick_late.clone(),
        );
        let rtp_received = Counter::default();
        registry.register(
            "rtp_packets_received",
            "Caller RTP packets received (finished calls)",
            rtp_received.clone(),
        );
        let rtp_lost = Counter::default();
        registry.register(
            "rtp_packets_lost",
            "Caller RTP packets never received (finished calls)",
            rtp_lost.clone(),
        );
        let rtp_late = Counter::default();
        registry.register(
            "rtp_packets_late",
            "Caller RTP packets that arrived after their playout time: jitter beyond the buffer (finished calls)",
            rtp_late.clone(),
        );
        let rtp_jitter_hold = Histogram::new([0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.2]);
        registry.register(
            "rtp_jitter_buffer_hold_seconds",
            "Mean time caller packets waited in the jitter buffer, per finished call",
            rtp_jitter_hold.clone(),
        );
        let registrations = Family::default();
        registry.register(
            "registrations",
            "Trunk registrations (1 registered, 0 not)",
            registrations.clone(),
        );
        let rejections = Family::default();
        registry.register(
            "sip_rejections",
            "INVITEs refused, by cause (acl, auth, banned, rate, max_calls, setup_limit, media_late, draining, fds, no_rtp_port, bad_sdp)",
            rejections.clone(),
        );
        Self {
            registry,
            rejections,
            active,
            calls,
            never_connected,
            handovers,
            wait,
            asr_latency,
            asr_queue_wait,
            asr_decode,
            asr_stage,
            asr_queue,
            setting_up,
            sip_transactions,
            sip_dialogs,
            fds_open,
            fd_limit,
            banned_sources,
            tick_late,
            rtp_received,
            rtp_lost,
            rtp_late,
            rtp_jitter_hold,
            registrations,
        }
    }
}

/// Histograms by label set, all with the same buckets.
type HistogramFamily = Family<Vec<(String, String)>, Histogram, fn() -> Histogram>;

#[derive(Default)]
struct Calls {
    live: HashMap<String, CallView>,
    recent: VecDeque<CallView>,
}

/// Live and recent calls, metrics, screen-pops. Cheap to clone (shared).
#[derive(Clone)]
pub struct CallBoard {
    calls: Arc<Mutex<Calls>>,
    metrics: Arc<Metrics>,
    pops: broadcast::Sender<AgentPop>,
}

impl Default for CallBoard {
    fn default() -> Self {
        Self::new()
    }
}

impl CallBoard {
    /// An empty board.
    pub fn new() -> Self {
        Self {
            calls: Arc::default(),
            metrics: Arc::new(Metrics::new()),
            pops: broadcast::channel(256).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Calls> {
        // A panic elsewhere never takes the board down with it.
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A call arrived. Returns the key that opens its page.
    pub fn open(
        &self,
        id: &str,
        channel: &'static str,
        from: &str,
        to: &str,
        trunk: &str,
        started_unix_ms: i64,
    ) -> String {
        let key = hex::encode(rand::random::<[u8; 16]>());
        let view = CallView {
            id: id.to_string(),
            key: key.clone(),
            channel,
            from: from.to_string(),
            to: to.to_string(),
            trunk: trunk.to_string(),
            started_unix_ms,
            state: "ringing",
            handover_reason: None,
            agent: None,
            summary: None,
            transcript: Vec::new(),
            decisions: Vec::new(),
            outcome: None,
            ended_reason: None,
            duration_s: None,
            recognised_intent: false,
            never_connected: false,
        };
        let mut calls = self.lock();
        if calls.live.insert(id.to_string(), view).is_none() {
            self.metrics.active.inc();
        }
        key
    }

    /// One event of a call, exactly as written to its `events.jsonl`.
    pub fn event(&self, id: &str, at_s: f64, event: &CallEvent) {
        let mut calls = self.lock();
        let Some(call) = calls.live.get_mut(id) else {
            return;
        };
        let mut pop = false;
        match event {
            CallEvent::Answered(_) => call.state = "bot",
            CallEvent::Utterance(u) => {
                let text = u.result.text.trim();
                if !text.is_empty() {
                    call.transcript.push(json!({
                        "speaker": "caller",
                        "at_s": u.result.start_s,
                        "text": text,
                    }));
                    pop = call.agent.is_some();
                }
                let m = &self.metrics;
                m.asr_queue_wait.observe(u.queue_ms as f64 / 1000.0);
                m.asr_decode.observe(u.decode_ms as f64 / 1000.0);
                for (stage, ms) in [
                    ("mel", u.mel_ms),
                    ("encoder", u.encoder_ms),
                    ("decoder", u.decoder_ms),
                ] {
                    if let Some(ms) = ms {
                        m.asr_stage
                            .get_or_create(&vec![("stage".into(), stage.into())])
                            .observe(ms / 1000.0);
                    }
                }
                m.asr_latency.observe(u.latency_ms as f64 / 1000.0);
            }
            CallEvent::BotSay { text } => call.transcript.push(json!({
                "speaker": "bot",
                "at_s": at_s,
                "text": text,
            })),
            CallEvent::Decision(d) => {
                if d.decision == DecisionKind::Intent {
                    call.recognised_intent = true;
                }
                call.decisions
                    .push(serde_json::to_value(d).unwrap_or_default());
            }
            CallEvent::Handover(h) => {
                self.metrics
                    .handovers
                    .get_or_create(&vec![("reason".into(), h.reason.clone())])
                    .inc();
                call.handover_reason = Some(h.reason.clone());
                call.summary = Some(h.summary.clone());
                call.state = "handing_over";
            }
            CallEvent::TransferDial { uri, .. } => {
                call.agent = Some(extension(uri));
                pop = true;
            }
            CallEvent::TransferBridged { uri, .. } => {
                call.state = "bridged";
                call.agent = Some(extension(uri));
                self.metrics.wait.observe(at_s);
                pop = true;
            }
            CallEvent::TransferAbandoned { .. } | CallEvent::TransferFailed { .. } => {
                if call.state == "handing_over" {
                    call.state = "bot";
                }
                pop = call.agent.is_some();
            }
            CallEvent::Ended(ended) => {
                call.state = "ended";
                call.never_connected = ended.answered == Some(false);
                call.ended_reason = Some(ended.reason.clone());
                call.duration_s = ended.duration_s;
                let jitter = ended.media.as_ref().map_or(&Value::Null, |m| &m["jitter"]);
                if let Some(n) = jitter["received"].as_u64() {
                    self.metrics.rtp_received.inc_by(n);
                }
                if let Some(n) = jitter["lost"].as_u64() {
                    self.metrics.rtp_lost.inc_by(n);
                }
                if let Some(n) = jitter["late"].as_u64() {
                    self.metrics.rtp_late.inc_by(n);
                }
                let (queued, played) = (jitter["queued_sum"].as_u64(), jitter["played"].as_u64());
                if let (Some(q), Some(p)) = (queued, played.filter(|p| *p > 0)) {
                    // Each queued frame is 20 ms of hold.
                    self.metrics
                        .rtp_jitter_hold
                        .observe(q as f64 * 0.020 / p as f64);
                }
                pop = call.agent.is_some();
            }
            _ => {}
        }
        if pop {
            if let Some(ext) = &call.agent {
                let _ = self.pops.send(AgentPop {
                    ext: ext.clone(),
                    call: call_json(call, true),
                });
            }
        }
    }

    /// The call is over: it moves to the recent list and is counted.
    pub fn close(&self, id: &str) {
        let mut calls = self.lock();
        let Some(mut call) = calls.live.remove(id) else {
            return;
        };
        self.metrics.active.dec();
        call.state = "ended";
        if call.never_connected {
            // Not a call anyone had: counted apart, so a flood of INVITEs
            // neither dilutes the outcome shares nor pushes the calls people
            // had off the recent list (at most RECENT_NEVER_CONNECTED kept).
            let reason = call.ended_reason.clone().unwrap_or_default();
            self.metrics
                .never_connected
                .get_or_create(&vec![("reason".into(), reason)])
                .inc();
            let kept = calls.recent.iter().filter(|c| c.never_connected).count();
            if kept >= RECENT_NEVER_CONNECTED {
                if let Some(oldest) = calls.recent.iter().rposition(|c| c.never_connected) {
                    calls.recent.remove(oldest);
                }
            }
        } else {
            let outcome =
                crate::call::outcome(call.handover_reason.is_some(), call.recognised_intent);
            call.outcome = Some(outcome);
            self.metrics
                .calls
                .get_or_create(&vec![("outcome".into(), outcome.into())])
                .inc();
        }
        calls.recent.push_front(call);
        calls.recent.truncate(RECENT);
        if calls.live.is_empty() && calls.live.capacity() > 1024 {
            // After a burst, give the table's memory back.
            calls.live.shrink_to_fit();
        }
    }

    /// Live calls first, then recent ones, newest first.
    pub fn list(&self) -> Vec<Value> {
        let calls = self.lock();
        let mut live: Vec<&CallView> = calls.live.values().collect();
        live.sort_by_key(|c| std::cmp::Reverse(c.started_unix_ms));
        live.into_iter()
            .chain(calls.recent.iter())
            .map(|c| call_json(c, false))
            .collect()
    }

    /// One call, live or recent, with its key.
    pub fn get(&self, id: &str) -> Option<(CallView, Value)> {
        let calls = self.lock();
        let c = calls
            .live
            .get(id)
            .or_else(|| calls.recent.iter().find(|c| c.id == id))?;
        Some((c.clone(), call_json(c, true)))
    }

    /// The key of a live call (for its page link).
    pub fn key(&self, id: &str) -> Option<String> {
        self.lock().live.get(id).map(|c| c.key.clone())
    }

    /// Calls handed to `ext` that are still going on (for a screen-pop opened late).
    pub fn for_extension(&self, ext: &str) -> Vec<Value> {
        self.lock()
            .live
            .values()
            .filter(|c| c.agent.as_deref() == Some(ext))
            .map(|c| call_json(c, true))
            .collect()
    }

    /// Screen-pop updates, for every extension.
    pub fn subscribe(&self) -> broadcast::Receiver<AgentPop> {
        self.pops.subscribe()
    }

    /// An INVITE was refused for `cause` (`acl`, `auth`, `banned`, …).
    pub fn rejected(&self, cause: &str) {
        self.metrics
            .rejections
            .get_or_create(&vec![("cause".into(), cause.into())])
            .inc();
    }

    /// A trunk registered (`true`) or lost its registration.
    pub fn registration(&self, trunk: &str, registered: bool) {
        self.metrics
            .registrations
            .get_or_create(&vec![("trunk".into(), trunk.into())])
            .set(i64::from(registered));
    }

    /// Prometheus text exposition, with `gauges` read at scrape time.
    pub fn metrics_text(&self, gauges: &Gauges) -> String {
        let int = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let m = &self.metrics;
        m.asr_queue.set(int(gauges.asr_queue));
        m.setting_up.set(int(gauges.calls_setting_up));
        m.sip_transactions.set(int(gauges.sip_transactions));
        m.sip_dialogs.set(int(gauges.sip_dialogs));
        m.banned_sources.set(int(gauges.banned_sources));
        m.tick_late.set(gauges.media_tick_late.as_secs_f64());
        if let Some(n) = gauges.fds_open {
            m.fds_open.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        if let Some(n) = gauges.fd_limit {
            m.fd_limit.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        if encode(&mut out, &self.metrics.registry).is_err() {
            out.clear();
        }
        let histogram = tick_histogram_text(&gauges.media_tick_histogram);
        match out.rfind("# EOF") {
            Some(at) => out.insert_str(at, &histogram),
            None => out.push_str(&histogram),
        }
        out
    }
}

/// `sip:1001@pbx;transport=udp` → `1001`.
fn extension(uri: &str) -> String {
    let rest = uri
        .strip_prefix("sips:")
        .or_else(|| uri.strip_prefix("sip:"))
        .unwrap_or(uri);
    rest.split(['@', ';', '>'])
        .next()
        .unwrap_or(rest)
        .to_string()
}

fn call_json(c: &CallView, with_details: bool) -> Value {
    let mut v = serde_json::to_value(c).unwrap_or_else(|_| json!({}));
    if !with_details {
        if let Some(o) = v.as_object_mut() {
            o.remove("transcript");
            o.remove("decisions");
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event as `events.jsonl` has it.
    fn ev(kind: &str, mut fields: Value) -> CallEvent {
        fields["kind"] = json!(kind);
        serde_json::from_value(fields).expect("a known event")
    }

    #[test]
    fn a_flood_of_never_connected_calls_keeps_the_real_calls_on_the_board_and_out_of_the_outcomes()
    {
        let board = CallBoard::new();
        for i in 0..5 {
            let id = format!("real{i}");
            board.open(&id, "sip", "555", "100", "local", i);
            board.event(&id, 0.0, &ev("call.answered", json!({})));
            board.event(&id, 9.0, &ev("call.ended", json!({"reason": "caller_bye"})));
            board.close(&id);
        }
        // A caller who cancels while it rings, then a scanner's flood.
        board.open("cancel", "sip", "556", "100", "local", 10);
        board.event(
            "cancel",
            1.0,
            &ev(
                "call.ended",
                json!({"reason": "caller_cancel", "answered": false}),
            ),
        );
        board.close("cancel");
        for i in 0..300 {
            let id = format!("scan{i}");
            board.open(&id, "sip", "scanner", "100", "local", 100 + i);
            board.event(
                &id,
                32.0,
                &ev("call.ended", json!({"reason": "no_ack", "answered": false})),
            );
            board.close(&id);
        }
        let list = board.list();
        let ids: Vec<&str> = list.iter().filter_map(|c| c["id"].as_str()).collect();
        for i in 0..5 {
            assert!(
                ids.contains(&format!("real{i}").as_str()),
                "real{i} kept: {ids:?}"
            );
        }
        assert_eq!(list.len(), 5 + RECENT_NEVER_CONNECTED, "{ids:?}");
        assert_eq!(ids[0], "scan299", "newest first");
        assert!(list.iter().all(|c| c["state"] == "ended"));
        let m = board.metrics_text(&Gauges::default());
        assert!(
            m.contains("voicegate_calls_total{outcome=\"caller_hung_up\"} 5\n"),
            "{m}"
        );
        assert!(
            m.contains("voicegate_calls_never_connected_total{reason=\"no_ack\"} 300\n"),
            "{m}"
        );
        assert!(
            m.contains("voicegate_calls_never_connected_total{reason=\"caller_cancel\"} 1\n"),
            "{m}"
        );
        assert!(m.contains("voicegate_active_calls 0"), "{m}");
    }

    #[test]
    fn a_call_goes_from_live_to_recent_with_its_outcome_and_metrics() {
        let board = CallBoard::new();
        let key = board.open("c1", "sip", "555", "100", "local", 1);
        assert_eq!(key.len(), 32);
        board.event("c1", 0.0, &ev("call.answered", json!({})));
        board.event("c1", 3.0, &ev("utterance", json!({"text": "this is ridiculous", "start_s": 1.5, "latency_ms": 180, "queue_ms": 30, "decode_ms": 150,
                    "mel_ms": 6.5, "encoder_ms": 60.0, "decoder_ms": 80.0})));
        board.event(
            "c1",
            3.1,
            &ev(
                "handover",
                json!({"reason": "frustration", "summary": {"text": "upset"}}),
            ),
        );
        let mut pops = board.subscribe();
        board.event("c1", 3.2, &ev("transfer.dial", json!({"leg": 1, "uri": "sip:1001@127.0.0.1:5070", "group": "support", "ring_timeout_s": 20.0})));
        let pop = pops.try_recv().expect("a screen-pop for the extension");
        assert_eq!(pop.ext, "1001");
        assert_eq!(pop.call["summary"]["text"], "upset");
        assert_eq!(pop.call["transcript"][0]["text"], "this is ridiculous");
        board.event(
            "c1",
            9.0,
            &ev(
                "transfer.bridged",
                json!({"leg": 1, "uri": "sip:1001@pbx", "after_s": 5.8}),
            ),
        );
        assert_eq!(board.for_extension("1001").len(), 1);
        let m = board.metrics_text(&Gauges {
            asr_queue: 3,
            calls_setting_up: 2,
            sip_transactions: 5,
            sip_dialogs: 4,
            fds_open: Some(40),
            fd_limit: Some(1024),
            banned_sources: 1,
            media_tick_late: std::time::Duration::from_millis(7),
            media_tick_histogram: {
                let load = crate::media::load::MediaLoad::default();
                load.observe(std::time::Duration::from_micros(300));
                load.observe(std::time::Duration::from_millis(7));
                load.histogram()
            },
        });
        assert!(m.contains("voicegate_active_calls 1"), "{m}");
        assert!(
            m.contains("voicegate_handovers_total{reason=\"frustration\"} 1"),
            "{m}"
        );
        assert!(m.contains("voicegate_asr_queue_depth 3"), "{m}");
        assert!(
            m.contains("voicegate_asr_queue_wait_seconds_sum 0.03"),
            "{m}"
        );
        assert!(m.contains("voicegate_asr_decode_seconds_sum 0.15"), "{m}");
        assert!(
            m.contains("voicegate_asr_stage_seconds_sum{stage=\"encoder\"} 0.06"),
            "{m}"
        );
        assert!(
            m.contains("voicegate_asr_stage_seconds_count{stage=\"mel\"} 1"),
            "{m}"
        );
        assert!(m.contains("voicegate_calls_setting_up 2"), "{m}");
        assert!(m.contains("voicegate_sip_transactions 5"), "{m}");
        assert!(m.contains("voicegate_sip_dialogs 4"), "{m}");
        assert!(m.contains("voicegate_open_fds 40"), "{m}");
        assert!(m.contains("voicegate_max_fds 1024"), "{m}");
        assert!(m.contains("voicegate_banned_sources 1"), "{m}");
        assert!(
            m.contains("voicegate_media_tick_lateness_seconds 0.007"),
            "{m}"
        );
        let tick = "voicegate_media_tick_lateness_distribution_seconds";
        for line in [
            format!("{tick}_bucket{{le=\"0.00025\"}} 0"),
            format!("{tick}_bucket{{le=\"0.0005\"}} 1"),
            format!("{tick}_bucket{{le=\"0.005\"}} 1"),
            format!("{tick}_bucket{{le=\"0.01\"}} 2"),
            format!("{tick}_bucket{{le=\"+Inf\"}} 2"),
            format!("{tick}_sum 0.0073"),
            format!("{tick}_count 2"),
        ] {
            assert!(m.lines().any(|l| l == line), "{line} in\n{m}");
        }
        assert!(m.trim_end().ends_with("# EOF"), "{m}");
        board.event("c1", 20.0, &ev("call.ended", json!({"reason": "caller_bye", "duration_s": 20.0,
                    "media": {"jitter": {"received": 990, "lost": 10, "late": 2, "queued_sum": 1980, "played": 990}}})));
        board.close("c1");
        let m = board.metrics_text(&Gauges::default());
        assert!(m.contains("voicegate_active_calls 0"), "{m}");
        assert!(
            m.contains("voicegate_calls_total{outcome=\"transferred\"} 1"),
            "{m}"
        );
        assert!(m.contains("voicegate_rtp_packets_lost_total 10"), "{m}");
        assert!(
            m.contains("voicegate_wait_before_handover_seconds_count 1"),
            "{m}"
        );
        assert!(m.contains("voicegate_rtp_packets_late_total 2"), "{m}");
        assert!(
            m.contains("voicegate_rtp_jitter_buffer_hold_seconds_sum 0.04"),
            "{m}"
        );
        let list = board.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["outcome"], "transferred");
        assert!(list[0].get("transcript").is_none(), "the list stays small");
        let (view, full) = board.get("c1").expect("recent call");
        assert_eq!(view.key, key);
        assert_eq!(full["decisions"], json!([]));
        assert!(full.get("key").is_none(), "the key never appears in JSON");
    }

    #[test]
    fn extensions_come_from_agent_uris() {
        assert_eq!(extension("sip:1001@127.0.0.1:5070"), "1001");
        assert_eq!(extension("sips:alice@pbx;transport=tls"), "alice");
        assert_eq!(extension("2002"), "2002");
    }
}
