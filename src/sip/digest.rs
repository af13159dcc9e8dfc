//! Inbound digest authentication for trunks (RFC 3261 §22, RFC 2617 MD5
//! with `qop=auth`), hardened the way Kamailio's and Asterisk's security
//! guidance expects:
//!
//! - nonces are random (they reveal nothing, not even the clock), kept on our
//!   side, bound to the source address that was challenged and short-lived;
//! - a nonce serves one Call-ID: a captured `Authorization` replayed on a new
//!   call is challenged afresh, and a nonce count (`nc`) that does not grow
//!   is a replay;
//! - every wrong credential (user, realm or password) gets the same answer;
//! - failures are counted per source; after `ban_after` of them within
//!   `window_s` the source is banned for `ban_s` — logged in one
//!   fail2ban-friendly line — and everything it sends is refused unread;
//! - failures are also counted per user name, so that guesses spread over
//!   many sources (a botnet, which no per-source ban stops) are slowed: after
//!   `user_lock_after` of them within `window_s` the user is locked for 1 s,
//!   then 2, 4, … up to `MAX_USER_LOCK_S`, for every source except those that
//!   have authenticated as that user before — so an attacker cannot lock the
//!   real trunk out.

use rsipstack::sip::headers::auth::AuthQop;
use rsipstack::sip::typed::Authorization;
use rsipstack::sip::{DigestGenerator, Method};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// How long a nonce stays valid once issued.
pub const NONCE_LIFETIME_S: u64 = 30;
/// Nonces kept at most (a flood of challenges cannot grow memory).
const MAX_NONCES: usize = 20_000;
/// Sources tracked for failures at most.
const MAX_SOURCES: usize = 20_000;
/// User names tracked for failures at most.
const MAX_USERS: usize = 20_000;
/// The longest a user name is locked after repeated failures.
pub const MAX_USER_LOCK_S: u64 = 300;
/// Sources remembered per user as having authenticated right.
const MAX_KNOWN_SOURCES: usize = 64;

/// Limits on failed authentication, from `[sip]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AuthLimits {
    /// Failures from one source within `window_s` that ban it.
    pub ban_after: u32,
    /// How long a ban lasts.
    pub ban_s: u64,
    /// The window failures are counted in.
    pub window_s: u64,
    /// Failures for one user name (from any source) within `window_s` that
    /// lock it, with a lock that doubles each time (0: never).
    pub user_lock_after: u32,
}

impl Default for AuthLimits {
    fn default() -> Self {
        Self {
            ban_after: 20,
            ban_s: 600,
            window_s: 300,
            user_lock_after: 10,
        }
    }
}

/// What to answer an INVITE's credentials with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthVerdict {
    /// Right credentials.
    Accepted,
    /// No (usable) credentials, or a stale or replayed nonce: 401 with a new nonce.
    Challenge,
    /// Wrong credentials (403; the same answer whatever was wrong).
    Rejected,
    /// The source is banned: 403 without reading anything.
    Banned,
}

#[derive(Debug)]
struct NonceState {
    source: IpAddr,
    issued_s: u64,
    /// The call it authenticated first; `None` until used.
    call_id: Option<String>,
    last_nc: u8,
}

#[derive(Debug, Default)]
struct Failures {
    /// Failure times (s) within the window.
    at: VecDeque<u64>,
    banned_until: Option<u64>,
}

#[derive(Debug, Default)]
struct UserFailures {
    /// Failure times (s) within the window.
    at: VecDeque<u64>,
    locked_until: Option<u64>,
    /// Locks so far (the next lasts 2^locks s).
    locks: u32,
    last_failure: Option<u64>,
    /// Sources that authenticated as this user: never locked out.
    known: Vec<IpAddr>,
}

#[derive(Debug, Default)]
struct State {
    nonces: HashMap<String, NonceState>,
    issued: VecDeque<String>,
    sources: HashMap<IpAddr, Failures>,
    users: HashMap<String, UserFailures>,
    user_locks: u64,
    bans: u64,
    failures: u64,
}

/// Issues nonces and checks credentials; shared by every configuration
/// generation (bans survive a reload).
#[derive(Debug, Clone, Default)]
pub struct NonceIssuer {
    state: Arc<Mutex<State>>,
}

