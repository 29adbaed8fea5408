//! Session labels: a short, human-readable name for one session (a device
//! name such as "Firefox on Linux"), shown on a "your devices" page.
//!
//! The application chooses a session's label when it logs the session in
//! ([`LoginOptions::with_label`](crate::LoginOptions::with_label)), usually
//! from the request's `User-Agent`. It is part of the record's metadata
//! ([`SessionRecord::label`](crate::SessionRecord::label)), never part of
//! the session ID or the storage key, and comes back in the per-user
//! listing ([`SessionSummary::label`](crate::SessionSummary::label)).
//!
//! # Rules
//!
//! A label the manager accepts ([`validate_label`]) is 1 to
//! [`MAX_LABEL_LEN`] (128) bytes of UTF-8 text with no control characters
//! (no U+0000, no line breaks, no escape sequences): it ends up in HTML
//! pages and log lines, and no store has to escape anything. Anything else
//! is refused with an [`InvalidLabel`] before any store call.
//! [`fit_label`] turns arbitrary text (a raw `User-Agent` header, say) into
//! an acceptable label, or `None`.
//!
//! The bound is in bytes, not characters, so that every store can size its
//! storage for it: 128 bytes hold 128 ASCII characters, or 32 emoji.
//!
//! Stores must accept longer labels, up to [`MAX_STORED_LABEL_LEN`]: a
//! store that wraps another (the encrypting store) passes its inner store
//! a transformed label (a ciphertext) that is longer than the one it got.
//!
//! A label is personal data (it describes the user's device): stores that
//! encrypt session data encrypt it too, and `Debug` output of records and
//! summaries shows only its length.

/// The longest label the manager accepts, in bytes of UTF-8.
pub const MAX_LABEL_LEN: usize = 128;

/// The longest label every store must accept, in bytes of UTF-8: room for
/// a [`MAX_LABEL_LEN`] label transformed by a wrapping store (encrypted and
/// encoded as text).
pub const MAX_STORED_LABEL_LEN: usize = 1024;

/// Why the manager refused a session label (see the [module docs](self)).
///
/// The message never quotes the label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidLabel {
    /// The label is empty. Leave the label out (`None`) instead.
    #[error("the session label is empty")]
    Empty,
    /// The label is longer than [`MAX_LABEL_LEN`] bytes of UTF-8.
    #[error("the session label is {len} bytes long; at most {max} bytes are allowed")]
    TooLong {
        /// The label's length in bytes.
        len: usize,
        /// The limit, [`MAX_LABEL_LEN`].
        max: usize,
    },
    /// The label contains a control character (U+0000 to U+001F, U+007F to
    /// U+009F: line breaks, tabs, escapes).
    #[error("the session label contains a control character")]
    ControlCharacter,
}

/// Checks a label against the rules of the [module docs](self).
///
/// ```
/// use session_core::label::{validate_label, InvalidLabel, MAX_LABEL_LEN};
///
/// assert_eq!(validate_label("Firefox on Linux"), Ok(()));
/// assert_eq!(validate_label(""), Err(InvalidLabel::Empty));
/// assert_eq!(validate_label("a\nb"), Err(InvalidLabel::ControlCharacter));
/// assert_eq!(
///     validate_label(&"x".repeat(MAX_LABEL_LEN + 1)),
///     Err(InvalidLabel::TooLong { len: MAX_LABEL_LEN + 1, max: MAX_LABEL_LEN })
/// );
/// ```
///
/// # Errors
///
/// The first rule the label breaks, checked in the order empty, too long,
/// control character.
pub fn validate_label(label: &str) -> Result<(), InvalidLabel> {
    if label.is_empty() {
        return Err(InvalidLabel::Empty);
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(InvalidLabel::TooLong {
            len: label.len(),
            max: MAX_LABEL_LEN,
        });
    }
    if label.chars().any(char::is_control) {
        return Err(InvalidLabel::ControlCharacter);
    }
    Ok(())
}

/// Makes an acceptable label out of any text, for a label taken from the
/// request (a `User-Agent` header): control characters become spaces,
/// runs of whitespace one space, the ends are trimmed, and the result is
/// cut at a character boundary to at most [`MAX_LABEL_LEN`] bytes. `None`
/// when nothing is left.
///
/// ```
/// use session_core::label::{fit_label, validate_label, MAX_LABEL_LEN};
///
/// assert_eq!(fit_label("  Firefox\ton\r\nLinux ").as_deref(), Some("Firefox on Linux"));
/// assert_eq!(fit_label(" \t "), None);
/// let long = fit_label(&"é".repeat(100)).unwrap();
/// assert!(long.len() <= MAX_LABEL_LEN && validate_label(&long).is_ok());
/// ```
#[must_use]
pub fn fit_label(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len().min(MAX_LABEL_LEN));
    for word in text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
    {
        let sep = usize::from(!out.is_empty());
        if out.len() + sep + word.len() <= MAX_LABEL_LEN {
            if sep == 1 {
                out.push(' ');
            }
            out.push_str(word);
            continue;
        }
        // The word does not fit whole: as much of it as fits, then stop.
        if out.len() + sep < MAX_LABEL_LEN {
            if sep == 1 {
                out.push(' ');
            }
            for c in word.chars() {
                if out.len() + c.len_utf8() > MAX_LABEL_LEN {
                    break;
                }
                out.push(c);
            }
        }
        break;
    }
    (!out.is_empty()).then_some(out)
}

/// A label's `Debug`: its length only (a label is personal data).
pub(crate) struct Redacted<'a>(pub(crate) &'a Option<String>);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(l) => write!(f, "Some(<{} bytes>)", l.len()),
            None => f.write_str("None"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_inclusive_and_in_bytes() {
        assert_eq!(validate_label(&"x".repeat(MAX_LABEL_LEN)), Ok(()));
        // 43 three-byte characters: 129 bytes.
        assert!(matches!(
            validate_label(&"€".repeat(43)),
            Err(InvalidLabel::TooLong { len: 129, .. })
        ));
        assert_eq!(validate_label(&"€".repeat(42)), Ok(()));
    }

    #[test]
    fn control_characters_are_refused_everywhere() {
        for bad in ["\0", "a\u{7f}", "\u{1b}[31m", "x\u{85}y", "tab\there"] {
            assert_eq!(validate_label(bad), Err(InvalidLabel::ControlCharacter));
        }
        assert_eq!(validate_label("Safari – iPhone 📱"), Ok(()));
    }

    #[test]
    fn fitted_labels_are_always_valid() {
        let ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
                  (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.80 \
                  and some more text to go past the limit";
        for text in [
            ua,
            "€€€",
            &"€".repeat(200),
            &"ab ".repeat(100),
            "\u{0}x\u{0}",
        ] {
            let fitted = fit_label(text).unwrap();
            assert_eq!(validate_label(&fitted), Ok(()), "{fitted:?}");
            assert!(text.contains(fitted.split(' ').next().unwrap()));
        }
        assert_eq!(fit_label("").as_deref(), None);
        assert_eq!(fit_label("\u{0}\n").as_deref(), None);
        assert_eq!(fit_label("\u{0}x\u{0}").as_deref(), Some("x"));
    }

    #[test]
    fn errors_never_quote_the_label() {
        let e = validate_label(&"secret".repeat(30)).unwrap_err();
        assert!(!e.to_string().contains("secret"));
    }
}
