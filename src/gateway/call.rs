//! One call: SIP admission to answer, then (for SIP and browser callers
//! alike) the 20 ms media clock, recording, and the
//! decision core driven by what happens on the line.

use super::agent::LegReport;
use super::handover::{Handover, Outcome};
use super::leg::{CallerLeg, DialogOutcome, SipLeg};
use super::Shared;
use crate::call::core::{CallCore, CoreAction, CoreEvent};
use crate::call::transfer::TransferEvent;
use crate::call::{CallAction, CallEvent, GreetingFlow};
use crate::config::TrunkConfig;
use crate::media::jitter::FRAME_8K;
use crate::media::prompt::PromptPlayer;
use crate::media::session::MediaSession;
use crate::record::CallRecorder;
use crate::sip::sdp::{self, Negotiated};
use crate::speech::pool::{AsrReply, JobKind};
use crate::speech::vad::{Segmenter, VadEvent};
use rsipstack::dialog::dialog::{DialogState, TerminatedReason};
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, StatusCode};
use rsipstack::transaction::transaction::Transaction;
use serde_json::json;
use std::net::SocketAddr;
use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{info, warn};

/// Who the caller is and what they dialled.
pub(super) struct Parties {
    pub call_id: String,
    pub from_user: String,
    pub from_display: String,
    pub to_user: String,
}

fn parties(tx: &Transaction) -> Parties {
    let req = &tx.original;
    let from = req.from_header().ok();
    let from_uri = from.and_then(|f| f.uri().ok());
    let display = from
        .map(|f| f.value().to_string())
        .and_then(|v| {
            v.split('<')
                .next()
                .map(|d| d.trim().trim_matches('"').to_string())
        })
        .unwrap_or_default();
    Parties {
        call_id: req
            .call_id_header()
            .map(|c| c.value().to_string())
            .unwrap_or_default(),
        from_user: from_uri
            .and_then(|u| u.auth.map(|a| a.user))
            .unwrap_or_else(|| "anonymous".into()),
        from_display: display,
        to_user: req
            .to_header()
            .ok()
            .and_then(|t| t.uri().ok())
            .and_then(|u| u.auth.map(|a| a.user))
            .or_else(|| req.uri.auth.as_ref().map(|a| a.user.clone()))
            .unwrap_or_default(),
    }
}

/// Bind the call's RTP socket. It is a plain non-blocking socket, not
/// registered with the reactor: the 20 ms media clock drains it, so arriving
/// packets never wake a thread on their own.
pub(super) async fn bind_rtp(
    shared: &Shared,
) -> Option<(UdpSocket, crate::media::ports::PortLease)> {
    let ip = shared.config.gateway.media.sdp_address;
    for _ in 0..32 {
        let lease = shared.ports.lease()?;
        let local = SocketAddr::new(ip, lease.port());
        let any = SocketAddr::new(
            if ip.is_ipv6() {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            },
            lease.port(),
        );
        for addr in [local, any] {
            if let Ok(s) = UdpSocket::bind(addr) {
                if s.set_nonblocking(true).is_ok() {
                    return Some((s, lease));
                }
            }
        }
    }
    None
}

