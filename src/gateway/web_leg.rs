//! A browser caller's leg: the peer connection, the frames its Opus track
//! delivered (with their jitter statistics), and the frames going back.

use crate::media::jitter::{JitterStats, FRAME_8K};
use serde_json::json;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;
use webrtc::peer_connection::RTCPeerConnection;

/// What the browser's track delivered, shared between its reader task and
/// the call's media clock.
#[derive(Default)]
pub(super) struct Received {
    pub(super) frames: VecDeque<Vec<i16>>,
    /// Decoded samples not yet a whole 20 ms frame.
    pub(super) partial: Vec<i16>,
    pub(super) stats: JitterStats,
    pub(super) last_seq: Option<u16>,
    pub(super) last_rx: Option<Instant>,
    /// Frames allowed to wait (the jitter depth).
    pub(super) depth: usize,
    pub(super) decode_errors: u64,
}

/// A browser caller's leg of a call.
pub(super) struct WebLeg {
    pub(super) pc: Arc<RTCPeerConnection>,
    pub(super) received: Arc<Mutex<Received>>,
    pub(super) to_browser: mpsc::Sender<Vec<i16>>,
    pub(super) ended: Option<mpsc::UnboundedReceiver<&'static str>>,
    pub(super) opened: Instant,
    pub(super) remote: String,
}

impl WebLeg {
    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn describe(&self) -> crate::call::event::Answered {
        crate::call::event::Answered {
            channel: Some("webrtc".into()),
            codec: Some("opus".into()),
            remote: Some(self.remote.to_string()),
            ..Default::default()
        }
    }

    pub(super) fn receive(&mut self, _now: Duration) -> Vec<char> {
        Vec::new()
    }

    pub(super) fn pull_frame(&mut self) -> Vec<i16> {
        let mut r = self.lock();
        let queued = r.frames.len().saturating_sub(1) as u64;
        match r.frames.pop_front() {
            Some(f) => {
                r.stats.played += 1;
                r.stats.queued_sum += queued;
                f
            }
            None => {
                if r.last_rx.is_some() {
                    r.stats.underruns += 1;
                }
                vec![0; FRAME_8K]
            }
        }
    }

    pub(super) fn send_frame(&mut self, frame: &[i16]) {
        // Never block the media clock: a stalled sender loses frames.
        let _ = self.to_browser.try_send(frame.to_vec());
    }

    pub(super) fn set_jitter_depth(&mut self, depth: Duration) {
        self.lock().depth = frames_for(depth);
    }

    pub(super) fn jitter_stats(&self) -> JitterStats {
        self.lock().stats
    }

    pub(super) fn idle_for(&self, _now: Duration) -> Duration {
        let last = self.lock().last_rx.unwrap_or(self.opened);
        last.elapsed()
    }

    pub(super) async fn hang_up(&mut self) {
        if let Err(e) = self.pc.close().await {
            warn!(error = %e, "closing the browser's peer connection failed");
        }
    }

    pub(super) fn stats_json(&self) -> serde_json::Value {
        let r = self.lock();
        json!({"jitter": r.stats, "decode_errors": r.decode_errors, "codec": "opus"})
    }
}

pub(super) fn frames_for(depth: Duration) -> usize {
    ((depth.as_millis() / 20) as usize).clamp(1, 25)
}
