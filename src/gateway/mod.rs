//! The live gateway: the async shell around the sans-IO pieces. It owns the
//! SIP endpoint (rsipstack), the RTP sockets and the clock, and feeds each
//! call's events to the decision core.

mod agent;
mod call;
mod events;
mod fds;
mod flood_gate;
mod handover;
mod leg;
mod media_runtime;
mod register;
mod web_leg;
mod webrtc;

use crate::api::board::CallBoard;
use crate::config::Config;
use crate::media::ports::PortPool;
use crate::media::prompt::Prompt;
use crate::sip::digest::{AuthVerdict, NonceIssuer};
use crate::sip::sdp;
use anyhow::Context;
use arc_swap::ArcSwap;
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, Method, StatusCode};
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transport::{
    udp::UdpConnection, SipConnection, TcpListenerConnection, TransportLayer,
};
use rsipstack::EndpointBuilder;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

/// Everything a call task shares with the server.
pub(crate) struct Shared {
    pub config: Config,
    pub dialogs: Arc<DialogLayer>,
    pub ports: PortPool,
    pub greeting: Prompt,
    /// Hold music for callers waiting for an agent (loaded once, shared).
    pub hold_music: Option<Prompt>,
    pub nonces: NonceIssuer,
    /// Cancelled when calls in progress must end now (BYE).
    pub shutdown: CancellationToken,
    /// Cancelled when shutdown begins: new calls are refused with 503.
    pub draining: CancellationToken,
    pub calls: tokio_util::task::TaskTracker,
    /// The bot's voice.
    pub tts: Arc<dyn crate::speech::tts::Synthesizer>,
    /// espeak-ng with its cache, shared by every configuration generation.
    pub synthesizer: Arc<dyn crate::speech::tts::Synthesizer>,
    /// The ASR pool; `None` when `[speech] enabled = false`.
    pub asr: Option<crate::speech::pool::AsrPool>,
    /// Live and recent calls for the HTTP surface, and the metrics.
    pub board: CallBoard,
    /// The file-descriptor limit in force (after raising it at start).
    pub fd_limit: Option<u64>,
    /// Per-source INVITE token buckets (kept across reloads).
    pub pike: Arc<crate::sip::pike::Pike>,
    /// The clock the buckets run on.
    pub started: std::time::Instant,
    /// Calls in set-up: admitted, not yet confirmed by the caller's ACK.
    pub setting_up: Arc<std::sync::atomic::AtomicUsize>,
    /// How late the calls' media clocks run (admission control).
    pub media_load: Arc<crate::media::load::MediaLoad>,
    /// The runtime answered calls run on (their 20 ms media clock, RTP, the
    /// bot's decisions): its own worker threads, so a flood of SIP parsing on
    /// the main runtime never delays a call's frame.
    pub media_runtime: tokio::runtime::Handle,
    /// Steps every answered call's media every 20 ms (on the media runtime).
    pub media_engine: Arc<media_runtime::MediaEngine>,
}

/// Counts a call as in set-up while it lives (see `Shared::setting_up`).
pub(crate) struct SettingUp(Arc<std::sync::atomic::AtomicUsize>);

impl SettingUp {
    fn new(counter: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(counter.clone())
    }
}

