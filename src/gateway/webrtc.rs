//! Browser callers over WebRTC (the `webrtc` crate): the `/call` page posts
//! its SDP offer; the gateway answers (ICE host candidates, DTLS-SRTP, Opus),
//! and once the peer connection is up the call runs through the very same
//! [`converse`](super::call::converse) as a SIP call — bot, emotion,
//! hand-over, recording. Opus is decoded to and encoded from 8 kHz by libopus
//! itself, so the pipeline sees the same 20 ms frames as from G.711; a
//! hand-over to a SIP agent bridges Opus ↔ G.711 through them.

use super::call::{converse, Parties};
use super::events::OnBoard;
use super::leg::CallerLeg;
use super::web_leg::{frames_for, Received, WebLeg};
use super::Shared;
use crate::api::http::OfferRefused;
use crate::config::TrunkConfig;
use crate::media::jitter::FRAME_8K;
use crate::record::CallRecorder;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn, Instrument};
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_OPUS};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::udp_network::{EphemeralUDP, UDPNetwork};
use webrtc::interceptor::registry::Registry;
use webrtc::media::Sample;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_local::TrackLocal;
use webrtc::track::track_remote::TrackRemote;

/// Longest wait for ICE and DTLS after the answer before the call is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Browser calls answered but not yet connected, at most: each holds sockets
/// and a task for up to [`CONNECT_TIMEOUT`], so a flood of offers is refused.
pub(super) const MAX_PENDING: usize = 32;

static PENDING: AtomicUsize = AtomicUsize::new(0);

/// One of the [`MAX_PENDING`] set-up slots, freed when dropped.
struct SetUpSlot;

impl SetUpSlot {
    fn take() -> Option<SetUpSlot> {
        PENDING
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_PENDING).then_some(n + 1)
            })
            .ok()
            .map(|_| SetUpSlot)
    }
}

