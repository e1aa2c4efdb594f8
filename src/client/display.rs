//! What a client may put on a screen (PROTOCOL.md section 7): text, names and
//! room names from the network with every control character (C0, DEL, C1)
//! and bidirectional override replaced by a visible escape, so a message
//! cannot rewrite the terminal or pose as another line.

use std::fmt::Write;

/// The characters section 7 says must never reach a screen raw.
pub fn is_dangerous(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with each dangerous character as `\n`, `\t`, `\r` or `\u{..}`, and
/// backslashes doubled so an escape cannot be forged either.
pub fn escape(s: &str) -> String {
    if !s.chars().any(|c| is_dangerous(c) || c == '\\') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if is_dangerous(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_bidi() {
        assert_eq!(escape("plain ✓ text"), "plain ✓ text");
        assert_eq!(escape("a\rb"), "a\\rb");
        assert_eq!(escape("\u{1b}[2K"), "\\u{1b}[2K");
        assert_eq!(escape("x\u{202e}y\u{2066}"), "x\\u{202e}y\\u{2066}");
        assert_eq!(escape("\u{85}\u{7f}"), "\\u{85}\\u{7f}");
        assert_eq!(escape("a\\rb"), "a\\\\rb");
        assert!(!escape("\u{9b}31m").chars().any(is_dangerous));
    }
}
