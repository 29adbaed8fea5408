//! The storage contract every backend implements: [`SessionStore`].
//!
//! Stores see [`StorageKey`]s (one-way hashes of session IDs) and
//! [`SessionRecord`]s (opaque bytes plus metadata). They never see a bearer
//! session ID and never interpret the data. The conformance suite
//! (`conformance` feature) checks every rule written here.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::Timestamp;
use crate::key::StorageKey;
use crate::policy::UserSessionLimit;
use crate::record::{SessionRecord, SessionSummary};

/// A boxed error from a backend driver.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong in a store operation.
///
/// Messages never contain session data, keys of live sessions' IDs, or
/// secrets; backends must keep it that way in the errors they wrap: a
/// driver error that may quote a connection URL goes in a
/// [`RedactedError`](crate::redact::RedactedError), and storage keys are
/// printed through their `Display` (a salted tag), never
/// [`StorageKey::as_str`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// `create` found a live record under the key; nothing was written.
    #[error("a session record already exists under this key")]
    AlreadyExists,
    /// `update` was given a version that is no longer current: another writer
    /// saved first. Reload, re-apply the change and retry.
    #[error("the session was changed by another request (stale version)")]
    Conflict,
    /// `update` or `touch` found no live record under the key (never
    /// created, deleted, or expired).
    #[error("no live session record under this key")]
    NotFound,
    /// [`SessionStore::create_with`] under [`LimitStrategy::RejectNew`]: the
    /// user already has `max` live sessions; nothing was written.
    ///
    /// [`LimitStrategy::RejectNew`]: crate::LimitStrategy::RejectNew
    #[error("the user already has the maximum of {max} live sessions")]
    UserLimitReached {
        /// The limit that applied.
        max: usize,
    },
    /// The record is too large for this backend; nothing was written.
    #[error("session record of {size} bytes exceeds this store's limit of {limit} bytes")]
    TooLarge {
        /// Size of the rejected record in bytes.
        size: usize,
        /// The backend's limit in bytes.
        limit: usize,
    },
    /// A stored record could not be decoded or authenticated (truncated,
    /// tampered, written by another deployment). The manager treats it as
    /// "no session".
    #[error("stored session record is unreadable: {0}")]
    Corrupt(String),
    /// The backend could not be reached or did not answer in time. Check that
    /// the server is running and the URL is right; the store reconnects by
    /// itself.
    ///
    /// When the store's operation timeout ran out, the source is a
    /// [`TimedOut`] (see [`StoreError::is_timeout`]); otherwise it is the
    /// backend's own error.
    #[error("session store unavailable")]
    Unavailable(#[source] BoxError),
    /// The backend answered with an error.
    #[error("session store backend error")]
    Backend(#[source] BoxError),
}

impl StoreError {
    /// Wraps a connectivity error.
    pub fn unavailable(e: impl Into<BoxError>) -> Self {
        Self::Unavailable(e.into())
    }

    /// Wraps a backend error.
    pub fn backend(e: impl Into<BoxError>) -> Self {
        Self::Backend(e.into())
    }

    /// [`StoreError::Unavailable`] with a [`TimedOut`] as its source: the
    /// store's `operation` (a short name such as `"load"`) did not finish
    /// within its operation timeout `after`.
    ///
    /// Every backend of this workspace reports its operation timeout this
    /// way; other backends should too, so that callers can tell a timeout
    /// with [`StoreError::is_timeout`] whatever the store.
    ///
    /// ```
    /// use std::time::Duration;
    /// use session_core::StoreError;
    ///
    /// let e = StoreError::timed_out("load", Duration::from_millis(250));
    /// assert!(e.is_timeout());
    /// assert!(matches!(e, StoreError::Unavailable(_)));
    /// ```
    #[must_use]
    pub fn timed_out(operation: &'static str, after: Duration) -> Self {
        Self::Unavailable(Box::new(TimedOut { operation, after }))
    }

    /// Whether this is [`StoreError::Unavailable`] because the store's
    /// operation timeout ran out: its source is a [`TimedOut`].
    ///
    /// Such an operation may still have been applied by the server (a write
    /// that was sent before the time ran out). Other connectivity failures
    /// (a refused or broken connection) are `Unavailable` too, but not
    /// timeouts.
    ///
    /// ```
    /// use std::time::Duration;
    /// use session_core::{StoreError, TimedOut};
    ///
    /// let e = StoreError::timed_out("update", Duration::from_secs(2));
    /// assert!(e.is_timeout());
    /// if let StoreError::Unavailable(source) = &e {
    ///     let t = source.downcast_ref::<TimedOut>().unwrap();
    ///     assert_eq!((t.operation(), t.after()), ("update", Duration::from_secs(2)));
    /// }
    /// let refused = StoreError::unavailable(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
    /// assert!(!refused.is_timeout());
    /// ```
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Unavailable(source) if source.is::<TimedOut>())
    }
}