/// Answer and run a call until either side ends it.
pub(super) async fn run(
    shared: Arc<Shared>,
    trunk: TrunkConfig,
    mut tx: Transaction,
    negotiated: Negotiated,
) {
    let who = parties(&tx);
    let Some((socket, lease)) = bind_rtp(&shared).await else {
        warn!("no free RTP port");
        let _ = tx.reply(StatusCode::ServiceUnavailable).await;
        return;
    };
    let (state_tx, mut states) = shared.dialogs.new_dialog_state_channel();
    let dialog = match shared
        .dialogs
        .get_or_create_server_invite(&tx, state_tx, None, None)
    {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "cannot create dialog");
            let _ = tx.reply(StatusCode::ServerInternalError).await;
            return;
        }
    };
    let mut handler = dialog.clone();
    tokio::spawn(async move {
        if let Err(e) = handler.handle(&mut tx).await {
            tracing::debug!(error = %e, "INVITE transaction ended with an error");
        }
    });

    let gw = &shared.config.gateway;
    let date = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let mut recorder = match CallRecorder::create(&gw.recording.dir, &date, &who.call_id, 8000) {
        Ok(r) => Some(r),
        Err(e) => {
            // Never drop a caller because the disk is unhappy: answer, log loudly.
            tracing::error!(error = %e, "cannot create the recording; the call goes on unrecorded");
            None
        }
    };
    let session_id = u64::from(rand::random::<u32>());
    let sdp_version = 1u64;
    let answer = sdp::build(
        session_id,
        sdp_version,
        gw.media.sdp_address,
        lease.port(),
        negotiated.params.codec,
        negotiated.params.dtmf_payload_type,
        negotiated.direction.answer(),
    );
    let page_key = shared.board.open(
        &who.call_id,
        "sip",
        &who.from_user,
        &who.to_user,
        &trunk.name,
        chrono::Utc::now().timestamp_millis(),
    );
    // The board forgets the call however this function returns.
    let _on_board = OnBoard(shared.board.clone(), who.call_id.clone());
    let mut log = EventLog {
        recorder: recorder.as_mut(),
        start: Instant::now(),
        board: Some((shared.board.clone(), who.call_id.clone())),
    };
    log.event(
        "call.invite",
        json!({
            "call_id": who.call_id, "from": who.from_user, "from_name": who.from_display,
            "to": who.to_user, "trunk": trunk.name, "flow": trunk.flow_for(&who.to_user),
            "codec": negotiated.params.codec.name(),
            "remote_rtp": negotiated.params.remote.to_string(),
            "telephone_event": negotiated.params.dtmf_payload_type,
        }),
    );
    let _ = dialog.ringing(None, None);
    if !gw.sip.answer_delay.is_zero() {
        let ring = tokio::time::sleep(gw.sip.answer_delay);
        tokio::pin!(ring);
        loop {
            tokio::select! {
                _ = &mut ring => break,
                state = states.recv() => match state {
                    Some(DialogState::Terminated(_, reason)) => {
                        let reason = if matches!(reason, TerminatedReason::UacCancel) { "caller_cancel" } else { "terminated_before_answer" };
                        info!(reason, "call ended before answer");
                        log.event("call.ended", json!({"reason": reason, "answered": false}));
                        if let Some(r) = recorder {
                            let _ = r.finalize();
                        }
                        return;
                    }
                    Some(_) => {}
                    None => return,
                },
            }
        }
    }
    let content_type = Header::ContentType("application/sdp".into());
    if let Err(e) = dialog.accept(Some(vec![content_type.clone()]), Some(answer.into_bytes())) {
        warn!(error = %e, "could not answer");
        log.event("call.ended", json!({"reason": "answer_failed"}));
        if let Some(r) = recorder {
            let _ = r.finalize();
        }
        return;
    }
    info!(from = %who.from_user, to = %who.to_user, trunk = %trunk.name, codec = negotiated.params.codec.name(), "call answered");
    drop(log);
    let leg = CallerLeg::Sip(Box::new(SipLeg {
        media: MediaSession::new(
            negotiated.params.clone(),
            gw.media.jitter_buffer,
            rand::random(),
            Duration::ZERO,
        ),
        held: negotiated.direction.is_hold(),
        socket,
        lease,
        dialog,
        states,
        sdp_version,
        session_id,
        trunk: trunk.clone(),
    }));
    converse(shared, who, trunk, leg, recorder, page_key, _on_board).await;
}

