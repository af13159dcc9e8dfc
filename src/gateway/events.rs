//! What a call tells the world as it goes: its `events.jsonl` (through the
//! recorder) and the HTTP call board, on one clock from the answer.

use crate::call::CallEvent;
use crate::record::CallRecorder;
use tokio::time::Instant;

/// Events to the call's `events.jsonl`, timed from the answer.
pub(super) struct EventLog {
    pub(super) recorder: Option<CallRecorder>,
    pub(super) start: Instant,
    /// The HTTP surface's view of this call: the board and the call's id.
    pub(super) board: Option<(crate::api::board::CallBoard, String)>,
}

impl EventLog {
    /// Log one event (and trace it).
    pub(super) fn event(&mut self, event: CallEvent) {
        tracing::debug!(kind = event.kind(), ?event, "event");
        if let Some((board, id)) = &self.board {
            board.event(id, self.start.elapsed().as_secs_f64(), &event);
        }
        if let Some(r) = self.recorder.as_mut() {
            if let Err(e) = r.event(self.start.elapsed(), &event) {
                tracing::error!(error = %e, "event log write failed");
            }
        }
    }
}

/// Takes a call off the board's live list when its task ends, whatever path
/// it ends by.
pub(super) struct OnBoard(pub crate::api::board::CallBoard, pub String);

impl Drop for OnBoard {
    fn drop(&mut self) {
        self.0.close(&self.1);
    }
}
