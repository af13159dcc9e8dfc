//! Configuration problems reported as `file:line: what is wrong — how to fix`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {} — {}",
            self.file.display(),
            self.line,
            self.problem,
            self.fix
        )
    }
}

/// Collects diagnostics for one source file, turning byte spans into line numbers.
pub struct SourceFile<'a> {
    path: &'a Path,
    text: &'a str,
}

impl<'a> SourceFile<'a> {
    /// Wrap a file's path and its text.
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        Self { path, text }
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    /// A diagnostic at the start of `span` (line 1 when unknown).
    pub fn at(
        &self,
        span: Option<Range<usize>>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic {
            file: self.path.to_path_buf(),
            line: span.map(|s| self.line_of(s.start)).unwrap_or(1),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// A TOML syntax or schema error as a diagnostic, with a fix hint from its kind.
    pub fn from_toml_error(&self, err: &toml::de::Error) -> Diagnostic {
        let message = err.message().trim().to_string();
        let fix = if message.starts_with("unknown field") {
            "remove the key or correct its spelling (see the comments in the shipped sip-config/)"
        } else if message.starts_with("missing field") {
            "add the key; the shipped sip-config/ shows an example"
        } else if message.starts_with("invalid type") {
            "give the value the type shown in the shipped sip-config/"
        } else {
            "fix the TOML syntax at this line"
        };
        self.at(err.span(), message.replace('\n', " "), fix)
    }
}
