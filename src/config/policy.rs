//! Loading and validating the decision core's policy: `flow.toml`,
//! `rules.toml`, `customers.toml` and `lexicons/*.toml`. The types are the
//! core's (`call::policy`); reading files and explaining mistakes is ours.

use super::{Diagnostic, SourceFile};
use crate::call::policy::{Customer, Flow, Policy, Rules};
use crate::emotion::Lexicon;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Customers {
    #[serde(default)]
    customer: Vec<Customer>,
}

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Diagnostic> {
    let text = std::fs::read_to_string(path).map_err(|e| Diagnostic {
        file: path.to_path_buf(),
        line: 1,
        problem: format!("cannot read the file: {e}"),
        fix: "create it (copy it from the shipped sip-config/)".into(),
    })?;
    toml::from_str(&text).map_err(|e| SourceFile::new(path, &text).from_toml_error(&e))
}

/// Load `flow.toml`, `rules.toml`, `customers.toml` and `lexicons/*.toml` from `dir`.
pub fn load_policy(dir: &Path) -> Result<Policy, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let flow = read::<Flow>(&dir.join("flow.toml"))
        .map_err(|e| errors.push(e))
        .ok();
    let rules = read::<Rules>(&dir.join("rules.toml"))
        .map_err(|e| errors.push(e))
        .ok();
    let customers = read::<Customers>(&dir.join("customers.toml"))
        .map_err(|e| errors.push(e))
        .ok();
    let mut lexicons = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(dir.join("lexicons")) {
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "toml") {
                let lang = p
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default();
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                match Lexicon::parse(&text) {
                    Ok(l) => {
                        lexicons.insert(lang, l);
                    }
                    Err(e) => errors.push(SourceFile::new(&p, &text).from_toml_error(&e)),
                }
            }
        }
    }
    if let Some(flow) = &flow {
        let path = dir.join("flow.toml");
        for (key, name) in &flow.dtmf {
            if !flow.intent.iter().any(|i| &i.name == name) {
                errors.push(Diagnostic {
                    file: path.clone(),
                    line: 1,
                    problem: format!("[dtmf] key {key} names unknown intent {name:?}"),
                    fix: "use the name of an [[intent]] in this file".into(),
                });
            }
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for intent in &flow.intent {
            let Some(hook) = &intent.webhook else {
                continue;
            };
            let line = text
                .find(&hook.url)
                .map(|at| SourceFile::new(&path, &text).line_of(at))
                .unwrap_or(1);
            if !hook.url.starts_with("http://") {
                errors.push(Diagnostic {
                    file: path.clone(),
                    line,
                    problem: format!(
                        "intent {:?}: webhook url {:?} is not http://",
                        intent.name, hook.url
                    ),
                    fix: "give an http://host:port/path URL (put TLS in a local proxy)".into(),
                });
            }
            if hook.timeout_ms == 0 || hook.timeout_ms > 10_000 {
                errors.push(Diagnostic {
                    file: path.clone(),
                    line,
                    problem: format!(
                        "intent {:?}: webhook timeout_ms = {} leaves the caller in silence",
                        intent.name, hook.timeout_ms
                    ),
                    fix: "use 1 to 10000 ms (default 2000)".into(),
                });
            }
        }
        let line_of = |needle: &str| {
            text.find(needle)
                .map(|at| SourceFile::new(&path, &text).line_of(at))
                .unwrap_or(1)
        };
        for intent in &flow.intent {
            for (language, file) in &intent.prompts {
                if !dir.join(file).is_file() {
                    errors.push(Diagnostic {
                        file: path.clone(),
                        line: line_of(file),
                        problem: format!(
                            "intent {:?}: recorded prompt {file:?} ({language}) not found",
                            intent.name
                        ),
                        fix: "record it as a WAV file there (path relative to the configuration directory), or remove it to synthesise the reply".into(),
                    });
                }
            }
        }
        if !(0.0..1.0).contains(&flow.semantic_threshold) {
            errors.push(Diagnostic {
                file: path.clone(),
                line: line_of("semantic_threshold"),
                problem: format!(
                    "semantic_threshold {} is not a similarity",
                    flow.semantic_threshold
                ),
                fix: "use a value between 0 and 1 (shipped: 0.86)".into(),
            });
        }
        if !(0.0..=0.5).contains(&flow.semantic_margin) {
            errors.push(Diagnostic {
                file: path.clone(),
                line: line_of("semantic_margin"),
                problem: format!("semantic_margin {} is out of range", flow.semantic_margin),
                fix: "use 0 to 0.5 (shipped: 0.015)".into(),
            });
        }
    }
    if let Some(r) = &rules {
        let f = &r.frustration;
        if f.rate_alone <= f.rate_rise {
            let path = dir.join("rules.toml");
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let line = text
                .find("rate_alone")
                .map(|at| SourceFile::new(&path, &text).line_of(at))
                .unwrap_or(1);
            errors.push(Diagnostic {
                file: path,
                line,
                problem: format!(
                    "[frustration] rate_alone {} is not above rate_rise {}",
                    f.rate_alone, f.rate_rise
                ),
                fix: "a rise strong enough alone must be above the moderate one (shipped: 1.35 and 1.6)".into(),
            });
        }
    }
    match (flow, rules, customers) {
        (Some(flow), Some(rules), Some(c)) if errors.is_empty() => Ok(Policy {
            flow,
            rules,
            lexicons,
            customers: c.customer,
            semantic: None,
        }),
        _ => Err(errors),
    }
}