/// Run an answered call, whatever leg the caller is on, until either side
/// ends it: the media clock, the bot, the hand-over, the recording.
pub(super) async fn converse(
    shared: Arc<Shared>,
    who: Parties,
    trunk: TrunkConfig,
    mut leg: CallerLeg,
    mut recorder: Option<CallRecorder>,
    page_key: String,
    _on_board: OnBoard,
) {
    let gw = &shared.config.gateway;
    let start = Instant::now();
    let mut log = EventLog {
        recorder: recorder.as_mut(),
        start,
        board: Some((shared.board.clone(), who.call_id.clone())),
    };
    // The callers' language: the number's or trunk's, else `[speech]`
    // (`auto`: the core takes it from the first utterance).
    let call_language = trunk
        .language_for(&who.to_user)
        .or(gw.speech.language.as_deref())
        .unwrap_or("auto")
        .to_string();
    let mut answered = leg.describe();
    if let Some(fields) = answered.as_object_mut() {
        fields.insert("language".into(), json!(call_language));
    }
    log.event("call.answered", answered);
    let mut flow = GreetingFlow::default();
    let caller_id = (who.from_user != "anonymous").then(|| who.from_user.clone());
    let mut decider = Decider {
        core: CallCore::new(shared.config.policy.clone(), &call_language),
        logged: 0,
        greeting: shared.config.policy.flow.phrases(&call_language).greeting,
        to_say: Vec::new(),
        to_ask: Vec::new(),
        to_transfer: None,
        hang_up: None,
    };
    let voice = match call_language.as_str() {
        "zh" => "cmn",
        "en" | "auto" => "en-us",
        other => other,
    }
    .to_string();
    let (tts_tx, mut tts_rx) =
        tokio::sync::mpsc::unbounded_channel::<crate::media::prompt::Prompt>();
    let mut bot_queue: std::collections::VecDeque<crate::media::prompt::Prompt> =
        std::collections::VecDeque::new();
    let mut bot_player: Option<PromptPlayer> = None;
    let mut goodbye_heard_after: Option<Duration> = None;
    // One synthesiser task per call: replies are rendered off the media path,
    // strictly in the order the bot says them.
    let (say_tx, mut say_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    {
        let tts = shared.tts.clone();
        let voice = voice.clone();
        tokio::spawn(async move {
            while let Some(text) = say_rx.recv().await {
                // Chinese text in the Mandarin voice, whatever the call
                // started as (an `auto` call turns Chinese with its caller).
                let voice = if crate::speech::chinese::has_han(&text) {
                    "cmn".to_string()
                } else {
                    voice.clone()
                };
                let tts = tts.clone();
                match tokio::task::spawn_blocking(move || tts.synthesize(&text, &voice)).await {
                    Ok(Ok(p)) => {
                        if tts_tx.send(p).is_err() {
                            break;
                        }
                    }
                    Ok(Err(e)) => warn!(error = %e, "text-to-speech failed"),
                    Err(e) => warn!(error = %e, "text-to-speech task failed"),
                }
            }
        });
    }
    decider.feed(
        Duration::ZERO,
        CoreEvent::Answered {
            caller: caller_id.clone(),
        },
        &mut log,
    );
    // Hand-over to a human: agent legs report here, the whisper arrives here.
    let (leg_tx, mut leg_rx) = tokio::sync::mpsc::unbounded_channel::<LegReport>();
    let (whisper_tx, mut whisper_rx) =
        tokio::sync::mpsc::unbounded_channel::<Option<crate::media::prompt::Prompt>>();
    let mut handover: Option<Handover> = None;
    // The caller leg's jitter counters when the bridge began.
    let mut bridged_at: Option<crate::media::jitter::JitterStats> = None;
    let hold_music = shared.hold_music.clone();
    let mut player: Option<PromptPlayer> = None;
    let mut hangup: Option<&'static str> = None;
    let mut actions = flow.handle(Duration::ZERO, CallEvent::Answered);
    let mut ticker = tokio::time::interval_at(media_clock_next_tick(), Duration::from_millis(20));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut flusher = tokio::time::interval(gw.recording.flush_interval);
    let mut buf = vec![0u8; 2048];
    let silence = [0i16; FRAME_8K];
    let sp = &gw.speech;
    let language = trunk.language_for(&who.to_user).map(str::to_string);
    let mut listener = shared
        .asr
        .clone()
        .map(|pool| Listener::new(sp, pool, language));
    let (asr_tx, mut asr_rx) = tokio::sync::mpsc::unbounded_channel::<AsrReply>();
    type HookReply = (String, Result<String, String>);
    let (hook_tx, mut hook_rx) = tokio::sync::mpsc::unbounded_channel::<HookReply>();
    let ended_by: &str;

    // Made once: a `cancelled()` future registers with the token's waiter
    // list, and re-making it on every 20 ms pass costs a lock per call per tick.
    let shutdown = shared.shutdown.clone();
    let shutdown = shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        for action in actions.drain(..) {
            match action {
                CallAction::PlayGreeting => {
                    player = Some(PromptPlayer::new(shared.greeting.clone()))
                }
                CallAction::StopPlayback => {
                    if let Some(p) = player.as_mut() {
                        p.stop();
                    }
                }
                CallAction::HangUp { reason } => hangup = Some(reason),
                CallAction::Log { kind, fields } => log.event(kind, fields),
            }
        }
        for text in decider.to_say.drain(..) {
            let _ = say_tx.send(text);
        }
        if let Some((reason, mut summary)) = decider.to_transfer.take() {
            // The agent's Call-Info link: this call's page, opened by its key.
            summary["page"] = json!(format!(
                "{}/calls/{}?key={page_key}",
                gw.http.public_url,
                url_escape(&who.call_id)
            ));
            // In the agents' language when agents.toml names one, else the caller's.
            let whisper = &shared.config.agents.whisper;
            let language = match whisper.language.as_str() {
                "caller" => summary["language"].as_str().unwrap_or("en").to_string(),
                other => other.to_string(),
            };
            if let Some(t) = summary["texts"].get(&language).cloned() {
                summary["text"] = t;
            }
            let text = summary["text"].as_str().unwrap_or_default().to_string();
            let voice = if language == "zh" && !whisper.voice.starts_with("cmn") {
                "cmn".to_string()
            } else {
                whisper.voice.clone()
            };
            let (tts, tx) = (shared.tts.clone(), whisper_tx.clone());
            tokio::task::spawn_blocking(move || {
                let prompt = tts
                    .synthesize(&text, &voice)
                    .map_err(|e| warn!(error = %e, "whisper synthesis failed"))
                    .ok();
                let _ = tx.send(prompt);
            });
            let (h, outcome) = Handover::start(
                &shared,
                &reason,
                summary,
                caller_id.clone(),
                start.elapsed(),
                leg_tx.clone(),
                hold_music.clone(),
                &mut log,
            )
            .await;
            handover = Some(h);
            settle(
                outcome,
                &mut handover,
                &mut decider,
                &mut hangup,
                start.elapsed(),
                &mut log,
            );
            continue;
        }
        for (intent, url, timeout, body) in decider.to_ask.drain(..) {
            let hook_tx = hook_tx.clone();
            tokio::task::spawn_blocking(move || {
                let reply = crate::api::webhook::ask(&url, timeout, &body);
                let _ = hook_tx.send((intent, reply));
            });
        }
        if let Some(reason) = hangup {
            log.event("call.hangup", json!({"reason": reason, "by": "gateway"}));
            leg.hang_up().await;
            ended_by = reason;
            break;
        }
        tokio::select! {
            _ = ticker.tick() => {
                let now = start.elapsed();
                // Drain what arrived since the last tick: one wake-up per 20 ms
                // per call instead of one per packet.
                for d in leg.receive(now, &mut buf) {
                    if !decider.core.collecting_digits() { actions.extend(flow.handle(now, CallEvent::Digit { digit: d, source: "rfc4733" })); }
                    decider.feed(now, CoreEvent::Dtmf(d), &mut log);
                }
                let (caller, digit) = leg.pull_frame();
                if let Some(d) = digit {
                    if !decider.core.collecting_digits() { actions.extend(flow.handle(now, CallEvent::Digit { digit: d, source: "inband" })); }
                    decider.feed(now, CoreEvent::Dtmf(d), &mut log);
                }
                if let Some(l) = listener.as_mut() {
                    // Barge-in stops the bot, not the hand-over notice: once a
                    // person is on the way the caller should hear so.
                    let talking = l.hear(&caller, &asr_tx, &mut log);
                    if talking {
                        decider.feed(now, CoreEvent::SpeechStarted, &mut log);
                    }
                    if talking && handover.is_none() {
                        // Barge-in: the caller talks, the bot stops.
                        if bot_player.as_ref().is_some_and(|p| !p.finished()) || !bot_queue.is_empty() {
                            log.event("bot.interrupted", json!({}));
                        }
                        if let Some(p) = bot_player.as_mut() {
                            p.stop();
                        }
                        bot_queue.clear();
                    }
                    if std::mem::take(&mut l.overloaded) {
                        decider.feed(now, CoreEvent::AsrUnavailable, &mut log);
                    }
                }
                decider.feed(now, CoreEvent::Tick, &mut log);
                if let Some(reason) = decider.hang_up {
                    let speaking = bot_player.as_ref().is_some_and(|p| !p.finished())
                        || !bot_queue.is_empty()
                        || !decider.to_say.is_empty();
                    if !speaking && goodbye_heard_after.is_some_and(|t| now >= t) && hangup.is_none() {
                        hangup = Some(reason);
                    }
                    if goodbye_heard_after.is_none() {
                        // Give the synthesiser a moment to deliver the goodbye;
                        // once it plays, `speaking` holds the hang-up back.
                        goodbye_heard_after = Some(now + Duration::from_millis(1500));
                    }
                }
                let mut out = silence;
                let mut bot_speaking = false;
                if let Some(p) = player.as_mut() {
                    match p.next_frame() {
                        Some(f) => out = f,
                        None => {
                            player = None;
                            actions.extend(flow.handle(now, CallEvent::PromptFinished));
                        }
                    }
                    bot_speaking = true;
                } else {
                    if bot_player.as_ref().is_none_or(|p| p.finished()) {
                        bot_player = bot_queue.pop_front().map(PromptPlayer::new);
                    }
                    if let Some(f) = bot_player.as_mut().and_then(|p| p.next_frame()) {
                        out = f;
                        bot_speaking = true;
                    }
                }
                if let Some(h) = handover.as_mut() {
                    if h.bridged() && bridged_at.is_none() {
                        // Talking now: the caller's leg drops to the bridge's
                        // shallower jitter buffer too.
                        leg.set_jitter_depth(shared.config.agents.bridge_jitter);
                        bridged_at = Some(leg.jitter_stats());
                    }
                    let (to_caller, events) = h.media_tick(now, &caller, bot_speaking.then_some(out), &mut log);
                    out = to_caller;
                    for e in events.into_iter().chain([TransferEvent::Tick]) {
                        let Some(h) = handover.as_mut() else { break };
                        let outcome = h.handle(&shared, now, e, &mut log).await;
                        settle(outcome, &mut handover, &mut decider, &mut hangup, now, &mut log);
                    }
                }
                leg.send_frame(&out);
                if let Some(r) = log.recorder.as_deref_mut() {
                    if let Err(e) = r.write(&caller, &out) {
                        tracing::error!(error = %e, "recording write failed");
                    }
                }
                if let Some(idle) = leg.idle_for(now).filter(|i| *i > gw.media.rtp_timeout) {
                    warn!(idle_s = idle.as_secs(), "no media: ending the call");
                    hangup = Some("rtp_timeout");
                }
            }
            signal = leg.signal() => {
                let Some(signal) = signal else { ended_by = "dialog_gone"; break };
                match leg.on_signal(signal, &shared, &mut log).await {
                    DialogOutcome::Continue => {}
                    DialogOutcome::Digit(d) => {
                        if !decider.core.collecting_digits() { actions.extend(flow.handle(start.elapsed(), CallEvent::Digit { digit: d, source: "sip_info" })); }
                        decider.feed(start.elapsed(), CoreEvent::Dtmf(d), &mut log);
                    }
                    DialogOutcome::Ended(reason) => {
                        log.event("call.hangup", json!({"reason": reason, "by": "caller"}));
                        ended_by = reason;
                        break;
                    }
                }
            }
            Some((intent, reply)) = hook_rx.recv() => {
                log.event("webhook.reply", json!({"intent": intent, "ok": reply.is_ok(), "reply": match &reply { Ok(t) | Err(t) => t }}));
                decider.feed(start.elapsed(), CoreEvent::WebhookReply { intent, reply }, &mut log);
            }
            Some(report) = leg_rx.recv() => {
                if let Some(h) = handover.as_mut() {
                    let now = start.elapsed();
                    let outcome = h.on_report(&shared, now, report, &mut log).await;
                    settle(outcome, &mut handover, &mut decider, &mut hangup, now, &mut log);
                }
            }
            Some(whisper) = whisper_rx.recv() => {
                if let Some(h) = handover.as_mut() {
                    h.whisper_ready(whisper);
                }
            }
            prompt = tts_rx.recv() => {
                if let Some(p) = prompt {
                    bot_queue.push_back(p);
                }
            }
            reply = asr_rx.recv() => {
                if let (Some(reply), Some(l)) = (reply, listener.as_mut()) {
                    if let Some(event) = l.on_reply(reply, &mut log) {
                        // Utterances are decided at the moment the VAD closed
                        // them — the time a replay of this call uses too.
                        let at = match &event {
                            CoreEvent::Utterance(u) => Duration::from_secs_f64(u.closed_at_s),
                            _ => start.elapsed(),
                        };
                        decider.feed(at, event, &mut log);
                    }
                }
            }
            _ = flusher.tick() => {
                if let Some(r) = log.recorder.as_deref_mut() {
                    if let Err(e) = r.flush() {
                        tracing::error!(error = %e, "recording flush failed");
                    }
                }
            }
            _ = &mut shutdown, if hangup.is_none() => {
                hangup = Some("gateway_shutdown");
            }
        }
    }
    if let Some(mut h) = handover.take() {
        if let (Some(before), Some(agent)) = (bridged_at, h.agent_stats()) {
            // Time inside the gateway per direction: the jitter hold measured
            // here, plus the wait for the 20 ms clock to read the socket (0–20 ms).
            let now = leg.jitter_stats();
            let caller_hold = if now.played > before.played {
                (now.queued_sum - before.queued_sum) as f64 * 20.0
                    / (now.played - before.played) as f64
            } else {
                0.0
            };
            log.event(
                "bridge.latency",
                json!({
                    "caller_to_agent_hold_ms": caller_hold,
                    "agent_to_caller_hold_ms": agent.jitter.mean_hold_ms(),
                    "clock_wait_ms_max": 20,
                    "agent_media": agent,
                }),
            );
        }
        h.finish(&shared, start.elapsed(), &mut log).await;
    }
    if let Some(l) = listener.as_mut() {
        l.finish(&asr_tx, &mut asr_rx, &mut log, sp.max_latency)
            .await;
    }
    let stats = leg.stats_json();
    log.event(
        "call.ended",
        json!({"reason": ended_by, "duration_s": start.elapsed().as_secs_f64(), "media": stats}),
    );
    info!(
        reason = ended_by,
        duration_s = start.elapsed().as_secs_f64(),
        lost = stats["jitter"]["lost"].as_u64().unwrap_or(0),
        "call ended"
    );
    if let Some(r) = recorder {
        match r.finalize() {
            Ok(dir) => info!(dir = %dir.display(), "recording finalised"),
            Err(e) => tracing::error!(error = %e, "recording finalise failed"),
        }
    }
    drop(leg);
}

