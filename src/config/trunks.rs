//! `trunks.toml`: who may send calls (ACL), credentials, outbound REGISTER,
//! codecs, and which number goes to which flow.

use super::{Diagnostic, SourceFile};
use ipnet::IpNet;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    trunk: Vec<TrunkEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrunkEntry {
    name: Spanned<String>,
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    codecs: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    auth: Option<AuthEntry>,
    #[serde(default)]
    register: Option<RegisterEntry>,
    #[serde(default)]
    routes: BTreeMap<String, String>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    languages: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthEntry {
    username: String,
    password: String,
    #[serde(default)]
    realm: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterEntry {
    registrar: Spanned<String>,
    user: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    auth_user: Option<String>,
    #[serde(default = "default_expiry")]
    expiry_s: Spanned<u32>,
    #[serde(default = "default_refresh")]
    refresh_before_s: u32,
    #[serde(default = "default_retry_min")]
    retry_min_s: Spanned<u32>,
    #[serde(default = "default_retry_max")]
    retry_max_s: u32,
}

fn default_expiry() -> Spanned<u32> {
    Spanned::new(0..0, 3600)
}
fn default_refresh() -> u32 {
    60
}
fn default_retry_min() -> Spanned<u32> {
    Spanned::new(0..0, 5)
}
fn default_retry_max() -> u32 {
    300
}

/// An audio codec voicegate offers and accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 μ-law, static payload type 0.
    Pcmu,
    /// G.711 A-law, static payload type 8.
    Pcma,
}

impl Codec {
    /// The codec's SDP encoding name.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }
    /// Its static RTP payload type.
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }
    /// Parse an SDP encoding name (case-insensitive).
    pub fn from_name(name: &str) -> Option<Codec> {
        match name.to_ascii_uppercase().as_str() {
            "PCMU" => Some(Codec::Pcmu),
            "PCMA" => Some(Codec::Pcma),
            _ => None,
        }
    }
}

/// Inbound digest credentials a trunk must present.
#[derive(Debug, Clone)]
pub struct TrunkAuth {
    /// Expected user name.
    pub username: String,
    /// Shared secret.
    pub password: String,
    /// Realm put in the challenge.
    pub realm: String,
}

/// Outbound REGISTER settings.
#[derive(Debug, Clone)]
pub struct RegisterConfig {
    /// Registrar URI, e.g. `sip:registrar.example.net:5060`.
    pub registrar: String,
    /// Address-of-record user.
    pub user: String,
    /// Digest password, if the registrar challenges.
    pub password: Option<String>,
    /// Digest user name when it differs from `user`.
    pub auth_user: Option<String>,
    /// Requested expiry.
    pub expiry: Duration,
    /// Refresh this long before expiry.
    pub refresh_before: Duration,
    /// First back-off after a failure.
    pub retry_min: Duration,
    /// Longest back-off.
    pub retry_max: Duration,
}

/// One validated trunk.
#[derive(Debug, Clone)]
pub struct TrunkConfig {
    /// Unique name, used in logs and events.
    pub name: String,
    /// Source networks allowed to send calls.
    pub allow: Vec<IpNet>,
    /// Codecs in order of preference.
    pub codecs: Vec<Codec>,
    /// Inbound digest authentication, when required.
    pub auth: Option<TrunkAuth>,
    /// Outbound registration, when configured.
    pub register: Option<RegisterConfig>,
    /// Dialled number (DID) → flow name; `*` matches any.
    pub routes: BTreeMap<String, String>,
    /// Callers' language on this trunk (`en`, `zh`, `auto`); `None`: the
    /// `[speech]` default.
    pub language: Option<String>,
    /// Dialled number (DID) → language, overriding `language`.
    pub languages: BTreeMap<String, String>,
}

impl TrunkConfig {
    /// Whether `ip` is inside this trunk's ACL.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.allow.iter().any(|net| net.contains(&ip))
    }

    /// The callers' language for a dialled number, if this trunk sets one.
    pub fn language_for(&self, did: &str) -> Option<&str> {
        self.languages
            .get(did)
            .map(String::as_str)
            .or(self.language.as_deref())
    }

    /// The flow for a dialled number: exact match, else `*`, else `default`.
    pub fn flow_for(&self, did: &str) -> &str {
        self.routes
            .get(did)
            .or_else(|| self.routes.get("*"))
            .map(String::as_str)
            .unwrap_or("default")
    }
}

