//! `voicegate call`: a SIP caller for QA and load — places real calls,
//! streams WAV files in real time as G.711 RTP (with RFC 4733 digits at
//! given moments), records what comes back, and hangs up at the end of the
//! file or when the far end does.

pub mod cli;

use crate::config::Codec;
use crate::media::jitter::FRAME_8K;
use crate::media::prompt::Prompt;
use crate::media::session::MediaSession;
use crate::sip::sdp;
use rsipstack::dialog::dialog::{DialogState, TerminatedReason};
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::dialog::invitation::InviteOption;
use rsipstack::transport::{udp::UdpConnection, TransportLayer};
use rsipstack::EndpointBuilder;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// One call to place.
#[derive(Debug, Clone)]
pub struct CallPlan {
    /// What to say.
    pub play: PathBuf,
    /// Where to write what came back (mono 8 kHz WAV).
    pub record: Option<PathBuf>,
    /// Caller ID (user part of From).
    pub caller: String,
    /// Digits to send and when (seconds after answer).
    pub dtmf: Vec<(String, f64)>,
    /// Stay on the line this long after the file ends.
    pub linger: Duration,
}

/// What happened on one call.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CallOutcome {
    /// The file played.
    pub file: String,
    /// The call's SIP Call-ID (to find it in the gateway's recordings).
    pub call_id: String,
    /// Whether the far end answered.
    pub answered: bool,
    /// Final SIP status of the INVITE (0: none).
    pub status: u16,
    /// INVITE → 200 OK.
    pub setup_ms: Option<f64>,
    /// Audio received (seconds of non-silent frames).
    pub audio_received_s: f64,
    /// Who ended the call: `caller` (end of file) or `callee`.
    pub ended_by: String,
    /// Seconds from answer to the end.
    pub duration_s: f64,
    /// Why the call failed, if it did.
    pub error: Option<String>,
    /// Whether the caller was put through to a person, as heard: the bot's
    /// "connecting" phrase in what came back (`None`: not checked).
    pub handed_over: Option<bool>,
    /// What came back, 8 kHz.
    #[serde(skip)]
    pub received: Vec<i16>,
}

/// Parse `--dtmf DIGITS@SECONDS` (e.g. `5550123#@8.5`).
pub fn parse_dtmf(spec: &str) -> Result<(String, f64), String> {
    let (digits, at) = spec
        .rsplit_once('@')
        .ok_or_else(|| format!("--dtmf {spec:?}: write DIGITS@SECONDS, e.g. 123#@5"))?;
    if digits.is_empty()
        || !digits
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D'))
    {
        return Err(format!("--dtmf {spec:?}: digits are 0-9, *, #, A-D"));
    }
    let at: f64 = at
        .parse()
        .map_err(|_| format!("--dtmf {spec:?}: {at:?} is not a number of seconds"))?;
    Ok((digits.to_string(), at))
}

/// A SIP user agent that places calls.
pub struct Caller {
    endpoint: rsipstack::transaction::Endpoint,
    dialogs: Arc<DialogLayer>,
    local: SocketAddr,
    cancel: CancellationToken,
}

/// The local address that routes to `target`.
fn local_ip_towards(target: SocketAddr) -> IpAddr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect(target).and_then(|_| s.local_addr()))
        .map(|a| a.ip())
        .unwrap_or_else(|_| "127.0.0.1".parse().expect("loopback"))
}