/// Events to the call's `events.jsonl`, timed from the answer.
pub(super) struct EventLog<'a> {
    recorder: Option<&'a mut CallRecorder>,
    start: Instant,
    /// The HTTP surface's view of this call: the board and the call's id.
    board: Option<(crate::api::board::CallBoard, String)>,
}

impl EventLog<'_> {
    /// Log one event (and trace it).
    pub(super) fn event(&mut self, kind: &str, fields: serde_json::Value) {
        tracing::debug!(kind, %fields, "event");
        if let Some((board, id)) = &self.board {
            board.event(id, self.start.elapsed().as_secs_f64(), kind, &fields);
        }
        if let Some(r) = self.recorder.as_deref_mut() {
            if let Err(e) = r.event(self.start.elapsed(), kind, fields) {
                tracing::error!(error = %e, "event log write failed");
            }
        }
    }
}

/// The caller's side of speech: 8 kHz frames → 16 kHz → VAD → ASR jobs, and
/// the results back into the event log. Times are the caller track's (20 ms per
/// frame since answer), the same clock a replay of the recording uses.
struct Listener {
    pool: crate::speech::pool::AsrPool,
    /// The trunk's or number's language; `None`: the pool's default.
    language: Option<String>,
    upsampler: Option<crate::media::resample::Upsampler>,
    segmenter: Segmenter,
    wideband: Vec<f32>,
    partial_interval: Duration,
    last_partial: Duration,
    /// Final jobs submitted and not yet answered.
    pending: usize,
    /// The queue refused an utterance since the last look.
    overloaded: bool,
}