/// A store operation did not finish within the store's operation timeout.
///
/// The source of a [`StoreError::Unavailable`], made by
/// [`StoreError::timed_out`] and recognized by [`StoreError::is_timeout`];
/// every backend of this workspace reports its operation timeout this way.
/// It holds the operation's name (`"load"`, `"create_with"`, or the
/// backend's request name; static text, never a key or a value) and the
/// timeout that ran out ([`Duration`], as configured on the store).
///
/// Its `Display` is one sentence naming both, with no cause (there is
/// none: the time simply ran out), e.g. `the session store did not answer
/// within 250 ms (operation: load)`. Durations of whole milliseconds are
/// shown in milliseconds, others as [`Duration`]'s `Debug` (`1.5ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the session store did not answer within {} (operation: {operation})", Millis(*.after))]
pub struct TimedOut {
    operation: &'static str,
    after: Duration,
}

impl TimedOut {
    /// The timeout that ran out.
    #[must_use]
    pub fn after(&self) -> Duration {
        self.after
    }

    /// The operation that did not finish: a store method (`"load"`,
    /// `"delete_user"`, ...) or the backend's request name.
    #[must_use]
    pub fn operation(&self) -> &'static str {
        self.operation
    }
}

/// A duration in whole milliseconds when it is one (`250 ms`), else as
/// `Debug` shows it.
struct Millis(Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.subsec_nanos().is_multiple_of(1_000_000) {
            write!(f, "{} ms", self.0.as_millis())
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// The record a [`SessionStore::create_with`] moves to its new key
/// (rotation): its key and the version the caller loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaces {
    /// The key the session moves away from.
    pub key: StorageKey,
    /// The version the caller last saw; any other version is a conflict.
    pub version: u64,
}

/// What else a [`SessionStore::create_with`] does in the same atomic step.
///
/// The default (`CreateOptions::default()`) is a plain insert-only create.
///
/// ```
/// use session_core::store::CreateOptions;
/// use session_core::{LimitStrategy, StorageKey, UserSessionLimit};
/// use std::num::NonZeroUsize;
///
/// let old = StorageKey::from_stored("old-key");
/// let limit = UserSessionLimit { max: NonZeroUsize::new(3).unwrap(), strategy: LimitStrategy::EvictOldest };
/// let options = CreateOptions::default().replacing(old, 4).with_limit(limit);
/// assert_eq!(options.limit, Some(limit));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CreateOptions {
    /// Move the session from this key (rotation): see
    /// [`SessionStore::create_with`].
    pub replaces: Option<Replaces>,
    /// Apply this per-user limit to the new record's user.
    pub limit: Option<UserSessionLimit>,
}

impl CreateOptions {
    /// Also retires the live record under `key`, which must be at `version`.
    #[must_use]
    pub fn replacing(mut self, key: StorageKey, version: u64) -> Self {
        self.replaces = Some(Replaces { key, version });
        self
    }