impl Drop for SettingUp {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Shared {
    /// The same gateway with a new configuration, for calls that start from
    /// now on: prompts are loaded anew; sockets, ports, the model and the
    /// board are kept.
    fn with_config(&self, config: Config) -> anyhow::Result<Shared> {
        Ok(Shared {
            greeting: Prompt::load(&config.gateway.greeting)?,
            hold_music: load_hold_music(&config),
            dialogs: self.dialogs.clone(),
            ports: self.ports.clone(),
            nonces: self.nonces.clone(),
            shutdown: self.shutdown.clone(),
            draining: self.draining.clone(),
            calls: self.calls.clone(),
            tts: crate::config::bot_voice(&config, self.synthesizer.clone()),
            synthesizer: self.synthesizer.clone(),
            asr: self.asr.clone(),
            board: self.board.clone(),
            fd_limit: self.fd_limit,
            pike: self.pike.clone(),
            started: self.started,
            setting_up: self.setting_up.clone(),
            media_load: self.media_load.clone(),
            media_runtime: self.media_runtime.clone(),
            media_engine: self.media_engine.clone(),
            config,
        })
    }
}

fn load_hold_music(config: &Config) -> Option<Prompt> {
    config.agents.hold_music.as_ref().and_then(|p| {
        Prompt::load(p)
            .map_err(|e| warn!(error = %e, "hold music unusable"))
            .ok()
    })
}

/// The running gateway as the HTTP surface and signals see it: the current
/// configuration generation, swapped whole on reload.
struct Running {
    current: ArcSwap<Shared>,
}

impl Running {
    /// Reload `sip-config/` for new calls. Calls in progress keep the
    /// generation they started with; an invalid configuration is refused with
    /// the `config check` messages and the running one stays.
    fn reload(&self) -> Result<String, Vec<String>> {
        let old = self.current.load_full();
        let config = Config::load(&old.config.dir)
            .map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<String>>())?;
        let mut restart = Vec::new();
        let (a, b) = (&old.config.gateway, &config.gateway);
        if a.sip.udp != b.sip.udp || a.sip.tcp != b.sip.tcp {
            restart.push("[sip] listen addresses");
        }
        if a.media.rtp_port_min != b.media.rtp_port_min
            || a.media.rtp_port_max != b.media.rtp_port_max
        {
            restart.push("[media] RTP port range");
        }
        if a.speech.model != b.speech.model
            || a.speech.enabled != b.speech.enabled
            || a.speech.workers != b.speech.workers
        {
            restart.push("[speech] model and workers");
        }
        if a.http.listen != b.http.listen {
            restart.push("[http] listen");
        }
        let next = old
            .with_config(config)
            .map_err(|e| vec![format!("{e:#}")])?;
        self.current.store(Arc::new(next));
        let mut msg =
            "configuration reloaded: new calls use it; calls in progress are untouched".to_string();
        if !restart.is_empty() {
            msg.push_str(&format!(
                " (changes to {} apply after a restart)",
                restart.join(", ")
            ));
        }
        info!(%msg, "reload");
        Ok(msg)
    }
}

impl crate::api::http::Control for Running {
    fn reload(&self) -> Result<String, Vec<String>> {
        let r = Running::reload(self);
        if let Err(problems) = &r {
            warn!(problems = %problems.join("; "), "reload refused: the running configuration stays");
        }
        r
    }
    fn draining(&self) -> bool {
        self.current.load().draining.is_cancelled()
    }
    fn gauges(&self) -> crate::api::board::Gauges {
        let shared = self.current.load();
        crate::api::board::Gauges {
            asr_queue: shared.asr.as_ref().map_or(0, |a| a.queued()),
            calls_setting_up: shared.setting_up.load(std::sync::atomic::Ordering::Relaxed),
            sip_transactions: shared.dialogs.endpoint.get_stats().running_transactions,
            sip_dialogs: shared.dialogs.len(),
            fds_open: fds::open_now(),
            fd_limit: shared.fd_limit,
            banned_sources: shared.nonces.banned_now(unix_now()),
            media_tick_late: shared.media_load.last_second_worst(),
            media_tick_histogram: shared.media_load.histogram(),
        }
    }
    fn admin_token(&self) -> Option<String> {
        self.current.load().config.gateway.http.admin_token.clone()
    }
    fn agent_token(&self) -> Option<String> {
        self.current.load().config.gateway.http.agent_token.clone()
    }
    fn webrtc_offer(
        &self,
        offer: String,
    ) -> crate::api::http::BoxFuture<Result<String, crate::api::http::OfferRefused>> {
        let shared = self.current.load_full();
        Box::pin(async move { webrtc::answer(shared, offer).await })
    }
}