impl Listener {
    fn new(
        sp: &crate::config::SpeechConfig,
        pool: crate::speech::pool::AsrPool,
        language: Option<String>,
    ) -> Self {
        let upsampler = crate::media::resample::Upsampler::new()
            .map_err(|e| tracing::error!(error = %e, "no resampler: speech recognition off for this call"))
            .ok();
        Self {
            pool,
            language,
            upsampler,
            segmenter: Segmenter::new(sp.vad()),
            wideband: Vec::with_capacity(320),
            partial_interval: sp.partial_interval,
            last_partial: Duration::ZERO,
            pending: 0,
            overloaded: false,
        }
    }

    /// Hear one caller frame; true when the caller starts talking.
    fn hear(
        &mut self,
        frame: &[i16],
        asr_tx: &tokio::sync::mpsc::UnboundedSender<AsrReply>,
        log: &mut EventLog<'_>,
    ) -> bool {
        let mut started = false;
        let Some(up) = self.upsampler.as_mut() else {
            return false;
        };
        self.wideband.clear();
        up.process(frame, &mut self.wideband);
        for ev in self.segmenter.push(&self.wideband) {
            match ev {
                VadEvent::SpeechStarted { at } => {
                    started = true;
                    self.last_partial = at;
                    log.event("speech.started", json!({"at_s": at.as_secs_f64()}));
                }
                VadEvent::Utterance(u) => self.submit_final(u, asr_tx, log),
            }
        }
        let now = self.segmenter.now();
        if let Some((start, audio)) = self.segmenter.in_progress() {
            if now.saturating_sub(self.last_partial) >= self.partial_interval
                && now.saturating_sub(start) >= self.partial_interval
                && !self.pool.saturated()
            {
                self.last_partial = now;
                let partial = crate::speech::vad::Utterance {
                    start,
                    end: now,
                    voiced: now.saturating_sub(start),
                    loudness_dbfs: 0.0,
                    forced_cut: false,
                    samples: audio.to_vec(),
                    samples_start: start,
                    closed_at: now,
                };
                let _ = self.pool.submit_in(
                    JobKind::Partial,
                    partial,
                    self.language.clone(),
                    asr_tx.clone(),
                );
            }
        }
        started
    }

