//! The runtime answered calls run on, apart from SIP, and the media engine
//! that steps them every 20 ms.
//!
//! SIP parsing, transactions, registration and HTTP run on the main tokio
//! runtime; every answered call (its 20 ms media clock, RTP in and out, the
//! bot's decisions, the hand-over's mixing) runs here, on worker threads of
//! its own. A flood of INVITEs keeps the main runtime's workers busy parsing
//! and rejecting; it never holds a call's tick behind a SIP message in the
//! same worker's queue (issue 14). Calls still use the SIP stack (BYE,
//! re-INVITE) from here: tokio's resources work across runtimes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
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

    /// How many shards the media engine should run: one per worker.
    pub(crate) fn workers(&self) -> usize {
        self.0.as_ref().map_or(2, |r| r.metrics().num_workers())
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
///
/// The call's future arrives boxed: held by value it would take its whole
/// size (~6 KiB) in the caller's future, and again in this one's, for the
/// call's lifetime (space an `async fn` keeps even once the value moved out).
pub(crate) async fn run_call<F>(media: &tokio::runtime::Handle, call: Pin<Box<F>>)
where
    F: Future<Output = ()> + Send + 'static,
{
    if let Err(e) = media.spawn(call.in_current_span()).await {
        tracing::error!(error = %e, "a call's task failed");
    }
}

/// What the media engine steps: one answered call's media half.
pub(crate) trait Ticked: Send + Sync {
    /// One pass of the 20 ms clock at the grid instant `deadline` (the call
    /// catches up on ticks it missed). `false` once the call is over: the
    /// engine lets it go.
    fn tick(&self, deadline: Instant) -> bool;

    /// Its step panicked: the engine has let it go (the other calls go on)
    /// and the call must end.
    fn failed(&self);
}

/// The media engine: a few shards (one per media worker), each one task
/// that steps every call it holds once per 20 ms (in up to four 5 ms slots,
/// see [`SLOT_CAPACITY`]) — reading their RTP, running their `Call`, sending and recording their frames. A call
/// costs no task wake-up, timer or `select!` of its own per tick; its own
/// task wakes only for signalling, transcriptions and what the `Call` asks
/// of the outside world.
pub(crate) struct MediaEngine {
    shards: Vec<Shard>,
}

struct Shard {
    incoming: mpsc::UnboundedSender<Arc<dyn Ticked>>,
    /// Calls on this shard (for placing new calls on the lightest).
    calls: Arc<AtomicUsize>,
}

impl MediaEngine {
    /// Start `shards` shards on `runtime` (at least one).
    pub(crate) fn start(runtime: &tokio::runtime::Handle, shards: usize) -> Self {
        Self::start_with(runtime, shards, SLOT_CAPACITY)
    }

    /// As [`MediaEngine::start`], a slot taking `capacity` calls before the
    /// next is used.
    fn start_with(runtime: &tokio::runtime::Handle, shards: usize, capacity: usize) -> Self {
        let n = shards.max(1);
        let shards = (0..n)
            .map(|i| {
                let (tx, rx) = mpsc::unbounded_channel();
                let calls = Arc::new(AtomicUsize::new(0));
                // Shards fill slots from evenly spaced starts.
                let first = i * PHASES / n % PHASES;
                runtime.spawn(run_shard(rx, calls.clone(), first, capacity.max(1)));
                Shard {
                    incoming: tx,
                    calls,
                }
            })
            .collect();
        Self { shards }
    }

    /// Step `call` from the next tick on, on the shard with the fewest calls.
    pub(crate) fn add(&self, call: Arc<dyn Ticked>) {
        let Some(shard) = self
            .shards
            .iter()
            .min_by_key(|s| s.calls.load(Ordering::Relaxed))
        else {
            return;
        };
        shard.calls.fetch_add(1, Ordering::Relaxed);
        if shard.incoming.send(call).is_err() {
            shard.calls.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("the media engine is gone: a call will get no media");
        }
    }
}

/// The 20 ms period is cut into this many slots; each call belongs to one
/// and a shard wakes at each slot that holds calls to step them. A full
/// shard's pass covers a quarter of its calls, so the last of them runs a
/// quarter as late after its grid instant as with one pass per period.
const PHASES: usize = 4;

/// One slot of the period.
const SLOT: Duration = Duration::from_millis(5);

/// Calls a slot takes before the next slot is used. A shard wakes only for
/// slots that hold calls: up to this many calls it wakes once per 20 ms (a
/// wake-up — timer, context switch — costs about as much as stepping a few
/// calls, and on a VM the timer's reprogramming is a trap), and a pass of
/// this many calls ends about a millisecond after its grid instant. Beyond,
/// calls spread over the slots as before, so a pass never holds more than a
/// quarter of a full shard's calls.
const SLOT_CAPACITY: usize = 128;

/// Where a new call goes: the first slot with room counting from `first`
/// (each shard starts from its own, so shards do not wake together), else
/// the emptiest.
fn slot_for(phases: &[Vec<Arc<dyn Ticked>>; PHASES], first: usize, capacity: usize) -> usize {
    (0..PHASES)
        .map(|k| (first + k) % PHASES)
        .find(|&i| phases[i].len() < capacity)
        .or_else(|| {
            phases
                .iter()
                .enumerate()
                .min_by_key(|(_, v)| v.len())
                .map(|(i, _)| i)
        })
        .unwrap_or(0)
}

/// One shard: asleep while it has no call, else one wake-up per slot that
/// holds calls, for that slot's calls, on the process-wide grid.
async fn run_shard(
    mut incoming: mpsc::UnboundedReceiver<Arc<dyn Ticked>>,
    count: Arc<AtomicUsize>,
    first: usize,
    capacity: usize,
) {
    let mut phases: [Vec<Arc<dyn Ticked>>; PHASES] = Default::default();
    let place = |phases: &mut [Vec<Arc<dyn Ticked>>; PHASES], call| {
        let i = slot_for(phases, first, capacity);
        phases[i].push(call);
    };
    loop {
        if phases.iter().all(Vec::is_empty) {
            match incoming.recv().await {
                Some(call) => place(&mut phases, call),
                None => return,
            }
        }
        let mut next = media_clock_next(SLOT);
        while phases.iter().any(|v| !v.is_empty()) {
            // The next grid instant of a slot that holds calls (one exists:
            // at most PHASES - 1 empty slots are passed over).
            let mut deadline = next;
            while phases[slot_of(deadline) % PHASES].is_empty() {
                deadline += SLOT;
            }
            tokio::time::sleep_until(deadline).await;
            while let Ok(call) = incoming.try_recv() {
                place(&mut phases, call);
            }
            let calls = &mut phases[slot_of(deadline) % PHASES];
            let before = calls.len();
            calls.retain(|call| {
                // One call's bug must not stop the media of the others.
                let step = std::panic::AssertUnwindSafe(|| call.tick(deadline));
                std::panic::catch_unwind(step).unwrap_or_else(|_| {
                    tracing::error!(
                        "a call's media step panicked: that call ends, the others go on"
                    );
                    call.failed();
                    false
                })
            });
            count.fetch_sub(before - calls.len(), Ordering::Relaxed);
            // A late pass is not repeated: each call counts the ticks it
            // missed and catches up itself on its slot's next pass.
            next = deadline + SLOT;
            if next <= Instant::now() {
                next = media_clock_next(SLOT);
            }
        }
    }
}

/// The media clock's period.
pub(crate) const TICK: Duration = Duration::from_millis(20);

/// The process-wide origin of the media grid.
fn media_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The next instant on the process-wide grid of `period` (a divisor of
/// 20 ms): every shard's slots line up.
pub(crate) fn media_clock_next(period: Duration) -> Instant {
    let epoch = media_epoch();
    let period = period.as_nanos();
    let elapsed = epoch.elapsed().as_nanos();
    let next = (elapsed / period + 1) * period;
    epoch + Duration::from_nanos(u64::try_from(next).unwrap_or(u64::MAX))
}

/// Which slot of the grid `at` is (rounded to the nearest).
fn slot_of(at: Instant) -> usize {
    let since = at.saturating_duration_since(media_epoch()).as_nanos();
    usize::try_from((since + SLOT.as_nanos() / 2) / SLOT.as_nanos()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records the deadlines it was stepped at; over after `last` of them.
    struct Probe {
        at: Mutex<Vec<Instant>>,
        last: usize,
        failed: std::sync::atomic::AtomicBool,
    }

    impl Ticked for Probe {
        fn tick(&self, deadline: Instant) -> bool {
            let mut at = self.at.lock().unwrap_or_else(|e| e.into_inner());
            at.push(deadline);
            if self.last == 2 && at.len() == 2 {
                panic!("a bug in one call");
            }
            at.len() < self.last
        }

        fn failed(&self) {
            self.failed.store(true, Ordering::Relaxed);
        }
    }

    impl Probe {
        fn new(last: usize) -> Arc<Self> {
            Arc::new(Probe {
                at: Mutex::new(Vec::new()),
                last,
                failed: Default::default(),
            })
        }
    }

    /// Add `probes` to `engine`, let 405 ms of the paused clock pass, and
    /// return each probe's deadlines.
    async fn stepped(engine: &MediaEngine, probes: &[Arc<Probe>]) -> Vec<Vec<Instant>> {
        for p in probes {
            engine.add(p.clone());
        }
        tokio::time::sleep(Duration::from_millis(405)).await;
        probes
            .iter()
            .map(|p| p.at.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn every_call_is_stepped_every_20_ms_in_its_own_slot_until_it_is_over_or_fails() {
        // Two calls a slot: the eight spread over the four slots.
        let engine = MediaEngine::start_with(&tokio::runtime::Handle::current(), 1, 2);
        // Probe 0 says it is over at its 3rd step; probe 1 panics at its 2nd.
        let probes: Vec<Arc<Probe>> = (0..8)
            .map(|i| {
                Probe::new(match i {
                    0 => 3,
                    1 => 2,
                    _ => usize::MAX,
                })
            })
            .collect();
        let steps = stepped(&engine, &probes).await;
        let mut slots = std::collections::BTreeSet::new();
        for (i, (p, at)) in probes.iter().zip(steps).enumerate() {
            if i == 0 {
                assert_eq!(at.len(), 3, "let go once it says it is over");
            } else if i == 1 {
                assert_eq!(at.len(), 2, "let go once it panicked");
                assert!(p.failed.load(Ordering::Relaxed), "and told so");
            } else {
                assert!((19..=21).contains(&at.len()), "probe {i}: {}", at.len());
            }
            for pair in at.windows(2) {
                assert_eq!(pair[1] - pair[0], TICK, "probe {i}");
            }
            slots.insert(slot_of(at[0]) % PHASES);
        }
        assert_eq!(slots.len(), PHASES, "the calls are spread over the slots");
        assert!(!probes[0].failed.load(Ordering::Relaxed));
        assert_eq!(engine.shards[0].calls.load(Ordering::Relaxed), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_few_calls_share_one_slot_and_one_wake_up_per_period() {
        let engine = MediaEngine::start(&tokio::runtime::Handle::current(), 1);
        let probes: Vec<Arc<Probe>> = (0..8).map(|_| Probe::new(usize::MAX)).collect();
        let steps = stepped(&engine, &probes).await;
        let mut instants = std::collections::BTreeSet::new();
        for at in steps {
            assert!((19..=21).contains(&at.len()), "{}", at.len());
            for pair in at.windows(2) {
                assert_eq!(pair[1] - pair[0], TICK);
            }
            instants.extend(at);
        }
        // All stepped at the same instants: one pass (one wake-up) each 20 ms.
        assert!((19..=21).contains(&instants.len()), "{}", instants.len());
    }

    #[test]
    fn a_new_call_takes_the_first_slot_with_room_then_the_emptiest() {
        let probe = || -> Arc<dyn Ticked> { Probe::new(usize::MAX) };
        let mut phases: [Vec<Arc<dyn Ticked>>; PHASES] = Default::default();
        for _ in 0..3 {
            let i = slot_for(&phases, 0, 3);
            phases[i].push(probe());
        }
        assert_eq!(slot_for(&phases, 0, 3), 1, "slot 0 is full");
        assert_eq!(slot_for(&phases, 2, 3), 2, "another shard starts elsewhere");
        assert_eq!(slot_for(&phases, 3, 3), 3);
        phases[2].push(probe());
        phases[1].extend([probe(), probe(), probe()]);
        phases[2].extend([probe(), probe()]);
        phases[3].extend([probe(), probe(), probe(), probe()]);
        assert_eq!(slot_for(&phases, 0, 3), 0, "all full: the emptiest");
        phases[0].pop();
        assert_eq!(slot_for(&phases, 0, 3), 0, "room again in the first");
        assert_eq!(slot_for(&phases, 2, 3), 0, "the only slot with room");
    }

    #[test]
    fn the_grid_lines_up_slots_and_periods() {
        let slot = media_clock_next(SLOT);
        let tick = media_clock_next(TICK);
        assert_eq!(slot_of(slot + SLOT), slot_of(slot) + 1);
        assert_eq!(slot_of(tick) % PHASES, 0, "a period starts at slot 0");
        assert_eq!(slot_of(tick + TICK), slot_of(tick) + PHASES);
    }
}