    /// Also applies `limit` to the new record's user.
    #[must_use]
    pub fn with_limit(mut self, limit: UserSessionLimit) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// What a successful [`SessionStore::create_with`] did besides storing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Created {
    /// Sessions ended to keep the user within an
    /// [`LimitStrategy::EvictOldest`](crate::LimitStrategy::EvictOldest)
    /// limit. It contains the new key itself when the new record was not
    /// among the newest `max` (it was then not stored).
    pub evicted: Vec<StorageKey>,
}

impl Created {
    /// A result with these evictions.
    #[must_use]
    pub fn with_evicted(evicted: Vec<StorageKey>) -> Self {
        Self { evicted }
    }
}

/// The order [`LimitStrategy::EvictOldest`](crate::LimitStrategy::EvictOldest)
/// keeps sessions in: newest first by creation time, ties broken by the
/// larger storage key. Every store and every racing caller computes the same
/// survivors from the same sessions.
#[must_use]
pub fn newest_first(
    a: (Timestamp, &StorageKey),
    b: (Timestamp, &StorageKey),
) -> std::cmp::Ordering {
    b.0.cmp(&a.0).then_with(|| b.1.cmp(a.1))
}

/// A place to keep session records.
///
/// Object-safe: `Arc<dyn SessionStore>` is what the manager holds. All
/// methods take `&self` and must be safe to call concurrently.
///
/// What a store must accept: any storage key made by
/// [`KeyDeriver`](crate::KeyDeriver) (64 lowercase hex characters); any
/// user id that is UTF-8 text without U+0000, up to 1 KiB, with separators,
/// braces, spaces and non-ASCII characters kept exactly (ids that differ in
/// one byte are different users, a prefix of an id is another id); any
/// label ([`SessionRecord::label`]) that is UTF-8 text without U+0000, up
/// to [`MAX_STORED_LABEL_LEN`](crate::label::MAX_STORED_LABEL_LEN) bytes,
/// kept exactly (the empty label is not the absent one); any
/// `u64` version, compared for equality only; any timestamp in the years
/// 1 to 9999 (at millisecond precision); and data of any bytes up to the
/// store's documented size limit.
///
/// # Labels
///
/// A record's label is metadata like its user id: [`SessionStore::load`]
/// and every [`SessionSummary`] of [`SessionStore::list_user_sessions`]
/// return the label the record was created with; [`SessionStore::update`]
/// and [`SessionStore::touch`] keep it; a rotation stores the label of the
/// record it is given (the manager passes the old one on). The manager
/// validates labels before any store call (see [`crate::label`]), so a
/// store need not; a store wrapping another may transform them (the
/// encrypting store seals them) as long as it returns them as given.
///
/// "Live" below means: present and `now < min(idle_deadline,
/// absolute_deadline)`, with "now" as the store sees it (its own clock or its
/// server's). A record that is not live must behave exactly as if absent,
/// whatever the backend's TTL granularity.
///
/// # Concurrency
///
/// Every method is atomic with respect to every other: whatever the
/// interleaving of concurrent calls (from one process or many), the outcome
/// is one some sequential order of those calls would give. The multi-step
/// lifecycle changes of a session (rotation, login under a per-user limit)
/// are one call, [`SessionStore::create_with`], so no request can slip
/// between their steps. Where a backend cannot make a step atomic (a Redis
/// Cluster, whose session and index keys live on different slots), its docs
/// say how it orders the steps; a failure or race there may end a session
/// early or refuse a login, never leave one live that the contract says is
/// not.
///
/// # Moved keys
///
/// After a rotation the old key is *moved*: it never loads, updates,
/// touches or counts again, but [`SessionStore::delete`] of it also deletes
/// where the session moved to (following later moves, at least 64), until the old
/// record's own deadline. So a logout or "end that session" that raced a
/// rotation still ends the session.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Inserts a new record under `key`.
    ///
    /// Insert-only: if a live record exists under `key` this returns
    /// [`StoreError::AlreadyExists`] and leaves it untouched; it never
    /// overwrites. If `record.user_id` is set, the key joins that user's
    /// index in the same operation (or, where the backend cannot do both
    /// atomically, the index entry is written first, so a failure leaves at
    /// most a stale index entry, never an unindexed live session).
    async fn create(&self, key: &StorageKey, record: &SessionRecord) -> StoreResult<()>;

    /// Inserts a new record under `key` as one atomic lifecycle step: a
    /// rotation, a login under a per-user limit, or both.
    ///
    /// With default options this is [`SessionStore::create`]. Otherwise, in
    /// one step that no other call can interleave with:
    ///
    /// 1. **`replaces`** (rotation): the record under `replaces.key` must be
    ///    live at version `replaces.version`, else [`StoreError::NotFound`]
    ///    (missing, expired, deleted, moved) or [`StoreError::Conflict`]
    ///    (another version, or a record of another user than
    ///    `record.user_id`). The old key becomes moved (see the trait docs)
    ///    and leaves its user's index. A record is never live under both
    ///    keys, and a record that was not live is never brought back.
    /// 2. **`key`** must hold no live record, else
    ///    [`StoreError::AlreadyExists`].
    /// 3. **`limit`** (only when `record.user_id` is set): the user's live
    ///    sessions other than the replaced one are counted.
    ///    [`LimitStrategy::RejectNew`](crate::LimitStrategy::RejectNew): at
    ///    `max` or more, [`StoreError::UserLimitReached`].
    ///    [`LimitStrategy::EvictOldest`](crate::LimitStrategy::EvictOldest):
    ///    of those sessions plus the new one, the newest `max` by
    ///    [`newest_first`] stay and the rest are deleted (index entries
    ///    included) and reported in [`Created::evicted`]; the new record is
    ///    not stored if it is not among them.
    ///
    /// On any error nothing is written. When several of the checks above
    /// fail, the store may return the error of any of them. So `n` concurrent logins of one user
    /// with `f` free places under `RejectNew` admit exactly `min(n, f)`; under
    /// `EvictOldest` exactly `max` sessions are live once they finish.
    async fn create_with(
        &self,
        key: &StorageKey,
        record: &SessionRecord,
        options: &CreateOptions,
    ) -> StoreResult<Created>;

    /// Returns the live record under `key`, or `None`.
    ///
    /// Never returns a record whose earlier deadline has passed, even if the
    /// backend has not evicted it yet, nor anything for a moved key.
    async fn load(&self, key: &StorageKey) -> StoreResult<Option<SessionRecord>>;

    /// Replaces the record under `key` if and only if its stored version
    /// equals `expected_version` (compare-and-set).
    ///
    /// `record.version` is the new version and must differ from
    /// `expected_version` (the manager uses `expected_version + 1`, wrapping
    /// at `u64::MAX`). Returns
    /// [`StoreError::Conflict`] if a live record has another version, and
    /// [`StoreError::NotFound`] if there is no live record; in both cases
    /// nothing is written. `record.user_id` must equal the stored one (it is
    /// fixed at creation); stores may ignore a different value.
    async fn update(
        &self,
        key: &StorageKey,
        expected_version: u64,
        record: &SessionRecord,
    ) -> StoreResult<()>;

    /// Moves a live record's idle deadline and last-access time without
    /// rewriting its data or changing its version.
    ///
    /// The caller caps `idle_deadline` at the absolute deadline. Returns
    /// [`StoreError::NotFound`] if there is no live record; touch never
    /// resurrects an expired one.
    async fn touch(
        &self,
        key: &StorageKey,
        last_access: Timestamp,
        idle_deadline: Timestamp,
    ) -> StoreResult<()>;

    /// Deletes the record under `key` and its index entry. Idempotent:
    /// deleting a missing key succeeds. If `key` was moved by a rotation,
    /// the record it moved to is deleted as well (following later moves, at
    /// least 64).
    async fn delete(&self, key: &StorageKey) -> StoreResult<()>;

    /// Lists the live sessions of `user_id`, in no particular order.
    ///
    /// Never includes expired or deleted sessions; stores may prune stale
    /// index entries while listing.
    async fn list_user_sessions(&self, user_id: &str) -> StoreResult<Vec<SessionSummary>>;

    /// Deletes every session of `user_id` and its index; returns how many
    /// live sessions were deleted. After it returns, none of them loads.
    async fn delete_user(&self, user_id: &str) -> StoreResult<u64>;

    /// Removes expired records, for stores without server-side expiry;
    /// returns how many were removed. A no-op returning 0 where the server
    /// expires keys itself.
    async fn delete_expired(&self) -> StoreResult<u64>;
}

