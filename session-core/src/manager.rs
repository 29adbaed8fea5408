//! [`SessionManager`]: the API applications use.
//!
//! The manager turns cookie values into [`Session`]s, derives storage keys,
//! serializes data, enforces timeouts with its [`Clock`], rotates IDs,
//! applies the per-user limit, issues one-time tokens, and writes audit
//! events to `tracing` (target `session_core::audit`) naming sessions only by
//! a salted tag.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use cookie::Cookie;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::Level;

use crate::clock::{Clock, SystemClock, Timestamp};
use crate::cookie::CookiePolicy;
use crate::error::SessionError;
use crate::id::SessionId;
use crate::key::{AuditTagger, KeyDeriver, StorageKey};
use crate::policy::{SessionConfig, UserSessionLimit};
use crate::record::{ListedSession, SessionRecord, SessionSummary};
use crate::retry::RetryPolicy;
use crate::session::{Field, Payload, Session, State};
use crate::store::{CreateOptions, Created, Replaces, SessionStore, StoreError};
use crate::token::{OneTimeToken, TokenCheck, TokenEntry};

const AUDIT: &str = "session_core::audit";

/// Most write attempts of [`SessionManager::update_value`] and
/// [`SessionManager::consume_token`] before they give up with
/// [`SessionError::Conflict`].
pub const UPDATE_MAX_ATTEMPTS: u32 = UPDATE_RETRY.max_attempts();

/// The retry policy of [`SessionManager::update_value`] and
/// [`SessionManager::consume_token`]: [`UPDATE_MAX_ATTEMPTS`] attempts, a
/// full-jitter backoff from 1 ms doubling to 64 ms.
pub const UPDATE_RETRY: RetryPolicy = RetryPolicy::new(32).with_backoff(
    std::time::Duration::from_millis(1),
    std::time::Duration::from_millis(64),
);

/// What [`SessionManager::commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommitOutcome {
    /// Nothing to write: no change and no touch due (or a new, empty
    /// session that was never stored).
    Unchanged,
    /// The session was stored for the first time.
    Created,
    /// The session's data was written.
    Updated,
    /// Only the idle deadline was moved.
    Touched,
    /// The session no longer exists on the server (logged out elsewhere,
    /// expired, evicted or rotated by another request meanwhile): nothing
    /// was written and it is now marked deleted. No cookie is due (the
    /// client may already hold a newer one), and the changes of this
    /// request are dropped.
    Gone,
    /// The session had been deleted in this request; nothing written.
    Deleted,
}

/// What else [`SessionManager::login_with`] records about the session it
/// logs in.
///
/// `#[non_exhaustive]`: build it with [`LoginOptions::new`] (or
/// `default()`) and the `with_*` methods.
///
/// ```
/// use session_core::label::fit_label;
/// use session_core::{LoginOptions, MemoryStore, SessionManager};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), session_core::SessionError> {
/// let manager = SessionManager::new(MemoryStore::new());
/// let mut session = manager.start();
/// // A device name the application derived from the request's User-Agent.
/// let mut options = LoginOptions::new();
/// if let Some(label) = fit_label("Firefox on Linux") {
///     options = options.with_label(label);
/// }
/// manager.login_with(&mut session, "alice", options).await?;
/// assert_eq!(session.label(), Some("Firefox on Linux"));
/// let listing = manager.list_sessions_for(&session).await?;
/// assert_eq!(listing[0].label(), Some("Firefox on Linux"));
/// assert!(listing[0].is_current());
/// # Ok(()) }
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoginOptions {
    /// The session's label (a device name, see [`crate::label`]): shown in
    /// the user's session listing, kept by rotations, fixed until the next
    /// login. `None` keeps the label the session already has (a re-login
    /// of the same user on the same device); a session that had none, or
    /// belonged to another user, then has none.
    pub label: Option<String>,
}

impl LoginOptions {
    /// No options: what [`SessionManager::login`] uses.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Labels the session (checked by
    /// [`login_with`](SessionManager::login_with) against the rules of
    /// [`crate::label`]: 1 to 128 bytes, no control characters).
    #[must_use]
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }
}

impl fmt::Debug for LoginOptions {
    /// The label's length only: it is personal data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginOptions")
            .field("label", &crate::label::Redacted(&self.label))
            .finish()
    }
}

enum Write {
    Done,
    Conflict,
    Gone,
}

struct Inner {
    store: Arc<dyn SessionStore>,
    config: SessionConfig,
    cookie: CookiePolicy,
    keys: KeyDeriver,
    audit: AuditTagger,
    clock: Arc<dyn Clock>,
}

/// Creates, loads, saves and ends sessions. Cheap to clone.
#[derive(Clone)]
pub struct SessionManager {
    inner: Arc<Inner>,
}

impl fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionManager")
            .field("config", &self.inner.config)
            .field("cookie", &self.inner.cookie)
            .field("keys", &self.inner.keys)
            .field("clock", &self.inner.clock)
            .finish_non_exhaustive()
    }
}

