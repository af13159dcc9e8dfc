//! One call: SIP admission to answer, then (for SIP and browser callers
//! alike) the 20 ms media clock, recording, and the
//! decision core driven by what happens on the line.

use super::agent::{LegReport, ReportTo};
use super::events::{EventLog, OnBoard};
use super::handover::AgentLegs;
use super::leg::{CallerLeg, DialogOutcome, SipLeg};
use super::Shared;
use crate::call::event::{self, CallEvent, Party};
use crate::call::transfer::TransferEvent;
use crate::call::{Call, CallSetup, Input, Output};
use crate::config::TrunkConfig;
use crate::media::jitter::FRAME_8K;
use crate::media::session::MediaSession;
use crate::record::CallRecorder;
use crate::sip::sdp::{self, Negotiated};
use crate::speech::pool::{AsrReply, JobKind, ReplyTo};
use rsipstack::dialog::dialog::{DialogState, TerminatedReason};
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, StatusCode};
use rsipstack::transaction::transaction::Transaction;
use serde_json::json;
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

/// How long after our 200 OK the caller's ACK may take: RFC 3261's 64·T1,
/// plus a margin (the SIP stack gives up at 64·T1 and says so first).
const ACK_PATIENCE: Duration = Duration::from_secs(40);

/// Answer and run a call until either side ends it. Nothing is written to
/// disk before the caller's ACK: an INVITE that is never confirmed (a flood,
/// a caller who cancels while it rings) costs a task and a port for at most
/// 64·T1, no recording.
pub(super) async fn run(
    shared: Arc<Shared>,
    trunk: TrunkConfig,
    mut tx: Transaction,
    negotiated: Negotiated,
    timer: Option<crate::sip::session_timer::SessionTimer>,
    setting_up: super::SettingUp,
) {
    let who = parties(&tx);
    // The caller's own address (through a trusted proxy, the one it names):
    // RTP from there is the caller's even when its SDP names another.
    let signalling_source = super::source_ip(&shared, &tx);
    let Some((socket, lease)) =
        crate::media::ports::bind_rtp(shared.config.gateway.media.sdp_address, &shared.ports)
    else {
        warn!("no free RTP port");
        shared.board.rejected("no_rtp_port");
        // Busy, not broken: the carrier may retry here shortly, or elsewhere.
        let retry = Header::Other("Retry-After".into(), "5".into());
        let _ = tx
            .reply_with(StatusCode::ServiceUnavailable, vec![retry], None)
            .await;
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
    // However this task ends (hang-up, refusal, never ACKed, crash of the
    // call), the dialog leaves the layer: a BYE for a finished call gets 481
    // and memory does not grow with every call.
    let _release = DialogRelease {
        layer: shared.dialogs.clone(),
        dialog: dialog.clone(),
    };
    let mut handler = dialog.clone();
    let transaction = tokio::spawn(async move {
        if let Err(e) = handler.handle(&mut tx).await {
            tracing::debug!(error = %e, "INVITE transaction ended with an error");
        }
    });
    // A call that was answered and is over stops its INVITE transaction
    // too: a never-ACKed 200 OK would otherwise keep being retransmitted,
    // its dialog held in memory, for 64·T1 after the call gave up on it.
    // (A call cancelled or refused before answer lets it finish: it still
    // has a final response to retransmit until the caller's ACK.)
    let mut stop_transaction = AbortOnDrop(None);

    let gw = &shared.config.gateway;
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
    let invite = CallEvent::Invite(Box::new(event::Invite {
        call_id: who.call_id.clone(),
        from: who.from_user.clone(),
        from_name: who.from_display.clone(),
        to: who.to_user.clone(),
        trunk: trunk.name.clone(),
        flow: trunk.flow_for(&who.to_user).to_string(),
        codec: negotiated.params.codec.name().to_string(),
        remote_rtp: negotiated.params.remote.to_string(),
        telephone_event: negotiated.params.dtmf_payload_type,
        source: signalling_source.map(|ip| ip.to_string()),
        session_expires_s: timer.map(|t| t.interval.as_secs()),
    }));
    // Before the ACK the call lives on the board and in the log only.
    let mut early = EventLog {
        recorder: None,
        start: Instant::now(),
        board: Some((shared.board.clone(), who.call_id.clone())),
    };
    early.event(invite.clone());
    let ended_early = |early: &mut EventLog<'_>, reason: &str| {
        info!(
            reason,
            "call ended before it was confirmed: nothing recorded"
        );
        early.event(CallEvent::Ended(event::Ended {
            reason: reason.to_string(),
            answered: Some(false),
            ..event::Ended::default()
        }));
    };
    // 180 only when the caller will actually hear ringing: a 180 sent just
    // before an immediate 200 is one more message per call, and through a
    // multi-process proxy it can overtake nothing but be overtaken (a late
    // 180 after the 200 confuses strict UACs — seen with SIPp behind Kamailio).
    if !gw.sip.answer_delay.is_zero() {
        let _ = dialog.ringing(None, None);
        let ring = tokio::time::sleep(gw.sip.answer_delay);
        tokio::pin!(ring);
        loop {
            tokio::select! {
                _ = &mut ring => break,
                state = states.recv() => match state {
                    Some(DialogState::Terminated(_, reason)) => {
                        let reason = if matches!(reason, TerminatedReason::UacCancel) { "caller_cancel" } else { "terminated_before_answer" };
                        ended_early(&mut early, reason);
                        return;
                    }
                    Some(_) => {}
                    None => return,
                },
            }
        }
    }
    let mut headers = vec![Header::ContentType("application/sdp".into())];
    if let Some(t) = &timer {
        headers.extend(t.response_headers());
    }
    if let Err(e) = dialog.accept(Some(headers), Some(answer.into_bytes())) {
        warn!(error = %e, "could not answer");
        ended_early(&mut early, "answer_failed");
        return;
    }
    stop_transaction.0 = Some(transaction.abort_handle());
    // The caller's ACK confirms the call; until then it is half-open.
    let patience = tokio::time::sleep(ACK_PATIENCE);
    tokio::pin!(patience);
    // A caller sends its BYE only after ACKing our 200 OK; on a busy box the
    // BYE's task can still report first. Such a call was confirmed: it is
    // recorded (invite, confirmed, ended) like any other, not lost.
    let mut bye_overtook_ack = false;
    loop {
        tokio::select! {
            _ = &mut patience => {
                warn!("no ACK for our 200 OK: ending the call");
                let _ = tokio::time::timeout(BYE_PATIENCE, dialog.bye()).await;
                ended_early(&mut early, "no_ack");
                return;
            }
            state = states.recv() => match state {
                Some(DialogState::Confirmed(..)) => break,
                Some(DialogState::Terminated(_, TerminatedReason::UacBye)) => {
                    bye_overtook_ack = true;
                    break;
                }
                Some(DialogState::Terminated(_, reason)) => {
                    let reason = match reason {
                        TerminatedReason::UacCancel => "caller_cancel",
                        TerminatedReason::Timeout => "no_ack",
                        TerminatedReason::UacBye => "caller_bye",
                        _ => "terminated_before_ack",
                    };
                    ended_early(&mut early, reason);
                    return;
                }
                Some(_) => {}
                None => return,
            },
        }
    }
    drop(setting_up);
    info!(from = %crate::sip::log_safe(&who.from_user), to = %crate::sip::log_safe(&who.to_user), trunk = %trunk.name, codec = negotiated.params.codec.name(), "call answered");
    let date = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let mut recorder = match CallRecorder::create(&gw.recording.dir, &date, &who.call_id, 8000) {
        Ok(r) => Some(r),
        Err(e) => {
            // Never drop a caller because the disk is unhappy: answer, log loudly.
            tracing::error!(error = %e, "cannot create the recording; the call goes on unrecorded");
            None
        }
    };
    if let Some(r) = recorder.as_mut() {
        for event in [invite, CallEvent::Confirmed] {
            if let Err(e) = r.event(Duration::ZERO, &event) {
                tracing::error!(error = %e, "event log write failed");
            }
        }
    }
    if bye_overtook_ack {
        info!("the caller hung up as the call was confirmed");
        let ended = CallEvent::Ended(event::Ended {
            reason: "caller_bye".into(),
            answered: Some(true),
            ..event::Ended::default()
        });
        if let Some(mut r) = recorder {
            if let Err(e) = r
                .event(Duration::ZERO, &ended)
                .and_then(|()| r.finalize().map(|_| ()))
            {
                tracing::error!(error = %e, "recording could not be finished");
            }
        }
        early.event(ended);
        return;
    }
    let leg = CallerLeg::Sip(Box::new(SipLeg {
        media: MediaSession::new(
            negotiated.params.clone(),
            gw.media.jitter_buffer,
            rand::random(),
            Duration::ZERO,
        )
        .with_signalling_source(signalling_source),
        held: negotiated.direction.is_hold(),
        held_since: None,
        socket,
        lease,
        dialog,
        states,
        sdp_version,
        session_id,
        trunk: trunk.clone(),
        timer,
        refreshed_at: Duration::ZERO,
        refreshing: None,
    }));
    let media = shared.media_runtime.clone();
    super::media_runtime::run_call(
        &media,
        converse(shared, who, trunk, leg, recorder, page_key, _on_board),
    )
    .await;
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
    log.event(CallEvent::Answered(event::Answered {
        language: call_language.clone(),
        ..leg.describe()
    }));
    let caller_id = (who.from_user != "anonymous").then(|| who.from_user.clone());
    let sp = &gw.speech;
    // Everything that decides lives in `call` (sans-IO); this loop only does
    // the I/O it asks for and feeds the answers back.
    let mut call = Call::new(CallSetup {
        policy: shared.config.policy.clone(),
        language: call_language,
        asr_language: trunk.language_for(&who.to_user).map(str::to_string),
        caller: caller_id.clone(),
        vad: sp.vad(),
        partial_interval: sp.partial_interval,
        partial_window: sp.partial_window,
        greeting: Some(shared.greeting.clone()),
        listen: shared.asr.is_some(),
        max_duration: gw.media.max_call_duration,
        agents: Some(shared.config.agents.clone()),
        hold_music: shared.hold_music.clone(),
    });
    // Everything the call started answers on one channel: the task waits on
    // its clock, its SIP dialog and this inbox, nothing else.
    let (inbox_tx, mut inbox_rx) = tokio::sync::mpsc::unbounded_channel::<Inbox>();
    // One synthesiser task per call: replies are rendered off the media path,
    // strictly in the order the bot says them.
    let (say_tx, mut say_rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    {
        let tts = shared.tts.clone();
        let inbox = inbox_tx.clone();
        tokio::spawn(async move {
            while let Some((text, voice)) = say_rx.recv().await {
                let tts = tts.clone();
                match tokio::task::spawn_blocking(move || tts.synthesize(&text, &voice)).await {
                    Ok(Ok(p)) => {
                        if inbox.send(Inbox::Prompt(p)).is_err() {
                            break;
                        }
                    }
                    Ok(Err(e)) => warn!(error = %e, "text-to-speech failed"),
                    Err(e) => warn!(error = %e, "text-to-speech task failed"),
                }
            }
        });
    }
    // Hand-over to a human: agent legs report to the inbox.
    let leg_tx = {
        let inbox = inbox_tx.clone();
        ReportTo::new(move |report| inbox.send(Inbox::Agent(report)).is_ok())
    };
    let mut agents = AgentLegs::new(caller_id.clone(), leg_tx);
    // The caller leg's jitter counters when the bridge began.
    let mut bridged_at: Option<crate::media::jitter::JitterStats> = None;
    let mut agent_events = Vec::new();
    let mut hangup: Option<&'static str> = None;
    let mut ticker = tokio::time::interval_at(media_clock_next_tick(), Duration::from_millis(20));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    // The recording is flushed every so many ticks (no second timer per call).
    let flush_every = (gw.recording.flush_interval.as_millis() / 20).max(1) as u64;
    let mut ticks: u64 = 0;
    let mut buf = vec![0u8; 2048];
    let silence = [0i16; FRAME_8K];
    let asr_tx = {
        let inbox = inbox_tx.clone();
        ReplyTo::new(move |reply| {
            let _ = inbox.send(Inbox::Asr(reply));
        })
    };
    let ended_by: &str;
    call.handle_input(Duration::ZERO, Input::Answered);

    // Made once: a `cancelled()` future registers with the token's waiter
    // list, and re-making it on every 20 ms pass costs a lock per call per tick.
    let shutdown = shared.shutdown.clone();
    let shutdown = shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        while let Some(output) = call.poll_output() {
            match output {
                Output::Event(event) => log.event(event),
                Output::SubmitAsr {
                    kind,
                    utterance,
                    language,
                } => submit_asr(
                    &shared,
                    &mut call,
                    kind,
                    utterance,
                    language,
                    &asr_tx,
                    start.elapsed(),
                ),
                Output::Synthesize { text, voice } => {
                    let _ = say_tx.send((text, voice));
                }
                Output::CallWebhook {
                    intent,
                    url,
                    timeout,
                    body,
                } => {
                    let inbox = inbox_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let reply = crate::api::webhook::ask(&url, timeout, &body);
                        let _ = inbox.send(Inbox::Webhook { intent, reply });
                    });
                }
                Output::Transfer {
                    reason,
                    mut summary,
                } => {
                    info!(%reason, summary = %summary["text"], "hand-over decided");
                    log.event(CallEvent::Handover(event::Handover {
                        reason: reason.clone(),
                        summary: summary.clone(),
                        unix_ms: chrono::Utc::now().timestamp_micros() as f64 / 1000.0,
                    }));
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
                    let (tts, inbox) = (shared.tts.clone(), inbox_tx.clone());
                    tokio::task::spawn_blocking(move || {
                        let prompt = tts
                            .synthesize(&text, &voice)
                            .map_err(|e| warn!(error = %e, "whisper synthesis failed"))
                            .ok();
                        let _ = inbox.send(Inbox::Whisper(prompt));
                    });
                    agents.decided(summary);
                }
                Output::DialAgent { leg, uri } => {
                    if let Err(why) = agents.dial(&shared, leg, &uri).await {
                        let failed = TransferEvent::Failed {
                            leg,
                            status: 0,
                            why,
                        };
                        call.handle_input(start.elapsed(), Input::Agent(failed));
                    }
                }
                Output::CancelAgent(leg) => agents.cancel(leg),
                Output::HangUpAgent(leg) => agents.hang_up(leg),
                Output::Hangup { reason } => hangup = Some(reason),
            }
        }
        if let Some(reason) = hangup {
            // A vanished caller never answers our BYE: give it the first
            // retransmissions (RFC 3261 timer E: 0.5, 1, 2, 4 s), not 32 s,
            // so the call — and a shutdown waiting for it — ends.
            if tokio::time::timeout(BYE_PATIENCE, leg.hang_up())
                .await
                .is_err()
            {
                warn!(reason, "no answer to our BYE: the call ends anyway");
            }
            ended_by = reason;
            break;
        }
        tokio::select! {
            deadline = ticker.tick() => {
                shared.media_load.observe(deadline.elapsed());
                let now = start.elapsed();
                ticks += 1;
                // Drain what arrived since the last tick: one wake-up per 20 ms
                // per call instead of one per packet.
                for digit in leg.receive(now, &mut buf) {
                    call.handle_input(now, Input::Digit { digit, source: "rfc4733" });
                }
                let (caller, digit) = leg.pull_frame();
                if let Some(digit) = digit {
                    call.handle_input(now, Input::Digit { digit, source: "inband" });
                }
                let asr_busy = shared.asr.as_ref().is_some_and(|p| p.saturated());
                call.handle_input(now, Input::CallerAudio { frame: &caller, asr_busy });
                let bot = call.poll_frame();
                let mut out = bot.unwrap_or(silence);
                // A hand-over under way: the `Call` mixes, the agent legs
                // carry the audio.
                let frames = agents.receive(now, &mut agent_events);
                if let Some(to_caller) = call.handover_frame(now, &caller, bot, frames) {
                    out = to_caller;
                    agents.send();
                    if call.bridged_agent().is_some() && bridged_at.is_none() {
                        // Talking now: the caller's leg drops to the bridge's
                        // shallower jitter buffer too.
                        leg.set_jitter_depth(shared.config.agents.bridge_jitter);
                        bridged_at = Some(leg.jitter_stats());
                    }
                }
                for e in agent_events.drain(..) {
                    call.handle_input(now, Input::Agent(e));
                }
                agents.prune();
                leg.send_frame(&out);
                if let Some(r) = log.recorder.as_deref_mut() {
                    r.write(&caller, &out);
                    if ticks.is_multiple_of(flush_every) {
                        if let Err(e) = r.flush() {
                            tracing::error!(error = %e, "recording flush failed");
                        }
                    }
                }
                if let Some(idle) = leg.idle_for(now).filter(|i| *i > gw.media.rtp_timeout) {
                    warn!(idle_s = idle.as_secs(), "no media: ending the call");
                    call.handle_input(now, Input::MediaTimeout);
                }
                if let Some(held) = leg.held_for(now).filter(|h| *h > gw.media.hold_timeout) {
                    warn!(held_s = held.as_secs(), "on hold too long: ending the call");
                    call.handle_input(now, Input::HoldTimeout);
                }
                match leg.session_check(now, &shared) {
                    crate::sip::session_timer::TimerCheck::Expired => {
                        warn!("session timer expired without a refresh: ending the call");
                        call.handle_input(now, Input::SessionExpired);
                    }
                    crate::sip::session_timer::TimerCheck::Refresh => {
                        log.event(CallEvent::SipSessionRefresh { by: Party::Gateway });
                    }
                    crate::sip::session_timer::TimerCheck::Fine => {}
                }
            }
            signal = leg.signal() => {
                let Some(signal) = signal else { ended_by = "dialog_gone"; break };
                match leg.on_signal(start.elapsed(), signal, &shared, &mut log).await {
                    DialogOutcome::Continue => {}
                    DialogOutcome::Digit(digit) => {
                        call.handle_input(start.elapsed(), Input::Digit { digit, source: "sip_info" });
                    }
                    DialogOutcome::Ended(reason) => {
                        log.event(CallEvent::Hangup {
                            reason: reason.to_string(),
                            by: Party::Caller,
                        });
                        ended_by = reason;
                        break;
                    }
                }
            }
            Some(news) = inbox_rx.recv() => {
                let now = start.elapsed();
                match news {
                    Inbox::Asr(reply) => call.handle_input(now, Input::Asr(reply)),
                    Inbox::Prompt(p) => call.handle_input(now, Input::Prompt(p)),
                    Inbox::Webhook { intent, reply } => {
                        call.handle_input(now, Input::WebhookReply { intent, reply });
                    }
                    Inbox::Agent(report) => {
                        if let Some(e) = agents.on_report(&shared, report, &mut log) {
                            call.handle_input(now, Input::Agent(e));
                        }
                    }
                    Inbox::Whisper(whisper) => call.handle_input(now, Input::WhisperReady(whisper)),
                }
            }
            _ = &mut shutdown, if !call.hung_up() => {
                call.handle_input(start.elapsed(), Input::Shutdown);
            }
        }
    }
    if let (Some(before), Some(agent)) = (bridged_at, agents.agent_stats()) {
        // Time inside the gateway per direction: the jitter hold measured
        // here, plus the wait for the 20 ms clock to read the socket (0–20 ms).
        let now = leg.jitter_stats();
        let caller_hold = if now.played > before.played {
            (now.queued_sum - before.queued_sum) as f64 * 20.0 / (now.played - before.played) as f64
        } else {
            0.0
        };
        log.event(CallEvent::BridgeLatency {
            caller_to_agent_hold_ms: caller_hold,
            agent_to_caller_hold_ms: agent.jitter.mean_hold_ms(),
            clock_wait_ms_max: 20,
            agent_media: serde_json::to_value(agent).unwrap_or_default(),
        });
    }
    // Recognise what the caller was still saying, and wait (bounded) for
    // every outstanding result so the event log loses nothing.
    call.finish();
    let deadline = Instant::now() + sp.max_latency + Duration::from_secs(5);
    loop {
        while let Some(output) = call.poll_output() {
            match output {
                Output::Event(event) => log.event(event),
                Output::SubmitAsr {
                    kind,
                    utterance,
                    language,
                } => submit_asr(
                    &shared,
                    &mut call,
                    kind,
                    utterance,
                    language,
                    &asr_tx,
                    start.elapsed(),
                ),
                Output::CancelAgent(leg) => agents.cancel(leg),
                Output::HangUpAgent(leg) => agents.hang_up(leg),
                _ => {}
            }
        }
        // Any agent leg the `Call` did not know of is let go too.
        agents.finish();
        if call.pending_asr() == 0 {
            break;
        }
        match tokio::time::timeout_at(deadline, inbox_rx.recv()).await {
            Ok(Some(Inbox::Asr(reply))) => call.handle_input(start.elapsed(), Input::Asr(reply)),
            Ok(Some(_)) => {}
            _ => {
                warn!(
                    pending = call.pending_asr(),
                    "gave up waiting for ASR results at hang-up"
                );
                break;
            }
        }
    }
    let stats = leg.stats_json();
    log.event(CallEvent::Ended(event::Ended {
        reason: ended_by.to_string(),
        answered: None,
        duration_s: Some(start.elapsed().as_secs_f64()),
        media: Some(stats.clone()),
    }));
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

