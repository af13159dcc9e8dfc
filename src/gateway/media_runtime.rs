//! The runtime answered calls run on, apart from SIP.
//!
//! SIP parsing, transactions, registration and HTTP run on the main tokio
//! runtime; every answered call (its 20 ms media clock, RTP in and out, the
//! bot's decisions, the hand-over's mixing) runs here, on worker threads of
//! its own. A flood of INVITEs keeps the main runtime's workers busy parsing
//! and rejecting; it never holds a call's tick behind a SIP message in the
//! same worker's queue (issue 14). Calls still use the SIP stack (BYE,
//! re-INVITE) from here: tokio's resources work across runtimes.

use std::future::Future;
use tracing::Instrument;

/// Owns the media runtime; shuts it down without blocking when dropped
/// (dropping a runtime inside another one's task would panic).
pub(crate) struct MediaRuntime(Option<tokio::runtime::Runtime>);

impl MediaRuntime {
    /// One worker per core (at least two), threads named `voicegate-media`.
    pub(crate) fn start() -> std::io::Result<Self> {
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .max(2);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("voicegate-media")
            .enable_all()
            .build()?;
        Ok(Self(Some(runtime)))
    }

    /// A handle to spawn calls with.
    pub(crate) fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(r) => r.handle().clone(),
            // Only after drop, which consumes `self`: unreachable.
            None => tokio::runtime::Handle::current(),
        }
    }
}

impl Drop for MediaRuntime {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.shutdown_background();
        }
    }
}

/// Run `call` on the media runtime (in the current tracing span: its log
/// lines keep the call's fields) and wait for it from the SIP side. A
/// call that panics is logged; the caller's task goes on to clean up.
pub(crate) async fn run_call<F>(media: &tokio::runtime::Handle, call: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    if let Err(e) = media.spawn(call.in_current_span()).await {
        tracing::error!(error = %e, "a call's task failed");
    }
}
