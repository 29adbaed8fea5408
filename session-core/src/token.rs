//! One-time tokens for sensitive operations (a transfer, a password change).
//!
//! A token is 256 random bits shown to the client once; the session keeps
//! only its BLAKE3 hash, its purpose and its expiry. Verification compares
//! hashes in constant time and consumes the token, so it works exactly once.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::clock::Timestamp;

const TOKEN_CONTEXT: &str = "session-core 2026-11 one-time token v1";

/// The answer of a one-time token check
/// ([`SessionManager::consume_token`](crate::SessionManager::consume_token)).
///
/// It must be looked at: `consume_token(..).await?;` alone would let every
/// request through, so the type is `#[must_use]` and carries no `bool`
/// conversion that could be dropped silently.
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// # async fn f(m: &session_core::SessionManager, s: &mut session_core::Session) -> Result<(), session_core::SessionError> {
/// m.consume_token(s, "transfer", "presented").await?; // the answer is dropped: refused
/// # Ok(()) }
/// ```
///
/// ```
/// #![deny(unused_must_use)]
/// # async fn f(m: &session_core::SessionManager, s: &mut session_core::Session) -> Result<(), session_core::SessionError> {
/// if m.consume_token(s, "transfer", "presented").await?.is_rejected() {
///     return Ok(()); // answer 403
/// }
/// # Ok(()) }
/// ```
#[must_use = "a token check that is not looked at lets every request through"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    /// The token was the one issued for the purpose, live, and this call
    /// consumed it: go ahead with the operation. Exactly one check per
    /// issued token answers this, however many race.
    Accepted,
    /// Wrong, expired, already used, never issued, or the session is gone:
    /// refuse the operation.
    Rejected,
}

impl TokenCheck {
    /// Whether the operation may go ahead.
    #[must_use]
    pub fn is_accepted(self) -> bool {
        self == Self::Accepted
    }

    /// Whether the operation must be refused.
    #[must_use]
    pub fn is_rejected(self) -> bool {
        self == Self::Rejected
    }
}

/// A freshly issued one-time token. Redacted in `Debug`/`Display`; put
/// [`OneTimeToken::expose`] in the form that needs it.
#[derive(Clone)]
pub struct OneTimeToken(Zeroizing<String>);

impl OneTimeToken {
    pub(crate) fn generate() -> (Self, TokenEntryHash) {
        let mut raw = Zeroizing::new([0u8; 32]);
        getrandom::fill(raw.as_mut()).expect("the operating system CSPRNG failed");
        let text = Zeroizing::new(URL_SAFE_NO_PAD.encode(raw.as_ref()));
        let hash = hash_token(&text);
        (Self(text), hash)
    }

    /// The token text, to embed in a form or header.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for OneTimeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OneTimeToken(<redacted>)")
    }
}

impl fmt::Display for OneTimeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

pub(crate) type TokenEntryHash = [u8; 32];

pub(crate) fn hash_token(presented: &str) -> TokenEntryHash {
    blake3::Hasher::new_derive_key(TOKEN_CONTEXT)
        .update(presented.as_bytes())
        .finalize()
        .into()
}

/// What the session stores for an outstanding token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenEntry {
    /// Hash of the token.
    pub(crate) hash: TokenEntryHash,
    /// Expiry.
    pub(crate) expires_at: Timestamp,
}

impl TokenEntry {
    /// Constant-time check of `presented` against this entry at `now`.
    pub(crate) fn accepts(&self, presented: &str, now: Timestamp) -> bool {
        let candidate = hash_token(presented);
        let same: bool = candidate.ct_eq(&self.hash).into();
        same & (now < self.expires_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_accepts_only_its_token_before_expiry() {
        let (tok, hash) = OneTimeToken::generate();
        let e = TokenEntry {
            hash,
            expires_at: Timestamp::from_unix_millis(100),
        };
        assert!(e.accepts(tok.expose(), Timestamp::from_unix_millis(99)));
        assert!(!e.accepts(tok.expose(), Timestamp::from_unix_millis(100)));
        assert!(!e.accepts("", Timestamp::from_unix_millis(0)));
        let (other, _) = OneTimeToken::generate();
        assert!(!e.accepts(other.expose(), Timestamp::from_unix_millis(0)));
        assert!(!format!("{tok:?}{tok}").contains(tok.expose()));
    }
}
