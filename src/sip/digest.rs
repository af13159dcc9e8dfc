//! Inbound digest authentication for trunks (RFC 3261 §22, RFC 2617 MD5):
//! stateless, time-limited nonces and verification of the caller's response.

use md5::{Digest, Md5};
use rsipstack::sip::typed::Authorization;
use rsipstack::sip::{DigestGenerator, Method};

/// How long a nonce stays valid.
const NONCE_LIFETIME_S: u64 = 300;

/// Issues and checks nonces signed with a per-process secret.
#[derive(Debug, Clone)]
pub struct NonceIssuer {
    secret: [u8; 16],
}

/// Verdict on a request's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthVerdict {
    /// Valid credentials.
    Accepted,
    /// No credentials, or a stale nonce: challenge (401).
    Challenge,
    /// Credentials present and wrong: refuse (403).
    Rejected,
}

impl NonceIssuer {
    /// An issuer with a random secret.
    pub fn new() -> Self {
        Self {
            secret: rand::random(),
        }
    }

    fn sign(&self, stamp: u64) -> String {
        let mut h = Md5::new();
        h.update(stamp.to_be_bytes());
        h.update(self.secret);
        hex::encode(&h.finalize()[..8])
    }

    /// A fresh nonce for time `now_s` (Unix seconds).
    pub fn nonce(&self, now_s: u64) -> String {
        format!("{now_s:x}.{}", self.sign(now_s))
    }

    fn nonce_valid(&self, nonce: &str, now_s: u64) -> bool {
        let Some((stamp, sig)) = nonce.split_once('.') else {
            return false;
        };
        let Ok(stamp) = u64::from_str_radix(stamp, 16) else {
            return false;
        };
        sig == self.sign(stamp) && now_s.saturating_sub(stamp) <= NONCE_LIFETIME_S
    }

    /// The `WWW-Authenticate` value for a challenge.
    pub fn challenge(&self, realm: &str, now_s: u64) -> String {
        format!(
            "Digest realm=\"{realm}\", nonce=\"{}\", algorithm=MD5, qop=\"auth\"",
            self.nonce(now_s)
        )
    }

    /// Check the `Authorization` header value (if any) of a request.
    pub fn verify(
        &self,
        header: Option<&str>,
        method: &Method,
        username: &str,
        password: &str,
        realm: &str,
        now_s: u64,
    ) -> AuthVerdict {
        let Some(value) = header else {
            return AuthVerdict::Challenge;
        };
        let Ok(auth) = Authorization::parse(value) else {
            return AuthVerdict::Rejected;
        };
        if !self.nonce_valid(&auth.nonce, now_s) {
            // An unknown or expired nonce earns a fresh challenge once; the
            // signature check stops forged nonces from passing.
            return AuthVerdict::Challenge;
        }
        if auth.username != username || auth.realm != realm {
            return AuthVerdict::Rejected;
        }
        if DigestGenerator::from(&auth, password, method).verify(&auth.response) {
            AuthVerdict::Accepted
        } else {
            AuthVerdict::Rejected
        }
    }
}

impl Default for NonceIssuer {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(user: &str, pass: &str, realm: &str, nonce: &str) -> String {
        let h = |s: String| hex::encode(Md5::digest(s.as_bytes()));
        let ha1 = h(format!("{user}:{realm}:{pass}"));
        let ha2 = h("INVITE:sip:bot@127.0.0.1".to_string());
        let r = h(format!("{ha1}:{nonce}:00000001:abc:auth:{ha2}"));
        format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"sip:bot@127.0.0.1\", response=\"{r}\", algorithm=MD5, qop=auth, cnonce=\"abc\", nc=00000001"
        )
    }

    #[test]
    fn accepts_right_rejects_wrong_challenges_missing() {
        let n = NonceIssuer::new();
        let nonce = n.nonce(1000);
        let m = Method::Invite;
        let ok = response("carrier", "secret", "voicegate", &nonce);
        assert_eq!(
            n.verify(Some(&ok), &m, "carrier", "secret", "voicegate", 1001),
            AuthVerdict::Accepted
        );
        let bad = response("carrier", "wrong", "voicegate", &nonce);
        assert_eq!(
            n.verify(Some(&bad), &m, "carrier", "secret", "voicegate", 1001),
            AuthVerdict::Rejected
        );
        assert_eq!(
            n.verify(None, &m, "carrier", "secret", "voicegate", 1001),
            AuthVerdict::Challenge
        );
        assert_eq!(
            n.verify(
                Some(&ok),
                &m,
                "carrier",
                "secret",
                "voicegate",
                1000 + NONCE_LIFETIME_S + 1
            ),
            AuthVerdict::Challenge,
            "stale nonce"
        );
        let forged = response("carrier", "secret", "voicegate", "3e8.0000000000000000");
        assert_eq!(
            n.verify(Some(&forged), &m, "carrier", "secret", "voicegate", 1001),
            AuthVerdict::Challenge
        );
    }
}
