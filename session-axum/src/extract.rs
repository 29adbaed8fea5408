//! [`Session`]: the per-request session handle and axum extractor.

use std::fmt;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use http::request::Parts;
use serde::de::DeserializeOwned;
use serde::Serialize;
use session_core::cookie_crate::Cookie;
use session_core::{
    CommitOutcome, ListedSession, LoginOptions, OneTimeToken, SessionError, SessionId,
    SessionManager, StorageKey, StoreError, TokenCheck,
};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use crate::error::Error;
use crate::layer::CommitFailure;

/// The session of the current request, put in the request extensions by
/// [`SessionLayer`](crate::SessionLayer). Cheap to clone; every clone is the
/// same session.
///
/// Nothing is read from the store until a method needs the session, so
/// extracting a `Session` is free. The first method call loads the session
/// named by the request's cookie, or starts an empty one (stored only if
/// something is written). Changes are saved when the response is produced.
///
/// Every method returns [`Error`] on a store failure; `?` in a handler
/// turns it into an answer the client can act on (see [`Error::status`]).
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    manager: SessionManager,
    /// The well-formed IDs the request's cookies name, in order.
    cookie_ids: Vec<SessionId>,
    slot: Mutex<Option<Box<session_core::Session>>>,
}

/// What the layer must do to the response once the handler is done.
#[derive(Debug, Default)]
pub(crate) struct Finish {
    /// The handler used the session: mark the response `no-store`.
    pub(crate) used: bool,
    /// The layer's commit failed: replace the response.
    pub(crate) failure: Option<CommitFailure>,
    /// The cookie the client needs for the state the store is in.
    pub(crate) cookie: Option<Cookie<'static>>,
}

impl Shared {
    pub(crate) fn new(manager: SessionManager, cookie_ids: Vec<SessionId>) -> Self {
        Self {
            manager,
            cookie_ids,
            slot: Mutex::new(None),
        }
    }

    pub(crate) async fn finish(&self, server_error: bool) -> Finish {
        let mut slot = self.slot.lock().await;
        let Some(session) = slot.as_mut() else {
            return Finish::default();
        };
        let mut finish = Finish {
            used: true,
            ..Finish::default()
        };
        if server_error {
            tracing::debug!(target: "session_axum", "server error response; session changes not committed");
        } else if let Err(e) = self.manager.commit(session).await {
            let failure = match &e {
                SessionError::Conflict | SessionError::Store(StoreError::Unavailable(_)) => {
                    CommitFailure::Retry
                }
                _ => CommitFailure::Internal,
            };
            tracing::error!(target: "session_axum", error = %session_core::ErrorChain(&e), ?failure, "session commit failed");
            finish.failure = Some(failure);
        }
        // Whatever happened to the response, a login, rotation or logout
        // that already reached the store must reach the client.
        finish.cookie = self.manager.response_cookie(session);
        finish
    }
}

impl Session {
    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The manager behind this session.
    #[must_use]
    pub fn manager(&self) -> &SessionManager {
        &self.shared.manager
    }