macro_rules! forward_store {
    ($($ty:ty),*) => {$(
        #[async_trait]
        impl<S: SessionStore + ?Sized> SessionStore for $ty {
            async fn create(&self, key: &StorageKey, record: &SessionRecord) -> StoreResult<()> {
                (**self).create(key, record).await
            }
            async fn create_with(&self, key: &StorageKey, record: &SessionRecord, options: &CreateOptions) -> StoreResult<Created> {
                (**self).create_with(key, record, options).await
            }
            async fn load(&self, key: &StorageKey) -> StoreResult<Option<SessionRecord>> {
                (**self).load(key).await
            }
            async fn update(&self, key: &StorageKey, expected_version: u64, record: &SessionRecord) -> StoreResult<()> {
                (**self).update(key, expected_version, record).await
            }
            async fn touch(&self, key: &StorageKey, last_access: Timestamp, idle_deadline: Timestamp) -> StoreResult<()> {
                (**self).touch(key, last_access, idle_deadline).await
            }
            async fn delete(&self, key: &StorageKey) -> StoreResult<()> {
                (**self).delete(key).await
            }
            async fn list_user_sessions(&self, user_id: &str) -> StoreResult<Vec<SessionSummary>> {
                (**self).list_user_sessions(user_id).await
            }
            async fn delete_user(&self, user_id: &str) -> StoreResult<u64> {
                (**self).delete_user(user_id).await
            }
            async fn delete_expired(&self) -> StoreResult<u64> {
                (**self).delete_expired().await
            }
        }
    )*};
}

