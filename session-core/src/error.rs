//! The manager's error type.

use crate::store::StoreError;

/// What can go wrong in a [`SessionManager`](crate::SessionManager) call.
///
/// None of the variants carries a session ID, token or session data, and
/// no `Display`, `Debug` or `source()` in its chain shows a storage key
/// (only its salted tag) or a credential (backends wrap driver errors in a
/// [`RedactedError`](crate::redact::RedactedError)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The store failed; see the source. For `Unavailable`, check the
    /// backend server; the request can be retried.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A value could not be serialized into, or deserialized from, the
    /// session: the type asked for does not match what was stored.
    // The serde error can quote the stored value, so it is left out of the
    // message (it stays available as the source).
    #[error("a session value could not be (de)serialized as the type asked for")]
    Serialization(#[from] serde_json::Error),
    /// Login refused: the user already has the maximum number of sessions
    /// and the policy is [`LimitStrategy::RejectNew`](crate::LimitStrategy).
    #[error("user already has the maximum of {max} concurrent sessions")]
    TooManySessions {
        /// The configured maximum.
        max: usize,
    },
    /// Another request saved this session first and the conflict policy
    /// gave up. Reload and retry the request, or report it.
    #[error("session was modified concurrently and the change could not be saved")]
    Conflict,
    /// The session ended (logged out here or elsewhere, evicted, expired,
    /// or rotated by another request) before this call could rotate it or
    /// log it in. Nothing was written; the response must not carry a new
    /// session cookie. Start a new session (or send the user to log in).
    #[error("the session has already ended (logged out, evicted, expired or rotated elsewhere)")]
    SessionEnded,
    /// The operation needs a logged-in session.
    #[error("the session is not logged in")]
    NotLoggedIn,
    /// [`SessionManager::end_user_session`](crate::SessionManager::end_user_session)
    /// refused: the calling session is not logged in, or the target key
    /// names no live session of the caller's user (another user's session,
    /// an unknown key, one that already ended or was rotated away). These
    /// cases are deliberately not told apart, so the answer reveals nothing
    /// about which keys exist. Nothing was ended.
    #[error("no such session among the sessions of this user")]
    NotYourSession,
    /// [`SessionManager::login_with`](crate::SessionManager::login_with)
    /// refused the label of its [`LoginOptions`](crate::LoginOptions)
    /// (empty, longer than [`MAX_LABEL_LEN`](crate::label::MAX_LABEL_LEN)
    /// bytes, or holding a control character), before any store call:
    /// nothing was written and the session is unchanged. Make labels from
    /// request data with [`fit_label`](crate::label::fit_label).
    #[error("invalid session label")]
    InvalidLabel(#[from] crate::label::InvalidLabel),
}

/// Displays an error followed by every cause in its
/// [`source()`](std::error::Error::source) chain, separated by `": "`.
///
/// The errors of this workspace say one thing each in their `Display` and
/// leave the cause to `source()`, so that a chain printer (this one,
/// `anyhow`'s `{:#}`, `eyre`'s reports) shows every cause exactly once. Log
/// them with this (`error = %ErrorChain(&e)`), not with `Display` alone.
/// The chain is at most 64 errors deep; deeper causes are cut.
///
/// ```
/// use session_core::error::ErrorChain;
/// use session_core::StoreError;
///
/// let e = StoreError::unavailable(std::io::Error::other("connection refused"));
/// assert_eq!(e.to_string(), "session store unavailable");
/// assert_eq!(ErrorChain(&e).to_string(), "session store unavailable: connection refused");
/// ```
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        let mut depth = 1;
        while let Some(e) = next {
            if depth == 64 {
                break;
            }
            write!(f, ": {e}")?;
            next = e.source();
            depth += 1;
        }
        Ok(())
    }
}

impl std::fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}
