//! One call's conversation as a sans-IO state machine: everything that
//! decides, nothing that waits.
//!
//! [`Call`] owns the greeting flow, the decision core, the caller's voice
//! activity detection and the scheduling of partial and final transcriptions,
//! barge-in, the goodbye hold, DTMF arbitration between the greeting flow and
//! the core, and the bot's voice (the prompts it plays, frame by frame). The
//! shell — the live gateway or `voicegate replay` — feeds it [`Input`]s with
//! the time passed in, drains [`Output`]s with [`Call::poll_output`], and
//! pulls the bot's next 20 ms frame with [`Call::poll_frame`]. It runs
//! Whisper, the synthesiser and webhooks itself and hands their answers back
//! as inputs. No tokio, sockets, files or wall clock in here (the pattern of
//! str0m's `Rtc` and quinn-proto's `Connection`): that is what lets a replay
//! of a recording take the same decisions — barge-in, goodbye and DTMF
//! included — as the live call did.
//!
//! With agents configured ([`CallSetup::agents`]) the `Call` also runs the
//! hand-over: the [`Transfer`] orchestration (which agent to ring, when to
//! give up, whisper, accept, bridge) and the [`HandoverAudio`] mixing (hold
//! music, the whisper to the agent only, then both ways). The shell only
//! dials, cancels and hangs up agent legs when told ([`Output::DialAgent`],
//! …), reports their SIP outcomes ([`Input::Agent`]), and moves their audio
//! ([`Call::handover_frame`]).

use super::agents::AgentsConfig;
use super::core::{CallCore, CoreAction, CoreEvent};
use super::event::{self, CallEvent, DecisionEvent, Party};
use super::greeting::{FlowAction, FlowEvent, GreetingFlow};
use super::handover_audio::{AgentFrame, AudioEvent, Frame, HandoverAudio};
use super::policy::Policy;
use super::transfer::{plan, LegId, Transfer, TransferAction, TransferEvent};
use crate::media::jitter::FRAME_8K;
use crate::media::prompt::{Prompt, PromptPlayer};
use crate::media::resample::Upsampler;
use crate::speech::asr::Stages;
use crate::speech::pipeline::result_for;
use crate::speech::pool::{AsrReply, JobKind};
use crate::speech::vad::{Segmenter, Utterance, VadConfig, VadEvent};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// How long the bot waits after deciding to end the call before hanging up,
/// so its goodbye reaches the synthesiser and starts to play (once it plays,
/// the hang-up waits for its end).
pub const GOODBYE_GRACE: Duration = Duration::from_millis(1500);

/// What a call is set up with.
pub struct CallSetup {
    /// The decision rules.
    pub policy: Arc<Policy>,
    /// The callers' language (`en`, `zh`, … or `auto`: from the first utterance).
    pub language: String,
    /// The language to ask Whisper for (the trunk's or number's); `None`: the
    /// recogniser's default.
    pub asr_language: Option<String>,
    /// The caller's number, if not anonymous.
    pub caller: Option<String>,
    /// Voice activity detection, from `[speech]` (live and replay alike).
    pub vad: VadConfig,
    /// How often a partial transcription is asked for while the caller talks.
    pub partial_interval: Duration,
    /// The most (latest) audio a partial transcription decodes; `None`: all.
    pub partial_window: Option<Duration>,
    /// The recorded greeting played at answer, if any.
    pub greeting: Option<Prompt>,
    /// Whether the caller is listened to at all (no recogniser: no speech).
    pub listen: bool,
    /// `[media] max_call_duration_s`: the call ends (`max_duration`) this
    /// long after answer, whatever it is doing. `None`: no limit.
    pub max_duration: Option<Duration>,
    /// Who takes hand-overs (`agents.toml`). `Some`: the `Call` runs the
    /// hand-over (agent legs through [`Output::DialAgent`] and
    /// [`Input::Agent`]). `None` (a replay): it only decides it
    /// ([`Output::Transfer`]).
    pub agents: Option<Arc<AgentsConfig>>,
    /// Played to the caller while agents ring (else the bot's notice, then
    /// silence).
    pub hold_music: Option<Prompt>,
}

/// Something that happened, for the call.
#[derive(Debug)]
pub enum Input<'a> {
    /// The call was answered (time zero).
    Answered,
    /// One 20 ms frame of the caller at 8 kHz (after the jitter buffer; a
    /// lost frame is silence). Also the call's clock tick.
    CallerAudio {
        /// 160 samples.
        frame: &'a [i16],
        /// The recogniser pool is saturated: no partial transcription now.
        asr_busy: bool,
    },
    /// One 20 ms frame of the caller already at 16 kHz (replay of a wideband
    /// file). Also the call's clock tick.
    CallerAudioWideband(&'a [f32]),
    /// The caller pressed a key.
    Digit {
        /// The key.
        digit: char,
        /// `rfc4733`, `inband` or `sip_info`.
        source: &'static str,
    },
    /// A transcription asked for with [`Output::SubmitAsr`] came back.
    Asr(AsrReply),
    /// A final transcription could not be queued (the pool is full).
    AsrRefused {
        /// The utterance's start (s).
        start_s: f64,
        /// Its end (s).
        end_s: f64,
    },
    /// Speech asked for with [`Output::Synthesize`] is ready to play.
    Prompt(Prompt),
    /// A webhook asked with [`Output::CallWebhook`] answered.
    WebhookReply {
        /// The intent it was asked for.
        intent: String,
        /// Its text, or why it failed.
        reply: Result<String, String>,
    },
    /// An agent leg's SIP outcome: ringing, answered (its media is up),
    /// failed, a key the agent pressed, hung up.
    Agent(TransferEvent),
    /// The whisper (synthesised by the shell on [`Output::Transfer`]) is ready
    /// (`None`: it could not be made; the agent gets the summary as data only).
    WhisperReady(Option<Prompt>),
    /// The gateway is shutting down: end the call.
    Shutdown,
    /// No media from the caller for too long: end the call.
    MediaTimeout,
    /// The caller has held the call longer than `[media] hold_timeout_s`.
    HoldTimeout,
    /// The caller's RFC 4028 session timer ran out without a refresh.
    SessionExpired,
}

/// What the shell must do.
#[derive(Debug)]
pub enum Output {
    /// Write an event to the call's `events.jsonl` and the call board.
    Event(CallEvent),
    /// Transcribe this audio; answer with [`Input::Asr`] (or
    /// [`Input::AsrRefused`] when a final one cannot be queued).
    SubmitAsr {
        /// Final (the utterance ended) or partial.
        kind: JobKind,
        /// The audio and its timing.
        utterance: Utterance,
        /// The language to ask for.
        language: Option<String>,
    },
    /// Render this text as speech; answer with [`Input::Prompt`].
    Synthesize {
        /// What to say.
        text: String,
        /// The espeak-ng voice (`en-us`, `cmn`, …).
        voice: String,
    },
    /// Ask the intent's webhook; answer with [`Input::WebhookReply`].
    CallWebhook {
        /// The intent.
        intent: String,
        /// Where.
        url: String,
        /// How long the core waits for it.
        timeout: Duration,
        /// The request body.
        body: Value,
    },
    /// Hand the caller to a human.
    Transfer {
        /// Why (`frustration`, `waited`, …).
        reason: String,
        /// The agent summary.
        summary: Value,
    },
    /// Call an agent (INVITE with the summary); report its outcomes with
    /// [`Input::Agent`] and its audio through [`Call::handover_frame`].
    DialAgent {
        /// The leg's id.
        leg: LegId,
        /// The agent's SIP URI.
        uri: String,
    },
    /// CANCEL a ringing agent leg.
    CancelAgent(LegId),
    /// BYE an answered agent leg.
    HangUpAgent(LegId),
    /// End the call (BYE) — the `call.hangup` event is already out.
    Hangup {
        /// Why.
        reason: &'static str,
    },
}

/// A hand-over the `Call` runs: who is rung, and what each party hears.
struct Handover {
    machine: Transfer,
    audio: HandoverAudio,
}