    fn submit_final(
        &mut self,
        u: crate::speech::vad::Utterance,
        asr_tx: &tokio::sync::mpsc::UnboundedSender<AsrReply>,
        log: &mut EventLog<'_>,
    ) {
        let (start_s, end_s) = (u.start.as_secs_f64(), u.end.as_secs_f64());
        if self
            .pool
            .submit_in(JobKind::Final, u, self.language.clone(), asr_tx.clone())
            .is_ok()
        {
            self.pending += 1;
        } else {
            warn!(start_s, "ASR queue full");
            self.overloaded = true;
            log.event(
                "asr_overloaded",
                json!({"reason": "queue_full", "start_s": start_s, "end_s": end_s}),
            );
        }
    }

    /// The call ended: recognise what the caller was saying, and wait (bounded)
    /// for every outstanding result so the event log loses nothing.
    async fn finish(
        &mut self,
        asr_tx: &tokio::sync::mpsc::UnboundedSender<AsrReply>,
        asr_rx: &mut tokio::sync::mpsc::UnboundedReceiver<AsrReply>,
        log: &mut EventLog<'_>,
        max_latency: Duration,
    ) {
        if let Some(u) = self.segmenter.finish() {
            self.submit_final(u, asr_tx, log);
        }
        let deadline = tokio::time::Instant::now() + max_latency + Duration::from_secs(5);
        while self.pending > 0 {
            match tokio::time::timeout_at(deadline, asr_rx.recv()).await {
                Ok(Some(reply)) => {
                    self.on_reply(reply, log);
                }
                _ => {
                    warn!(
                        pending = self.pending,
                        "gave up waiting for ASR results at hang-up"
                    );
                    break;
                }
            }
        }
    }