impl NonceIssuer {
    /// A fresh issuer.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A `WWW-Authenticate` value with a new nonce for `source`.
    pub fn challenge(&self, realm: &str, source: IpAddr, now_s: u64) -> String {
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let mut st = self.lock();
        while st.issued.len() >= MAX_NONCES {
            if let Some(old) = st.issued.pop_front() {
                st.nonces.remove(&old);
            }
        }
        // Expired nonces leave from the front (they were issued first).
        while let Some(front) = st.issued.front() {
            let expired = st
                .nonces
                .get(front)
                .is_none_or(|n| now_s.saturating_sub(n.issued_s) > NONCE_LIFETIME_S);
            if !expired {
                break;
            }
            if let Some(old) = st.issued.pop_front() {
                st.nonces.remove(&old);
            }
        }
        st.nonces.insert(
            nonce.clone(),
            NonceState {
                source,
                issued_s: now_s,
                call_id: None,
                last_nc: 0,
            },
        );
        st.issued.push_back(nonce.clone());
        format!("Digest realm=\"{realm}\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\"")
    }

    /// Whether `source` is banned now.
    pub fn banned(&self, source: IpAddr, now_s: u64) -> bool {
        self.lock()
            .sources
            .get(&source)
            .and_then(|f| f.banned_until)
            .is_some_and(|until| now_s < until)
    }

    /// How many sources are banned now.
    pub fn banned_now(&self, now_s: u64) -> usize {
        self.lock()
            .sources
            .values()
            .filter(|f| f.banned_until.is_some_and(|u| now_s < u))
            .count()
    }

    /// (failures, bans) since start, for `/metrics`.
    pub fn counts(&self) -> (u64, u64) {
        let st = self.lock();
        (st.failures, st.bans)
    }

    /// Check the credentials of a request from `source` on `call_id`.
    #[allow(clippy::too_many_arguments)]
    pub fn verify(
        &self,
        header: Option<&str>,
        method: &Method,
        expected: (&str, &str, &str),
        source: IpAddr,
        call_id: &str,
        limits: AuthLimits,
        now_s: u64,
    ) -> AuthVerdict {
        let (username, password, realm) = expected;
        if self.banned(source, now_s) {
            return AuthVerdict::Banned;
        }
        let Some(value) = header else {
            return AuthVerdict::Challenge;
        };
        let Ok(auth) = Authorization::parse(value) else {
            return self.fail_source(source, "(unparsable)", limits, now_s);
        };
        let nc = match &auth.qop {
            Some(AuthQop::Auth { nc, .. }) => *nc,
            // `qop=auth` is what we offer; anything else is not an answer to it.
            _ => return AuthVerdict::Challenge,
        };
        {
            let mut st = self.lock();
            let Some(n) = st.nonces.get_mut(&auth.nonce) else {
                return AuthVerdict::Challenge;
            };
            if n.source != source
                || now_s.saturating_sub(n.issued_s) > NONCE_LIFETIME_S
                || n.call_id.as_deref().is_some_and(|c| c != call_id)
                || nc <= n.last_nc
            {
                return AuthVerdict::Challenge;
            }
        }
        if self.user_locked(&auth.username, source, now_s) {
            // Locked for this source: refused unchecked, with the same answer
            // as a wrong password (it still counts against the source).
            return self.fail_source(source, &auth.username, limits, now_s);
        }
        let right = auth.username == username
            && auth.realm == realm
            && DigestGenerator::from(&auth, password, method).verify(&auth.response);
        if !right {
            self.fail_user(&auth.username, limits, now_s);
            return self.fail_source(source, &auth.username, limits, now_s);
        }
        let mut st = self.lock();
        if let Some(n) = st.nonces.get_mut(&auth.nonce) {
            n.call_id = Some(call_id.to_string());
            n.last_nc = nc;
        }
        st.sources.remove(&source);
        if st.users.len() >= MAX_USERS && !st.users.contains_key(&auth.username) {
            st.users
                .retain(|_, u| !u.known.is_empty() || u.locked_until.is_some());
        }
        // A success does not reset the user's failures or lock level: the
        // real trunk authenticating every call must not make guessing cheap.
        let user = st.users.entry(auth.username.clone()).or_default();
        if !user.known.contains(&source) {
            if user.known.len() >= MAX_KNOWN_SOURCES {
                user.known.remove(0);
            }
            user.known.push(source);
        }
        AuthVerdict::Accepted
    }