/// Serve until `drain` is cancelled (SIGTERM): from then on new INVITEs get
/// 503, calls in progress may go on for `[shutdown] grace_s`, then end with
/// BYE; every recording is finalised before this returns.
pub async fn serve(config: Config, drain: CancellationToken) -> anyhow::Result<()> {
    // Calls end (BYE) on `shutdown`; the SIP stack stops on `sip_stop`, after
    // the last BYE went out.
    let shutdown = CancellationToken::new();
    let sip_stop = CancellationToken::new();
    let repaired = crate::record::repair_all(&config.gateway.recording.dir);
    if !repaired.is_empty() {
        warn!(
            count = repaired.len(),
            "repaired recordings left unfinished by a crash"
        );
    }
    let greeting = Prompt::load(&config.gateway.greeting)?;
    let media_runtime =
        media_runtime::MediaRuntime::start().context("cannot start the media runtime")?;
    let sp = &config.gateway.speech;
    let asr = if sp.enabled {
        let model = crate::speech::asr::WhisperModel::load(&sp.model)?;
        // Callers in other languages (a trunk's or number's `language`) need
        // a multilingual model when the main one is English-only.
        let languages: Vec<&str> = config
            .trunks
            .iter()
            .flat_map(|t| t.language.iter().chain(t.languages.values()))
            .map(String::as_str)
            .chain(sp.language.as_deref())
            .collect();
        let multilingual = match &sp.multilingual_model {
            Some(path) if !model.is_multilingual() && languages.iter().any(|l| *l != "en") => {
                match crate::speech::asr::WhisperModel::load(path) {
                    Ok(m) => {
                        info!(model = %path.display(), "multilingual model ready for callers in other languages");
                        Some(m)
                    }
                    Err(e) => {
                        warn!(error = %e, "callers in other languages will be transcribed as English");
                        None
                    }
                }
            }
            _ => None,
        };
        let pool = crate::speech::pool::AsrPool::start_full(
            model,
            multilingual,
            sp.language.clone(),
            crate::speech::pool::PoolConfig {
                workers: sp.workers,
                threads_per_worker: sp.threads_per_worker,
                queue: sp.queue,
                max_wait: sp.max_latency,
            },
            config.encoder.clone(),
        )?;
        info!(model = %sp.model.display(), workers = sp.workers, "speech recognition ready");
        Some(pool)
    } else {
        warn!("speech recognition is disabled ([speech] enabled = false)");
        None
    };

    let transport = TransportLayer::new(sip_stop.child_token());
    for addr in &config.gateway.sip.udp {
        let udp = UdpConnection::create_connection(
            *addr,
            advertised(&config.gateway.sip, *addr),
            Some(sip_stop.child_token()),
        )
        .await
        .with_context(|| format!("cannot listen on udp {addr}"))?;
        transport.add_transport(udp.into());
        info!(%addr, "SIP listening on UDP");
    }
    for addr in &config.gateway.sip.tcp {
        let tcp = TcpListenerConnection::new(*addr, advertised(&config.gateway.sip, *addr))
            .await
            .with_context(|| format!("cannot listen on tcp {addr}"))?;
        transport.add_transport(SipConnection::TcpListener(tcp));
        info!(%addr, "SIP listening on TCP");
    }
    let gate_running = Arc::new(std::sync::OnceLock::new());
    let endpoint = EndpointBuilder::new()
        .with_inspector(Box::new(crate::sip::source::SourceStamp))
        .with_transport_inspector(Box::new(flood_gate::FloodGate::new(gate_running.clone())))
        .with_user_agent(&config.gateway.sip.user_agent)
        .with_transport_layer(transport)
        .with_cancel_token(sip_stop.child_token())
        .with_allows(vec![
            Method::Invite,
            Method::Ack,
            Method::Bye,
            Method::Cancel,
            Method::Options,
            Method::Info,
        ])
        .build();
    let mut incoming = endpoint
        .incoming_transactions()
        .context("SIP endpoint has no transaction receiver")?;
    let endpoint_inner = endpoint.inner.clone();
    tokio::spawn(async move {
        if let Err(e) = endpoint_inner.serve().await {
            warn!(error = %e, "SIP endpoint stopped");
        }
    });
    let dialogs = Arc::new(DialogLayer::new(endpoint.inner.clone()));
    let media = &config.gateway.media;
    let synthesizer: Arc<dyn crate::speech::tts::Synthesizer> = Arc::new(
        crate::speech::tts::CachedSynthesizer::new(crate::speech::tts::Espeak, 256),
    );
    let shared = Arc::new(Shared {
        ports: PortPool::new(media.rtp_port_min, media.rtp_port_max),
        dialogs: dialogs.clone(),
        greeting,
        hold_music: load_hold_music(&config),
        nonces: NonceIssuer::new(),
        shutdown: shutdown.clone(),
        draining: drain.clone(),
        calls: tokio_util::task::TaskTracker::new(),
        tts: crate::config::bot_voice(&config, synthesizer.clone()),
        synthesizer,
        asr,
        board: CallBoard::new(),
        fd_limit: fds::raise_limit(),
        pike: Arc::new(crate::sip::pike::Pike::default()),
        started: std::time::Instant::now(),
        setting_up: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        media_load: Arc::default(),
        media_runtime: media_runtime.handle(),
        media_engine: Arc::new(media_runtime::MediaEngine::start(
            &media_runtime.handle(),
            media_runtime.workers(),
        )),
        config,
    });
    for trunk in &shared.config.trunks {
        if let Some(reg) = &trunk.register {
            tokio::spawn(register::keep_registered(
                endpoint.inner.clone(),
                trunk.name.clone(),
                reg.clone(),
                sip_stop.child_token(),
                shared.board.clone(),
            ));
        }
    }
    {
        // Give memory freed by ended calls back to the system: glibc keeps
        // freed heap pages mapped, so after a burst (a flood of half-open
        // calls, a peak hour) RSS would stay at its peak for ever.
        // Housekeeping each second: the media clock's lateness history for
        // admission control, and every 10 s the memory trim.
        let stop = sip_stop.clone();
        let load = shared.media_load.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        load.rotate();
                        n += 1;
                        if n.is_multiple_of(10) {
                            release_free_memory();
                        }
                    }
                    _ = stop.cancelled() => break,
                }
            }
        });
    }
    let grace = shared.config.gateway.shutdown_grace;
    let running = Arc::new(Running {
        current: ArcSwap::new(shared.clone()),
    });
    let _ = gate_running.set(running.clone());
    drop(shared);
    let http_stop = CancellationToken::new();
    let http = match running.current.load().config.gateway.http.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for HTTP on {addr}"))?;
            info!(%addr, "HTTP listening");
            let router =
                crate::api::http::router(running.current.load().board.clone(), running.clone());
            let stop = http_stop.clone();
            Some(tokio::spawn(async move {
                if let Err(e) = crate::api::http::serve(listener, router, stop).await {
                    warn!(error = %e, "HTTP server stopped");
                }
            }))
        }
        None => None,
    };
    #[cfg(unix)]
    {
        let running = running.clone();
        let stop = sip_stop.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            loop {
                tokio::select! {
                    _ = hup.recv() => {
                        info!("SIGHUP: reloading the configuration");
                        let _ = crate::api::http::Control::reload(running.as_ref());
                    }
                    _ = stop.cancelled() => return,
                }
            }
        });
    }
    info!("voicegate ready");
    let calls = running.current.load().calls.clone();
    let mut deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        tokio::select! {
            tx = incoming.recv() => match tx {
                Some(tx) => dispatch(&running.current.load_full(), tx).await,
                None => break,
            },
            _ = drain.cancelled(), if deadline.is_none() => {
                info!(grace_s = grace.as_secs(), "shutting down: new calls get 503, calls in progress may finish");
                calls.close();
                deadline = Some(Box::pin(tokio::time::sleep(grace)));
            }
            _ = async { if let Some(d) = deadline.as_mut() { d.await } }, if deadline.is_some() => {
                info!("shutdown grace is over: ending calls in progress");
                break;
            }
            _ = calls.wait(), if deadline.is_some() => {
                info!("every call has ended");
                break;
            }
        }
    }
    shutdown.cancel();
    calls.close();
    // Calls send their BYE and finalise their recordings; in-dialog requests
    // (the BYE's answers, a caller's own BYE) are still dispatched meanwhile.
    loop {
        tokio::select! {
            _ = calls.wait() => break,
            tx = incoming.recv() => match tx {
                Some(tx) => dispatch(&running.current.load_full(), tx).await,
                None => { calls.wait().await; break }
            },
        }
    }
    http_stop.cancel();
    if let Some(h) = http {
        let _ = h.await;
    }
    sip_stop.cancel();
    endpoint.shutdown();
    Ok(())
}