impl Drop for SetUpSlot {
    fn drop(&mut self) {
        PENDING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A browser's SDP offer → the gateway's SDP answer. The call itself runs on
/// its own task once the peer connection is up.
pub(super) async fn answer(shared: Arc<Shared>, offer: String) -> Result<String, OfferRefused> {
    let Some(slot) = SetUpSlot::take() else {
        warn!(
            pending = MAX_PENDING,
            "browser offer refused: too many calls being set up"
        );
        return Err(OfferRefused::Busy(format!(
            "{MAX_PENDING} browser calls are being set up; try again in a few seconds"
        )));
    };
    answer_with(shared, offer, slot)
        .await
        .map_err(OfferRefused::Bad)
}

async fn answer_with(
    shared: Arc<Shared>,
    offer: String,
    slot: SetUpSlot,
) -> Result<String, String> {
    let offer = RTCSessionDescription::offer(offer).map_err(|e| format!("bad SDP offer: {e}"))?;
    let mut media = MediaEngine::default();
    media
        .register_codec(
            RTCRtpCodecParameters {
                capability: opus_capability(),
                payload_type: 111,
                ..Default::default()
            },
            RTPCodecType::Audio,
        )
        .map_err(|e| e.to_string())?;
    let registry =
        register_default_interceptors(Registry::new(), &mut media).map_err(|e| e.to_string())?;
    let mut settings = SettingEngine::default();
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    settings.set_include_loopback_candidate(true);
    // Browser media inside the same firewall hole as RTP: the [media] range
    // (ports taken by SIP calls are skipped, and the other way round).
    let m = &shared.config.gateway.media;
    match EphemeralUDP::new(m.rtp_port_min, m.rtp_port_max) {
        Ok(range) => settings.set_udp_network(UDPNetwork::Ephemeral(range)),
        Err(e) => warn!(error = %e, "browser media on OS-chosen ports"),
    }
    let api = APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build();
    let pc = Arc::new(
        api.new_peer_connection(RTCConfiguration::default())
            .await
            .map_err(|e| format!("cannot create a peer connection: {e}"))?,
    );
    let outcome = negotiate(&shared, pc.clone(), offer, slot).await;
    if outcome.is_err() {
        let _ = pc.close().await;
    }
    outcome
}

fn opus_capability() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

async fn negotiate(
    shared: &Arc<Shared>,
    pc: Arc<RTCPeerConnection>,
    offer: RTCSessionDescription,
    slot: SetUpSlot,
) -> Result<String, String> {
    let track = Arc::new(TrackLocalStaticSample::new(
        opus_capability(),
        "voicegate-audio".to_owned(),
        "voicegate".to_owned(),
    ));
    let sender = pc
        .add_track(track.clone() as Arc<dyn TrackLocal + Send + Sync>)
        .await
        .map_err(|e| e.to_string())?;
    // RTCP from the browser must be read for the interceptors to work.
    tokio::spawn(async move {
        let mut buf = vec![0u8; 1500];
        while sender.read(&mut buf).await.is_ok() {}
    });
    let depth = frames_for(shared.config.gateway.media.jitter_buffer);
    let received = Arc::new(Mutex::new(Received {
        depth,
        ..Default::default()
    }));
    {
        let received = received.clone();
        pc.on_track(Box::new(move |remote: Arc<TrackRemote>, _, _| {
            let received = received.clone();
            Box::pin(async move {
                if remote.kind() == RTPCodecType::Audio {
                    tokio::spawn(read_track(remote, received));
                }
            })
        }));
    }
    let (state_tx, mut states) = mpsc::unbounded_channel::<RTCPeerConnectionState>();
    pc.on_peer_connection_state_change(Box::new(move |s| {
        let _ = state_tx.send(s);
        Box::pin(async {})
    }));
    pc.set_remote_description(offer)
        .await
        .map_err(|e| format!("cannot use the offer: {e}"))?;
    let answer = pc
        .create_answer(None)
        .await
        .map_err(|e| format!("cannot answer the offer: {e}"))?;
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(answer)
        .await
        .map_err(|e| e.to_string())?;
    // Host candidates only: gathering is quick; the answer carries them all.
    let _ = tokio::time::timeout(Duration::from_secs(3), gathered.recv()).await;
    let local = pc
        .local_description()
        .await
        .ok_or("no local description")?
        .sdp;
    let remote = browser_address(&pc).await;

    let id = format!("webrtc-{}", hex::encode(rand::random::<[u8; 8]>()));
    let (to_browser, frames) = mpsc::channel::<Vec<i16>>(50);
    tokio::spawn(write_track(track, frames));
    let shared2 = shared.clone();
    let span = tracing::info_span!("call", call_id = %id);
    shared.calls.spawn(
        async move {
            let shared = shared2;
            // Wait until ICE and DTLS are up, so the caller hears the greeting
            // (or the gateway stops).
            let stop = shared.shutdown.clone();
            let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
                loop {
                    let s = tokio::select! {
                        s = states.recv() => s,
                        _ = stop.cancelled() => None,
                    };
                    let Some(s) = s else { return false };
                    match s {
                        RTCPeerConnectionState::Connected => return true,
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                            return false
                        }
                        _ => {}
                    }
                }
            })
            .await
            .unwrap_or(false);
            drop(slot);
            if !connected {
                warn!("browser call never connected (ICE/DTLS)");
                let _ = pc.close().await;
                return;
            }
            let (ended_tx, ended) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                while let Some(s) = states.recv().await {
                    let why = match s {
                        RTCPeerConnectionState::Disconnected => "browser_disconnected",
                        RTCPeerConnectionState::Failed => "browser_connection_failed",
                        RTCPeerConnectionState::Closed => "browser_hangup",
                        _ => continue,
                    };
                    let _ = ended_tx.send(why);
                }
            });
            info!(%remote, "browser call connected");
            let who = Parties {
                call_id: id.clone(),
                from_user: "anonymous".into(),
                from_display: "browser".into(),
                to_user: "web".into(),
            };
            let trunk = web_trunk();
            let page_key = shared.board.open(
                &id,
                "webrtc",
                "",
                "web",
                &trunk.name,
                chrono::Utc::now().timestamp_millis(),
            );
            let on_board = OnBoard(shared.board.clone(), id.clone());
            let gw = &shared.config.gateway;
            let date = chrono::Utc::now().format("%Y-%m-%d").to_string();
            let recorder = CallRecorder::create(&gw.recording.dir, &date, &id, 8000)
                .map_err(|e| {
                    tracing::error!(error = %e, "cannot create the recording; the call goes on unrecorded")
                })
                .ok();
            let leg = CallerLeg::Web(WebLeg {
                pc,
                received,
                to_browser,
                ended: Some(ended),
                opened: Instant::now(),
                remote,
            });
            let media = shared.media_runtime.clone();
            super::media_runtime::run_call(
                &media,
                Box::pin(converse(shared.clone(), who, trunk, leg, recorder, page_key, on_board)),
            )
            .await;
        }
        .instrument(span),
    );
    Ok(local)
}