    /// Whether `user` is locked now for `source` (one it never
    /// authenticated from).
    fn user_locked(&self, user: &str, source: IpAddr, now_s: u64) -> bool {
        self.lock().users.get(user).is_some_and(|u| {
            u.locked_until.is_some_and(|until| now_s < until) && !u.known.contains(&source)
        })
    }

    /// Locks of user names since start, for `/metrics` and tests.
    pub fn user_locks(&self) -> u64 {
        self.lock().user_locks
    }

    fn fail_user(&self, user: &str, limits: AuthLimits, now_s: u64) {
        if limits.user_lock_after == 0 {
            return;
        }
        let mut st = self.lock();
        if st.users.len() >= MAX_USERS && !st.users.contains_key(user) {
            st.users.retain(|_, u| {
                !u.known.is_empty()
                    || u.locked_until.is_some_and(|t| now_s < t)
                    || u.at
                        .back()
                        .is_some_and(|t| now_s.saturating_sub(*t) <= limits.window_s)
            });
        }
        let u = st.users.entry(user.to_string()).or_default();
        // The lock level decays after a quiet window.
        if u.last_failure
            .is_some_and(|t| now_s.saturating_sub(t) > limits.window_s)
        {
            u.locks = 0;
        }
        u.last_failure = Some(now_s);
        u.at.push_back(now_s);
        while u
            .at
            .front()
            .is_some_and(|t| now_s.saturating_sub(*t) > limits.window_s)
        {
            u.at.pop_front();
        }
        if u.at.len() < limits.user_lock_after as usize {
            return;
        }
        let lock_s = (1u64 << u.locks.min(16)).min(MAX_USER_LOCK_S);
        u.locks = u.locks.saturating_add(1);
        u.locked_until = Some(now_s + lock_s);
        let count = u.at.len();
        u.at.clear();
        st.user_locks += 1;
        tracing::warn!(
            "SIP user {:?} locked for {lock_s} s after {count} failed authentications (sources that authenticated as it before are not locked out)",
            super::log_safe(user)
        );
    }

    fn fail_source(
        &self,
        source: IpAddr,
        user: &str,
        limits: AuthLimits,
        now_s: u64,
    ) -> AuthVerdict {
        let mut st = self.lock();
        st.failures += 1;
        if st.sources.len() >= MAX_SOURCES && !st.sources.contains_key(&source) {
            // Forget sources that are neither banned nor recently failing.
            st.sources.retain(|_, f| {
                f.banned_until.is_some_and(|u| now_s < u)
                    || f.at
                        .back()
                        .is_some_and(|t| now_s.saturating_sub(*t) <= limits.window_s)
            });
        }
        let f = st.sources.entry(source).or_default();
        f.at.push_back(now_s);
        while f
            .at
            .front()
            .is_some_and(|t| now_s.saturating_sub(*t) > limits.window_s)
        {
            f.at.pop_front();
        }
        let count = f.at.len();
        let ban = limits.ban_after > 0 && count >= limits.ban_after as usize;
        // One line per failure and per ban, with the source first-class, for
        // fail2ban: `SIP auth failed from <HOST>` / `SIP source <HOST> banned`.
        tracing::warn!(
            "SIP auth failed from {source} (user {:?}, {count} in {} s)",
            super::log_safe(user),
            limits.window_s
        );
        if ban {
            f.banned_until = Some(now_s + limits.ban_s);
            f.at.clear();
            st.bans += 1;
            tracing::warn!(
                "SIP source {source} banned for {} s after {count} failed authentications",
                limits.ban_s
            );
        }
        AuthVerdict::Rejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::{Digest, Md5};

    fn response(user: &str, pass: &str, realm: &str, nonce: &str, nc: u8) -> String {
        let h = |s: String| hex::encode(Md5::digest(s.as_bytes()));
        let ha1 = h(format!("{user}:{realm}:{pass}"));
        let ha2 = h("INVITE:sip:bot@127.0.0.1".to_string());
        let r = h(format!("{ha1}:{nonce}:{nc:08x}:abc:auth:{ha2}"));
        format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"sip:bot@127.0.0.1\", response=\"{r}\", algorithm=MD5, qop=auth, cnonce=\"abc\", nc={nc:08x}"
        )
    }

