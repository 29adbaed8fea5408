//! [`Session`]: the per-request session handle and axum extractor.

use std::fmt;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use http::request::Parts;
use serde::de::DeserializeOwned;
use serde::Serialize;
use session_core::cookie_crate::Cookie;
use session_core::{OneTimeToken, SessionId, SessionManager, SessionSummary};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use crate::error::Error;

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
/// turns it into a bare `500`.
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
    cookie_id: Option<SessionId>,
    slot: Mutex<Slot>,
}

pub(crate) enum Slot {
    Unloaded,
    Loaded {
        session: Box<session_core::Session>,
        /// The client sent a cookie naming a session that does not exist.
        stale_cookie: bool,
    },
}

/// What the layer must do to the response once the handler is done.
pub(crate) enum Finish {
    /// The session was never used: leave the response alone.
    Untouched,
    /// The response is a server error: nothing was committed.
    SkippedOnServerError,
    /// Committed; set this cookie, if any.
    Committed(Option<Cookie<'static>>),
    /// The commit failed; the response must become a generic `500`.
    Failed,
}

impl Shared {
    pub(crate) fn new(manager: SessionManager, cookie_id: Option<SessionId>) -> Self {
        Self {
            manager,
            cookie_id,
            slot: Mutex::new(Slot::Unloaded),
        }
    }

    pub(crate) async fn finish(&self, server_error: bool) -> Finish {
        let mut slot = self.slot.lock().await;
        let Slot::Loaded {
            session,
            stale_cookie,
        } = &mut *slot
        else {
            return Finish::Untouched;
        };
        if server_error {
            tracing::debug!(target: "session_axum", "server error response; session not committed");
            return Finish::SkippedOnServerError;
        }
        if let Err(e) = self.manager.commit(session).await {
            tracing::error!(target: "session_axum", error = %e, "session commit failed; answering 500");
            return Finish::Failed;
        }
        let cookie = self.manager.response_cookie(session).or_else(|| {
            (*stale_cookie && session.is_new())
                .then(|| self.manager.cookie_policy().removal_cookie())
        });
        Finish::Committed(cookie)
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

    /// Locks the loaded session, loading it on first use.
    async fn lock(&self) -> Result<MappedMutexGuard<'_, session_core::Session>, Error> {
        let mut slot = self.shared.slot.lock().await;
        if matches!(*slot, Slot::Unloaded) {
            let manager = &self.shared.manager;
            let loaded = match &self.shared.cookie_id {
                Some(id) => manager.load(id).await?,
                None => None,
            };
            let stale_cookie = self.shared.cookie_id.is_some() && loaded.is_none();
            *slot = Slot::Loaded {
                session: Box::new(loaded.unwrap_or_else(|| manager.start())),
                stale_cookie,
            };
        }
        Ok(MutexGuard::map(slot, |s| match s {
            Slot::Loaded { session, .. } => &mut **session,
            Slot::Unloaded => unreachable!("loaded just above"),
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

    /// Gives the session a new ID; the old one stops working at once.
    ///
    /// # Errors
    ///
    /// Store failures.
    pub async fn rotate(&self) -> Result<(), Error> {
        let mut s = self.lock().await?;
        Ok(self.shared.manager.rotate(&mut s).await?)
    }

    /// Ends this session on the server; the response removes the cookie.
    ///
    /// # Errors
    ///
    /// Store failures.
    pub async fn logout(&self) -> Result<(), Error> {
        let mut s = self.lock().await?;
        Ok(self.shared.manager.logout(&mut s).await?)
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

    /// The live sessions of this session's user, oldest first, without IDs;
    /// empty for an anonymous session.
    ///
    /// # Errors
    ///
    /// Store failures.
    pub async fn list_sessions(&self) -> Result<Vec<SessionSummary>, Error> {
        let Some(user) = self.user_id().await? else {
            return Ok(Vec::new());
        };
        Ok(self.shared.manager.list_user_sessions(&user).await?)
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
    /// `true` exactly once per issued token, even under concurrent requests.
    ///
    /// # Errors
    ///
    /// Store failures; a conflict if the session keeps changing.
    pub async fn consume_token(&self, purpose: &str, presented: &str) -> Result<bool, Error> {
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
