//! One call: SIP admission to answer, then (for SIP and browser callers
//! alike) the 20 ms media clock, recording, and the
//! decision core driven by what happens on the line.

use super::agent::{LegReport, ReportTo};
use super::events::{EventLog, OnBoard};
use super::handover::AgentLegs;
use super::leg::{CallerLeg, DialogOutcome, SipLeg};
use super::media_runtime::{Ticked, TICK};
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
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
        let _ = Box::pin(tx.reply_with(StatusCode::ServiceUnavailable, vec![retry], None)).await;
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
            let _ = Box::pin(tx.reply(StatusCode::ServerInternalError)).await;
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
    let ended_early = |early: &mut EventLog, reason: &str| {
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
            let logged = r.event(Duration::ZERO, &ended);
            if let Err(e) = logged.and(finalize_recording(r).await.map(|_| ())) {
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
        states: Some(states),
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
        Box::pin(converse(
            shared, who, trunk, leg, recorder, page_key, _on_board,
        )),
    )
    .await;
}

/// Run an answered call, whatever leg the caller is on, until either side
/// ends it: the media clock, the bot, the hand-over, the recording.
///
/// The call's media half ([`Live`]) is stepped every 20 ms by the media
/// engine; this task only wakes for the caller's signalling, for news from
/// what the call started (transcriptions, replies, agent legs) and when the
/// `Call` asks for something (`Output`s).
pub(super) async fn converse(
    shared: Arc<Shared>,
    who: Parties,
    trunk: TrunkConfig,
    leg: CallerLeg,
    recorder: Option<CallRecorder>,
    page_key: String,
    _on_board: OnBoard,
) {
    let Opened {
        cell,
        mut inbox_rx,
        mut signals,
        start,
    } = open_call(&shared, &who, &trunk, leg, recorder, page_key);
    let sp = &shared.config.gateway.speech;
    shared.media_engine.add(cell.clone());
    // Ends the call's ticks however this task ends (even by a panic).
    let _off_engine = OffEngine(cell.clone());

    // Made once: a `cancelled()` future registers with the token's waiter
    // list, and re-making it on every pass costs a lock.
    let shutdown = shared.shutdown.clone();
    let shutdown = shutdown.cancelled();
    tokio::pin!(shutdown);
    let mut shutdown_told = false;
    let ended_by: &str;
    loop {
        {
            let mut live = cell.live.lock().await;
            let failed = cell
                .failed
                .load(Ordering::Acquire)
                .then_some("media_failed");
            if let Some(reason) = failed.or(live.act().await) {
                // A vanished caller never answers our BYE: give it the first
                // retransmissions (RFC 3261 timer E: 0.5, 1, 2, 4 s), not 32 s,
                // so the call — and a shutdown waiting for it — ends.
                // Boxed (as the signal handling below): ~2 KiB of
                // signalling futures that would otherwise sit in every
                // call's task for its whole life.
                if Box::pin(tokio::time::timeout(BYE_PATIENCE, live.leg.hang_up()))
                    .await
                    .is_err()
                {
                    warn!(reason, "no answer to our BYE: the call ends anyway");
                }
                ended_by = reason;
                break;
            }
        }
        tokio::select! {
            () = cell.wake.notified() => {}
            signal = signals.next() => {
                let Some(signal) = signal else { ended_by = "dialog_gone"; break };
                let mut live = cell.live.lock().await;
                let live = &mut *live;
                let now = live.log.start.elapsed();
                match Box::pin(live.leg.on_signal(now, signal, &shared, &mut live.log)).await {
                    DialogOutcome::Continue => {}
                    DialogOutcome::Digit(digit) => {
                        live.call.handle_input(now, Input::Digit { digit, source: "sip_info" });
                    }
                    DialogOutcome::Ended(reason) => {
                        live.log.event(CallEvent::Hangup {
                            reason: reason.to_string(),
                            by: Party::Caller,
                        });
                        ended_by = reason;
                        break;
                    }
                }
            }
            Some(news) = inbox_rx.recv() => {
                let mut live = cell.live.lock().await;
                live.on_news(*news);
            }
            _ = &mut shutdown, if !shutdown_told => {
                shutdown_told = true;
                let mut live = cell.live.lock().await;
                let now = live.log.start.elapsed();
                live.call.handle_input(now, Input::Shutdown);
            }
        }
    }
    // Off the engine: no more ticks; the rest is this task's.
    cell.done.store(true, Ordering::Release);
    let mut live = cell.live.lock().await;
    let live = &mut *live;
    if let (Some(before), Some(agent)) = (live.bridged_at, live.agents.agent_stats()) {
        // Time inside the gateway per direction: the jitter hold measured
        // here, plus the wait for the 20 ms clock to read the socket (0–20 ms).
        let now = live.leg.jitter_stats();
        let caller_hold = if now.played > before.played {
            (now.queued_sum - before.queued_sum) as f64 * 20.0 / (now.played - before.played) as f64
        } else {
            0.0
        };
        live.log.event(CallEvent::BridgeLatency {
            caller_to_agent_hold_ms: caller_hold,
            agent_to_caller_hold_ms: agent.jitter.mean_hold_ms(),
            clock_wait_ms_max: 20,
            agent_media: serde_json::to_value(agent).unwrap_or_default(),
        });
    }
    // Recognise what the caller was still saying, and wait (bounded) for
    // every outstanding result so the event log loses nothing.
    live.call.finish();
    let deadline = Instant::now() + sp.max_latency + Duration::from_secs(5);
    loop {
        while let Some(output) = live.call.poll_output() {
            match output {
                Output::Event(event) => live.log.event(event),
                Output::SubmitAsr {
                    kind,
                    utterance,
                    language,
                } => live.ask_asr(kind, utterance, language),
                Output::CancelAgent(leg) => live.agents.cancel(leg),
                Output::HangUpAgent(leg) => live.agents.hang_up(leg),
                _ => {}
            }
        }
        // Any agent leg the `Call` did not know of is let go too.
        live.agents.finish();
        if live.call.pending_asr() == 0 {
            break;
        }
        match tokio::time::timeout_at(deadline, inbox_rx.recv()).await {
            Ok(Some(news)) => {
                if let Inbox::Asr(reply) = *news {
                    live.call.handle_input(start.elapsed(), Input::Asr(reply));
                }
            }
            _ => {
                warn!(
                    pending = live.call.pending_asr(),
                    "gave up waiting for ASR results at hang-up"
                );
                break;
            }
        }
    }
    let stats = live.leg.stats_json();
    live.log.event(CallEvent::Ended(event::Ended {
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
    if let Some(r) = live.log.recorder.take() {
        match finalize_recording(r).await {
            Ok(dir) => info!(dir = %dir.display(), "recording finalised"),
            Err(e) => tracing::error!(error = %e, "recording finalise failed"),
        }
    }
}

/// Finish a recording on a blocking thread: waiting for the writer (and the
/// disk) must not hold up the async workers that run other calls' tasks.
async fn finalize_recording(r: CallRecorder) -> std::io::Result<std::path::PathBuf> {
    tokio::task::spawn_blocking(move || r.finalize())
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// A live call as the media engine and the call's task share it.
///
/// Laid out in this order (`repr(C)`) so that what every tick reads first —
/// `done`, then the lock — shares a cache line: a call's state is cold when
/// its tick comes round, and each line it touches is a wait on memory.
#[repr(C)]
struct CallCell {
    /// The task has taken the call off the engine.
    done: AtomicBool,
    /// The engine let the call go: its media step panicked.
    failed: AtomicBool,
    live: tokio::sync::Mutex<Live>,
    /// The engine's nudge: the `Call` has outputs for the task.
    wake: tokio::sync::Notify,
}

/// Takes a call off the engine when its task ends, whatever path it ends by.
struct OffEngine(Arc<CallCell>);

impl Drop for OffEngine {
    fn drop(&mut self) {
        self.0.done.store(true, Ordering::Release);
    }
}

/// The most ticks a call catches up on in one pass (the rest are skipped:
/// the jitter buffer absorbs them).
const MAX_CATCH_UP: u64 = 10;

impl Ticked for CallCell {
    fn tick(&self, deadline: Instant) -> bool {
        if self.done.load(Ordering::Acquire) {
            return false;
        }
        // The task holds the call (signalling, a BYE, dialling an agent):
        // it is stepped for the missed ticks on the next pass.
        let Ok(mut live) = self.live.try_lock() else {
            return true;
        };
        let first = *live.grid.get_or_insert(deadline);
        let since = deadline.saturating_duration_since(first).as_nanos();
        let due = u64::try_from((since + TICK.as_nanos() / 2) / TICK.as_nanos()).unwrap_or(0) + 1;
        let mut behind = due.saturating_sub(live.ticks);
        if behind > MAX_CATCH_UP {
            live.ticks += behind - MAX_CATCH_UP;
            behind = MAX_CATCH_UP;
        }
        for _ in 0..behind {
            live.tick(deadline);
        }
        if live.call.has_output() {
            self.wake.notify_one();
        }
        true
    }

    fn failed(&self) {
        self.failed.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// A call opened for the engine: its media half, its inbox and its
/// signalling, and when it was answered.
struct Opened {
    cell: Arc<CallCell>,
    inbox_rx: tokio::sync::mpsc::UnboundedReceiver<Box<Inbox>>,
    signals: super::leg::Signals,
    start: Instant,
}

/// Build the call's `Call`, plumbing and media half. A plain function, not
/// part of [`converse`]'s future: a ~3 KiB `Call` held there before it moves
/// into the cell would keep its space in every call's task for its lifetime.
fn open_call(
    shared: &Arc<Shared>,
    who: &Parties,
    trunk: &TrunkConfig,
    mut leg: CallerLeg,
    recorder: Option<CallRecorder>,
    page_key: String,
) -> Opened {
    let gw = &shared.config.gateway;
    let start = Instant::now();
    let mut log = EventLog {
        recorder,
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
    // Everything that decides lives in `call` (sans-IO); the engine and this
    // task only do the I/O it asks for and feed the answers back.
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
    // Everything the call started answers on one channel.
    // Boxed messages: tokio allocates a block of 32 messages when a channel
    // is made, and an `Inbox` by value would make that ~6.6 KiB per call.
    let (inbox_tx, inbox_rx) = tokio::sync::mpsc::unbounded_channel::<Box<Inbox>>();
    // One synthesiser task per call: replies are rendered off the media path,
    // strictly in the order the bot says them.
    let (say_tx, mut say_rx) = tokio::sync::mpsc::unbounded_channel::<Box<(String, String)>>();
    {
        let tts = shared.tts.clone();
        let inbox = inbox_tx.clone();
        tokio::spawn(async move {
            while let Some(said) = say_rx.recv().await {
                let (text, voice) = *said;
                let tts = tts.clone();
                match tokio::task::spawn_blocking(move || tts.synthesize(&text, &voice)).await {
                    Ok(Ok(p)) => {
                        if inbox.send(Box::new(Inbox::Prompt(p))).is_err() {
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
        ReportTo::new(move |report| inbox.send(Box::new(Inbox::Agent(report))).is_ok())
    };
    let agents = AgentLegs::new(caller_id.clone(), leg_tx);
    let asr_tx = {
        let inbox = inbox_tx.clone();
        ReplyTo::new(move |reply| {
            let _ = inbox.send(Box::new(Inbox::Asr(reply)));
        })
    };
    call.handle_input(Duration::ZERO, Input::Answered);
    // The caller's signalling stays with this task; the rest goes to the engine.
    let signals = leg.take_signals();
    let cell = Arc::new(CallCell {
        live: tokio::sync::Mutex::new(Live {
            // The recording is flushed every so many ticks (no timer per call).
            flush_every: (gw.recording.flush_interval.as_millis() / 20).max(1) as u64,
            shared: shared.clone(),
            call,
            leg,
            agents,
            log,
            bridged_at: None,
            agent_events: Vec::new(),
            digits: Vec::new(),
            ticks: 0,
            grid: None,
            plumbing: Plumbing {
                inbox: inbox_tx.clone(),
                say: say_tx,
                asr: asr_tx,
                page_key,
                call_id: who.call_id.clone(),
            },
        }),
        wake: tokio::sync::Notify::new(),
        done: AtomicBool::new(false),
        failed: AtomicBool::new(false),
    });
    Opened {
        cell,
        inbox_rx,
        signals,
        start,
    }
}

/// What the call's outputs are sent through.
struct Plumbing {
    inbox: tokio::sync::mpsc::UnboundedSender<Box<Inbox>>,
    say: tokio::sync::mpsc::UnboundedSender<Box<(String, String)>>,
    asr: ReplyTo,
    page_key: String,
    call_id: String,
}

/// One answered call: its `Call`, its caller leg and agent legs, its log.
///
/// What every tick reads comes first, together (`repr(C)`, see [`CallCell`]);
/// what only signalling and the hand-over read comes last.
#[repr(C)]
struct Live {
    /// Ticks run (or skipped) so far.
    ticks: u64,
    /// The first tick's grid instant.
    grid: Option<Instant>,
    flush_every: u64,
    shared: Arc<Shared>,
    digits: Vec<char>,
    agent_events: Vec<TransferEvent>,
    leg: CallerLeg,
    agents: AgentLegs,
    log: EventLog,
    call: Call,
    plumbing: Plumbing,
    /// The caller leg's jitter counters when the bridge began.
    bridged_at: Option<crate::media::jitter::JitterStats>,
}

impl Live {
    /// One 20 ms step of the media clock.
    fn tick(&mut self, deadline: Instant) {
        let shared = &*self.shared;
        // One clock read per tick, for its lateness and the call's time.
        let clock = Instant::now();
        shared
            .media_load
            .observe(clock.saturating_duration_since(deadline));
        let gw = &shared.config.gateway;
        let now = clock.saturating_duration_since(self.log.start);
        self.ticks += 1;
        let call = &mut self.call;
        let leg = &mut self.leg;
        // Drain what arrived since the last tick: one read pass per 20 ms
        // per call instead of one wake-up per packet.
        leg.receive(now, &mut self.digits);
        for digit in self.digits.drain(..) {
            call.handle_input(
                now,
                Input::Digit {
                    digit,
                    source: "rfc4733",
                },
            );
        }
        let (caller, digit) = leg.pull_frame();
        if let Some(digit) = digit {
            call.handle_input(
                now,
                Input::Digit {
                    digit,
                    source: "inband",
                },
            );
        }
        let asr_busy = shared.asr.as_ref().is_some_and(|p| p.saturated());
        call.handle_input(
            now,
            Input::CallerAudio {
                frame: &caller,
                asr_busy,
            },
        );
        let bot = call.poll_frame();
        let mut out = bot.unwrap_or([0; FRAME_8K]);
        // A hand-over under way: the `Call` mixes, the agent legs carry the audio.
        let frames = self.agents.receive(now, &mut self.agent_events);
        if let Some(to_caller) = call.handover_frame(now, &caller, bot, frames) {
            out = to_caller;
            self.agents.send();
            if call.bridged_agent().is_some() && self.bridged_at.is_none() {
                // Talking now: the caller's leg drops to the bridge's
                // shallower jitter buffer too.
                leg.set_jitter_depth(shared.config.agents.bridge_jitter);
                self.bridged_at = Some(leg.jitter_stats());
            }
        }
        for e in self.agent_events.drain(..) {
            call.handle_input(now, Input::Agent(e));
        }
        self.agents.prune();
        leg.send_frame(&out);
        if let Some(r) = self.log.recorder.as_mut() {
            r.write(&caller, &out);
            if self.ticks.is_multiple_of(self.flush_every) {
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
        match leg.session_check(now, shared) {
            crate::sip::session_timer::TimerCheck::Expired => {
                warn!("session timer expired without a refresh: ending the call");
                call.handle_input(now, Input::SessionExpired);
            }
            crate::sip::session_timer::TimerCheck::Refresh => {
                self.log
                    .event(CallEvent::SipSessionRefresh { by: Party::Gateway });
            }
            crate::sip::session_timer::TimerCheck::Fine => {}
        }
    }

    /// News from what the call started.
    fn on_news(&mut self, news: Inbox) {
        let now = self.log.start.elapsed();
        match news {
            Inbox::Asr(reply) => self.call.handle_input(now, Input::Asr(reply)),
            Inbox::Prompt(p) => self.call.handle_input(now, Input::Prompt(p)),
            Inbox::Webhook { intent, reply } => {
                self.call
                    .handle_input(now, Input::WebhookReply { intent, reply });
            }
            Inbox::Agent(report) => {
                if let Some(e) = self.agents.on_report(&self.shared, report, &mut self.log) {
                    self.call.handle_input(now, Input::Agent(e));
                }
            }
            Inbox::Whisper(whisper) => self.call.handle_input(now, Input::WhisperReady(whisper)),
        }
    }

    /// Queue a transcription the `Call` asked for.
    fn ask_asr(
        &mut self,
        kind: JobKind,
        utterance: crate::speech::vad::Utterance,
        language: Option<String>,
    ) {
        let now = self.log.start.elapsed();
        submit_asr(
            &self.shared,
            &mut self.call,
            kind,
            utterance,
            language,
            &self.plumbing.asr,
            now,
        );
    }

    /// Do what the `Call` asks; the hang-up reason once it asks to end.
    async fn act(&mut self) -> Option<&'static str> {
        let shared = self.shared.clone();
        let gw = &shared.config.gateway;
        let mut hangup = None;
        while let Some(output) = self.call.poll_output() {
            match output {
                Output::Event(event) => self.log.event(event),
                Output::SubmitAsr {
                    kind,
                    utterance,
                    language,
                } => self.ask_asr(kind, utterance, language),
                Output::Synthesize { text, voice } => {
                    let _ = self.plumbing.say.send(Box::new((text, voice)));
                }
                Output::CallWebhook {
                    intent,
                    url,
                    timeout,
                    body,
                } => {
                    let inbox = self.plumbing.inbox.clone();
                    tokio::task::spawn_blocking(move || {
                        let reply = crate::api::webhook::ask(&url, timeout, &body);
                        let _ = inbox.send(Box::new(Inbox::Webhook { intent, reply }));
                    });
                }
                Output::Transfer {
                    reason,
                    mut summary,
                } => {
                    info!(%reason, summary = %summary["text"], "hand-over decided");
                    self.log.event(CallEvent::Handover(event::Handover {
                        reason: reason.clone(),
                        summary: summary.clone(),
                        unix_ms: chrono::Utc::now().timestamp_micros() as f64 / 1000.0,
                    }));
                    // The agent's Call-Info link: this call's page, opened by its key.
                    summary["page"] = json!(format!(
                        "{}/calls/{}?key={}",
                        gw.http.public_url,
                        url_escape(&self.plumbing.call_id),
                        self.plumbing.page_key
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
                    let (tts, inbox) = (shared.tts.clone(), self.plumbing.inbox.clone());
                    tokio::task::spawn_blocking(move || {
                        let prompt = tts
                            .synthesize(&text, &voice)
                            .map_err(|e| warn!(error = %e, "whisper synthesis failed"))
                            .ok();
                        let _ = inbox.send(Box::new(Inbox::Whisper(prompt)));
                    });
                    self.agents.decided(summary);
                }
                Output::DialAgent { leg, uri } => {
                    if let Err(why) = self.agents.dial(&shared, leg, &uri).await {
                        let failed = TransferEvent::Failed {
                            leg,
                            status: 0,
                            why,
                        };
                        let now = self.log.start.elapsed();
                        self.call.handle_input(now, Input::Agent(failed));
                    }
                }
                Output::CancelAgent(leg) => self.agents.cancel(leg),
                Output::HangUpAgent(leg) => self.agents.hang_up(leg),
                Output::Hangup { reason } => hangup = Some(reason),
            }
        }
        hangup
    }
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
