//! The process's file-descriptor budget: raised to the hard limit at start,
//! and watched so that a new call is refused (503) while there is still room
//! for the calls in progress — running out would fail their recordings, the
//! synthesiser and the logs, not just the new call.

/// Descriptors kept back for what the process needs besides new calls
/// (the synthesiser's data files, webhooks, HTTP clients, log rotation).
const RESERVE: u64 = 48;
/// What one more call may open: its RTP socket, two recording files, and the
/// synthesiser and webhook descriptors it uses for a moment.
const PER_CALL: u64 = 8;

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; the limit now in force.
pub(super) fn raise_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::info!(
                from = lim.rlim_cur,
                to = lim.rlim_max,
                "file descriptor limit raised to the hard limit"
            );
            return Some(lim.rlim_max);
        }
    }
    Some(lim.rlim_cur)
}

/// Descriptors open now (Linux: `/proc/self/fd`).
pub(super) fn open_now() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64)
}

/// Whether one more call would eat into the reserve.
pub(super) fn short(limit: Option<u64>) -> bool {
    match (limit, open_now()) {
        (Some(limit), Some(open)) => open + PER_CALL + RESERVE > limit,
        _ => false,
    }
}