impl Caller {
    /// Start a user agent able to reach `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Caller> {
        let ip = local_ip_towards(target);
        let port = std::net::UdpSocket::bind((ip, 0))?.local_addr()?.port();
        let local = SocketAddr::new(ip, port);
        let cancel = CancellationToken::new();
        let transport = TransportLayer::new(cancel.child_token());
        let udp = UdpConnection::create_connection(local, None, Some(cancel.child_token())).await?;
        transport.add_transport(udp.into());
        let endpoint = EndpointBuilder::new()
            .with_user_agent(concat!("voicegate-call/", env!("CARGO_PKG_VERSION")))
            .with_transport_layer(transport)
            .with_cancel_token(cancel.child_token())
            .build();
        let mut incoming = endpoint
            .incoming_transactions()
            .map_err(|e| anyhow::anyhow!("no transaction receiver: {e}"))?;
        let inner = endpoint.inner.clone();
        tokio::spawn(async move {
            let _ = inner.serve().await;
        });
        let dialogs = Arc::new(DialogLayer::new(endpoint.inner.clone()));
        let layer = dialogs.clone();
        // In-dialog requests (the far end's BYE, re-INVITEs) go to their dialog.
        tokio::spawn(async move {
            while let Some(mut tx) = incoming.recv().await {
                match layer.match_dialog(&tx) {
                    Some(mut d) => {
                        tokio::spawn(async move {
                            let _ = d.handle(&mut tx).await;
                        });
                    }
                    None => {
                        let _ = tx
                            .reply(rsipstack::sip::StatusCode::CallTransactionDoesNotExist)
                            .await;
                    }
                }
            }
        });
        Ok(Caller {
            endpoint,
            dialogs,
            local,
            cancel,
        })
    }

    /// Place one call to `uri` and run it to its end.
    pub async fn call(&self, uri: &str, plan: &CallPlan) -> CallOutcome {
        let mut outcome = CallOutcome {
            file: plan.play.display().to_string(),
            call_id: String::new(),
            answered: false,
            status: 0,
            setup_ms: None,
            audio_received_s: 0.0,
            ended_by: String::new(),
            duration_s: 0.0,
            error: None,
            handed_over: None,
            received: Vec::new(),
        };
        match self.run(uri, plan, &mut outcome).await {
            Ok(()) => {}
            Err(e) => outcome.error = Some(e),
        }
        outcome
    }

    async fn run(&self, uri: &str, plan: &CallPlan, out: &mut CallOutcome) -> Result<(), String> {
        let audio = Prompt::load(&plan.play).map_err(|e| e.to_string())?;
        let rtp = std::net::UdpSocket::bind((self.local.ip(), 0)).map_err(|e| e.to_string())?;
        // Read and written only on the caller's own 20 ms tick, never
        // awaited: a socket the runtime does not watch, so each packet the
        // gateway sends does not wake this process (on loopback that
        // wake-up is paid inside the gateway's `sendto`, and would be
        // counted as the gateway's CPU by the load bench).
        rtp.set_nonblocking(true).map_err(|e| e.to_string())?;
        let rtp_port = rtp.local_addr().map_err(|e| e.to_string())?.port();
        let offer = sdp::build_offer(
            u64::from(rand::random::<u32>()),
            1,
            self.local.ip(),
            rtp_port,
            &[Codec::Pcmu, Codec::Pcma],
            Some(101),
        );
        let callee = rsipstack::sip::Uri::try_from(uri).map_err(|e| format!("{uri}: {e}"))?;
        let me = format!("sip:{}@{}", plan.caller, self.local);
        let call_id = format!("{:032x}@{}", rand::random::<u128>(), self.local.ip());
        out.call_id = call_id.clone();
        let opt = InviteOption {
            caller_display_name: None,
            caller_params: vec![],
            caller: rsipstack::sip::Uri::try_from(me.as_str()).map_err(|e| e.to_string())?,
            callee,
            destination: None,
            content_type: Some("application/sdp".into()),
            offer: Some(offer.into_bytes()),
            contact: rsipstack::sip::Uri::try_from(me.as_str()).map_err(|e| e.to_string())?,
            credential: None,
            headers: None,
            support_prack: false,
            // Our own host in the Call-ID (the SIP library's default names its vendor's domain).
            call_id: Some(call_id.clone()),
            session_id: None,
            route_set: vec![],
        };
        let (state_tx, mut states) = self.dialogs.new_dialog_state_channel();
        let sent = Instant::now();
        let (dialog, resp) = self
            .dialogs
            .do_invite(opt, state_tx)
            .await
            .map_err(|e| format!("INVITE failed: {e}"))?;
        let resp = resp.ok_or("no final response to the INVITE")?;
        out.status = resp.status_code.code();
        if out.status / 100 != 2 {
            return Err(format!("call refused: {}", resp.status_code));
        }
        out.answered = true;
        out.setup_ms = Some(sent.elapsed().as_secs_f64() * 1000.0);
        let answer = sdp::negotiate(&resp.body, &[Codec::Pcmu, Codec::Pcma])
            .map_err(|e| format!("answer SDP: {e}"))?;
        // A test caller: whatever the gateway's media leaves from is heard.
        let mut media = MediaSession::new(
            answer.params,
            Duration::from_millis(60),
            rand::random(),
            Duration::ZERO,
        )
        .learning_any_source();
        let started = tokio::time::Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_millis(20));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let frames = audio.samples().len().div_ceil(FRAME_8K);
        let total = frames + (plan.linger.as_millis() / 20) as usize;
        let mut received: Vec<i16> = Vec::with_capacity(total * FRAME_8K);
        let mut digits: Vec<(usize, char)> = Vec::new();
        for (keys, at) in &plan.dtmf {
            let first = (at * 50.0).round() as usize;
            for (i, d) in keys.chars().enumerate() {
                digits.push((first + i * 10, d)); // 200 ms apart
            }
        }
        let mut buf = [0u8; 2048];
        let mut heard = 0usize;
        let mut ended_by = "caller";
        'call: for n in 0..total {
            tokio::select! {
                _ = ticker.tick() => {}
                state = states.recv() => {
                    if let Some(DialogState::Terminated(_, reason)) = state {
                        ended_by = match reason {
                            TerminatedReason::UasBye => "callee",
                            _ => "dialog_ended",
                        };
                        break 'call;
                    }
                    continue;
                }
            }
            let now = started.elapsed();
            while let Ok((len, from)) = rtp.recv_from(&mut buf) {
                media.on_datagram(now, from, &buf[..len]);
            }
            let (frame, _) = media.pull_frame();
            if frame.iter().any(|s| s.unsigned_abs() > 300) {
                heard += 1;
            }
            received.extend_from_slice(&frame[..FRAME_8K.min(frame.len())]);
            let start = n * FRAME_8K;
            let mut out_frame = [0i16; FRAME_8K];
            if start < audio.samples().len() {
                let end = (start + FRAME_8K).min(audio.samples().len());
                out_frame[..end - start].copy_from_slice(&audio.samples()[start..end]);
            }
            let dest = media.destination();
            if let Some(&(_, d)) = digits.iter().find(|(at, _)| *at == n) {
                for pkt in media.encode_digit(d, 100) {
                    let _ = rtp.send_to(&pkt, dest);
                }
            } else {
                let pkt = media.encode_frame(&out_frame);
                let _ = rtp.send_to(pkt, dest);
            }
        }
        out.duration_s = started.elapsed().as_secs_f64();
        out.audio_received_s = heard as f64 * 0.02;
        out.ended_by = ended_by.to_string();
        if ended_by == "caller" {
            let _ = dialog.bye().await;
        }
        self.dialogs.remove_dialog(&dialog.id());
        if let Some(path) = &plan.record {
            write_wav(path, &received).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        out.received = received;
        Ok(())
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.endpoint.shutdown();
    }
}