/// Builder for [`SessionManager`].
#[must_use]
pub struct SessionManagerBuilder {
    store: Arc<dyn SessionStore>,
    config: SessionConfig,
    cookie: CookiePolicy,
    keys: KeyDeriver,
    audit: Option<AuditTagger>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SessionManagerBuilder {
    /// The policies; the store, key secret and audit salt are left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionManagerBuilder")
            .field("config", &self.config)
            .field("cookie", &self.cookie)
            .finish_non_exhaustive()
    }
}

impl SessionManagerBuilder {
    /// Sets the policies (default: [`SessionConfig::default`]).
    pub fn config(mut self, config: SessionConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the cookie policy (default: [`CookiePolicy::default`]).
    pub fn cookie_policy(mut self, cookie: CookiePolicy) -> Self {
        self.cookie = cookie;
        self
    }

    /// Keys the storage-key derivation with an application secret. All
    /// instances sharing a store must use the same secret; changing it ends
    /// every session.
    pub fn key_secret(mut self, secret: &[u8]) -> Self {
        self.keys = KeyDeriver::with_secret(secret);
        self
    }

    /// Sets the salt of audit tags (default: random per process, the salt
    /// of [`StorageKey`]'s `Display` tags, so audit events and `tag:…` in
    /// other log lines match).
    pub fn audit_salt(mut self, salt: &[u8]) -> Self {
        self.audit = Some(AuditTagger::with_salt(salt));
        self
    }

    /// Sets the clock (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Builds the manager.
    pub fn build(self) -> SessionManager {
        SessionManager {
            inner: Arc::new(Inner {
                store: self.store,
                config: self.config,
                cookie: self.cookie,
                keys: self.keys,
                audit: self.audit.unwrap_or_else(AuditTagger::process),
                clock: self.clock,
            }),
        }
    }
}

impl SessionManager {
    /// A manager with the default policies over `store`.
    pub fn new(store: impl SessionStore) -> Self {
        Self::builder(store).build()
    }

    /// A builder over `store` (any store, `Arc<S>` or `Arc<dyn SessionStore>`).
    pub fn builder(store: impl SessionStore) -> SessionManagerBuilder {
        Self::builder_arc(Arc::new(store))
    }

    /// A builder over a shared trait object.
    pub fn builder_arc(store: Arc<dyn SessionStore>) -> SessionManagerBuilder {
        SessionManagerBuilder {
            store,
            config: SessionConfig::default(),
            cookie: CookiePolicy::default(),
            keys: KeyDeriver::new(),
            audit: None,
            clock: Arc::new(SystemClock),
        }
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.inner.store
    }

    /// The policies.
    #[must_use]
    pub fn config(&self) -> &SessionConfig {
        &self.inner.config
    }

    /// The cookie policy.
    #[must_use]
    pub fn cookie_policy(&self) -> &CookiePolicy {
        &self.inner.cookie
    }

    /// The current time on the manager's clock.
    #[must_use]
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// The storage key for `id`.
    #[must_use]
    pub fn storage_key(&self, id: &SessionId) -> StorageKey {
        self.inner.keys.derive(id)
    }

    /// Starts a new, empty session with a fresh ID. Nothing is stored until
    /// a commit has something to save, so anonymous requests that never
    /// write cost no store round trip and get no cookie.
    pub fn start(&self) -> Session {
        let id = SessionId::generate();
        let now = self.now();
        let cfg = &self.inner.config;
        let absolute_deadline = now.saturating_add(cfg.absolute_timeout);
        Session {
            key: self.storage_key(&id),
            id,
            state: State::New,
            payload: Payload::default(),
            changes: HashMap::new(),
            user_id: None,
            label: None,
            created_at: now,
            last_access: now,
            idle_deadline: now.saturating_add(cfg.idle_timeout).min(absolute_deadline),
            absolute_deadline,
            touch_due: false,
            id_changed: true,
            logged_out: false,
        }
    }

    /// Loads the session named by a raw cookie value.
    ///
    /// Malformed, unknown, expired or unreadable values give `Ok(None)`:
    /// "no session", never an error page. A client-chosen ID is never
    /// adopted: callers start a fresh session instead.
    ///
    /// # Errors
    ///
    /// Only store failures ([`SessionError::Store`]), so the application can
    /// answer 500 rather than silently logging the user out.
    pub async fn load_cookie_value(&self, value: &str) -> Result<Option<Session>, SessionError> {
        match SessionId::parse(value) {
            Ok(id) => self.load(&id).await,
            Err(_) => Ok(None),
        }
    }