    /// Log an ASR reply; the event for the decision core, if it has one.
    fn on_reply(&mut self, reply: AsrReply, log: &mut EventLog<'_>) -> Option<CoreEvent> {
        if !matches!(
            reply,
            AsrReply::Done {
                kind: JobKind::Partial,
                ..
            }
        ) {
            self.pending = self.pending.saturating_sub(1);
        }
        match reply {
            AsrReply::Done {
                kind: JobKind::Final,
                result,
                latency,
                decode,
            } => {
                info!(text = %result.text, start_s = result.start_s, latency_ms = latency.as_millis() as u64, "utterance");
                let mut fields = serde_json::to_value(&result).unwrap_or_else(|_| json!({}));
                if let Some(obj) = fields.as_object_mut() {
                    obj.insert("latency_ms".into(), json!(latency.as_millis() as u64));
                    obj.insert("decode_ms".into(), json!(decode.as_millis() as u64));
                }
                log.event("utterance", fields);
                Some(CoreEvent::Utterance(result))
            }
            AsrReply::Done {
                kind: JobKind::Partial,
                result,
                ..
            } => {
                if !result.text.is_empty() {
                    log.event(
                        "transcript.partial",
                        json!({"start_s": result.start_s, "text": result.text}),
                    );
                }
                None
            }
            AsrReply::Overloaded { reason, start_s } => {
                warn!(reason, start_s, "ASR overloaded");
                log.event(
                    "asr_overloaded",
                    json!({"reason": reason, "start_s": start_s}),
                );
                Some(CoreEvent::AsrUnavailable)
            }
            AsrReply::Failed { error } => {
                warn!(%error, "ASR failed");
                log.event("asr_failed", json!({"error": error}));
                Some(CoreEvent::AsrUnavailable)
            }
        }
    }
}

