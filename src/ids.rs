//! User ids and room names (docs/protocol.md section 7): the bound on their
//! length, the refusal of control characters, and an escaped form for log
//! lines, so that no id can forge a log line or reach a terminal raw.
//!
//! Pure: strings in, verdicts or text out.

use std::fmt;

/// Why an id or room name was refused; the text is what the client is told.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdError {
    /// Longer than `max_id_bytes`.
    TooLong {
        /// The bound in bytes.
        max: usize,
    },
    /// Holds U+0000–U+001F or U+007F.
    ControlCharacter,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::TooLong { max } => write!(f, "longer than {max} bytes"),
            IdError::ControlCharacter => f.write_str("contains a control character"),
        }
    }
}

/// Checks one user id or room name against the bound and the control
/// characters. Only ASCII controls are refused (C1 controls in UTF-8 are two
/// bytes that a log line shows escaped anyway, see `Escaped`).
pub fn check(id: &str, max_bytes: usize) -> Result<(), IdError> {
    if id.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(IdError::ControlCharacter);
    }
    if id.len() > max_bytes {
        return Err(IdError::TooLong { max: max_bytes });
    }
    Ok(())
}

/// An id field of a message that failed [`check`]; shows as the client is
/// told it, `invalid "room": longer than 128 bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldError {
    /// The message field (`to`, `room`, `from`).
    pub field: &'static str,
    /// Why its value was refused.
    pub error: IdError,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid \"{}\": {}", self.field, self.error)
    }
}

/// Checks each present field of a message (name and value) with [`check`];
/// the first refused one is the error.
pub fn check_fields<'a>(
    fields: impl IntoIterator<Item = (&'static str, Option<&'a str>)>,
    max_bytes: usize,
) -> Result<(), FieldError> {
    for (field, value) in fields {
        if let Some(id) = value {
            check(id, max_bytes).map_err(|error| FieldError { field, error })?;
        }
    }
    Ok(())
}

/// Shows an id in a log line: control and other non-printing characters
/// escaped (`\n`, `\u{1b}`), everything else as is. Ids that passed
/// [`check`] print unchanged; this guards what embedding code passes in.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
                write!(f, "{}", c.escape_default())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

/// [`Escaped`] for an optional id: `-` when absent.
pub fn shown(id: Option<&str>) -> Escaped<'_> {
    Escaped(id.unwrap_or("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_is_bounded_in_bytes() {
        assert_eq!(check("abcd", 4), Ok(()));
        assert_eq!(check("abcde", 4), Err(IdError::TooLong { max: 4 }));
        // "é" is two bytes.
        assert_eq!(check("ééé", 5), Err(IdError::TooLong { max: 5 }));
        assert_eq!(check("用户", 6), Ok(()));
    }

    #[test]
    fn control_characters_are_refused() {
        for bad in [
            "eve\n2026",
            "a\rb",
            "\u{1b}[2J",
            "nul\0",
            "del\u{7f}",
            "tab\t",
        ] {
            assert_eq!(check(bad, 128), Err(IdError::ControlCharacter), "{bad:?}");
        }
        assert_eq!(check("alice bob-42_é", 128), Ok(()));
    }

    #[test]
    fn the_first_refused_field_is_named() {
        let fields = [
            ("to", None),
            ("room", Some("r\n")),
            ("from", Some("toolong")),
        ];
        let refused = check_fields(fields, 4).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "invalid \"room\": contains a control character"
        );
        assert_eq!(check_fields([("to", Some("ok"))], 4), Ok(()));
    }

    #[test]
    fn escaped_ids_stay_on_one_line() {
        let forged = "eve\n2026-01-01T00:00:00Z INFO connect user=admin\u{1b}[2J\u{85}";
        let shown = Escaped(forged).to_string();
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert_eq!(
            shown,
            "eve\\n2026-01-01T00:00:00Z INFO connect user=admin\\u{1b}[2J\\u{85}"
        );
        assert_eq!(Escaped("用户 é").to_string(), "用户 é");
        assert_eq!(super::shown(None).to_string(), "-");
    }
}
