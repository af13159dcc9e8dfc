//! SIP signalling pieces: SDP offer/answer, trunk digest authentication,
//! outbound registration. Transactions and dialogs come from `rsipstack`.

pub mod digest;
pub mod pike;
pub mod sdp;
pub mod session_timer;
pub mod source;

/// A value a remote party wrote (Call-ID, user names, …) made safe for a log
/// line: control characters (ANSI escapes, bare CR/LF that would forge a
/// line) are written as `\u{1b}`-style escapes, and it is cut at 256
/// characters.
pub fn log_safe(value: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 256;
    if value.len() <= MAX && !value.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len().min(MAX) + 8);
    for (n, c) in value.chars().enumerate() {
        if n == MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_never_reach_a_log_line_raw() {
        let hostile = "abc\u{1b}[31mRED\rforged line\n2026 INFO fake";
        let safe = super::log_safe(hostile);
        assert!(!safe.chars().any(char::is_control), "{safe}");
        assert!(safe.contains("\\u{1b}[31mRED\\rforged"), "{safe}");
        assert_eq!(super::log_safe("a1b2@host"), "a1b2@host");
        assert!(super::log_safe(&"x".repeat(1000)).chars().count() <= 257);
    }
}
