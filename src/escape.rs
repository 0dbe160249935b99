//! Text taken from a request (URL path segments, once percent-decoded) is
//! chosen by whoever sends it, authenticated or not. Written raw into a
//! text log line, a `%0A` would start a forged line and a `%1B` would send
//! escape codes to the terminal of whoever reads the log. Everything from a
//! request goes through [`Escaped`] before it is logged or echoed.

use std::fmt;

/// Displays a string with its control characters (C0, DEL, C1) and the
/// Unicode line separators and bidirectional overrides escaped as `\n`,
/// `\r`, `\t`, `\u{1b}`...; other characters are written as they are, so
/// ordinary names look the same as unescaped.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        for c in self.0.chars() {
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if needs_escape(c) => write!(f, "{}", c.escape_unicode())?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Characters that can break a log line or drive a terminal.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::Escaped;

    #[test]
    fn control_characters_and_line_separators_are_escaped() {
        let shown = Escaped("a\nb\r\x1b[31mc\t\u{7f}\u{85}\u{2028}\u{202e}").to_string();
        assert_eq!(
            shown,
            "a\\nb\\r\\u{1b}[31mc\\t\\u{7f}\\u{85}\\u{2028}\\u{202e}"
        );
        assert!(!shown.chars().any(|c| c.is_control()));
    }

    #[test]
    fn ordinary_names_are_unchanged() {
        for s in ["acme", "team-1", "été", "a b/c\\d", "日本"] {
            assert_eq!(Escaped(s).to_string(), s);
        }
    }
}