/// Browser callers come in on a trunk of their own, named `webrtc`, in the
/// `[speech]` language.
fn web_trunk() -> TrunkConfig {
    TrunkConfig {
        name: "webrtc".into(),
        allow: Vec::new(),
        codecs: Vec::new(),
        auth: None,
        register: None,
        routes: Default::default(),
        language: None,
        languages: Default::default(),
    }
}

/// The browser's first ICE candidate address, from its offer (for logs).
async fn browser_address(pc: &RTCPeerConnection) -> String {
    pc.remote_description()
        .await
        .map(|d| {
            d.sdp
                .lines()
                .find(|l| l.starts_with("a=candidate:"))
                .and_then(|l| l.split_whitespace().nth(4))
                .unwrap_or("unknown")
                .to_string()
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Read the browser's Opus RTP, decode to 8 kHz, queue 20 ms frames.
async fn read_track(remote: Arc<TrackRemote>, received: Arc<Mutex<Received>>) {
    let mut decoder = match opus::Decoder::new(8000, opus::Channels::Mono) {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "cannot create the Opus decoder");
            return;
        }
    };
    // Up to 120 ms per packet at 8 kHz.
    let mut pcm = vec![0i16; 960];
    // What one packet decodes to (concealment first), pushed in one lock.
    let mut decoded: Vec<i16> = Vec::with_capacity(4 * 960);
    while let Ok((packet, _)) = remote.read_rtp().await {
        let seq = packet.header.sequence_number;
        let lost = {
            let mut r = received.lock().unwrap_or_else(|p| p.into_inner());
            let gap = r.last_seq.map(|last| seq.wrapping_sub(last)).unwrap_or(1);
            if gap == 0 || gap > 0x8000 {
                // Duplicate or late (reordered behind a newer one): dropped.
                if gap == 0 {
                    r.stats.duplicate += 1;
                } else {
                    r.stats.late += 1;
                }
                continue;
            }
            r.last_seq = Some(seq);
            r.last_rx = Some(Instant::now());
            r.stats.received += 1;
            let lost = u64::from(gap - 1);
            r.stats.lost += lost;
            lost
        };
        // Decode outside the lock the media clock takes every 20 ms.
        // Conceal up to 3 lost packets (Opus PLC); longer gaps are lost.
        decoded.clear();
        for _ in 0..lost.min(3) {
            if let Ok(n) = decoder.decode(&[], &mut pcm[..FRAME_8K], false) {
                decoded.extend_from_slice(&pcm[..n]);
            }
        }
        let mut failed = false;
        if !packet.payload.is_empty() {
            match decoder.decode(&packet.payload, &mut pcm, false) {
                Ok(n) => decoded.extend_from_slice(&pcm[..n]),
                Err(_) => failed = true,
            }
        }
        let mut r = received.lock().unwrap_or_else(|p| p.into_inner());
        if failed {
            r.decode_errors += 1;
        }
        push_samples(&mut r, &decoded);
    }
}

fn push_samples(r: &mut Received, samples: &[i16]) {
    r.partial.extend_from_slice(samples);
    while r.partial.len() >= FRAME_8K {
        let frame: Vec<i16> = r.partial.drain(..FRAME_8K).collect();
        r.frames.push_back(frame);
    }
    // Keep the delay bounded: beyond the depth the oldest frames go.
    while r.frames.len() > r.depth + 2 {
        r.frames.pop_front();
        r.stats.skipped += 1;
    }
}

/// Encode the call's 8 kHz frames as Opus and send them to the browser.
async fn write_track(track: Arc<TrackLocalStaticSample>, mut frames: mpsc::Receiver<Vec<i16>>) {
    let mut encoder = match opus::Encoder::new(8000, opus::Channels::Mono, opus::Application::Voip)
    {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "cannot create the Opus encoder");
            return;
        }
    };
    let mut out = vec![0u8; 1500];
    while let Some(frame) = frames.recv().await {
        let n = match encoder.encode(&frame, &mut out) {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "Opus encoding failed");
                continue;
            }
        };
        let sample = Sample {
            data: bytes::Bytes::copy_from_slice(&out[..n]),
            timestamp: SystemTime::now(),
            duration: Duration::from_millis(20),
            ..Default::default()
        };
        if track.write_sample(&sample).await.is_err() {
            break;
        }
    }
}