    fn nonce_of(challenge: &str) -> String {
        challenge
            .split("nonce=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default()
            .to_string()
    }

    const ME: (&str, &str, &str) = ("carrier", "secret", "voicegate");

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn right_wrong_missing_stale_foreign_and_replayed_credentials() {
        let n = NonceIssuer::new();
        let m = Method::Invite;
        let l = AuthLimits::default();
        let a = ip("127.0.0.1");
        let nonce = nonce_of(&n.challenge("voicegate", a, 1000));
        assert_eq!(nonce.len(), 32, "random, opaque: {nonce}");
        // Nothing of the clock in it (a Unix time's 8 hex digits would appear
        // by chance once in ~10^8 nonces), and never the same twice.
        let other = NonceIssuer::new();
        let at = 1_781_234_567;
        let later = nonce_of(&other.challenge("voicegate", a, at));
        assert!(!later.contains(&format!("{at:x}")), "{later}");
        assert_ne!(later, nonce_of(&other.challenge("voicegate", a, at)));
        let ok = response("carrier", "secret", "voicegate", &nonce, 1);
        assert_eq!(
            n.verify(Some(&ok), &m, ME, a, "c1", l, 1001),
            AuthVerdict::Accepted
        );
        // The same header again (a replay) on the same call or a new one.
        assert_eq!(
            n.verify(Some(&ok), &m, ME, a, "c1", l, 1002),
            AuthVerdict::Challenge
        );
        let next = response("carrier", "secret", "voicegate", &nonce, 2);
        assert_eq!(
            n.verify(Some(&next), &m, ME, a, "c2", l, 1002),
            AuthVerdict::Challenge,
            "a nonce serves one Call-ID"
        );
        assert_eq!(
            n.verify(Some(&next), &m, ME, a, "c1", l, 1002),
            AuthVerdict::Accepted,
            "nc grows on the same call"
        );
        // Wrong user, realm or password: one answer.
        let nonce = nonce_of(&n.challenge("voicegate", a, 1000));
        for bad in [
            response("carrier", "wrong", "voicegate", &nonce, 1),
            response("someone", "secret", "voicegate", &nonce, 1),
            response("carrier", "secret", "elsewhere", &nonce, 1),
        ] {
            assert_eq!(
                n.verify(Some(&bad), &m, ME, a, "c3", l, 1001),
                AuthVerdict::Rejected
            );
        }
        assert_eq!(
            n.verify(None, &m, ME, a, "c3", l, 1001),
            AuthVerdict::Challenge
        );
        // Stale, forged, or issued to another source.
        let nonce = nonce_of(&n.challenge("voicegate", a, 1000));
        let ok = response("carrier", "secret", "voicegate", &nonce, 1);
        assert_eq!(
            n.verify(Some(&ok), &m, ME, a, "c4", l, 1000 + NONCE_LIFETIME_S + 1),
            AuthVerdict::Challenge
        );
        assert_eq!(
            n.verify(Some(&ok), &m, ME, ip("127.0.0.2"), "c4", l, 1001),
            AuthVerdict::Challenge
        );
        let forged = response(
            "carrier",
            "secret",
            "voicegate",
            "00000000000000000000000000000000",
            1,
        );
        assert_eq!(
            n.verify(Some(&forged), &m, ME, a, "c4", l, 1001),
            AuthVerdict::Challenge
        );
    }

    #[test]
    fn a_guessing_source_is_banned_and_others_are_not() {
        let n = NonceIssuer::new();
        let m = Method::Invite;
        let l = AuthLimits {
            ban_after: 5,
            ban_s: 60,
            window_s: 300,
            user_lock_after: 0,
        };
        let bad_guy = ip("127.0.0.2");
        for i in 0..5 {
            let nonce = nonce_of(&n.challenge("voicegate", bad_guy, 1000));
            let guess = response("carrier", &format!("guess{i}"), "voicegate", &nonce, 1);
            assert_eq!(
                n.verify(Some(&guess), &m, ME, bad_guy, "x", l, 1000),
                AuthVerdict::Rejected
            );
        }
        let nonce = nonce_of(&n.challenge("voicegate", bad_guy, 1001));
        let right = response("carrier", "secret", "voicegate", &nonce, 1);
        assert_eq!(
            n.verify(Some(&right), &m, ME, bad_guy, "y", l, 1001),
            AuthVerdict::Banned,
            "even the right password"
        );
        assert_eq!(n.counts(), (5, 1));
        let good = ip("127.0.0.1");
        let nonce = nonce_of(&n.challenge("voicegate", good, 1001));
        let right = response("carrier", "secret", "voicegate", &nonce, 1);
        assert_eq!(
            n.verify(Some(&right), &m, ME, good, "z", l, 1001),
            AuthVerdict::Accepted
        );
        // The ban ends.
        assert!(!n.banned(bad_guy, 1001 + 60));
    }

    #[test]
    fn guesses_spread_over_sources_lock_the_user_but_not_its_known_sources() {
        let n = NonceIssuer::new();
        let m = Method::Invite;
        let l = AuthLimits {
            ban_after: 20,
            ban_s: 600,
            window_s: 300,
            user_lock_after: 3,
        };
        let trunk = ip("10.0.0.1");
        let try_as = |src: IpAddr, pass: &str, now: u64, call: &str| {
            let nonce = nonce_of(&n.challenge("voicegate", src, now));
            let r = response("carrier", pass, "voicegate", &nonce, 1);
            n.verify(Some(&r), &m, ME, src, call, l, now)
        };
        // The real trunk authenticates once: its source is known.
        assert_eq!(try_as(trunk, "secret", 1000, "t1"), AuthVerdict::Accepted);
        // A botnet: one guess per source, three sources → the user is locked.
        for i in 1..=3 {
            let src = ip(&format!("192.0.2.{i}"));
            assert_eq!(try_as(src, "guess", 1000, "g"), AuthVerdict::Rejected);
        }
        assert_eq!(n.user_locks(), 1);
        // Locked for 1 s: even the right password from a new source fails…
        let other = ip("192.0.2.99");
        assert_eq!(try_as(other, "secret", 1000, "o1"), AuthVerdict::Rejected);
        // …but the trunk that authenticated before is not locked out.
        assert_eq!(try_as(trunk, "secret", 1000, "t2"), AuthVerdict::Accepted);
        // The lock ends; the next one lasts twice as long.
        assert_eq!(try_as(other, "secret", 1001, "o2"), AuthVerdict::Accepted);
        for i in 4..=6 {
            let src = ip(&format!("192.0.2.{i}"));
            assert_eq!(try_as(src, "guess", 1002, "g"), AuthVerdict::Rejected);
        }
        assert_eq!(n.user_locks(), 2);
        let third = ip("192.0.2.98");
        assert_eq!(try_as(third, "secret", 1002, "x1"), AuthVerdict::Rejected);
        assert_eq!(try_as(third, "secret", 1003, "x2"), AuthVerdict::Rejected);
        // `other` authenticated at 1001: known now, so not locked out.
        assert_eq!(try_as(other, "secret", 1003, "o3"), AuthVerdict::Accepted);
        assert_eq!(try_as(third, "secret", 1004, "x3"), AuthVerdict::Accepted);
        // After a quiet window the level starts again at 1 s.
        for i in 7..=9 {
            let src = ip(&format!("192.0.2.{i}"));
            assert_eq!(try_as(src, "guess", 2000, "g"), AuthVerdict::Rejected);
        }
        let fourth = ip("192.0.2.97");
        assert_eq!(try_as(fourth, "secret", 2000, "f1"), AuthVerdict::Rejected);
        assert_eq!(try_as(fourth, "secret", 2001, "f2"), AuthVerdict::Accepted);
    }
}