/// Whether `received` (8 kHz, what the gateway sent) contains `phrase` —
/// most of its words, in Whisper's reading.
pub fn heard_phrase(
    received: &[i16],
    phrase: &str,
    recognizer: &mut crate::speech::asr::Recognizer,
) -> bool {
    let f: Vec<f32> = received.iter().map(|s| f32::from(*s) / 32768.0).collect();
    let Ok(wide) = crate::media::resample::resample(&f, 8000, 16000) else {
        return false;
    };
    let Ok(utts) = crate::speech::pipeline::transcribe_track(
        &wide,
        crate::speech::vad::VadConfig::default(),
        recognizer,
        None,
    ) else {
        return false;
    };
    let stem = crate::call::intents::stem;
    let heard: Vec<String> = utts
        .iter()
        .flat_map(|u| crate::emotion::tokens(&u.text))
        .map(|w| stem(&w))
        .collect();
    let words: Vec<String> = crate::emotion::tokens(phrase)
        .into_iter()
        .filter(|w| w.len() > 3)
        .map(|w| stem(&w))
        .collect();
    let found = words.iter().filter(|w| heard.contains(w)).count();
    // Half the phrase's content words, as tiny models read synthetic speech.
    !words.is_empty() && found * 2 >= words.len()
}

fn write_wav(path: &std::path::Path, samples: &[i16]) -> Result<(), hound::Error> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)?;
    for s in samples {
        w.write_sample(*s)?;
    }
    w.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtmf_specs_parse_or_explain() {
        assert_eq!(parse_dtmf("5550123#@8.5"), Ok(("5550123#".into(), 8.5)));
        assert!(parse_dtmf("12").unwrap_err().contains("DIGITS@SECONDS"));
        assert!(parse_dtmf("1x@2").unwrap_err().contains("0-9"));
        assert!(parse_dtmf("1@soon").unwrap_err().contains("seconds"));
    }
}