/// The caller's side of speech: 8 kHz → 16 kHz → VAD → transcription jobs.
struct Ears {
    upsampler: Option<Upsampler>,
    segmenter: Segmenter,
    wideband: Vec<f32>,
    partial_interval: Duration,
    partial_window: Option<Duration>,
    last_partial: Duration,
    /// Final jobs asked for and not yet answered.
    pending: usize,
    /// The start (s) of each utterance whose final text is awaited, in the
    /// order the VAD closed them: answers are decided in this order, however
    /// the pool's workers return them.
    awaited: VecDeque<f64>,
    /// Final answers that came before an earlier utterance's.
    early_answers: Vec<AsrReply>,
    /// The transcription started when the caller paused, if any.
    early: Option<EarlyJob>,
}

/// A transcription started on [`VadEvent::Paused`]: when the utterance
/// closes with exactly that audio (the caller stayed silent), its text is
/// the final one — no second decode, and ready up to a hangover sooner.
/// When the caller talks on, it is dropped.
struct EarlyJob {
    /// The paused utterance's start, end and length: what identifies it.
    start: Duration,
    end: Duration,
    samples: usize,
    /// Stream time it was asked for.
    asked_at: Duration,
    /// The utterance it turned out to be, once closed.
    closed: Option<Utterance>,
    /// Its answer, when it came before the utterance closed.
    reply: Option<AsrReply>,
}