/// Queue a transcription the call asked for; a final one the pool refuses
/// goes back to the call (it counts as the recogniser being unavailable).
fn submit_asr(
    shared: &Shared,
    call: &mut Call,
    kind: JobKind,
    utterance: crate::speech::vad::Utterance,
    language: Option<String>,
    asr_tx: &ReplyTo,
    now: Duration,
) {
    let Some(pool) = shared.asr.as_ref() else {
        return;
    };
    let (start_s, end_s) = (utterance.start.as_secs_f64(), utterance.end.as_secs_f64());
    if pool
        .submit_in(kind, utterance, language, asr_tx.clone())
        .is_err()
    {
        match kind {
            JobKind::Final => {
                warn!(start_s, "ASR queue full");
                call.handle_input(now, Input::AsrRefused { start_s, end_s });
            }
            // The call asks again, as a final, if the utterance closes.
            JobKind::Early => call.handle_input(
                now,
                Input::Asr(AsrReply::Overloaded {
                    kind,
                    reason: "queue",
                    start_s,
                }),
            ),
            JobKind::Partial => {}
        }
    }
}

/// News for a call's task from what it started: transcriptions, synthesised
/// replies, webhook answers, agent legs, the agent's whisper.
enum Inbox {
    Asr(AsrReply),
    Prompt(crate::media::prompt::Prompt),
    Webhook {
        intent: String,
        reply: Result<String, String>,
    },
    Agent(LegReport),
    Whisper(Option<crate::media::prompt::Prompt>),
}

/// How long a BYE we send may wait for its answer.
const BYE_PATIENCE: Duration = Duration::from_secs(4);

/// Removes a server dialog from the dialog layer when dropped.
struct DialogRelease {
    layer: Arc<rsipstack::dialog::dialog_layer::DialogLayer>,
    dialog: rsipstack::dialog::invite_dialog::InviteDialog,
}

/// Aborts a task, if armed, when dropped.
struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

impl Drop for DialogRelease {
    fn drop(&mut self) {
        self.layer.remove_dialog(&self.dialog.id());
    }
}

/// Act on a hand-over step: back to the bot when nobody took the call, end
/// the call when the bridged agent hung up.
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