fn has_to_tag(tx: &Transaction) -> bool {
    tx.original
        .to_header()
        .ok()
        .and_then(|t| t.tag().ok().flatten())
        .is_some()
}

async fn dispatch(shared: &Arc<Shared>, mut tx: Transaction) {
    let method = tx.original.method;
    if has_to_tag(&tx) || matches!(method, Method::Ack | Method::Bye | Method::Cancel) {
        match shared.dialogs.match_dialog(&tx) {
            Some(mut dialog) => {
                tokio::spawn(async move {
                    if let Err(e) = dialog.handle(&mut tx).await {
                        tracing::debug!(error = %e, "in-dialog request failed");
                    }
                });
            }
            None if method == Method::Ack => {}
            None => {
                let _ = tx.reply(StatusCode::CallTransactionDoesNotExist).await;
            }
        }
        return;
    }
    match method {
        Method::Invite => {
            // A flooding source was dropped at the transport (flood_gate),
            // before a transaction was built for it. A caller behind a
            // trusted proxy is judged here, by the proxy's header, before a
            // task, a port or a file is spent on it.
            if via_trusted_proxy(shared, &tx) {
                if let Some(ip) = source_ip(shared, &tx) {
                    let limits = &shared.config.gateway.sip.rate_limits;
                    if !shared.pike.allow(ip, shared.started.elapsed(), limits) {
                        shared.board.rejected("rate");
                        return;
                    }
                }
            }
            let shared = shared.clone();
            let call_id = tx
                .original
                .call_id_header()
                .map(|c| c.value().to_string())
                .unwrap_or_default();
            let span = tracing::info_span!("call", call_id = %crate::sip::log_safe(&call_id));
            shared
                .calls
                .clone()
                .spawn(async move { admit_invite(shared, tx).await }.instrument(span));
        }
        Method::Options => {
            // A load balancer's health probe (Kamailio dispatcher): 503 while
            // this node should get no new calls, so it routes around it.
            let mut headers = vec![
                Header::Other("Accept".into(), "application/sdp".into()),
                Header::Other(
                    "Allow".into(),
                    "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO".into(),
                ),
            ];
            let status = match unavailable(shared, 0) {
                Some(_) => {
                    headers.push(Header::Other("Retry-After".into(), "5".into()));
                    StatusCode::ServiceUnavailable
                }
                None => StatusCode::OK,
            };
            let _ = tx.reply_with(status, headers, None).await;
        }
        _ => {
            let _ = tx.reply(StatusCode::MethodNotAllowed).await;
        }
    }
}