pub(super) fn parse(
    path: &Path,
    text: &str,
    problems: &mut Vec<Diagnostic>,
) -> Option<Vec<TrunkConfig>> {
    let src = SourceFile::new(path, text);
    let file: File = match toml::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            problems.push(src.from_toml_error(&e));
            return None;
        }
    };
    let before = problems.len();
    if file.trunk.is_empty() {
        problems.push(src.at(
            None,
            "no [[trunk]] defined: no call would be accepted",
            "add a [[trunk]] with a name and an allow list",
        ));
    }
    let mut names = HashSet::new();
    let mut trunks = Vec::new();
    for t in file.trunk {
        if !names.insert(t.name.get_ref().clone()) {
            problems.push(src.at(
                Some(t.name.span()),
                format!("trunk name {:?} is used twice", t.name.get_ref()),
                "give every [[trunk]] its own name",
            ));
        }
        let mut allow = Vec::new();
        for a in &t.allow {
            let s = a.get_ref().trim();
            let net = s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from));
            match net {
                Ok(n) => allow.push(n),
                Err(_) => problems.push(src.at(
                    Some(a.span()),
                    format!("bad address or CIDR {s:?} in allow"),
                    "write an IP address or a network, e.g. \"203.0.113.7\" or \"10.0.0.0/8\"",
                )),
            }
        }
        if t.allow.is_empty() {
            problems.push(src.at(
                Some(t.name.span()),
                format!("trunk {:?} has an empty allow list", t.name.get_ref()),
                "list the carrier's source addresses or networks in allow",
            ));
        }
        let mut codecs = Vec::new();
        match &t.codecs {
            None => codecs = vec![Codec::Pcmu, Codec::Pcma],
            Some(list) => {
                for c in list {
                    match Codec::from_name(c.get_ref()) {
                        Some(codec) if !codecs.contains(&codec) => codecs.push(codec),
                        Some(_) => {}
                        None => problems.push(src.at(
                            Some(c.span()),
                            format!("unknown codec {:?}", c.get_ref()),
                            "use \"PCMU\" and/or \"PCMA\"",
                        )),
                    }
                }
                if list.is_empty() {
                    problems.push(src.at(
                        Some(t.name.span()),
                        "empty codecs list",
                        "list at least one of \"PCMU\", \"PCMA\" (or remove the key)",
                    ));
                }
            }
        }
        let register = t.register.map(|r| {
            if !r.registrar.get_ref().starts_with("sip:") {
                problems.push(src.at(
                    Some(r.registrar.span()),
                    format!("registrar {:?} is not a SIP URI", r.registrar.get_ref()),
                    "write it as sip:HOST[:PORT], e.g. \"sip:127.0.0.1:5070\"",
                ));
            }
            let expiry = *r.expiry_s.get_ref();
            if expiry <= r.refresh_before_s || expiry < 30 {
                problems.push(src.at(
                    Some(r.expiry_s.span()),
                    format!(
                        "expiry_s {expiry} must be at least 30 and above refresh_before_s {}",
                        r.refresh_before_s
                    ),
                    "raise expiry_s or lower refresh_before_s",
                ));
            }
            if *r.retry_min_s.get_ref() == 0 || *r.retry_min_s.get_ref() > r.retry_max_s {
                problems.push(src.at(
                    Some(r.retry_min_s.span()),
                    "retry_min_s must be between 1 and retry_max_s",
                    "set e.g. retry_min_s = 5, retry_max_s = 300",
                ));
            }
            RegisterConfig {
                registrar: r.registrar.into_inner(),
                user: r.user,
                password: r.password,
                auth_user: r.auth_user,
                expiry: Duration::from_secs(expiry.into()),
                refresh_before: Duration::from_secs(r.refresh_before_s.into()),
                retry_min: Duration::from_secs((*r.retry_min_s.get_ref()).into()),
                retry_max: Duration::from_secs(r.retry_max_s.into()),
            }
        });
        let name = t.name.into_inner();
        trunks.push(TrunkConfig {
            auth: t.auth.map(|a| TrunkAuth {
                username: a.username,
                password: a.password,
                realm: a.realm.unwrap_or_else(|| "voicegate".into()),
            }),
            name,
            allow,
            codecs,
            register,
            routes: t.routes,
            language: t.language,
            languages: t.languages,
        });
    }
    if problems.len() > before {
        return None;
    }
    Some(trunks)
}