forward_store!(Arc<S>, Box<S>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_is_unavailable_and_says_after_how_long() {
        let e = StoreError::timed_out("load", Duration::from_millis(250));
        assert!(e.is_timeout());
        let StoreError::Unavailable(source) = &e else {
            panic!("{e:?}");
        };
        let t = source
            .downcast_ref::<TimedOut>()
            .expect("a TimedOut source");
        assert_eq!(t.after(), Duration::from_millis(250));
        assert_eq!(t.operation(), "load");
        assert_eq!(
            t.to_string(),
            "the session store did not answer within 250 ms (operation: load)"
        );
        // One sentence, no cause of its own.
        assert!(std::error::Error::source(t).is_none());
        assert_eq!(
            crate::ErrorChain(&e).to_string(),
            "session store unavailable: the session store did not answer within 250 ms (operation: load)"
        );
        let odd = StoreError::timed_out("touch", Duration::from_micros(1_500));
        assert!(odd.to_string().contains("unavailable"));
        assert!(
            crate::ErrorChain(&odd).to_string().contains("within 1.5ms"),
            "{}",
            crate::ErrorChain(&odd)
        );
        assert!(
            crate::ErrorChain(&StoreError::timed_out("x", Duration::from_secs(2)))
                .to_string()
                .contains("within 2000 ms")
        );
    }

    #[test]
    fn other_errors_are_not_timeouts() {
        let io = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert!(!StoreError::unavailable(io).is_timeout());
        let backend = StoreError::backend(TimedOut {
            operation: "load",
            after: Duration::from_secs(1),
        });
        assert!(!backend.is_timeout(), "only Unavailable carries a timeout");
        for e in [
            StoreError::NotFound,
            StoreError::Conflict,
            StoreError::AlreadyExists,
        ] {
            assert!(!e.is_timeout());
        }
    }
}