/// Where a request really came from: the packet's source address as the
/// transport saw it (never a `Via` parameter the sender wrote), or, through a
/// trusted proxy (`[sip] trusted_proxies`), the caller's address it wrote.
pub(crate) fn source_ip(shared: &Shared, tx: &Transaction) -> Option<IpAddr> {
    let sip = &shared.config.gateway.sip;
    crate::sip::source::caller_source(
        &tx.original.headers,
        &sip.trusted_proxies,
        &sip.proxy_source_header,
    )
}

/// Whether the request's packet came from a `[sip] trusted_proxies` address.
fn via_trusted_proxy(shared: &Shared, tx: &Transaction) -> bool {
    crate::sip::source::stamped_source(&tx.original.headers).is_some_and(|hop| {
        shared
            .config
            .gateway
            .sip
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&hop.ip()))
    })
}

async fn reject(tx: &mut Transaction, status: StatusCode, reason: &str, extra: Vec<Header>) {
    let mut headers = extra;
    headers.push(Header::Other(
        "Warning".into(),
        format!("399 voicegate \"{reason}\""),
    ));
    // Boxed, as every reply on a refusal path: rsipstack's reply future is
    // ~2.3 KiB, and held inline it would sit in every answered call's task.
    if let Err(e) = Box::pin(tx.reply_with(status, headers, None)).await {
        warn!(error = %e, "could not send rejection");
    }
}