    /// Locks the loaded session, loading it on first use: the first of the
    /// cookie's candidate IDs that names a live session, else a new one.
    async fn lock(&self) -> Result<MappedMutexGuard<'_, session_core::Session>, Error> {
        let mut slot = self.shared.slot.lock().await;
        if slot.is_none() {
            let manager = &self.shared.manager;
            let mut loaded = None;
            for id in &self.shared.cookie_ids {
                loaded = manager.load(id).await?;
                if loaded.is_some() {
                    break;
                }
            }
            *slot = Some(Box::new(loaded.unwrap_or_else(|| manager.start())));
        }
        Ok(MutexGuard::map(slot, |s| {
            &mut **s.as_mut().expect("loaded just above")
        }))
    }

    /// Runs `f` on the underlying [`session_core::Session`] (timestamps,
    /// `contains`, `keys`, ...). Changes it makes are committed like any
    /// other.
    ///
    /// # Errors
    ///
    /// A store failure while loading.
    pub async fn with<R>(
        &self,
        f: impl FnOnce(&mut session_core::Session) -> R,
    ) -> Result<R, Error> {
        let mut s = self.lock().await?;
        Ok(f(&mut s))
    }

    /// The logged-in user, if any.
    ///
    /// # Errors
    ///
    /// A store failure while loading.
    pub async fn user_id(&self) -> Result<Option<String>, Error> {
        Ok(self.lock().await?.user_id().map(str::to_owned))
    }

    /// Reads `key` as a `T`; `None` if absent.
    ///
    /// # Errors
    ///
    /// A store failure while loading, or a stored value that is not a `T`.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        Ok(self.lock().await?.get(key)?)
    }

    /// Stores `value` under `key` (saved at response time if it changed).
    ///
    /// # Errors
    ///
    /// A store failure while loading, or a value that cannot be serialized.
    pub async fn insert<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), Error> {
        Ok(self.lock().await?.insert(key, value)?)
    }

    /// Removes `key`; returns whether it was present.
    ///
    /// # Errors
    ///
    /// A store failure while loading.
    pub async fn remove(&self, key: &str) -> Result<bool, Error> {
        Ok(self.lock().await?.remove(key))
    }

    /// Read-modify-write of one value that never loses an update, committed
    /// at once: `f` gets the current value of `key` (`None` if absent) and
    /// returns the new one (`None` removes it). If another request changed
    /// the session first, it reloads and runs `f` again on the value now
    /// stored, with jittered backoff (see
    /// [`SessionManager::update_value`]). So 50 parallel requests that each
    /// add 1 to a counter add 50. `f` may run several times: keep it free of
    /// side effects. Returns the value written.
    ///
    /// Use it for anything that derives the new value from the old (counters,
    /// appending to a list, a balance); plain [`Session::insert`] is last
    /// writer wins for the key, which is right for independent values.
    ///
    /// # Errors
    ///
    /// [`Error`] answering `409` with `Retry-After` if every attempt lost a
    /// race, `401` if the session ended meanwhile, `503` with `Retry-After`
    /// if the store is unreachable, `500` for a stored value that is not a
    /// `T`.
    pub async fn update<T, F>(&self, key: &str, f: F) -> Result<Option<T>, Error>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> Option<T>,
    {
        let mut s = self.lock().await?;
        Ok(self.shared.manager.update_value(&mut s, key, f).await?)
    }

    /// Commits the session now, inside the handler, instead of at response
    /// time, so the handler knows the outcome before it does anything it
    /// cannot take back (send an email, charge a card). What is left to
    /// commit at response time is then only what the handler changes
    /// afterwards.
    ///
    /// # Errors
    ///
    /// As [`SessionManager::commit`]: the handler decides what to answer.
    pub async fn commit(&self) -> Result<CommitOutcome, Error> {
        let mut s = self.lock().await?;
        Ok(self.shared.manager.commit(&mut s).await?)
    }

    /// Logs the session in as `user_id` with a fresh session ID, whatever
    /// cookie the client sent (see [`SessionManager::login`]). Authenticate
    /// the user before calling this.
    ///
    /// # Errors
    ///
    /// [`Error::is_too_many_sessions`] under the reject-new limit; store
    /// failures.
    pub async fn login(&self, user_id: &str) -> Result<(), Error> {
        let mut s = self.lock().await?;
        Ok(self.shared.manager.login(&mut s, user_id).await?)
    }

    /// [`Session::login`] with options, such as a label naming the device
    /// (see [`SessionManager::login_with`] and
    /// [`session_core::label`]); the label is shown for this session in
    /// [`Session::list_user_sessions`].
    ///
    /// ```no_run
    /// use axum::http::{header::USER_AGENT, HeaderMap};
    /// use session_axum::session_core::{label::fit_label, LoginOptions};
    /// use session_axum::{Error, Session};
    ///
    /// async fn login(session: Session, headers: HeaderMap) -> Result<(), Error> {
    ///     // ... check the password first ...
    ///     let mut options = LoginOptions::new();
    ///     let agent = headers.get(USER_AGENT).and_then(|v| v.to_str().ok());
    ///     if let Some(label) = agent.and_then(fit_label) {
    ///         options = options.with_label(label);
    ///     }
    ///     session.login_with("alice", options).await
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SessionError::InvalidLabel`] (a `500`: the application chose the
    /// label; make it with [`fit_label`](session_core::label::fit_label))
    /// before anything is written; otherwise as [`Session::login`].
    pub async fn login_with(&self, user_id: &str, options: LoginOptions) -> Result<(), Error> {
        let mut s = self.lock().await?;
        Ok(self
            .shared
            .manager
            .login_with(&mut s, user_id, options)
            .await?)
    }

    /// Gives the session a new ID; the old one stops working at once.
    ///
    /// # Errors
    ///
    /// Store failures.
    pub async fn rotate(&self) -> Result<(), Error> {
        let mut s = self.lock().await?;
        Ok(self.shared.manager.rotate(&mut s).await?)
    }

    /// Ends this session on the server. For the rest of the request the
    /// session reads as a new, empty anonymous one (no user, no data); a
    /// value written afterwards (a flash message) is stored in that new
    /// session, whose cookie then replaces the old one; otherwise the
    /// response removes the cookie.
    ///
    /// # Errors
    ///
    /// Store failures.
    pub async fn logout(&self) -> Result<(), Error> {
        let mut s = self.lock().await?;
        let manager = &self.shared.manager;
        if s.is_new() {
            // The cookie named no live session: perhaps one a racing request
            // just rotated away. Deleting follows rotations, so the session
            // ends wherever it moved, and the removal cookie is right.
            for id in &self.shared.cookie_ids {
                manager.end_session(&manager.storage_key(id)).await?;
            }
        }
        Ok(manager.logout(&mut s).await?)
    }

    /// Ends every session of this session's user, this one included;
    /// returns how many were ended.
    ///
    /// # Errors
    ///
    /// `NotLoggedIn` (a `401`) for an anonymous session; store failures.
    pub async fn logout_everywhere(&self) -> Result<u64, Error> {
        let mut s = self.lock().await?;
        Ok(self.shared.manager.logout_everywhere(&mut s).await?)
    }

    /// Ends one of this user's sessions by its storage key (from
    /// [`Session::list_user_sessions`], sent back by the client): a "sign out
    /// that device" button. The target must be a live session of the user
    /// this session is logged in as (see
    /// [`SessionManager::end_user_session`], which explains why a racing
    /// rotation or login can never make it end another user's session).
    /// When `key` is this session's own key, it ends like
    /// [`Session::logout`]: the response removes the cookie.
    ///
    /// Ending sessions is sensitive: ask for the password again before
    /// calling this (ASVS 3.3.4).
    ///
    /// # Errors
    ///
    /// [`SessionError::NotYourSession`], answering `404`, when this session
    /// is anonymous or `key` names no live session of its user (another
    /// user's, unknown, ended or rotated away, not told apart); nothing is
    /// ended. Store failures.
    pub async fn end_session(&self, key: &StorageKey) -> Result<(), Error> {
        let mut s = self.lock().await?;
        let manager = &self.shared.manager;
        if s.user_id().is_some() && !s.is_new() && !s.is_deleted() && s.storage_key() == key {
            return Ok(manager.logout(&mut s).await?);
        }
        Ok(manager.end_user_session(&s, key).await?)
    }

    /// The live sessions of this session's user, oldest first, without IDs,
    /// each with its label and marked whether it is this session
    /// ([`ListedSession::is_current`]): the data of a "your devices" page
    /// (see [`SessionManager::list_sessions_for`]). Empty for a session
    /// that is not logged in (new, anonymous, logged out or ended).
    ///
    /// # Errors
    ///
    /// Store failures.
    pub async fn list_user_sessions(&self) -> Result<Vec<ListedSession>, Error> {
        let s = self.lock().await?;
        match self.shared.manager.list_sessions_for(&s).await {
            Err(SessionError::NotLoggedIn) => Ok(Vec::new()),
            other => Ok(other?),
        }
    }

    /// The old name of [`Session::list_user_sessions`].
    ///
    /// # Errors
    ///
    /// Store failures.
    #[deprecated(note = "renamed to list_user_sessions, the name the manager and the store use")]
    pub async fn list_sessions(&self) -> Result<Vec<ListedSession>, Error> {
        self.list_user_sessions().await
    }

    /// Issues a one-time token for `purpose`, replacing any outstanding one;
    /// it is saved with the session at response time.
    ///
    /// # Errors
    ///
    /// A store failure while loading.
    pub async fn issue_token(&self, purpose: &str) -> Result<OneTimeToken, Error> {
        let mut s = self.lock().await?;
        Ok(self.shared.manager.issue_token(&mut s, purpose))
    }

    /// Checks `presented` against the token for `purpose` and consumes it:
    /// [`TokenCheck::Accepted`] exactly once per issued token, even under
    /// concurrent requests.
    ///
    /// # Errors
    ///
    /// Store failures; a conflict if the session keeps changing.
    pub async fn consume_token(&self, purpose: &str, presented: &str) -> Result<TokenCheck, Error> {
        let mut s = self.lock().await?;
        Ok(self
            .shared
            .manager
            .consume_token(&mut s, purpose, presented)
            .await?)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or(Error::MissingLayer)
    }
}
