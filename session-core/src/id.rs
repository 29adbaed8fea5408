//! Session identifiers: 256 random bits, URL-safe base64 without padding.
//!
//! A [`SessionId`] is the bearer token that travels in the cookie. It is
//! generated from the operating system's CSPRNG and parsed strictly: anything
//! that is not exactly 43 characters of the URL-safe base64 alphabet encoding
//! exactly 32 bytes is rejected with an [`InvalidSessionId`] before any store
//! is touched. The value never appears in `Debug` or `Display` output.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Number of random bytes in a session ID (256 bits).
pub const SESSION_ID_BYTES: usize = 32;

/// Length of the encoded form of a session ID (URL-safe base64, no padding).
pub const SESSION_ID_LEN: usize = 43;

/// A session identifier: 256 bits from the OS CSPRNG.
///
/// `Debug` and `Display` print `SessionId(<redacted>)`; the only ways to get
/// the secret out are [`SessionId::expose`] (for the cookie value) and
/// [`SessionId::as_bytes`] (for key derivation). Equality is constant-time.
/// The bytes are zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SessionId([u8; SESSION_ID_BYTES]);

/// Why a string was rejected as a session ID.
///
/// The variants never carry the rejected input, so logging the error cannot
/// leak a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidSessionId {
    /// The value is not exactly [`SESSION_ID_LEN`] bytes long.
    #[error("session id must be {SESSION_ID_LEN} characters, got {0}")]
    WrongLength(usize),
    /// The value contains a byte outside the URL-safe base64 alphabet
    /// (`A-Z a-z 0-9 - _`), such as `=`, `+`, `/`, `%` or non-ASCII.
    #[error("session id contains a character outside the URL-safe base64 alphabet")]
    InvalidCharacter,
    /// The value uses the alphabet but is not the canonical encoding of 32
    /// bytes (non-zero trailing bits).
    #[error("session id is not a canonical encoding of 32 bytes")]
    NonCanonical,
}

impl SessionId {
    /// Generates a fresh ID from the operating system's CSPRNG.
    ///
    /// # Panics
    ///
    /// Panics if the operating system cannot provide random bytes, as
    /// `rand::rngs::OsRng` does; continuing without randomness would issue
    /// guessable tokens.
    #[must_use]
    pub fn generate() -> Self {
        let mut bytes = [0u8; SESSION_ID_BYTES];
        getrandom::fill(&mut bytes).expect("the operating system CSPRNG failed");
        Self(bytes)
    }

    /// Parses the cookie form of an ID, strictly.
    ///
    /// # Errors
    ///
    /// Returns [`InvalidSessionId`] for any input that is not exactly 43
    /// characters of `A-Z a-z 0-9 - _` canonically encoding 32 bytes.
    pub fn parse(value: &str) -> Result<Self, InvalidSessionId> {
        let raw = value.as_bytes();
        if raw.len() != SESSION_ID_LEN {
            return Err(InvalidSessionId::WrongLength(raw.len()));
        }
        if !raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return Err(InvalidSessionId::InvalidCharacter);
        }
        let mut bytes = [0u8; SESSION_ID_BYTES];
        match URL_SAFE_NO_PAD.decode_slice(raw, &mut bytes) {
            Ok(SESSION_ID_BYTES) => Ok(Self(bytes)),
            _ => {
                bytes.zeroize();
                Err(InvalidSessionId::NonCanonical)
            }
        }
    }

    /// Builds an ID from raw bytes (for tests and key-derivation tooling).
    #[must_use]
    pub fn from_bytes(bytes: [u8; SESSION_ID_BYTES]) -> Self {
        Self(bytes)
    }

    /// The encoded form, for the cookie value. Handle with care: this is the
    /// bearer token.
    #[must_use]
    pub fn expose(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// The raw bytes, for key derivation.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; SESSION_ID_BYTES] {
        &self.0
    }
}

impl PartialEq for SessionId {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for SessionId {}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(<redacted>)")
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for SessionId {
    type Err = InvalidSessionId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_round_trip_and_differ() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_ne!(a, b);
        let encoded = a.expose();
        assert_eq!(encoded.len(), SESSION_ID_LEN);
        assert_eq!(SessionId::parse(&encoded).unwrap(), a);
    }

    #[test]
    fn debug_and_display_are_redacted() {
        let id = SessionId::generate();
        let secret = id.expose();
        for shown in [
            format!("{id:?}"),
            format!("{id}"),
            format!("{:?}", Some(&id)),
        ] {
            assert!(!shown.contains(&secret), "{shown}");
            assert!(shown.contains("redacted"));
        }
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(SessionId::parse(""), Err(InvalidSessionId::WrongLength(0)));
    }

    #[test]
    fn rejects_42_and_44_characters() {
        let good = SessionId::generate().expose();
        assert_eq!(
            SessionId::parse(&good[..42]),
            Err(InvalidSessionId::WrongLength(42))
        );
        let long = format!("{good}A");
        assert_eq!(
            SessionId::parse(&long),
            Err(InvalidSessionId::WrongLength(44))
        );
    }

    #[test]
    fn rejects_padding() {
        let good = SessionId::generate().expose();
        let padded = format!("{}=", &good[..42]);
        assert_eq!(
            SessionId::parse(&padded),
            Err(InvalidSessionId::InvalidCharacter)
        );
        assert_eq!(
            SessionId::parse(&format!("{good}=")),
            Err(InvalidSessionId::WrongLength(44))
        );
    }

    #[test]
    fn rejects_standard_alphabet_plus_and_slash() {
        let good = SessionId::generate().expose();
        for bad in ['+', '/'] {
            let v = format!("{bad}{}", &good[1..]);
            assert_eq!(
                SessionId::parse(&v),
                Err(InvalidSessionId::InvalidCharacter)
            );
        }
    }

    #[test]
    fn rejects_percent_encoding() {
        let good = SessionId::generate().expose();
        let v = format!("%2D{}", &good[3..]);
        assert_eq!(v.len(), SESSION_ID_LEN);
        assert_eq!(
            SessionId::parse(&v),
            Err(InvalidSessionId::InvalidCharacter)
        );
    }

    #[test]
    fn rejects_non_ascii_and_whitespace() {
        let good = SessionId::generate().expose();
        // 'é' is two bytes: 41 ASCII + 2 bytes = 43 bytes.
        let v = format!("é{}", &good[2..]);
        assert_eq!(v.len(), SESSION_ID_LEN);
        assert_eq!(
            SessionId::parse(&v),
            Err(InvalidSessionId::InvalidCharacter)
        );
        let v = format!(" {}", &good[1..]);
        assert_eq!(
            SessionId::parse(&v),
            Err(InvalidSessionId::InvalidCharacter)
        );
        let v = format!("\0{}", &good[1..]);
        assert_eq!(
            SessionId::parse(&v),
            Err(InvalidSessionId::InvalidCharacter)
        );
    }

    #[test]
    fn rejects_non_canonical_trailing_bits() {
        // 43 chars carry 258 bits; the last character's low 2 bits must be 0.
        let good = SessionId::from_bytes([0u8; 32]).expose();
        assert!(good.ends_with('A'));
        let bad = format!("{}B", &good[..42]);
        assert_eq!(SessionId::parse(&bad), Err(InvalidSessionId::NonCanonical));
    }

    #[test]
    fn error_messages_do_not_echo_input() {
        let err = SessionId::parse("secret-value-that-is-wrong").unwrap_err();
        assert!(!err.to_string().contains("secret"));
    }
}