    /// Loads the session named by the request's `Cookie` header values
    /// (as bytes or text; see [`CookiePolicy::session_id_candidates`]):
    /// the first candidate ID that names a live session, trying at most
    /// [`MAX_SESSION_ID_CANDIDATES`](crate::MAX_SESSION_ID_CANDIDATES).
    ///
    /// # Errors
    ///
    /// As [`SessionManager::load_cookie_value`].
    pub async fn load_from_cookie_headers<I>(
        &self,
        headers: I,
    ) -> Result<Option<Session>, SessionError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        for id in self.inner.cookie.session_id_candidates(headers) {
            if let Some(session) = self.load(&id).await? {
                return Ok(Some(session));
            }
        }
        Ok(None)
    }

    /// Loads the session with ID `id`, or `None` if it does not exist, has
    /// expired (by the manager's clock, whatever the store thinks), or
    /// cannot be decoded.
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when the store fails.
    pub async fn load(&self, id: &SessionId) -> Result<Option<Session>, SessionError> {
        let key = self.storage_key(id);
        let now = self.now();
        let Some(record) = self.load_record(&key, now).await? else {
            return Ok(None);
        };
        let Some(payload) = self.decode(&key, &record) else {
            return Ok(None);
        };
        Ok(Some(Session {
            id: id.clone(),
            key,
            state: State::Stored(record.version),
            payload,
            changes: HashMap::new(),
            touch_due: now.duration_since(record.last_access) >= self.inner.config.touch_interval,
            user_id: record.user_id,
            label: record.label,
            created_at: record.created_at,
            last_access: record.last_access,
            idle_deadline: record.idle_deadline,
            absolute_deadline: record.absolute_deadline,
            id_changed: false,
            logged_out: false,
        }))
    }