/// The decision core on a live call: events in, decisions and actions into
/// the event log (speaking and transferring come with TTS and issue 5).
struct Decider {
    core: CallCore,
    logged: usize,
    /// The greeting is the prompt file; the core's greeting text is not spoken twice.
    greeting: String,
    /// Texts waiting to be synthesised and played.
    to_say: Vec<String>,
    /// Webhooks to ask: intent, URL, timeout, body.
    to_ask: Vec<(String, String, Duration, serde_json::Value)>,
    /// A hand-over to start: reason and summary.
    to_transfer: Option<(String, serde_json::Value)>,
    /// The bot ended the call: hang up once its goodbye has been heard.
    hang_up: Option<&'static str>,
}

impl Decider {
    fn feed(&mut self, now: Duration, event: CoreEvent, log: &mut EventLog<'_>) {
        let actions = self.core.handle(now, event);
        for d in &self.core.decisions[self.logged..] {
            log.event(
                "decision",
                json!({"decision": d.kind, "at_s": d.t_s, "reason": d.reason, "score": d.score, "evidence": d.evidence}),
            );
        }
        self.logged = self.core.decisions.len();
        for a in actions {
            match a {
                CoreAction::Say(text) => {
                    log.event("bot.say", json!({"text": text}));
                    if text != self.greeting {
                        self.to_say.push(text);
                    }
                }
                CoreAction::HangUp { reason } => {
                    log.event("bot.goodbye", json!({"reason": reason}));
                    self.hang_up = Some(if reason == "caller_done" {
                        "caller_done"
                    } else {
                        "caller_silent"
                    });
                }
                CoreAction::CallWebhook {
                    intent,
                    url,
                    timeout,
                    body,
                } => {
                    log.event(
                        "webhook.ask",
                        json!({"intent": intent, "url": url, "timeout_ms": timeout.as_millis() as u64}),
                    );
                    self.to_ask.push((intent, url, timeout, body));
                }
                CoreAction::Transfer { reason, summary } => {
                    info!(%reason, summary = %summary["text"], "hand-over decided");
                    log.event(
                        "handover",
                        json!({"reason": reason, "summary": summary,
                               "unix_ms": chrono::Utc::now().timestamp_micros() as f64 / 1000.0}),
                    );
                    self.to_transfer = Some((reason, summary));
                }
            }
        }
    }
}

/// Act on a hand-over step: back to the bot when nobody took the call, end
/// the call when the bridged agent hung up.
fn settle(
    outcome: Outcome,
    handover: &mut Option<Handover>,
    decider: &mut Decider,
    hangup: &mut Option<&'static str>,
    now: Duration,
    log: &mut EventLog<'_>,
) {
    match outcome {
        Outcome::Continue => {}
        Outcome::GaveUp(tried) => {
            *handover = None;
            decider.feed(now, CoreEvent::TransferFailed { tried }, log);
        }
        Outcome::EndCall => {
            if hangup.is_none() {
                *hangup = Some("agent_bye");
            }
        }
    }
}

/// The next instant on the process-wide 20 ms media grid. Every call ticks on
/// the same grid, so one timer-wheel turn wakes them all together instead of
/// scattering 50 wake-ups per second per call across the 20 ms period.
fn media_clock_next_tick() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let period = Duration::from_millis(20).as_nanos();
    let elapsed = epoch.elapsed().as_nanos();
    let next = (elapsed / period + 1) * period;
    epoch + Duration::from_nanos(u64::try_from(next).unwrap_or(u64::MAX))
}

/// Takes a call off the board's live list when its task ends, whatever path
/// it ends by.
pub(super) struct OnBoard(pub crate::api::board::CallBoard, pub String);

impl Drop for OnBoard {
    fn drop(&mut self) {
        self.0.close(&self.1);
    }
}

/// Percent-encode a path segment (Call-IDs carry `@` and more).
pub(super) fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