/// Why this node takes no new call now, if it does not: draining, at
/// `[sip] max_calls`, or its recognisers saturated. `own` is the number of
/// tracked tasks that are the asker itself (an INVITE's own admission task).
fn unavailable(shared: &Shared, own: usize) -> Option<&'static str> {
    if shared.draining.is_cancelled() || shared.shutdown.is_cancelled() {
        return Some("draining");
    }
    let max = shared.config.gateway.sip.max_calls;
    if max > 0 && shared.calls.len().saturating_sub(own) >= max {
        return Some("max_calls");
    }
    if shared
        .media_load
        .overloaded(shared.config.gateway.media.overload_tick_late)
    {
        return Some("media_late");
    }
    let setup = shared.config.gateway.sip.max_setup_calls;
    if setup > 0 && shared.setting_up.load(std::sync::atomic::Ordering::Relaxed) >= setup {
        return Some("setup_limit");
    }
    if fds::short(shared.fd_limit) {
        return Some("fds");
    }
    if shared.asr.as_ref().is_some_and(|a| a.overloaded()) {
        return Some("asr_saturated");
    }
    None
}

/// Admission control for a new INVITE: bans, ACL, SDP, digest; then the call
/// runs. The SDP is checked before the credentials so that what a request
/// without credentials learns does not depend on them.
async fn admit_invite(shared: Arc<Shared>, mut tx: Transaction) {
    // Over capacity: 503 with Retry-After, before any work for the call. (A
    // saturated recogniser does not refuse calls: they degrade to a human.)
    if let Some(cause @ ("draining" | "max_calls" | "setup_limit" | "media_late" | "fds")) =
        unavailable(&shared, 1)
    {
        shared.board.rejected(cause);
        warn!(
            cause,
            calls = shared.calls.len(),
            "refusing a new call: 503"
        );
        let (reason, retry) = match cause {
            "draining" => ("shutting down", "30"),
            "fds" => ("out of file descriptors", "5"),
            "setup_limit" => ("too many calls in set-up", "2"),
            "media_late" => ("overloaded", "5"),
            _ => ("at capacity", "5"),
        };
        reject(
            &mut tx,
            StatusCode::ServiceUnavailable,
            reason,
            vec![Header::Other("Retry-After".into(), retry.into())],
        )
        .await;
        return;
    }
    let Some(ip) = source_ip(&shared, &tx) else {
        reject(&mut tx, StatusCode::BadRequest, "unknown source", vec![]).await;
        return;
    };
    if shared.nonces.banned(ip, unix_now()) {
        // Banned for guessing credentials: refused unread (logged at the ban).
        tracing::debug!(%ip, "INVITE from a banned source");
        shared.board.rejected("banned");
        if let Err(e) = Box::pin(tx.reply(StatusCode::Forbidden)).await {
            warn!(error = %e, "could not send 403");
        }
        return;
    }
    let Some(trunk) = shared.config.trunk_for(ip).cloned() else {
        warn!(%ip, "INVITE from a source outside every trunk ACL");
        shared.board.rejected("acl");
        // The reason stays in the log: a prober learns nothing from the wire.
        if let Err(e) = Box::pin(tx.reply(StatusCode::Forbidden)).await {
            warn!(error = %e, "could not send 403");
        }
        return;
    };
    if tx.original.body.is_empty() {
        reject(
            &mut tx,
            StatusCode::NotAcceptableHere,
            "an SDP offer is required",
            vec![],
        )
        .await;
        return;
    }
    let negotiated = match sdp::negotiate(&tx.original.body, &trunk.codecs) {
        Ok(n) => n,
        Err(e) => {
            warn!(error = %e, "refusing the offer");
            let status = if e.status() == 400 {
                StatusCode::BadRequest
            } else {
                StatusCode::NotAcceptableHere
            };
            shared.board.rejected("bad_sdp");
            reject(&mut tx, status, &e.to_string(), vec![]).await;
            return;
        }
    };
    if let Some(auth) = &trunk.auth {
        let now_s = unix_now();
        let header = tx
            .original
            .headers
            .iter()
            .find(|h| matches!(h, Header::Authorization(_)))
            .map(|h| h.value().to_string());
        let call_id = tx
            .original
            .call_id_header()
            .map(|h| h.value().to_string())
            .unwrap_or_default();
        match shared.nonces.verify(
            header.as_deref(),
            &tx.original.method,
            (&auth.username, &auth.password, &auth.realm),
            ip,
            &call_id,
            shared.config.gateway.sip.auth_limits,
            now_s,
        ) {
            AuthVerdict::Accepted => {}
            AuthVerdict::Challenge => {
                let challenge = shared.nonces.challenge(&auth.realm, ip, now_s);
                let h = Header::Other("WWW-Authenticate".into(), challenge);
                info!(trunk = %trunk.name, "challenging INVITE for credentials");
                if let Err(e) =
                    Box::pin(tx.reply_with(StatusCode::Unauthorized, vec![h], None)).await
                {
                    warn!(error = %e, "could not send 401");
                }
                return;
            }
            verdict @ (AuthVerdict::Rejected | AuthVerdict::Banned) => {
                shared.board.rejected(if verdict == AuthVerdict::Banned {
                    "banned"
                } else {
                    "auth"
                });
                // The reason is logged (by the verifier); any wrong
                // credential gets the same bare 403.
                if let Err(e) = Box::pin(tx.reply(StatusCode::Forbidden)).await {
                    warn!(error = %e, "could not send 403");
                }
                return;
            }
        }
    }
    // RFC 4028: a caller asking for a session timer shorter than our
    // minimum is told ours (422 + Min-SE) and retries.
    let sip = &shared.config.gateway.sip;
    let timer = match crate::sip::session_timer::negotiate(
        &tx.original.headers,
        sip.session_expires,
        crate::sip::session_timer::MIN_SE_S,
    ) {
        crate::sip::session_timer::Negotiation::None => None,
        crate::sip::session_timer::Negotiation::Timer(t) => Some(t),
        crate::sip::session_timer::Negotiation::TooSmall { min_se } => {
            if let Err(e) = Box::pin(tx.reply_with(
                StatusCode::Other(422, "Session Interval Too Small".into()),
                vec![Header::Other("Min-SE".into(), min_se.to_string())],
                None,
            ))
            .await
            {
                warn!(error = %e, "could not send 422");
            }
            return;
        }
    };
    let setting_up = SettingUp::new(&shared.setting_up);
    // Boxed: inline, the call's future would be kept beside this task's
    // own set-up state (moved-out locals keep their space) for the whole call.
    Box::pin(call::run(shared, trunk, tx, negotiated, timer, setting_up)).await;
}

/// The address peers reach a listener at, when `[sip] advertised_address` or
/// `advertised_port` says it is not the bound one (Via and Contact carry it).
fn advertised(sip: &crate::config::SipListen, bound: SocketAddr) -> Option<SocketAddr> {
    if sip.advertised_address.is_none() && sip.advertised_port.is_none() {
        return None;
    }
    Some(SocketAddr::new(
        sip.advertised_address.unwrap_or(bound.ip()),
        sip.advertised_port.unwrap_or(bound.port()),
    ))
}

/// Two malloc arenas instead of glibc's 8 per core: with one arena per
/// thread that ever allocated, memory freed after a burst is scattered over
/// many heaps and is never given back. Call it before any thread starts: a
/// thread keeps the arena it first allocated in (set later, five arenas
/// were measured in use).
pub fn limit_heap_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Return free heap pages to the kernel (glibc `malloc_trim`); elsewhere a
/// no-op.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