    async fn load_record(
        &self,
        key: &StorageKey,
        now: Timestamp,
    ) -> Result<Option<SessionRecord>, SessionError> {
        let record = match self.inner.store.load(key).await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            Err(StoreError::Corrupt(why)) => {
                self.warn_unreadable(key, &why);
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        if record.is_expired_at(now) {
            self.audit("expired", key, record.user_id.as_deref());
            // Best effort: the store would drop it anyway.
            let _ = self.inner.store.delete(key).await;
            return Ok(None);
        }
        Ok(Some(record))
    }

    fn decode(&self, key: &StorageKey, record: &SessionRecord) -> Option<Payload> {
        match Payload::decode(&record.data) {
            Ok(p) => Some(p),
            Err(e) => {
                self.warn_unreadable(key, &e.to_string());
                None
            }
        }
    }

    fn warn_unreadable(&self, key: &StorageKey, why: &str) {
        if tracing::enabled!(target: AUDIT, Level::WARN) {
            let session = self.inner.audit.tag(key);
            tracing::warn!(target: AUDIT, event = "unreadable", %session, reason = why, "session record unreadable; treated as no session");
        }
    }

    /// Saves the session: creates it if new and non-empty, writes it if
    /// changed, otherwise touches it if the touch interval has passed,
    /// otherwise does nothing.
    ///
    /// On a version conflict the configured [`ConflictPolicy`](crate::ConflictPolicy) applies.
    ///
    /// # Errors
    ///
    /// [`SessionError::Conflict`] when the policy gives up,
    /// [`SessionError::Store`] when the store fails.
    pub async fn commit(&self, session: &mut Session) -> Result<CommitOutcome, SessionError> {
        match session.state {
            State::Deleted => return Ok(CommitOutcome::Deleted),
            State::New if session.changes.is_empty() => return Ok(CommitOutcome::Unchanged),
            State::Stored(_) if session.changes.is_empty() => {
                return self.touch(session).await;
            }
            _ => {}
        }
        let was_new = session.is_new();
        let retry = self.inner.config.conflict.retry_policy();
        let mut attempt = 1;
        loop {
            match self.try_write(session).await? {
                Write::Done if was_new => return Ok(CommitOutcome::Created),
                Write::Done => return Ok(CommitOutcome::Updated),
                Write::Gone => return Ok(self.mark_gone(session)),
                Write::Conflict if !retry.allows_another(attempt) => {
                    return Err(SessionError::Conflict)
                }
                Write::Conflict => {
                    attempt += 1;
                    if !self.refresh(session).await? {
                        return Ok(self.mark_gone(session));
                    }
                }
            }
        }
    }

    /// Read-modify-write of one value that never loses an update: `f` gets
    /// the current value of `key` (`None` if absent) and returns the new one
    /// (`None` removes it); the result is committed at once with a strict
    /// version check, together with the session's other pending changes. On
    /// a version conflict the session is reloaded (other pending changes are
    /// re-applied on top) and `f` runs again on the value now stored, after
    /// a jittered backoff, up to [`UPDATE_MAX_ATTEMPTS`] times. So `n`
    /// concurrent increments of a counter, from any number of requests and
    /// instances, add exactly `n`.
    ///
    /// `f` may run several times: keep it free of side effects. Returns the
    /// value written.
    ///
    /// ```
    /// # use session_core::{MemoryStore, SessionManager};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), session_core::SessionError> {
    /// let manager = SessionManager::new(MemoryStore::new());
    /// let mut session = manager.start();
    /// let visits = manager
    ///     .update_value(&mut session, "visits", |n: Option<u64>| Some(n.unwrap_or(0) + 1))
    ///     .await?;
    /// assert_eq!(visits, Some(1));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SessionError::Conflict`] when every attempt lost a race;
    /// [`SessionError::SessionEnded`] when the session ended meanwhile
    /// (nothing is written); [`SessionError::Serialization`] when the stored
    /// value is not a `T`; [`SessionError::Store`].
    pub async fn update_value<T, F>(
        &self,
        session: &mut Session,
        key: &str,
        mut f: F,
    ) -> Result<Option<T>, SessionError>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> Option<T>,
    {
        for attempt in 0..UPDATE_RETRY.max_attempts() {
            if session.state == State::Deleted {
                return Err(SessionError::SessionEnded);
            }
            let next = f(session.get::<T>(key)?);
            match &next {
                Some(v) => session.insert(key, v)?,
                None => {
                    session.remove(key);
                }
            }
            match self.try_write(session).await? {
                Write::Done => return Ok(next),
                Write::Gone => {
                    self.mark_gone(session);
                    return Err(SessionError::SessionEnded);
                }
                Write::Conflict => {
                    session.changes.remove(&Field::Data(key.to_owned()));
                    if !self.refresh(session).await? {
                        self.mark_gone(session);
                        return Err(SessionError::SessionEnded);
                    }
                    UPDATE_RETRY.backoff(attempt).await;
                }
            }
        }
        Err(SessionError::Conflict)
    }

    async fn touch(&self, session: &mut Session) -> Result<CommitOutcome, SessionError> {
        if !session.touch_due {
            return Ok(CommitOutcome::Unchanged);
        }
        let now = self.now();
        let idle = self.idle_deadline(now, session.absolute_deadline);
        match self.inner.store.touch(&session.key, now, idle).await {
            Ok(()) => {
                session.last_access = now;
                session.idle_deadline = idle;
                session.touch_due = false;
                Ok(CommitOutcome::Touched)
            }
            Err(StoreError::NotFound) => Ok(self.mark_gone(session)),
            Err(e) => Err(e.into()),
        }
    }

    fn idle_deadline(&self, now: Timestamp, absolute: Timestamp) -> Timestamp {
        now.saturating_add(self.inner.config.idle_timeout)
            .min(absolute)
    }

    fn mark_gone(&self, session: &mut Session) -> CommitOutcome {
        session.state = State::Deleted;
        session.changes.clear();
        CommitOutcome::Gone
    }

    /// One write attempt of the session as it stands.
    async fn try_write(&self, session: &mut Session) -> Result<Write, SessionError> {
        let now = self.now();
        session.last_access = now;
        session.idle_deadline = self.idle_deadline(now, session.absolute_deadline);
        match session.state {
            State::Deleted => Ok(Write::Gone),
            State::New => {
                self.create(session).await?;
                self.audit("created", &session.key, session.user_id.as_deref());
                Ok(Write::Done)
            }
            State::Stored(version) => {
                // Wraps at the end of the range: a version only has to differ.
                let next = version.wrapping_add(1);
                let record = session.to_record(next)?;
                match self
                    .inner
                    .store
                    .update(&session.key, version, &record)
                    .await
                {
                    Ok(()) => {
                        session.state = State::Stored(next);
                        session.changes.clear();
                        session.touch_due = false;
                        Ok(Write::Done)
                    }
                    Err(StoreError::Conflict) => Ok(Write::Conflict),
                    Err(StoreError::NotFound) => Ok(Write::Gone),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Stores the session under its (new) key as version 1, drawing a new ID
    /// in the astronomically unlikely case that the key is taken.
    async fn create(&self, session: &mut Session) -> Result<(), SessionError> {
        let record = session.to_record(1)?;
        for _ in 0..3 {
            match self.inner.store.create(&session.key, &record).await {
                Ok(()) => {
                    session.state = State::Stored(1);
                    session.changes.clear();
                    session.touch_due = false;
                    session.id_changed = true;
                    return Ok(());
                }
                Err(StoreError::AlreadyExists) => {
                    session.id = SessionId::generate();
                    session.key = self.storage_key(&session.id);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::AlreadyExists.into())
    }

    /// Reloads the stored record and re-applies pending changes on top.
    /// Returns `false` if the session is gone.
    async fn refresh(&self, session: &mut Session) -> Result<bool, SessionError> {
        let Some(record) = self.load_record(&session.key, self.now()).await? else {
            return Ok(false);
        };
        let Some(payload) = self.decode(&session.key, &record) else {
            return Ok(false);
        };
        session.rebase(payload);
        session.state = State::Stored(record.version);
        session.last_access = record.last_access;
        session.idle_deadline = record.idle_deadline;
        session.absolute_deadline = record.absolute_deadline;
        Ok(true)
    }

    /// Gives the session a new ID; the old ID stops working at once. Data,
    /// user and deadlines carry over (the idle deadline restarts, as on any
    /// use). Use after any privilege change.
    ///
    /// A stored session moves in one store call
    /// ([`SessionStore::create_with`] with [`CreateOptions::replacing`]), so
    /// a logout, eviction or expiry that wins the race is never undone: the
    /// rotation then fails with [`SessionError::SessionEnded`]. A session
    /// not stored yet only draws a new ID.
    ///
    /// # Errors
    ///
    /// [`SessionError::SessionEnded`] if the session is no longer live (it is
    /// then marked deleted); [`SessionError::Conflict`] if it keeps changing
    /// under us beyond the conflict policy; [`SessionError::Store`]. On
    /// every error the session keeps its ID, and no new cookie is due.
    pub async fn rotate(&self, session: &mut Session) -> Result<(), SessionError> {
        let old = session.key.clone();
        match session.state {
            State::Deleted => return Err(SessionError::SessionEnded),
            State::New => {
                session.id = SessionId::generate();
                session.key = self.storage_key(&session.id);
                session.id_changed = true;
                return Ok(());
            }
            State::Stored(_) => {}
        }
        self.move_to_new_id(session, None, |_| {}).await?;
        self.audit_rotated(&old, &session.key, session.user_id.as_deref());
        Ok(())
    }

    /// Stores the session under a fresh ID in one store call, retiring the
    /// stored one (if any) and applying `limit`. `prepare` is applied before
    /// every attempt (again after a conflict reloaded the session). On
    /// error the session's ID and state are as before.
    async fn move_to_new_id(
        &self,
        session: &mut Session,
        limit: Option<UserSessionLimit>,
        prepare: impl Fn(&mut Session),
    ) -> Result<Created, SessionError> {
        let retry = self.inner.config.conflict.retry_policy();
        let (mut conflicts, mut collisions) = (0, 0);
        loop {
            prepare(session);
            let replaces = match session.state {
                State::Deleted => return Err(SessionError::SessionEnded),
                State::New => None,
                State::Stored(version) => Some((session.key.clone(), version)),
            };
            let id = SessionId::generate();
            let key = self.storage_key(&id);
            let now = self.now();
            let idle = self.idle_deadline(now, session.absolute_deadline);
            let mut record = session.to_record(1)?;
            record.last_access = now;
            record.idle_deadline = idle;
            let options = CreateOptions {
                replaces: replaces.map(|(key, version)| Replaces { key, version }),
                limit,
            };
            match self.inner.store.create_with(&key, &record, &options).await {
                Ok(created) => {
                    session.id = id;
                    session.key = key;
                    session.state = State::Stored(1);
                    session.changes.clear();
                    session.touch_due = false;
                    session.id_changed = true;
                    session.last_access = now;
                    session.idle_deadline = idle;
                    return Ok(created);
                }
                Err(StoreError::AlreadyExists) if collisions < 3 => collisions += 1,
                Err(StoreError::NotFound) => {
                    self.mark_gone(session);
                    return Err(SessionError::SessionEnded);
                }
                Err(StoreError::Conflict) => {
                    conflicts += 1;
                    if !retry.allows_another(conflicts) {
                        return Err(SessionError::Conflict);
                    }
                    if !self.refresh(session).await? {
                        self.mark_gone(session);
                        return Err(SessionError::SessionEnded);
                    }
                }
                Err(StoreError::UserLimitReached { max }) => {
                    return Err(SessionError::TooManySessions { max });
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Logs the session in as `user_id`: applies the per-user limit, gives
    /// the session a fresh ID whatever it was before (no fixation), binds the
    /// user, restarts the absolute lifetime and drops outstanding one-time
    /// tokens. Data stored before login carries over (an anonymous cart, say),
    /// except when the session belonged to another user: that session is
    /// ended and the login starts from an empty one.
    ///
    /// The limit, the move to the new ID and any eviction are one store
    /// call ([`SessionStore::create_with`]), so concurrent logins of one
    /// user never exceed a [`LimitStrategy::RejectNew`](crate::LimitStrategy::RejectNew) limit, and under
    /// [`LimitStrategy::EvictOldest`](crate::LimitStrategy::EvictOldest) exactly the newest `max` sessions
    /// survive (see [`newest_first`](crate::store::newest_first); a login
    /// that lost that race succeeds but its session is already evicted, as
    /// if a newer login had come right after it).
    ///
    /// # Errors
    ///
    /// [`SessionError::TooManySessions`] under
    /// [`LimitStrategy::RejectNew`](crate::LimitStrategy::RejectNew); [`SessionError::SessionEnded`] if the
    /// stored session this login would carry over ended meanwhile;
    /// [`SessionError::Conflict`]; [`SessionError::Store`]. On every error
    /// the session is left as it was (or marked deleted if it ended), and no
    /// new cookie is due.
    pub async fn login(&self, session: &mut Session, user_id: &str) -> Result<(), SessionError> {
        self.login_with(session, user_id, LoginOptions::default())
            .await
    }

    /// [`SessionManager::login`] with options: a label for the session (a
    /// device name, see [`LoginOptions`] and [`crate::label`]), stored in
    /// the same store call that logs it in, so the session is never listed
    /// without it.
    ///
    /// The label is checked before anything else happens, and a refused
    /// one ends nothing, writes nothing and leaves the session as it was.
    ///
    /// # Errors
    ///
    /// [`SessionError::InvalidLabel`] for a label that breaks the rules of
    /// [`crate::label`]; otherwise as [`SessionManager::login`].
    pub async fn login_with(
        &self,
        session: &mut Session,
        user_id: &str,
        options: LoginOptions,
    ) -> Result<(), SessionError> {
        if let Some(label) = &options.label {
            crate::label::validate_label(label)?;
        }
        // A session that ended, or another user's (a shared computer: that
        // session ends, nothing of it carries over), is replaced by a fresh
        // one under a fresh ID, so its old ID can never be stored again,
        // even if this login then fails.
        if session.state == State::Deleted {
            *session = self.start();
        }
        if session.user_id.as_deref().is_some_and(|u| u != user_id) {
            if matches!(session.state, State::Stored(_)) {
                self.inner.store.delete(&session.key).await?;
                self.audit("logged_out", &session.key, session.user_id.as_deref());
            }
            *session = self.start();
        }
        let before = (
            session.user_id.clone(),
            session.label.clone(),
            session.created_at,
            session.absolute_deadline,
            session.payload.clone(),
            session.changes.clone(),
        );
        let now = self.now();
        let absolute = now.saturating_add(self.inner.config.absolute_timeout);
        let prepare = |s: &mut Session| {
            s.user_id = Some(user_id.to_owned());
            if let Some(label) = &options.label {
                s.label = Some(label.clone());
            }
            s.created_at = now;
            s.absolute_deadline = absolute;
            let purposes: Vec<String> = s.payload.tokens.iter().map(|(p, _)| p.clone()).collect();
            for purpose in purposes {
                s.set_token(&purpose, None);
            }
        };
        let limit = self.inner.config.user_limit;
        match self.move_to_new_id(session, limit, prepare).await {
            Ok(created) => {
                self.audit("logged_in", &session.key, Some(user_id));
                for victim in &created.evicted {
                    self.audit("evicted", victim, Some(user_id));
                }
                Ok(())
            }
            Err(e) => {
                if matches!(e, SessionError::TooManySessions { .. }) {
                    self.audit("login_rejected", &session.key, Some(user_id));
                }
                if session.state != State::Deleted {
                    let (user, label, created, absolute, payload, changes) = before;
                    session.user_id = user;
                    session.label = label;
                    session.created_at = created;
                    session.absolute_deadline = absolute;
                    session.payload = payload;
                    session.changes = changes;
                }
                Err(e)
            }
        }
    }

    /// Ends the session on the server. For the rest of the request the
    /// handle reads as a new, empty anonymous session (no user, no data),
    /// stored only if something is written to it (a flash message, say);
    /// [`SessionManager::response_cookie`] then gives the removal cookie,
    /// or that new session's cookie if it was stored.
    ///
    /// Deleting follows rotations ([`SessionStore::delete`]), so a logout
    /// that raced a rotation of the same session still ends it.
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`]; the session is then unchanged.
    pub async fn logout(&self, session: &mut Session) -> Result<(), SessionError> {
        if matches!(session.state, State::Stored(_)) {
            self.inner.store.delete(&session.key).await?;
            self.audit("logged_out", &session.key, session.user_id.as_deref());
        }
        self.restart_anonymous(session);
        Ok(())
    }

    /// Replaces the handle's session with a fresh anonymous one after a
    /// logout in this request.
    fn restart_anonymous(&self, session: &mut Session) {
        *session = Session {
            logged_out: true,
            ..self.start()
        };
    }

    /// Ends every session of the session's user, this one included; returns
    /// how many were ended. The handle then reads as after
    /// [`SessionManager::logout`].
    ///
    /// # Errors
    ///
    /// [`SessionError::NotLoggedIn`] for an anonymous session;
    /// [`SessionError::Store`].
    pub async fn logout_everywhere(&self, session: &mut Session) -> Result<u64, SessionError> {
        let user = session.user_id.clone().ok_or(SessionError::NotLoggedIn)?;
        let n = self.logout_user(&user).await?;
        // The index may lag on some backends; make sure this one is gone.
        self.inner.store.delete(&session.key).await?;
        self.restart_anonymous(session);
        Ok(n)
    }

    /// Ends every session of `user_id` (an administrator's "sign out
    /// everywhere"); returns how many were ended.
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`].
    pub async fn logout_user(&self, user_id: &str) -> Result<u64, SessionError> {
        let n = self.inner.store.delete_user(user_id).await?;
        if tracing::enabled!(target: AUDIT, Level::INFO) {
            tracing::info!(target: AUDIT, event = "logged_out_everywhere", user = user_id, sessions = n);
        }
        Ok(n)
    }

    /// Ends one session by its storage key, **without any owner check**:
    /// for administrators and internal clean-up. Idempotent.
    ///
    /// A "sign out that device" button fed from
    /// [`SessionManager::list_sessions_for`] must use
    /// [`SessionManager::end_user_session`] instead, which ends the session
    /// only if it belongs to the requesting user: the key comes back from
    /// the client and can name anyone's session.
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`].
    pub async fn end_session(&self, key: &StorageKey) -> Result<(), SessionError> {
        self.inner.store.delete(key).await?;
        self.audit("ended", key, None);
        Ok(())
    }

    /// Ends the session stored under `key` if, and only if, it is a live
    /// session of the user `session` is logged in as: the "sign out that
    /// device" of a session list (keys from
    /// [`SessionManager::list_sessions_for`], sent back by the client).
    ///
    /// The target's owner is read from its own record (its `user_id`, fixed
    /// when the record was created), so the check needs no index and one
    /// store round trip. `key` may be the caller's own key: that session
    /// then ends like any other (the handle finds it gone at its next
    /// write or touch, and no cookie is sent); call [`SessionManager::logout`] instead to end the
    /// current session with a removal cookie.
    ///
    /// # Under concurrency
    ///
    /// The check (load the target, compare owners) and the delete are two
    /// store calls, and the target may change between them. It can never end
    /// a session of another user, because of what the store contract lets
    /// happen to a key in between:
    ///
    /// - **Rotation or re-login of the target** moves it to a new key;
    ///   [`SessionStore::delete`] of the old key follows the move. A move
    ///   never changes a logged-in record's user: `create_with` refuses to
    ///   replace a record of one user by a record of another
    ///   ([`StoreError::Conflict`]), and a login as *another* user on that
    ///   browser does not move the session but deletes it and starts a new
    ///   one under a fresh ID, which the old key does not lead to. So the
    ///   delete reaches the checked session wherever it moved, or nothing.
    /// - **Logout, eviction or expiry of the target**: the delete finds
    ///   nothing, or a move marker to a session of the same user.
    /// - **Reuse of the key**: keys are one-way hashes of 256-bit random IDs
    ///   and a client-chosen ID is never adopted, so no other session is
    ///   ever stored under a key that once held this one.
    /// - **An anonymous target that logs in** (as any user) is refused: the
    ///   check sees no owner, or, once moved, no live record under `key`.
    ///
    /// The worst a race can do is refuse: a target rotated just before the
    /// check is "not yours" (the client lists the sessions again). The
    /// caller's own logout racing this call does not widen it either: the
    /// target still has to be a session of the caller's user.
    ///
    /// # Errors
    ///
    /// [`SessionError::NotYourSession`] when `session` is not a stored,
    /// logged-in session, or `key` names no live session of its user
    /// (another user's, unknown, ended, rotated away or unreadable: not told
    /// apart); nothing is ended. [`SessionError::Store`].
    pub async fn end_user_session(
        &self,
        session: &Session,
        key: &StorageKey,
    ) -> Result<(), SessionError> {
        let caller = match (&session.state, session.user_id.as_deref()) {
            (State::Stored(_), Some(user)) => user,
            _ => {
                self.audit("end_refused", key, None);
                return Err(SessionError::NotYourSession);
            }
        };
        let now = self.now();
        let owner = match self.inner.store.load(key).await {
            Ok(Some(record)) if !record.is_expired_at(now) => record.user_id,
            Ok(_) | Err(StoreError::Corrupt(_)) => None,
            Err(e) => return Err(e.into()),
        };
        if owner.as_deref() != Some(caller) {
            self.audit("end_refused", key, Some(caller));
            return Err(SessionError::NotYourSession);
        }
        self.inner.store.delete(key).await?;
        self.audit("ended", key, Some(caller));
        Ok(())
    }

    /// The live sessions of the user `session` is logged in as, oldest
    /// first, without IDs, each marked whether it is `session` itself: the
    /// data of a "your devices" page (labels included, see
    /// [`LoginOptions`]). Feed a chosen entry's key to
    /// [`SessionManager::end_user_session`].
    ///
    /// The current session is recognized by its storage key. If another
    /// request rotated it meanwhile, its new key is listed and no entry is
    /// marked current (the next request, with the new cookie, marks it).
    ///
    /// # Errors
    ///
    /// [`SessionError::NotLoggedIn`] when `session` is not a stored,
    /// logged-in session (new, anonymous, logged out or ended);
    /// [`SessionError::Store`].
    pub async fn list_sessions_for(
        &self,
        session: &Session,
    ) -> Result<Vec<ListedSession>, SessionError> {
        let user = match (&session.state, session.user_id.as_deref()) {
            (State::Stored(_), Some(user)) => user,
            _ => return Err(SessionError::NotLoggedIn),
        };
        Ok(self
            .list_user_sessions(user)
            .await?
            .into_iter()
            .map(|summary| {
                let current = summary.key == session.key;
                ListedSession::new(summary, current)
            })
            .collect())
    }

    /// The live sessions of `user_id`, oldest first, without IDs: for
    /// administrators. A user's own listing is
    /// [`SessionManager::list_sessions_for`], which marks the current
    /// session.
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`].
    pub async fn list_user_sessions(
        &self,
        user_id: &str,
    ) -> Result<Vec<SessionSummary>, SessionError> {
        let now = self.now();
        let mut list: Vec<SessionSummary> = self
            .inner
            .store
            .list_user_sessions(user_id)
            .await?
            .into_iter()
            .filter(|s| now < s.expires_at())
            .collect();
        list.sort_by_key(|s| s.created_at);
        Ok(list)
    }

    /// Issues a one-time token for `purpose` (replacing any outstanding one
    /// for the same purpose). It lives for the configured token lifetime,
    /// never beyond the session, and is saved by the next commit.
    pub fn issue_token(&self, session: &mut Session, purpose: &str) -> OneTimeToken {
        let (token, hash) = OneTimeToken::generate();
        let session_end = session.absolute_deadline;
        let expires_at = self
            .now()
            .saturating_add(self.inner.config.token_ttl)
            .min(session_end);
        session.set_token(purpose, Some(TokenEntry { hash, expires_at }));
        token
    }

    /// Verifies `presented` against the token issued for `purpose` in
    /// constant time and consumes it. Returns [`TokenCheck::Accepted`]
    /// exactly once per issued token, even when concurrent requests present it: the
    /// consumption is committed at once with a strict version check.
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`]; [`SessionError::Conflict`] if the session
    /// keeps changing under us ([`UPDATE_MAX_ATTEMPTS`] tries).
    pub async fn consume_token(
        &self,
        session: &mut Session,
        purpose: &str,
        presented: &str,
    ) -> Result<TokenCheck, SessionError> {
        for attempt in 0..UPDATE_RETRY.max_attempts() {
            if attempt > 0 {
                UPDATE_RETRY.backoff(attempt - 1).await;
            }
            let now = self.now();
            let valid = session
                .payload
                .token(purpose)
                .is_some_and(|e| e.accepts(presented, now));
            if !valid {
                return Ok(TokenCheck::Rejected);
            }
            session.set_token(purpose, None);
            match self.try_write(session).await? {
                Write::Done => return Ok(TokenCheck::Accepted),
                Write::Gone => {
                    self.mark_gone(session);
                    return Ok(TokenCheck::Rejected);
                }
                Write::Conflict => {
                    // Forget our removal and look at the latest state: the
                    // other writer may have consumed the token.
                    session.changes.remove(&Field::Token(purpose.to_owned()));
                    if !self.refresh(session).await? {
                        self.mark_gone(session);
                        return Ok(TokenCheck::Rejected);
                    }
                }
            }
        }
        Err(SessionError::Conflict)
    }

    /// The `Set-Cookie` the response needs, if any:
    ///
    /// - the session cookie when a session is stored under an ID the client
    ///   does not have yet (created, rotated, logged in);
    /// - otherwise the removal cookie when this request logged out;
    /// - otherwise nothing. In particular a cookie that names a session that
    ///   no longer exists, was rotated away by another request or ended
    ///   while this one ran is left alone: the client may already hold a
    ///   newer cookie (from a racing login or rotation), which a removal
    ///   would delete. The dead ID itself never loads again.
    ///
    /// It reflects what the store holds, so it is right even when the
    /// request then fails: a login or rotation already made must still reach
    /// the client.
    #[must_use]
    pub fn response_cookie(&self, session: &Session) -> Option<Cookie<'static>> {
        match session.state {
            State::Stored(_) if session.id_changed => {
                let left = session.absolute_deadline.duration_since(self.now());
                Some(self.inner.cookie.session_cookie(&session.id, left))
            }
            _ if session.logged_out => Some(self.inner.cookie.removal_cookie()),
            _ => None,
        }
    }

    fn audit(&self, event: &'static str, key: &StorageKey, user: Option<&str>) {
        if tracing::enabled!(target: AUDIT, Level::INFO) {
            let session = self.inner.audit.tag(key);
            tracing::info!(target: AUDIT, event, %session, user = user.unwrap_or("-"));
        }
    }

    fn audit_rotated(&self, from: &StorageKey, to: &StorageKey, user: Option<&str>) {
        if tracing::enabled!(target: AUDIT, Level::INFO) {
            let a = &self.inner.audit;
            tracing::info!(target: AUDIT, event = "rotated", from = %a.tag(from), session = %a.tag(to), user = user.unwrap_or("-"));
        }
    }
}