/// Two stream times (s) computed from the same sample count.
fn same_time(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// One call's conversation. See the module documentation.
pub struct Call {
    flow: GreetingFlow,
    core: CallCore,
    /// Decisions already turned into events.
    logged: usize,
    /// The greeting is the prompt file; the core's greeting text is not spoken twice.
    greeting_text: String,
    greeting: Option<PromptPlayer>,
    /// The greeting prompt, until the call is answered.
    greeting_prompt: Option<Prompt>,
    /// The bot's replies, synthesised, waiting to play.
    bot_queue: VecDeque<Prompt>,
    bot_player: Option<PromptPlayer>,
    /// The call's base voice (the replies in Chinese use `cmn` whatever it is).
    voice: String,
    ears: Option<Ears>,
    asr_language: Option<String>,
    /// The bot said goodbye: the hang-up reason, and when it may happen.
    goodbye: Option<(&'static str, Option<Duration>)>,
    /// A hand-over is under way: barge-in no longer stops the notice.
    handing_over: bool,
    /// The call is over for the conversation (hung up or being finished).
    hung_up: bool,
    /// A final utterance could not be queued since the last tick.
    asr_refused: bool,
    out: VecDeque<Output>,
    /// The utterance results the core was fed, with the intent each served.
    heard: Vec<(crate::speech::pipeline::UtteranceResult, Option<String>)>,
    said: Vec<(Duration, String)>,
    transfer: Option<(Duration, String, Value)>,
    caller: Option<String>,
    /// The longest the call may last (from answer).
    max_duration: Option<Duration>,
    /// The time of the last input.
    now: Duration,
    agents: Option<Arc<AgentsConfig>>,
    hold_music: Option<Prompt>,
    /// The hand-over under way, when the `Call` runs it.
    handover: Option<Handover>,
}

impl Call {
    /// A call not yet answered.
    pub fn new(setup: CallSetup) -> Self {
        let core = CallCore::new(setup.policy.clone(), &setup.language);
        let greeting_text = setup.policy.flow.phrases(&setup.language).greeting;
        let voice = match setup.language.as_str() {
            "zh" => "cmn",
            "en" | "auto" => "en-us",
            other => other,
        }
        .to_string();
        let ears = setup.listen.then(|| Ears {
            upsampler: Upsampler::new()
                .map_err(|e| tracing::error!(error = %e, "no resampler: speech recognition off for this call"))
                .ok(),
            segmenter: Segmenter::new(setup.vad),
            wideband: Vec::with_capacity(320),
            partial_interval: setup.partial_interval,
            partial_window: setup.partial_window,
            last_partial: Duration::ZERO,
            pending: 0,
            awaited: VecDeque::new(),
            early_answers: Vec::new(),
            early: None,
        });
        Self {
            flow: GreetingFlow::default(),
            core,
            logged: 0,
            greeting_text,
            greeting: None,
            greeting_prompt: setup.greeting,
            bot_queue: VecDeque::new(),
            bot_player: None,
            voice,
            ears,
            asr_language: setup.asr_language,
            goodbye: None,
            handing_over: false,
            hung_up: false,
            asr_refused: false,
            out: VecDeque::new(),
            heard: Vec::new(),
            said: Vec::new(),
            transfer: None,
            caller: setup.caller,
            max_duration: setup.max_duration,
            now: Duration::ZERO,
            agents: setup.agents,
            hold_music: setup.hold_music,
            handover: None,
        }
    }

    /// Feed one input at `now` (since answer).
    pub fn handle_input(&mut self, now: Duration, input: Input<'_>) {
        self.now = now;
        match input {
            Input::Answered => {
                let caller = self.caller.clone();
                self.feed(now, CoreEvent::Answered { caller });
                let actions = self.flow.handle(now, FlowEvent::Answered);
                self.apply_flow(actions);
            }
            Input::CallerAudio { frame, asr_busy } => {
                let mut wide = self.take_wideband();
                if let Some(up) = self.ears.as_mut().and_then(|e| e.upsampler.as_mut()) {
                    wide.clear();
                    up.process(frame, &mut wide);
                    self.hear(now, &wide, asr_busy);
                }
                if let Some(e) = self.ears.as_mut() {
                    e.wideband = wide;
                }
                self.tick(now);
            }
            Input::CallerAudioWideband(frame) => {
                self.hear(now, frame, false);
                self.tick(now);
            }
            Input::Digit { digit, source } => {
                if self.hung_up {
                    return;
                }
                // The greeting flow hears keys (`#` ends the call) unless the
                // core is collecting digits (a callback number, a menu).
                if self.core.collecting_digits() {
                    self.event(CallEvent::Dtmf(event::Dtmf {
                        digit: digit.to_string(),
                        source: source.to_string(),
                    }));
                } else {
                    let actions = self.flow.handle(now, FlowEvent::Digit { digit, source });
                    self.apply_flow(actions);
                }
                self.feed(now, CoreEvent::Dtmf(digit));
            }
            Input::Asr(reply) => self.on_asr(now, reply),
            Input::AsrRefused { start_s, end_s } => {
                if let Some(e) = self.ears.as_mut() {
                    e.pending = e.pending.saturating_sub(1);
                    e.awaited.retain(|s| !same_time(*s, start_s));
                }
                // Answers held for this one's are due now.
                self.release_finals(now);
                self.asr_refused = true;
                self.event(CallEvent::AsrOverloaded {
                    reason: "queue_full".into(),
                    start_s,
                    end_s: Some(end_s),
                });
            }
            Input::Prompt(p) => self.bot_queue.push_back(p),
            Input::WebhookReply { intent, reply } => {
                self.event(CallEvent::WebhookReply {
                    intent: intent.clone(),
                    ok: reply.is_ok(),
                    reply: match &reply {
                        Ok(t) | Err(t) => t.clone(),
                    },
                });
                self.feed(now, CoreEvent::WebhookReply { intent, reply });
            }
            Input::Agent(event) => self.on_agent(now, event),
            Input::WhisperReady(prompt) => {
                if let Some(h) = self.handover.as_mut() {
                    h.audio.whisper_ready(prompt);
                }
            }
            Input::Shutdown => self.hang_up("gateway_shutdown"),
            Input::MediaTimeout => self.hang_up("rtp_timeout"),
            Input::HoldTimeout => self.hang_up("hold_timeout"),
            Input::SessionExpired => self.hang_up("session_expired"),
        }
    }

    /// Whether the shell has something to do (`poll_output` would give it).
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// The next thing the shell must do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The bot's next 20 ms frame to the caller: the greeting, else the reply
    /// playing; `None` while the bot is silent. Call once per tick.
    pub fn poll_frame(&mut self) -> Option<[i16; FRAME_8K]> {
        if let Some(p) = self.greeting.as_mut() {
            return match p.next_frame() {
                Some(f) => Some(f),
                None => {
                    self.greeting = None;
                    let actions = self.flow.handle(self.now, FlowEvent::PromptFinished);
                    self.apply_flow(actions);
                    Some([0; FRAME_8K])
                }
            };
        }
        if self.bot_player.as_ref().is_none_or(|p| p.finished()) {
            self.bot_player = self.bot_queue.pop_front().map(PromptPlayer::new);
        }
        self.bot_player.as_mut().and_then(|p| p.next_frame())
    }

    /// When the call next needs time to pass without audio: the goodbye's
    /// hang-up. (Audio frames are the call's clock; a shell with no audio to
    /// feed ticks at this time.)
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.hung_up {
            return None;
        }
        let goodbye = self.goodbye.and_then(|(_, at)| at);
        match (goodbye, self.max_duration) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The call is ending: transcribe what the caller was still saying. The
    /// results that come back are logged, no longer decided on.
    pub fn finish(&mut self) {
        self.hung_up = true;
        // The caller is gone: ringing agents are cancelled, a bridged or
        // whispered-to agent hung up.
        self.on_agent(self.now, TransferEvent::CallerHungUp);
        self.flush_speech();
    }

    /// One 20 ms tick of a hand-over the `Call` runs: `agents` holds what
    /// each answered agent leg sent (`heard`); on return `out` is what to
    /// send each. Returns what the caller hears (hold, the bot's notice, or
    /// the agent once bridged), or `None` with no hand-over under way (the
    /// caller hears [`Call::poll_frame`]). Call once per tick, after
    /// [`Input::CallerAudio`] and `poll_frame`.
    pub fn handover_frame(
        &mut self,
        now: Duration,
        caller: &[i16],
        bot: Option<Frame>,
        agents: &mut [AgentFrame],
    ) -> Option<Frame> {
        let h = self.handover.as_mut()?;
        let mut happened = Vec::new();
        let to_caller = h
            .audio
            .tick(now, h.machine.bridged(), caller, bot, agents, &mut happened);
        for e in happened {
            match e {
                AudioEvent::WhisperStarted { leg, after_answer } => {
                    self.event(CallEvent::TransferWhisperStarted {
                        leg,
                        ms_after_answer: after_answer.as_secs_f64() * 1000.0,
                    })
                }
                AudioEvent::WhisperFinished { leg, played } => {
                    if played {
                        self.event(CallEvent::TransferWhisperFinished { leg });
                    }
                    self.on_agent(now, TransferEvent::WhisperFinished(leg));
                }
            }
        }
        // Ring and accept deadlines.
        self.on_agent(now, TransferEvent::Tick);
        Some(to_caller)
    }

    /// The agent leg caller and agent are bridged on, if they are.
    pub fn bridged_agent(&self) -> Option<LegId> {
        self.handover.as_ref().and_then(|h| h.machine.bridged())
    }

    /// The caller's audio is over (a replay's end of file): what they were
    /// still saying is transcribed and, unless the call has ended, decided on.
    pub fn flush_speech(&mut self) {
        if let Some(u) = self.ears.as_mut().and_then(|e| e.segmenter.finish()) {
            self.submit_final(u);
        }
    }

    /// Final transcriptions asked for and not yet answered.
    pub fn pending_asr(&self) -> usize {
        self.ears.as_ref().map_or(0, |e| e.pending)
    }

    /// The decision core (decisions, intents, summary).
    pub fn core(&self) -> &CallCore {
        &self.core
    }

    /// Every final utterance the core was fed, with the intent it served.
    pub fn heard(&self) -> &[(crate::speech::pipeline::UtteranceResult, Option<String>)] {
        &self.heard
    }

    /// What the bot said, and when.
    pub fn said(&self) -> &[(Duration, String)] {
        &self.said
    }

    /// The hand-over decided, if any: when, why, the summary.
    pub fn transfer(&self) -> Option<&(Duration, String, Value)> {
        self.transfer.as_ref()
    }

    /// The hang-up decided, if any.
    pub fn hung_up(&self) -> bool {
        self.hung_up
    }

    /// The 16 kHz scratch buffer, lent out while `hear` borrows `self`.
    fn take_wideband(&mut self) -> Vec<f32> {
        self.ears
            .as_mut()
            .map(|e| std::mem::take(&mut e.wideband))
            .unwrap_or_default()
    }

    /// Hear 20 ms of the caller at 16 kHz: VAD, transcription jobs, barge-in.
    fn hear(&mut self, now: Duration, wideband: &[f32], asr_busy: bool) {
        let Some(ears) = self.ears.as_mut() else {
            return;
        };
        let mut started = false;
        let mut finals = Vec::new();
        let mut skipped = Vec::new();
        let mut paused = None;
        for ev in ears.segmenter.push(wideband) {
            match ev {
                VadEvent::Paused(u) => paused = Some(u),
                VadEvent::SpeechStarted { at } => {
                    started = true;
                    ears.last_partial = at;
                    self.out.push_back(Output::Event(CallEvent::SpeechStarted {
                        at_s: at.as_secs_f64(),
                    }));
                }
                VadEvent::Utterance(u) => finals.push(u),
                VadEvent::TooShort(u) => skipped.push(u),
            }
        }
        let vad_now = ears.segmenter.now();
        // One early job at a time: an earlier utterance still waiting for its
        // early answer keeps it (this one is transcribed at its close).
        let waiting = ears.early.as_ref().is_some_and(|e| e.closed.is_some());
        if let Some(u) = paused.filter(|_| !asr_busy && !self.hung_up && !waiting) {
            // A partial now would decode the same audio again.
            ears.last_partial = vad_now;
            ears.early = Some(EarlyJob {
                start: u.start,
                end: u.end,
                samples: u.samples.len(),
                asked_at: vad_now,
                closed: None,
                reply: None,
            });
            self.out.push_back(Output::SubmitAsr {
                kind: JobKind::Early,
                utterance: u,
                language: self.asr_language.clone(),
            });
        }
        if let Some((start, audio)) = ears.segmenter.in_progress() {
            if vad_now.saturating_sub(ears.last_partial) >= ears.partial_interval
                && vad_now.saturating_sub(start) >= ears.partial_interval
                && !asr_busy
                && !self.hung_up
            {
                ears.last_partial = vad_now;
                // Only the latest stretch: a partial's cost stays bounded
                // (decoding the whole prefix every interval grows with the
                // square of the utterance's length).
                let keep = ears
                    .partial_window
                    .map_or(audio.len(), |w| (w.as_millis() as usize) * 16)
                    .min(audio.len());
                let skipped = audio.len() - keep;
                // The audio ends now (it begins with the VAD's pre-roll).
                let start = if skipped > 0 {
                    vad_now.saturating_sub(Duration::from_micros(keep as u64 * 1_000_000 / 16_000))
                } else {
                    start
                };
                self.out.push_back(Output::SubmitAsr {
                    kind: JobKind::Partial,
                    utterance: Utterance {
                        start,
                        end: vad_now,
                        voiced: vad_now.saturating_sub(start),
                        loudness_dbfs: 0.0,
                        forced_cut: false,
                        samples: audio[skipped..].to_vec(),
                        samples_start: start,
                        closed_at: vad_now,
                    },
                    language: self.asr_language.clone(),
                });
            }
        }
        for u in finals {
            self.submit_final(u);
        }
        for u in skipped {
            // Too short to be words: not transcribed, and to the decision
            // core it is what Whisper would have made of it — nothing.
            self.event(CallEvent::UtteranceSkipped {
                start_s: u.start.as_secs_f64(),
                end_s: u.end.as_secs_f64(),
                voiced_ms: u.voiced.as_millis() as u64,
                reason: "too_short".into(),
            });
            if !self.hung_up {
                let nothing = result_for(&u, String::new(), String::new());
                self.feed(now, CoreEvent::Utterance(nothing));
            }
        }
        if started && !self.hung_up {
            self.feed(now, CoreEvent::SpeechStarted);
            if !self.handing_over {
                // Barge-in: the caller talks, the bot stops (not the greeting,
                // and not the hand-over notice: a person is on the way).
                if self.bot_player.as_ref().is_some_and(|p| !p.finished())
                    || !self.bot_queue.is_empty()
                {
                    self.event(CallEvent::BotInterrupted);
                }
                if let Some(p) = self.bot_player.as_mut() {
                    p.stop();
                }
                self.bot_queue.clear();
            }
        }
    }

    fn submit_final(&mut self, u: Utterance) {
        let Some(ears) = self.ears.as_mut() else {
            return;
        };
        ears.pending += 1;
        ears.awaited.push_back(u.start.as_secs_f64());
        match ears.early.take() {
            // The caller stayed silent since the pause: the early job has
            // this very audio. Its answer is (or will be) the final one.
            Some(mut early)
                if early.closed.is_none()
                    && early.end == u.end
                    && early.samples == u.samples.len() =>
            {
                match early.reply.take() {
                    None => {
                        early.closed = Some(u);
                        ears.early = Some(early);
                        return;
                    }
                    Some(done @ AsrReply::Done { .. }) => {
                        self.early_is_final(u.closed_at, &u, early.asked_at, done);
                        return;
                    }
                    // Refused or failed early: ask again, as a final.
                    Some(_) => {}
                }
            }
            // An earlier utterance's early job, still to answer: kept.
            Some(earlier) if earlier.closed.is_some() => ears.early = Some(earlier),
            // Talked on since the pause (or none): its answer is dropped.
            _ => {}
        }
        self.out.push_back(Output::SubmitAsr {
            kind: JobKind::Final,
            utterance: u,
            language: self.asr_language.clone(),
        });
    }

    /// The call's clock: deadlines, the goodbye hold.
    fn tick(&mut self, now: Duration) {
        if self.hung_up {
            return;
        }
        if self.max_duration.is_some_and(|max| now >= max) {
            self.hang_up("max_duration");
            return;
        }
        if std::mem::take(&mut self.asr_refused) {
            self.feed(now, CoreEvent::AsrUnavailable);
        }
        self.feed(now, CoreEvent::Tick);
        if let Some((reason, heard_after)) = self.goodbye {
            match heard_after {
                // Give the synthesiser a moment to deliver the goodbye; once
                // it plays, the hang-up waits for its end.
                None => self.goodbye = Some((reason, Some(now + GOODBYE_GRACE))),
                Some(at) => {
                    let speaking = self.bot_player.as_ref().is_some_and(|p| !p.finished())
                        || !self.bot_queue.is_empty();
                    if !speaking && now >= at {
                        self.hang_up(reason);
                    }
                }
            }
        }
    }

    fn on_asr(&mut self, now: Duration, reply: AsrReply) {
        let early_reply = matches!(
            reply,
            AsrReply::Done {
                kind: JobKind::Early,
                ..
            } | AsrReply::Overloaded {
                kind: JobKind::Early,
                ..
            } | AsrReply::Failed {
                kind: JobKind::Early,
                ..
            }
        );
        if early_reply {
            self.on_early(now, reply);
            return;
        }
        let is_final = matches!(
            reply,
            AsrReply::Done {
                kind: JobKind::Final,
                ..
            } | AsrReply::Overloaded {
                kind: JobKind::Final,
                ..
            } | AsrReply::Failed {
                kind: JobKind::Final,
                ..
            }
        );
        if !is_final {
            self.on_answer(now, reply);
            return;
        }
        // Two workers may answer one caller's utterances out of order (a
        // short one overtaking a long one under load): each is decided only
        // once every utterance closed before it has been, as a replay does.
        let start = match &reply {
            AsrReply::Done { result, .. } => result.start_s,
            AsrReply::Overloaded { start_s, .. } | AsrReply::Failed { start_s, .. } => *start_s,
        };
        if let Some(ears) = self.ears.as_mut() {
            match ears.awaited.iter().position(|s| same_time(*s, start)) {
                Some(0) => {
                    ears.awaited.pop_front();
                }
                Some(_) => {
                    ears.early_answers.push(reply);
                    return;
                }
                None => {} // not awaited (asked before a restart of the VAD?): decided now
            }
        }
        self.on_answer(now, reply);
        self.release_finals(now);
    }

    /// Decide the held answers whose turn has come.
    fn release_finals(&mut self, now: Duration) {
        loop {
            let Some(ears) = self.ears.as_mut() else {
                return;
            };
            let Some(front) = ears.awaited.front().copied() else {
                return;
            };
            let Some(i) = ears.early_answers.iter().position(|r| match r {
                AsrReply::Done { result, .. } => same_time(result.start_s, front),
                AsrReply::Overloaded { start_s, .. } | AsrReply::Failed { start_s, .. } => {
                    same_time(*start_s, front)
                }
            }) else {
                return;
            };
            ears.awaited.pop_front();
            let reply = ears.early_answers.swap_remove(i);
            self.on_answer(now, reply);
        }
    }

    /// A final or partial answer, in its turn.
    fn on_answer(&mut self, now: Duration, reply: AsrReply) {
        let partial = matches!(
            reply,
            AsrReply::Done {
                kind: JobKind::Partial,
                ..
            }
        );
        if !partial {
            if let Some(e) = self.ears.as_mut() {
                e.pending = e.pending.saturating_sub(1);
            }
        }
        let event = match reply {
            AsrReply::Done {
                kind: JobKind::Final,
                result,
                latency,
                decode,
                stages,
            } => {
                tracing::info!(text = %result.text, start_s = result.start_s, latency_ms = latency.as_millis() as u64, "utterance");
                // Whisper's part, by stage (a replay, which has no pool,
                // writes none).
                let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
                let staged = (stages != Stages::default()).then_some(stages);
                self.event(CallEvent::Utterance(Box::new(event::Utterance {
                    result: result.clone(),
                    latency_ms: latency.as_millis() as u64,
                    decode_ms: decode.as_millis() as u64,
                    // Waiting for a worker; then Whisper (mel, encoder and
                    // decoder in one call) and the embedding.
                    queue_ms: latency.saturating_sub(decode).as_millis() as u64,
                    mel_ms: staged.map(|s| ms(s.mel)),
                    encoder_ms: staged.map(|s| ms(s.encoder)),
                    decoder_ms: staged.map(|s| ms(s.decoder)),
                })));
                Some(CoreEvent::Utterance(result))
            }
            AsrReply::Done { result, .. } => {
                if !result.text.is_empty() {
                    self.event(CallEvent::TranscriptPartial {
                        start_s: result.start_s,
                        text: result.text,
                    });
                }
                None
            }
            AsrReply::Overloaded {
                reason, start_s, ..
            } => {
                tracing::warn!(reason, start_s, "ASR overloaded");
                self.event(CallEvent::AsrOverloaded {
                    reason: reason.to_string(),
                    start_s,
                    end_s: None,
                });
                Some(CoreEvent::AsrUnavailable)
            }
            // An interim transcript is only a preview: its failure leaves
            // the call to its final one.
            AsrReply::Failed {
                kind: JobKind::Partial,
                error,
                ..
            } => {
                tracing::warn!(%error, "interim transcript failed");
                None
            }
            AsrReply::Failed { error, .. } => {
                tracing::warn!(%error, "ASR failed");
                self.event(CallEvent::AsrFailed {
                    error: error.to_string(),
                });
                Some(CoreEvent::AsrUnavailable)
            }
        };
        if self.hung_up {
            return;
        }
        match event {
            // Utterances are decided at the moment the VAD closed them — the
            // time a replay of the call uses too.
            Some(CoreEvent::Utterance(u)) => {
                let at = Duration::from_secs_f64(u.closed_at_s);
                let before = self.core.intents().len();
                self.feed(at, CoreEvent::Utterance(u.clone()));
                let intent = self.core.intents().get(before).cloned();
                self.heard.push((u, intent));
            }
            Some(e) => self.feed(now, e),
            None => {}
        }
    }

    /// The answer to an early job: kept until its utterance closes, used as
    /// the final text if it has closed, dropped if the caller talked on.
    fn on_early(&mut self, now: Duration, reply: AsrReply) {
        let Some(ears) = self.ears.as_mut() else {
            return;
        };
        let Some(mut early) = ears.early.take() else {
            return;
        };
        let current = match &reply {
            AsrReply::Done { result, .. } => same_time(result.end_s, early.end.as_secs_f64()),
            AsrReply::Overloaded { start_s, .. } => same_time(*start_s, early.start.as_secs_f64()),
            AsrReply::Failed { .. } => true,
        };
        if !current {
            ears.early = Some(early);
            return;
        }
        let Some(u) = early.closed.take() else {
            early.reply = Some(reply);
            ears.early = Some(early);
            return;
        };
        self.early_is_final(now, &u, early.asked_at, reply);
    }

    /// An early job's answer, as the final one for `u` (asked for at
    /// `asked_at`): decided at `u`'s close, its latency counted from there.
    fn early_is_final(
        &mut self,
        now: Duration,
        u: &Utterance,
        asked_at: Duration,
        reply: AsrReply,
    ) {
        let reply = match reply {
            AsrReply::Done {
                mut result,
                latency,
                decode,
                stages,
                ..
            } => {
                result.closed_at_s = u.closed_at.as_secs_f64();
                AsrReply::Done {
                    kind: JobKind::Final,
                    result,
                    latency: latency.saturating_sub(u.closed_at.saturating_sub(asked_at)),
                    decode,
                    stages,
                }
            }
            AsrReply::Overloaded {
                reason, start_s, ..
            } => AsrReply::Overloaded {
                kind: JobKind::Final,
                reason,
                start_s,
            },
            AsrReply::Failed { error, start_s, .. } => AsrReply::Failed {
                kind: JobKind::Final,
                error,
                start_s,
            },
        };
        self.on_asr(now, reply);
    }

    fn apply_flow(&mut self, actions: Vec<FlowAction>) {
        for action in actions {
            match action {
                FlowAction::PlayGreeting => {
                    self.greeting = self.greeting_prompt.take().map(PromptPlayer::new);
                }
                FlowAction::StopPlayback => {
                    if let Some(p) = self.greeting.as_mut() {
                        p.stop();
                    }
                }
                FlowAction::HangUp { reason } => self.hang_up(reason),
                FlowAction::Log(event) => self.event(event),
            }
        }
    }

    /// The core decides; its decisions and actions become outputs.
    fn feed(&mut self, now: Duration, event: CoreEvent) {
        let actions = self.core.handle(now, event);
        for d in &self.core.decisions[self.logged..] {
            self.out
                .push_back(Output::Event(CallEvent::Decision(DecisionEvent::from(d))));
        }
        self.logged = self.core.decisions.len();
        for a in actions {
            match a {
                CoreAction::Say(text) => {
                    self.event(CallEvent::BotSay { text: text.clone() });
                    self.said.push((now, text.clone()));
                    if text != self.greeting_text {
                        // Chinese text in the Mandarin voice, whatever the call
                        // started as (an `auto` call turns Chinese with its caller).
                        let voice = if crate::speech::chinese::has_han(&text) {
                            "cmn".to_string()
                        } else {
                            self.voice.clone()
                        };
                        self.out.push_back(Output::Synthesize { text, voice });
                    }
                }
                CoreAction::HangUp { reason } => {
                    self.event(CallEvent::BotGoodbye {
                        reason: reason.clone(),
                    });
                    let reason = if reason == "caller_done" {
                        "caller_done"
                    } else {
                        "caller_silent"
                    };
                    if self.goodbye.is_none() {
                        self.goodbye = Some((reason, None));
                    }
                }
                CoreAction::CallWebhook {
                    intent,
                    url,
                    timeout,
                    body,
                } => {
                    self.event(CallEvent::WebhookAsk {
                        intent: intent.clone(),
                        url: url.clone(),
                        timeout_ms: timeout.as_millis() as u64,
                    });
                    self.out.push_back(Output::CallWebhook {
                        intent,
                        url,
                        timeout,
                        body,
                    });
                }
                CoreAction::Transfer { reason, summary } => {
                    self.handing_over = true;
                    self.transfer = Some((now, reason.clone(), summary.clone()));
                    self.out.push_back(Output::Transfer {
                        reason: reason.clone(),
                        summary,
                    });
                    self.start_handover(now, &reason);
                }
            }
        }
    }

    /// Ring the agents for `reason` (with agents configured).
    fn start_handover(&mut self, now: Duration, reason: &str) {
        let Some(agents) = self.agents.clone() else {
            return;
        };
        let (machine, actions) = Transfer::start(plan(&agents, reason), &agents.whisper, now);
        self.handover = Some(Handover {
            machine,
            audio: HandoverAudio::new(self.hold_music.clone()),
        });
        self.event(CallEvent::TransferStarted {
            reason: reason.to_string(),
        });
        self.apply_transfer(now, actions);
    }

    /// An agent leg's outcome, or the orchestration's own events.
    fn on_agent(&mut self, now: Duration, event: TransferEvent) {
        match self.handover.as_mut() {
            Some(h) => {
                let actions = h.machine.handle(now, event);
                self.apply_transfer(now, actions);
            }
            // An agent answering after the hand-over gave up: let them go.
            None => {
                if let TransferEvent::Answered(leg) = event {
                    self.out.push_back(Output::HangUpAgent(leg));
                }
            }
        }
    }

    fn apply_transfer(&mut self, now: Duration, actions: Vec<TransferAction>) {
        for action in actions {
            match action {
                TransferAction::Dial { leg, uri } => {
                    self.out.push_back(Output::DialAgent { leg, uri });
                }
                TransferAction::Cancel(leg) => self.out.push_back(Output::CancelAgent(leg)),
                TransferAction::HangUp(leg) => self.out.push_back(Output::HangUpAgent(leg)),
                TransferAction::Whisper(leg) => {
                    if let Some(h) = self.handover.as_mut() {
                        h.audio.whisper_to(leg, now);
                    }
                }
                TransferAction::Bridge(leg) => {
                    if let Some(h) = self.handover.as_mut() {
                        h.audio.bridge();
                    }
                    tracing::info!(leg, "caller and agent bridged");
                }
                TransferAction::GiveUp { tried } => {
                    tracing::warn!(?tried, "no agent took the call: caller back with the bot");
                    self.handover = None;
                    self.handing_over = false;
                    if !self.hung_up {
                        self.feed(now, CoreEvent::TransferFailed { tried });
                    }
                }
                TransferAction::EndCall => self.hang_up("agent_bye"),
                TransferAction::Log(event) => self.event(event),
            }
        }
    }

    fn hang_up(&mut self, reason: &'static str) {
        if self.hung_up {
            return;
        }
        self.hung_up = true;
        self.event(CallEvent::Hangup {
            reason: reason.to_string(),
            by: Party::Gateway,
        });
        self.out.push_back(Output::Hangup { reason });
    }

    fn event(&mut self, event: CallEvent) {
        self.out.push_back(Output::Event(event));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::speech::pipeline::load_caller_track;

    fn setup(listen: bool) -> CallSetup {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sip-config");
        CallSetup {
            policy: Arc::new(crate::config::load_policy(&dir).expect("shipped policy")),
            language: "en".into(),
            asr_language: None,
            caller: None,
            vad: VadConfig::default(),
            partial_interval: Duration::from_secs(3600),
            partial_window: None,
            greeting: Some(Prompt::from_samples(vec![500; 8000])),
            listen,
            max_duration: None,
            agents: None,
            hold_music: None,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn drain(call: &mut Call) -> Vec<Output> {
        std::iter::from_fn(|| call.poll_output()).collect()
    }

    fn kinds(out: &[Output]) -> Vec<&'static str> {
        out.iter()
            .filter_map(|o| match o {
                Output::Event(e) => Some(e.kind()),
                _ => None,
            })
            .collect()
    }

    fn silence(call: &mut Call, from: u64, to: u64) -> Vec<Output> {
        let mut out = Vec::new();
        for t in (from..to).step_by(20) {
            call.handle_input(
                ms(t),
                Input::CallerAudio {
                    frame: &[0; FRAME_8K],
                    asr_busy: false,
                },
            );
            let _ = call.poll_frame();
            out.extend(drain(call));
        }
        out
    }

    #[test]
    fn a_failed_interim_transcript_leaves_the_call_a_failed_final_hands_it_over() {
        let failed = |kind| {
            Input::Asr(AsrReply::Failed {
                kind,
                error: "Whisper stopped".into(),
                start_s: 0.5,
            })
        };
        let asr_unavailable = |out: &[Output]| {
            out.iter().any(|o| {
                matches!(o, Output::Event(CallEvent::Decision(d))
                    if d.reason.as_deref() == Some("asr_unavailable"))
            })
        };
        let mut call = Call::new(setup(false));
        call.handle_input(Duration::ZERO, Input::Answered);
        drain(&mut call);
        call.handle_input(ms(2000), failed(JobKind::Partial));
        let mut out = drain(&mut call);
        out.extend(silence(&mut call, 2000, 2100));
        assert!(!asr_unavailable(&out), "{:?}", kinds(&out));
        assert!(!kinds(&out).contains(&"asr_failed"), "{:?}", kinds(&out));
        call.handle_input(ms(2100), failed(JobKind::Final));
        let mut out = drain(&mut call);
        out.extend(silence(&mut call, 2100, 2200));
        assert!(asr_unavailable(&out), "{:?}", kinds(&out));
    }

    #[test]
    fn a_menu_key_is_served_and_hash_ends_the_call() {
        let mut call = Call::new(setup(false));
        call.handle_input(Duration::ZERO, Input::Answered);
        let out = drain(&mut call);
        assert!(kinds(&out).contains(&"prompt.started"));
        // The greeting text is the recorded prompt: not synthesised again.
        assert!(!out.iter().any(|o| matches!(o, Output::Synthesize { .. })));
        assert!(call.poll_frame().is_some(), "the greeting plays");
        call.handle_input(
            ms(500),
            Input::Digit {
                digit: '1',
                source: "rfc4733",
            },
        );
        let out = drain(&mut call);
        assert!(kinds(&out).contains(&"dtmf"));
        assert_eq!(call.core().intents(), ["billing"]);
        assert!(out.iter().any(|o| matches!(o, Output::Synthesize { text, voice } if text.contains("balance") && voice == "en-us")));
        call.handle_input(
            ms(900),
            Input::Digit {
                digit: '#',
                source: "rfc4733",
            },
        );
        let out = drain(&mut call);
        assert!(matches!(
            out.last(),
            Some(Output::Hangup {
                reason: "caller_pressed_hash"
            })
        ));
        assert!(call.hung_up());
    }

    /// Served by key 1 at 1 s, then silent: the time of the goodbye, and
    /// of the hang-up, given a goodbye prompt of `speech` arriving 100 ms later.
    fn served_then_silent(speech: Option<Duration>) -> (Duration, Duration, &'static str) {
        let mut call = Call::new(setup(false));
        call.handle_input(Duration::ZERO, Input::Answered);
        call.handle_input(
            ms(1000),
            Input::Digit {
                digit: '1',
                source: "rfc4733",
            },
        );
        drain(&mut call);
        let mut goodbye = None;
        for t in (1020..60_000).step_by(20) {
            if let (Some(g), Some(len)) = (goodbye, speech) {
                if ms(t) == g + ms(100) {
                    call.handle_input(
                        ms(t),
                        Input::Prompt(Prompt::from_samples(vec![
                            800;
                            (len.as_millis() * 8) as usize
                        ])),
                    );
                }
            }
            for o in silence(&mut call, t, t + 20) {
                match o {
                    Output::Event(CallEvent::BotGoodbye { .. }) => goodbye = Some(ms(t)),
                    Output::Hangup { reason } => {
                        return (goodbye.expect("goodbye first"), ms(t), reason)
                    }
                    _ => {}
                }
            }
        }
        panic!("never hung up");
    }

    /// A call that runs its own hand-overs: one sequential group of two
    /// agents, 10 s each; hold music of `300`s.
    fn call_with_agents() -> Call {
        use crate::call::agents::{AgentGroup, RingStrategy};
        let agents = AgentsConfig {
            groups: vec![AgentGroup {
                name: "support".into(),
                strategy: RingStrategy::Sequential,
                ring_timeout: Duration::from_secs(10),
                members: vec!["sip:1001@pbx".into(), "sip:1002@pbx".into()],
            }],
            ..AgentsConfig::default()
        };
        let mut call = Call::new(CallSetup {
            agents: Some(Arc::new(agents)),
            hold_music: Some(Prompt::from_samples(vec![300; 1600])),
            greeting: None,
            ..setup(true)
        });
        call.handle_input(ms(0), Input::Answered);
        drain(&mut call);
        call
    }

    /// Recognition overloaded: the core hands the caller over (at `t`).
    fn decide_handover(call: &mut Call, t: u64) -> Vec<Output> {
        call.handle_input(
            ms(t),
            Input::AsrRefused {
                start_s: 0.0,
                end_s: 1.0,
            },
        );
        silence(call, t, t + 20)
    }

    fn dialled(out: &[Output]) -> Vec<(LegId, String)> {
        out.iter()
            .filter_map(|o| match o {
                Output::DialAgent { leg, uri } => Some((*leg, uri.clone())),
                _ => None,
            })
            .collect()
    }

    /// One hand-over tick; the caller says `7`s, each listed leg `leg * 100`.
    fn hand_tick(call: &mut Call, t: u64, legs: &[LegId]) -> (Option<Frame>, Vec<AgentFrame>) {
        let caller = [7; FRAME_8K];
        call.handle_input(
            ms(t),
            Input::CallerAudio {
                frame: &caller,
                asr_busy: false,
            },
        );
        let bot = call.poll_frame();
        let mut agents: Vec<AgentFrame> = legs
            .iter()
            .map(|l| AgentFrame::new(*l, &[(*l * 100) as i16; FRAME_8K]))
            .collect();
        let heard = call.handover_frame(ms(t), &caller, bot, &mut agents);
        (heard, agents)
    }

    #[test]
    fn the_call_rings_the_agent_whispers_to_them_alone_bridges_and_ends_with_their_bye() {
        let mut call = call_with_agents();
        let out = decide_handover(&mut call, 1000);
        let transfer = out
            .iter()
            .position(|o| matches!(o, Output::Transfer { .. }));
        let dial = out
            .iter()
            .position(|o| matches!(o, Output::DialAgent { .. }));
        assert!(
            transfer.is_some() && transfer < dial,
            "decided, then dialled"
        );
        assert_eq!(
            dialled(&out),
            [(1, "sip:1001@pbx".to_string())],
            "the first agent only"
        );
        let started = kinds(&out);
        assert!(started.contains(&"transfer.started") && started.contains(&"transfer.dial"));

        // Ringing: the caller hears hold music, nobody else is sent anything.
        call.handle_input(ms(1100), Input::Agent(TransferEvent::Ringing(1)));
        let (heard, _) = hand_tick(&mut call, 1120, &[]);
        assert_eq!(heard, Some([300; FRAME_8K]));

        // Answered; the whisper (3 frames of 900) is heard by the agent only.
        call.handle_input(ms(2000), Input::Agent(TransferEvent::Answered(1)));
        call.handle_input(
            ms(2000),
            Input::WhisperReady(Some(Prompt::from_samples(vec![900; FRAME_8K * 3]))),
        );
        let mut whisper = 0;
        let mut t = 2000;
        while call.bridged_agent().is_none() {
            t += 20;
            assert!(t < 3000, "bridged after the whisper");
            let (heard, agents) = hand_tick(&mut call, t, &[1]);
            assert_ne!(
                heard,
                Some([900; FRAME_8K]),
                "the caller never hears the whisper"
            );
            if agents[0].out == [900; FRAME_8K] {
                whisper += 1;
            }
        }
        assert_eq!(whisper, 3);
        let happened = kinds(&drain(&mut call));
        for k in [
            "transfer.answered",
            "transfer.whisper_started",
            "transfer.whisper_finished",
            "transfer.bridged",
        ] {
            assert!(happened.contains(&k), "{k} in {happened:?}");
        }

        // Bridged: each hears the other.
        let (heard, agents) = hand_tick(&mut call, t + 20, &[1]);
        assert_eq!(heard, Some([100; FRAME_8K]));
        assert_eq!(agents[0].out, [7; FRAME_8K]);

        // The agent hangs up: the call ends, nothing is sent to their leg.
        call.handle_input(ms(t + 40), Input::Agent(TransferEvent::AgentHungUp(1)));
        let out = drain(&mut call);
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Hangup {
                reason: "agent_bye"
            }
        )));
        assert!(!out.iter().any(|o| matches!(o, Output::HangUpAgent(_))));
        assert!(kinds(&out).contains(&"transfer.ended"));
    }

    #[test]
    fn nobody_answering_brings_the_caller_back_and_a_late_answer_is_let_go() {
        let mut call = call_with_agents();
        let out = decide_handover(&mut call, 1000);
        assert_eq!(dialled(&out), [(1, "sip:1001@pbx".to_string())]);
        // A busy first agent: the second is rung at once.
        call.handle_input(
            ms(1500),
            Input::Agent(TransferEvent::Failed {
                leg: 1,
                status: 486,
                why: "busy".into(),
            }),
        );
        assert_eq!(
            dialled(&drain(&mut call)),
            [(2, "sip:1002@pbx".to_string())]
        );
        // The second rings out its 10 s: cancelled, then back to the bot.
        let mut out = Vec::new();
        for t in (1520..11_600).step_by(20) {
            let _ = hand_tick(&mut call, t, &[]);
            out.extend(drain(&mut call));
        }
        assert!(out.iter().any(|o| matches!(o, Output::CancelAgent(2))));
        assert!(kinds(&out).contains(&"transfer.failed"));
        assert!(
            call.core()
                .decisions
                .iter()
                .any(|d| d.kind == crate::call::core::DecisionKind::TransferFailed),
            "the core knows nobody took the call"
        );
        assert_eq!(
            hand_tick(&mut call, 11_620, &[]).0,
            None,
            "no hand-over audio"
        );
        // The second agent picks up just too late: hung up at once.
        call.handle_input(ms(11_700), Input::Agent(TransferEvent::Answered(2)));
        assert!(drain(&mut call)
            .iter()
            .any(|o| matches!(o, Output::HangUpAgent(2))));
    }

    #[test]
    fn a_caller_who_hangs_up_while_the_agent_rings_cancels_the_agent() {
        let mut call = call_with_agents();
        decide_handover(&mut call, 1000);
        call.handle_input(ms(1100), Input::Agent(TransferEvent::Ringing(1)));
        drain(&mut call);
        call.finish();
        let out = drain(&mut call);
        assert!(out.iter().any(|o| matches!(o, Output::CancelAgent(1))));
        assert!(kinds(&out).contains(&"transfer.abandoned"));
    }

    #[test]
    fn a_call_ends_at_its_maximum_duration_or_when_its_session_expires() {
        let mut call = Call::new(CallSetup {
            max_duration: Some(Duration::from_secs(5)),
            ..setup(false)
        });
        call.handle_input(Duration::ZERO, Input::Answered);
        drain(&mut call);
        assert_eq!(call.poll_timeout(), Some(Duration::from_secs(5)));
        let out = silence(&mut call, 20, 4_980);
        assert!(!out.iter().any(|o| matches!(o, Output::Hangup { .. })));
        let out = silence(&mut call, 4_980, 5_100);
        let hangups: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Output::Hangup { reason } => Some(*reason),
                _ => None,
            })
            .collect();
        assert_eq!(hangups, ["max_duration"], "once, at 5 s");
        assert_eq!(call.poll_timeout(), None, "nothing left to wait for");

        let mut call = Call::new(setup(false));
        call.handle_input(Duration::ZERO, Input::Answered);
        drain(&mut call);
        assert_eq!(call.poll_timeout(), None, "no limit, no goodbye");
        call.handle_input(ms(1000), Input::SessionExpired);
        let out = drain(&mut call);
        assert!(matches!(
            out.last(),
            Some(Output::Hangup {
                reason: "session_expired"
            })
        ));
    }

    #[test]
    fn goodbye_hangs_up_after_the_grace_or_once_it_has_played() {
        let (said, hung_up, reason) = served_then_silent(None);
        assert_eq!(reason, "caller_silent");
        assert!(
            hung_up >= said + GOODBYE_GRACE && hung_up <= said + GOODBYE_GRACE + ms(40),
            "{said:?} {hung_up:?}"
        );
        let (said, hung_up, _) = served_then_silent(Some(Duration::from_secs(3)));
        assert!(
            hung_up >= said + ms(3100),
            "the goodbye played out: {said:?} {hung_up:?}"
        );
        assert!(hung_up <= said + ms(3160), "{said:?} {hung_up:?}");
    }

    /// The caller pauses: Whisper starts on the utterance then. If the
    /// pause lasts, that answer is the final text — whether it came before
    /// or after the utterance closed — and nothing is decoded twice; the
    /// decision is taken at the moment the utterance closed.
    #[test]
    fn a_partial_decodes_at_most_its_window_and_the_final_all_of_the_utterance() {
        let wav =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/calls/calm_billing.wav");
        let track = load_caller_track(&wav).expect("test call");
        let run = |window: Option<Duration>| {
            let mut call = Call::new(CallSetup {
                partial_interval: ms(500),
                partial_window: window,
                ..setup(true)
            });
            call.handle_input(Duration::ZERO, Input::Answered);
            drain(&mut call);
            let (mut partials, mut finals) = (Vec::new(), Vec::new());
            for (n, chunk) in track.samples.chunks(320).enumerate() {
                call.handle_input(ms(20 * (n as u64 + 1)), Input::CallerAudioWideband(chunk));
                let _ = call.poll_frame();
                for o in drain(&mut call) {
                    if let Output::SubmitAsr {
                        kind, utterance, ..
                    } = o
                    {
                        match kind {
                            JobKind::Partial => partials.push(utterance),
                            _ => finals.push(utterance.samples.len()),
                        }
                    }
                }
            }
            (partials, finals)
        };
        let (whole, whole_finals) = run(None);
        let (windowed, windowed_finals) = run(Some(ms(1000)));
        // The same partials are asked for at the same moments.
        assert_eq!(whole.len(), windowed.len());
        assert!(
            whole.iter().any(|u| u.samples.len() > 16_000 + 320),
            "the call has utterances longer than the window"
        );
        for (w, p) in whole.iter().zip(&windowed) {
            assert!(p.samples.len() <= 16_000, "{} samples", p.samples.len());
            assert_eq!(p.samples.len(), w.samples.len().min(16_000));
            assert_eq!(p.end, w.end);
            if w.samples.len() > 16_000 {
                assert_eq!(p.start, p.end - ms(1000), "the window ends now");
            }
        }
        // Finals (and early jobs) decode all of every utterance either way.
        assert_eq!(whole_finals, windowed_finals);
        assert!(!whole_finals.is_empty());
    }

    #[test]
    fn a_pause_starts_the_final_transcription_early() {
        let wav =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/calls/calm_billing.wav");
        let track = load_caller_track(&wav).expect("test call");
        for answer_late in [false, true] {
            let mut call = Call::new(setup(true));
            call.handle_input(Duration::ZERO, Input::Answered);
            drain(&mut call);
            let (mut early, mut finals, mut texts, mut closed) = (0, 0, Vec::new(), Vec::new());
            let mut held: Option<AsrReply> = None;
            for (n, chunk) in track.samples.chunks(320).enumerate() {
                let now = ms(20 * (n as u64 + 1));
                call.handle_input(now, Input::CallerAudioWideband(chunk));
                let _ = call.poll_frame();
                let mut answers = Vec::new();
                for o in drain(&mut call) {
                    match o {
                        Output::SubmitAsr {
                            kind: kind @ (JobKind::Early | JobKind::Final),
                            utterance,
                            ..
                        } => {
                            if kind == JobKind::Early {
                                early += 1;
                            } else {
                                finals += 1;
                            }
                            let result = result_for(&utterance, "my bill".into(), "en".into());
                            answers.push(AsrReply::Done {
                                kind,
                                result,
                                latency: ms(900),
                                decode: ms(300),
                                stages: Stages {
                                    mel: ms(10),
                                    encoder: ms(120),
                                    decoder: ms(160),
                                },
                            });
                        }
                        Output::Event(CallEvent::Utterance(u)) => {
                            texts.push(u.result.text.clone());
                            closed.push(u.result.closed_at_s);
                            // Whisper's stages reach the event as they came.
                            assert_eq!(
                                (u.mel_ms, u.encoder_ms, u.decoder_ms),
                                (Some(10.0), Some(120.0), Some(160.0)),
                                "{u:?}"
                            );
                        }
                        _ => {}
                    }
                }
                for a in answers {
                    if answer_late
                        && matches!(
                            a,
                            AsrReply::Done {
                                kind: JobKind::Early,
                                ..
                            }
                        )
                    {
                        held = Some(a);
                    } else {
                        call.handle_input(now, Input::Asr(a));
                    }
                }
                // The late answer comes 1 s after the job was asked.
                if n % 50 == 0 {
                    if let Some(a) = held.take() {
                        call.handle_input(now, Input::Asr(a));
                    }
                }
            }
            assert!(early >= 1, "answer_late {answer_late}: {early} early jobs");
            assert_eq!(finals, 0, "answer_late {answer_late}: decoded twice");
            assert_eq!(texts.len(), early, "answer_late {answer_late}: {texts:?}");
            assert!(texts.iter().all(|t| t == "my bill"), "{texts:?}");
            // Decided when the VAD closed the utterance, not when the pause began.
            assert!(closed.iter().all(|c| *c > 0.5), "{closed:?}");
        }
    }

    /// Early answers that come late — here all at the end of the call, after
    /// the caller has said the next things — still give every utterance its
    /// final text, in order; answers that come newest first are decided in
    /// the order the utterances closed, with the same decisions.
    #[test]
    fn late_early_answers_never_lose_an_utterance() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/calls");
        let mut calls = 0;
        for entry in std::fs::read_dir(&dir).expect("calls").flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "wav") {
                continue;
            }
            let track = load_caller_track(&path).expect("test call");
            let mut seg = Segmenter::new(VadConfig::default());
            let mut expected = 0;
            for c in track.samples.chunks(320) {
                for ev in seg.push(c) {
                    if matches!(ev, VadEvent::Utterance(_)) {
                        expected += 1;
                    }
                }
            }
            // In the order asked, then newest first (two workers, the
            // later utterance answered first): the same decisions.
            let mut decided = Vec::new();
            for newest_first in [false, true] {
                let mut call = Call::new(setup(true));
                call.handle_input(Duration::ZERO, Input::Answered);
                drain(&mut call);
                let mut held = Vec::new();
                let mut heard = Vec::new();
                let take = |out: Vec<Output>, held: &mut Vec<AsrReply>, heard: &mut Vec<f64>| {
                    for o in out {
                        match o {
                            Output::SubmitAsr {
                                kind: kind @ (JobKind::Early | JobKind::Final),
                                utterance,
                                ..
                            } => held.push(AsrReply::Done {
                                kind,
                                result: result_for(&utterance, "words".into(), "en".into()),
                                latency: ms(100),
                                decode: ms(100),
                                stages: Stages::default(),
                            }),
                            Output::Event(CallEvent::Utterance(u)) => heard.push(u.result.end_s),
                            _ => {}
                        }
                    }
                };
                let mut now = Duration::ZERO;
                for (n, chunk) in track.samples.chunks(320).enumerate() {
                    now = ms(20 * (n as u64 + 1));
                    call.handle_input(now, Input::CallerAudioWideband(chunk));
                    let _ = call.poll_frame();
                    take(drain(&mut call), &mut held, &mut heard);
                }
                while !held.is_empty() {
                    let mut answers = std::mem::take(&mut held);
                    if newest_first {
                        answers.reverse();
                    }
                    for a in answers {
                        call.handle_input(now, Input::Asr(a));
                        take(drain(&mut call), &mut held, &mut heard);
                    }
                }
                assert_eq!(heard.len(), expected, "{}: {heard:?}", path.display());
                assert!(heard.windows(2).all(|w| w[0] < w[1]), "{heard:?}");
                assert_eq!(call.pending_asr(), 0, "{}", path.display());
                decided.push(call.core().decisions.clone());
            }
            assert!(!decided[0].is_empty());
            assert_eq!(decided[0], decided[1], "{}", path.display());
            calls += 1;
        }
        assert!(calls >= 10);
    }

    #[test]
    fn speech_too_short_to_be_words_is_not_sent_to_whisper() {
        // The same real utterance, once above the floor and once below it
        // (a floor of 10 s stands in for a click or a cough).
        let wav =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/calls/calm_billing.wav");
        let track = load_caller_track(&wav).expect("test call");
        for (min_voiced, finals_expected) in [(ms(150), 1), (Duration::from_secs(10), 0)] {
            let mut call = Call::new(CallSetup {
                vad: VadConfig {
                    min_voiced,
                    ..VadConfig::default()
                },
                ..setup(true)
            });
            call.handle_input(Duration::ZERO, Input::Answered);
            drain(&mut call);
            let mut out = Vec::new();
            for (n, chunk) in track.samples.chunks(320).take(350).enumerate() {
                call.handle_input(ms(20 * (n as u64 + 1)), Input::CallerAudioWideband(chunk));
                let _ = call.poll_frame();
                out.extend(drain(&mut call));
            }
            let finals = out
                .iter()
                .filter(|o| {
                    matches!(
                        o,
                        Output::SubmitAsr {
                            kind: JobKind::Final | JobKind::Early,
                            ..
                        }
                    )
                })
                .count();
            let skipped: Vec<(&String, u64)> = out
                .iter()
                .filter_map(|o| match o {
                    Output::Event(CallEvent::UtteranceSkipped {
                        reason, voiced_ms, ..
                    }) => Some((reason, *voiced_ms)),
                    _ => None,
                })
                .collect();
            assert_eq!(finals, finals_expected, "{min_voiced:?}");
            assert_eq!(skipped.len(), 1 - finals_expected, "{min_voiced:?}");
            for (reason, voiced_ms) in skipped {
                assert_eq!(reason, "too_short");
                assert!(voiced_ms > 1000, "{voiced_ms}");
            }
            assert!(!call.hung_up());
        }
    }

    #[test]
    fn the_caller_talking_over_a_reply_stops_it() {
        let wav =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/calls/unrecognized.wav");
        let track = load_caller_track(&wav).expect("test call");
        let mut call = Call::new(setup(true));
        call.handle_input(Duration::ZERO, Input::Answered);
        drain(&mut call);
        let mut interrupted = Vec::new();
        let mut replies = 0;
        let mut silent_after_interruption = None;
        for (n, chunk) in track.samples.chunks(320).enumerate() {
            let now = ms(20 * (n as u64 + 1));
            call.handle_input(now, Input::CallerAudioWideband(chunk));
            let frame = call.poll_frame();
            if interrupted.last() == Some(&now.saturating_sub(ms(20))) {
                silent_after_interruption = Some(frame.is_none());
            }
            for o in drain(&mut call) {
                match o {
                    Output::SubmitAsr {
                        kind: kind @ (JobKind::Final | JobKind::Early),
                        utterance,
                        ..
                    } => {
                        // Whisper is the shell's: answer with words no intent has.
                        let result = result_for(
                            &utterance,
                            "blue relevant stands on tuesday".into(),
                            "en".into(),
                        );
                        call.handle_input(
                            now,
                            Input::Asr(AsrReply::Done {
                                kind,
                                result,
                                latency: Duration::ZERO,
                                decode: Duration::ZERO,
                                stages: Stages::default(),
                            }),
                        );
                    }
                    Output::Synthesize { .. } => {
                        replies += 1;
                        // Ten seconds of reply: the caller will talk over it.
                        call.handle_input(
                            now,
                            Input::Prompt(Prompt::from_samples(vec![800; 80_000])),
                        );
                    }
                    Output::Event(CallEvent::BotInterrupted) => interrupted.push(now),
                    _ => {}
                }
            }
        }
        assert!(replies >= 2, "{replies}");
        assert_eq!(interrupted.len(), 2, "{interrupted:?}");
        assert_eq!(
            silent_after_interruption,
            Some(true),
            "the bot stopped talking"
        );
    }
}
