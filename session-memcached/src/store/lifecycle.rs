//! The calls that create, move and end sessions: `create_with`, `delete`,
//! `delete_user`, and the index resolution `list_user` shares with them.
//! Why their steps are ordered as they are is in the crate documentation
//! ("Lifecycle changes").

use std::collections::{HashMap, HashSet};

use session_core::store::{newest_first, CreateOptions, Created};
use session_core::{LimitStrategy, SessionRecord, SessionSummary, StorageKey, StoreError};
use session_core::{StoreResult, Timestamp};

use super::MemcachedStore;
use crate::expiry::exptime;
use crate::index::{Entry, Index};
use crate::tombstone::{Marker, Stored};
use crate::transport::{Item, Mode, Outcome};

/// Most moves `delete` follows from one key.
pub(crate) const MAX_MOVES: usize = 64;

/// 64 random bits (creation nonces, backoff jitter).
pub(crate) fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        // No OS randomness: the time still spreads nonces and jitter.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        blake3::hash(&now.as_nanos().to_le_bytes()).as_bytes()[..8]
            .iter()
            .fold(0, |acc, b| (acc << 8) | u64::from(*b))
    })
}

/// What an index entry's session is, as read.
#[derive(Debug, Clone)]
enum Status {
    /// A live record of the index's user, with its CAS token.
    Live(SessionRecord, u64),
    /// No record yet, and the creation that wrote the entry may still
    /// write it.
    Pending,
    /// Nothing that is, or can become, live: the entry may be dropped.
    Dead,
}

impl Status {
    fn alive(&self) -> bool {
        !matches!(self, Self::Dead)
    }
}

/// A user's index with the status of every entry.
struct Resolved {
    index: Index,
    status: Vec<Status>,
}

/// Entries that stand for one session: a pending rotation's new entry and
/// the entry of the key it replaces.
struct Unit {
    members: Vec<usize>,
    created_at: Timestamp,
    key: StorageKey,
}

impl Resolved {
    /// The live or pending sessions, each once.
    fn units(&self) -> Vec<Unit> {
        let mut of: HashMap<&StorageKey, usize> = HashMap::new();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, e) in self.index.entries.iter().enumerate() {
            let linked = of
                .get(&e.key)
                .copied()
                .or_else(|| e.replaces.as_ref().and_then(|r| of.get(r).copied()));
            let g = linked.unwrap_or_else(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(i);
            of.insert(&e.key, g);
            if let Some(r) = &e.replaces {
                of.entry(r).or_insert(g);
            }
        }
        groups
            .into_iter()
            .filter_map(|members| {
                let alive: Vec<usize> = members
                    .iter()
                    .copied()
                    .filter(|&i| self.status[i].alive())
                    .collect();
                // The newest incarnation: a pending entry, else a live one.
                let rep = alive
                    .iter()
                    .copied()
                    .find(|&i| matches!(self.status[i], Status::Pending))
                    .or_else(|| alive.first().copied())?;
                let created_at = match &self.status[rep] {
                    Status::Live(r, _) => r.created_at,
                    _ => self.index.entries[rep].created_at,
                };
                Some(Unit {
                    members: alive,
                    created_at,
                    key: self.index.entries[rep].key.clone(),
                })
            })
            .collect()
    }

    /// Whether `unit` is (a rotation of) the session under `key`.
    fn unit_touches(&self, unit: &Unit, key: &StorageKey) -> bool {
        unit.members.iter().any(|&i| {
            let e = &self.index.entries[i];
            &e.key == key || e.replaces.as_ref() == Some(key)
        })
    }

    /// The entries that are not dead.
    fn kept_entries(&self) -> Vec<Entry> {
        self.index
            .entries
            .iter()
            .zip(&self.status)
            .filter(|(_, s)| s.alive())
            .map(|(e, _)| e.clone())
            .collect()
    }
}

/// What ending a chain of moves found.
#[derive(Debug, Default)]
struct Ending {
    /// A live record was deleted.
    deleted: bool,
    /// A creation was cancelled before it wrote its record.
    cancelled: bool,
    /// Records deleted that were indexed under a user.
    unindex: Vec<(String, StorageKey)>,
}

/// The session a caller means to end: a record of another user, or
/// (before any move) created at another time, is not it.
#[derive(Debug, Clone, Copy)]
struct Owner<'a> {
    user: &'a str,
    created_at: Option<Timestamp>,
}

impl<'a> Owner<'a> {
    fn new(user: &'a str, created_at: Timestamp) -> Self {
        Self {
            user,
            created_at: Some(created_at),
        }
    }

    /// A rotation keeps the user, not necessarily the creation time.
    fn after_move(self) -> Self {
        Self {
            created_at: None,
            ..self
        }
    }

    fn owns(&self, r: &SessionRecord) -> bool {
        r.user_id.as_deref() == Some(self.user) && self.created_at.is_none_or(|t| t == r.created_at)
    }
}

/// What the new key held when a creation read it.
enum Slot {
    /// Nothing.
    Free,
    /// Something dead (expired record, marker) with this CAS token.
    Dead(u64),
    /// This creation's reservation, with its CAS token.
    Reserved(u64),
    /// A marker cancelling this creation.
    Cancelled,
}

impl MemcachedStore {
    /// How often the lifecycle loops on a contended index retry: they are
    /// where many logins of one user meet, so they get a larger budget.
    fn lifecycle_retries(&self) -> u32 {
        self.inner.cas_retries.saturating_mul(4)
    }

    /// Reads the sessions of `index`'s entries and classifies them.
    /// Pending entries older than `index_grace` are cancelled (their
    /// creation can then never write) and count as dead.
    async fn resolve(&self, user: &str, index: Index) -> StoreResult<Resolved> {
        let keys = index
            .entries
            .iter()
            .map(|e| self.inner.keys.session(&e.key))
            .collect();
        let items = self.t().get_many(keys).await?;
        let now = Timestamp::now();
        let mut status = Vec::with_capacity(items.len());
        for (e, item) in index.entries.iter().zip(items) {
            // The entry's own creation holding its key has not written yet.
            let item = item.filter(|item| !is_reserved_by(item, e.nonce, now));
            let s = match item {
                Some(item) => self.classify(user, &item, now),
                None if now >= e.first_expiry || now >= e.absolute_deadline => Status::Dead,
                None if e.added.saturating_add(self.inner.index_grace) > now => Status::Pending,
                None => {
                    // Overdue: make sure it never appears, then forget it.
                    let cancel = Some((e.nonce, e.first_expiry));
                    self.end_chain(&e.key, None, cancel, None).await?;
                    match self.t().get(self.inner.keys.session(&e.key)).await? {
                        Some(item) => self.classify(user, &item, Timestamp::now()),
                        None => Status::Dead,
                    }
                }
            };
            status.push(s);
        }
        Ok(Resolved { index, status })
    }

    fn classify(&self, user: &str, item: &Item, now: Timestamp) -> Status {
        match Stored::decode(&item.value) {
            Ok(stored) => match stored.live(now) {
                Some(r) if r.user_id.as_deref() == Some(user) => Status::Live(r, item.cas),
                _ => Status::Dead,
            },
            Err(_) => Status::Dead,
        }
    }

    /// Ends whatever session lives under `key`, following moves.
    ///
    /// `known` is what the caller already read there (`Some(None)`:
    /// absent). `cancel` is the creation to cancel if the key holds no
    /// record yet: its nonce and until when it could write. `owner`, when
    /// the caller ends a session it found in a user's index, is that
    /// session: a record of another user, or created at another time,
    /// under `key` is not it (the key was ended and written again since)
    /// and is left alone; after a move only the user is compared. Records
    /// are ended only with the CAS token they were read with, so a
    /// rotation that moves one meanwhile is seen and followed, and they are
    /// replaced with an `Ended` marker rather than deleted, so that no
    /// index entry of theirs ever looks like a creation still to write.
    async fn end_chain(
        &self,
        key: &StorageKey,
        mut known: Option<Option<Item>>,
        mut cancel: Option<(u64, Timestamp)>,
        mut owner: Option<Owner<'_>>,
    ) -> StoreResult<Ending> {
        let mut ending = Ending::default();
        let mut key = key.clone();
        'hops: for _ in 0..MAX_MOVES {
            self.inner.recent.forget(&key);
            let skey = self.inner.keys.session(&key);
            for attempt in 0..self.lifecycle_retries() {
                let now = Timestamp::now();
                let item = match known.take() {
                    Some(item) => item,
                    None => self.t().get(skey.clone()).await?,
                };
                let ended_marker = |nonce, until| Marker::Ended { nonce, until }.encode();
                let Some(item) = item else {
                    let Some((nonce, until)) = cancel.filter(|(_, until)| now < *until) else {
                        return Ok(ending);
                    };
                    let value = ended_marker(nonce, until);
                    match self
                        .t()
                        .store(skey.clone(), value, exptime(until, now), Mode::Add)
                        .await?
                    {
                        Outcome::Applied => {
                            ending.cancelled = true;
                            return Ok(ending);
                        }
                        _ => continue,
                    }
                };
                let stored = match Stored::decode(&item.value) {
                    Ok(s) => s,
                    Err(_) => {
                        // Unreadable: deleted all the same.
                        self.t().delete(skey.clone(), None).await?;
                        return Ok(ending);
                    }
                };
                match stored {
                    Stored::Record(r) if owner.is_some_and(|o| !o.owns(&r)) => {
                        // Not the session the caller meant to end.
                        return Ok(ending);
                    }
                    Stored::Record(r) if !r.is_expired_at(now) || cancel.is_none() => {
                        let until = r.expires_at();
                        let value = ended_marker(random_u64(), until);
                        match self
                            .t()
                            .store(
                                skey.clone(),
                                value,
                                exptime(until, now),
                                Mode::Cas(item.cas),
                            )
                            .await?
                        {
                            Outcome::Applied => {
                                ending.deleted = !r.is_expired_at(now);
                                if let Some(u) = r.user_id {
                                    ending.unindex.push((u, key.clone()));
                                }
                                return Ok(ending);
                            }
                            Outcome::NotFound => known = Some(None),
                            _ => Self::backoff(attempt).await,
                        }
                    }
                    Stored::Marker(Marker::Moved {
                        to,
                        nonce,
                        until,
                        to_expires,
                    }) => {
                        if now >= until {
                            return Ok(ending);
                        }
                        key = to;
                        cancel = Some((nonce, to_expires));
                        owner = owner.map(Owner::after_move);
                        continue 'hops;
                    }
                    Stored::Marker(Marker::Ended { nonce, .. })
                        if cancel.is_none_or(|(c, _)| c == nonce) =>
                    {
                        return Ok(ending);
                    }
                    // A dead record, someone else's cancellation or the
                    // reservation of the creation to cancel: cancel it.
                    // (Another creation's reservation is left alone.)
                    stored => {
                        let Some((nonce, until)) = cancel.filter(|(_, until)| now < *until) else {
                            return Ok(ending);
                        };
                        if stored.reserved_by(now).is_some_and(|n| n != nonce) {
                            return Ok(ending);
                        }
                        let value = ended_marker(nonce, until);
                        let exp = exptime(until, now);
                        match self
                            .t()
                            .store(skey.clone(), value, exp, Mode::Cas(item.cas))
                            .await?
                        {
                            Outcome::Applied => {
                                ending.cancelled = true;
                                return Ok(ending);
                            }
                            _ => Self::backoff(attempt).await,
                        }
                    }
                }
            }
            return Err(self.contended("ending the session"));
        }
        Ok(ending)
    }

    /// `delete`: ends the session under `key` and wherever it moved.
    pub(super) async fn lifecycle_delete(&self, key: &StorageKey) -> StoreResult<()> {
        let ending = self.end_chain(key, None, None, None).await?;
        for (user, k) in ending.unindex {
            self.index_remove(&user, |e| e.key == k).await?;
        }
        Ok(())
    }

    /// `list_user`: the live sessions; dead entries are pruned.
    pub(super) async fn lifecycle_list(&self, user: &str) -> StoreResult<Vec<SessionSummary>> {
        let Some(item) = self.t().get(self.inner.keys.user(user)).await? else {
            return Ok(Vec::new());
        };
        let resolved = self.resolve(user, Index::decode(&item.value)?).await?;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut dead = Vec::new();
        for (e, s) in resolved.index.entries.iter().zip(&resolved.status) {
            match s {
                Status::Live(r, _) if seen.insert(e.key.clone()) => out.push(r.summary(&e.key)),
                Status::Dead => dead.push(e.clone()),
                _ => {}
            }
        }
        if !dead.is_empty() {
            // Best effort: listing succeeds even if pruning loses a race.
            if let Err(e) = self.index_remove(user, |e| dead.contains(e)).await {
                tracing::debug!(target: "session_memcached", error = %e, "index pruning deferred");
            }
        }
        Ok(out)
    }

    /// `delete_user`: ends every session the index holds (cancelling
    /// creations that have not written yet), then drops the index if no
    /// login changed it meanwhile, else goes round again.
    pub(super) async fn lifecycle_delete_user(&self, user: &str) -> StoreResult<u64> {
        let ikey = self.inner.keys.user(user);
        let mut counted: HashSet<StorageKey> = HashSet::new();
        let mut deleted = 0;
        for attempt in 0..self.lifecycle_retries() {
            let Some(item) = self.t().get(ikey.clone()).await? else {
                return Ok(deleted);
            };
            let resolved = self.resolve(user, Index::decode(&item.value)?).await?;
            let entries = &resolved.index.entries;
            let live: Vec<(usize, &SessionRecord, u64)> = resolved
                .status
                .iter()
                .enumerate()
                .filter_map(|(i, s)| match s {
                    Status::Live(r, cas) => Some((i, r, *cas)),
                    _ => None,
                })
                .collect();
            // Each live record becomes an `Ended` marker, on the token it
            // was read with.
            let now = Timestamp::now();
            let ends = live
                .iter()
                .map(|&(i, r, cas)| {
                    let until = r.expires_at();
                    let marker = Marker::Ended {
                        nonce: random_u64(),
                        until,
                    };
                    (
                        self.inner.keys.session(&entries[i].key),
                        marker.encode(),
                        exptime(until, now),
                        Mode::Cas(cas),
                    )
                })
                .collect();
            let outcomes = self.t().store_many(ends).await?;
            let mut ended = vec![false; entries.len()];
            for (&(i, r, _), outcome) in live.iter().zip(outcomes) {
                self.inner.recent.forget(&entries[i].key);
                ended[i] = if outcome == Outcome::Applied {
                    true
                } else {
                    // Changed since read (moved, say): follow it, ending
                    // only this session, not a later one under its key.
                    let owner = Owner::new(user, r.created_at);
                    let ending = self
                        .end_chain(&entries[i].key, None, None, Some(owner))
                        .await?;
                    ending.deleted || ending.cancelled
                };
            }
            for (i, e) in entries.iter().enumerate() {
                if matches!(resolved.status[i], Status::Pending) {
                    let cancel = Some((e.nonce, e.first_expiry));
                    let owner = Owner::new(user, e.created_at);
                    let ending = self.end_chain(&e.key, None, cancel, Some(owner)).await?;
                    // A cancelled creation counts only as the continuation
                    // of a session rotated from a live one.
                    ended[i] = ending.deleted || (ending.cancelled && e.replaces.is_some());
                }
            }
            for (i, e) in entries.iter().enumerate() {
                if !ended[i] {
                    continue;
                }
                let fresh = !counted.contains(&e.key)
                    && e.replaces.as_ref().is_none_or(|r| !counted.contains(r));
                deleted += u64::from(fresh);
                counted.insert(e.key.clone());
                if let Some(r) = &e.replaces {
                    counted.insert(r.clone());
                }
            }
            // Drop the index only if no login added to it meanwhile;
            // otherwise go round again for the newcomers.
            match self.t().delete(ikey.clone(), Some(item.cas)).await? {
                Outcome::Applied | Outcome::NotFound => return Ok(deleted),
                _ => Self::backoff(attempt).await,
            }
        }
        Err(self.contended("deleting the user's sessions"))
    }

    /// `create_with`; see the crate documentation for the order of steps.
    pub(super) async fn lifecycle_create(
        &self,
        key: &StorageKey,
        record: &SessionRecord,
        options: &CreateOptions,
    ) -> StoreResult<Created> {
        let value = record.encode();
        self.check_size(value.len())?;
        let user = record.user_id.as_deref();
        if user.is_none() && options.replaces.is_none() {
            self.insert(key, record, value).await?;
            return Ok(Created::default());
        }
        let nonce = random_u64();

        // 1. Read the old key, the new key and the index at once.
        let mut keys = vec![self.inner.keys.session(key)];
        if let Some(r) = &options.replaces {
            keys.push(self.inner.keys.session(&r.key));
        }
        if let Some(u) = user {
            keys.push(self.inner.keys.user(u));
        }
        let mut items = self.t().get_many(keys).await?.into_iter();
        let new_item = items.next().flatten();
        let old_item = options
            .replaces
            .as_ref()
            .and_then(|_| items.next().flatten());
        let mut index_item = user.and_then(|_| items.next().flatten());
        let now = Timestamp::now();

        // 2. The checks, in the contract's order.
        let old = match &options.replaces {
            None => None,
            Some(r) => {
                let item = old_item.ok_or(StoreError::NotFound)?;
                let current = Stored::decode(&item.value)?
                    .live(now)
                    .ok_or(StoreError::NotFound)?;
                check_replaceable(&current, r.version, user)?;
                Some((r.key.clone(), current, item.cas))
            }
        };
        let old_indexed = old.as_ref().is_some_and(|(_, r, _)| r.user_id.is_some());
        // A creation holding the key is waited for: it becomes a record
        // (taken) or goes away (free).
        let new_item = self.settle(key, new_item).await?;
        let mut slot = match &new_item {
            None => Slot::Free,
            Some(item) => match Stored::decode(&item.value) {
                Ok(s) if s.clone().live(now).is_some() || s.reserved_by(now).is_some() => {
                    return Err(StoreError::AlreadyExists)
                }
                Ok(_) | Err(_) => Slot::Dead(item.cas),
            },
        };

        // 3. The decision, committed by a CAS on the user's index.
        let mut evicted = Vec::new();
        let mut victims: Vec<(Entry, Status)> = Vec::new();
        let mut stays = true;
        let mut indexed = false;
        if let Some(u) = user {
            let ikey = self.inner.keys.user(u);
            let mut attempt = 0;
            loop {
                if attempt >= self.lifecycle_retries() {
                    return Err(self.contended("deciding the login"));
                }
                let (index, mode) = match index_item.take() {
                    Some(item) => (Index::decode(&item.value)?, Mode::Cas(item.cas)),
                    None => (Index::default(), Mode::Add),
                };
                let now = Timestamp::now();
                let limit = options.limit;
                let mut entries;
                victims.clear();
                evicted.clear();
                stays = true;
                if let Some(limit) = limit {
                    let resolved = self.resolve(u, index).await?;
                    let replaced = options.replaces.as_ref().map(|r| &r.key);
                    let mut others: Vec<Unit> = resolved
                        .units()
                        .into_iter()
                        .filter(|unit| {
                            !resolved.unit_touches(unit, key)
                                && replaced.is_none_or(|o| !resolved.unit_touches(unit, o))
                        })
                        .collect();
                    let max = limit.max.get();
                    match limit.strategy {
                        LimitStrategy::RejectNew if others.len() >= max => {
                            return Err(StoreError::UserLimitReached { max });
                        }
                        LimitStrategy::EvictOldest if others.len() >= max => {
                            others.push(Unit {
                                members: Vec::new(),
                                created_at: record.created_at,
                                key: key.clone(),
                            });
                            others.sort_by(|a, b| {
                                newest_first((a.created_at, &a.key), (b.created_at, &b.key))
                            });
                            for unit in others.split_off(max) {
                                if unit.members.is_empty() {
                                    stays = false;
                                    evicted.push(key.clone());
                                }
                                for i in unit.members {
                                    let e = &resolved.index.entries[i];
                                    evicted.push(e.key.clone());
                                    victims.push((e.clone(), resolved.status[i].clone()));
                                }
                            }
                        }
                        _ => {}
                    }
                    entries = resolved.kept_entries();
                } else {
                    entries = index.entries;
                }
                entries.retain(|e| e.absolute_deadline > now);
                if stays {
                    entries.push(Entry {
                        key: key.clone(),
                        nonce,
                        added: now,
                        created_at: record.created_at,
                        first_expiry: record.expires_at(),
                        absolute_deadline: record.absolute_deadline,
                        replaces: options.replaces.as_ref().map(|r| r.key.clone()),
                    });
                }
                let index = Index { entries };
                let outcome = match (index.last_deadline(), mode) {
                    (None, Mode::Add) => Outcome::Applied,
                    (None, Mode::Cas(cas)) => self.t().delete(ikey.clone(), Some(cas)).await?,
                    (Some(last), mode) => {
                        let value = index.encode();
                        self.check_size(value.len())?;
                        let size = value.len();
                        let exp = exptime(last, now);
                        match self.t().store(ikey.clone(), value, exp, mode).await? {
                            Outcome::TooLarge => return Err(self.too_large(size)),
                            o => o,
                        }
                    }
                };
                if outcome == Outcome::Applied {
                    indexed = stays;
                    break;
                }
                Self::backoff(attempt).await;
                attempt += 1;
                index_item = self.t().get(ikey.clone()).await?;
            }
        }

        // 3b. Hold the new key before changing anything else (moving the
        // old key, ending sessions), so that no other creation can take it
        // meanwhile and leave those changes made by a call that fails.
        if stays && (old.is_some() || !victims.is_empty()) {
            if let Err(e) = self.reserve(key, record, nonce, &mut slot).await {
                if indexed {
                    self.unindex_creation(user, key, nonce).await;
                }
                return Err(e);
            }
        }

        // 4. Retire the old key: a CAS on the token its check read, so a
        // racing update, delete or rotation of it is noticed.
        if let Some((old_key, current, cas)) = old {
            if let Err(e) = self
                .move_away(&old_key, current, cas, key, nonce, record)
                .await
            {
                self.release(key, &slot).await;
                if indexed {
                    self.unindex_creation(user, key, nonce).await;
                }
                return Err(e);
            }
        }

        // 5. End the evicted sessions, then write the new record: a crash
        // in between leaves fewer sessions, never more than the limit.
        for (e, status) in victims {
            let cancel = match status {
                Status::Live(..) => None,
                _ => Some((e.nonce, e.first_expiry)),
            };
            // Only that session: not a later one written under its key.
            let owner = user.map(|u| Owner::new(u, e.created_at));
            // Their entries stay until the next decision or listing prunes
            // them as dead (their keys hold markers now): no extra writes
            // on a contended index.
            self.end_chain(&e.key, None, cancel, owner).await?;
        }
        if stays {
            if let Err(e) = self.write_new(key, record, &value, nonce, &mut slot).await {
                let not_written =
                    matches!(e, StoreError::AlreadyExists | StoreError::TooLarge { .. });
                if indexed && not_written {
                    self.unindex_creation(user, key, nonce).await;
                }
                return Err(e);
            }
        }

        // 6. Tidy the index: the old key's entry is dead now.
        if let (Some(u), Some(r), true) = (user, &options.replaces, indexed && old_indexed) {
            let old_key = r.key.clone();
            let tidy = self
                .index_edit(u, |entries| {
                    let before = entries.len();
                    entries.retain(|e| e.key != old_key);
                    let mut changed = entries.len() != before;
                    for e in entries
                        .iter_mut()
                        .filter(|e| e.nonce == nonce && &e.key == key)
                    {
                        changed |= e.replaces.take().is_some();
                    }
                    changed
                })
                .await;
            if let Err(e) = tidy {
                tracing::debug!(target: "session_memcached", error = %e, "index tidying deferred");
            }
        }
        Ok(Created::with_evicted(evicted))
    }

    /// Turns the old key into a move marker with a CAS on `cas`; retries
    /// while only a touch changed the item.
    async fn move_away(
        &self,
        old_key: &StorageKey,
        mut current: SessionRecord,
        mut cas: u64,
        to: &StorageKey,
        nonce: u64,
        record: &SessionRecord,
    ) -> StoreResult<()> {
        let skey = self.inner.keys.session(old_key);
        let version = current.version;
        for attempt in 0..self.lifecycle_retries() {
            let now = Timestamp::now();
            let until = current.expires_at();
            let marker = Marker::Moved {
                to: to.clone(),
                nonce,
                until,
                to_expires: record.expires_at(),
            };
            let outcome = self
                .t()
                .store(
                    skey.clone(),
                    marker.encode(),
                    exptime(until, now),
                    Mode::Cas(cas),
                )
                .await?;
            self.inner.recent.forget(old_key);
            match outcome {
                // Live when the server applied it, which was before now.
                Outcome::Applied if Timestamp::now() < until => return Ok(()),
                Outcome::Applied => return Err(StoreError::NotFound),
                Outcome::NotFound => return Err(StoreError::NotFound),
                _ => {}
            }
            let Some((stored, item)) = self.read(old_key).await? else {
                return Err(StoreError::NotFound);
            };
            let next = stored.live(Timestamp::now()).ok_or(StoreError::NotFound)?;
            check_replaceable(&next, version, record.user_id.as_deref())?;
            (current, cas) = (next, item.cas);
            Self::backoff(attempt).await;
        }
        Err(self.contended("moving the session"))
    }

    /// Writes the new record of a creation with `nonce`. Succeeds without
    /// writing if the creation was cancelled meanwhile (it then ended
    /// after it happened, as far as anyone can tell).
    async fn write_new(
        &self,
        key: &StorageKey,
        record: &SessionRecord,
        value: &[u8],
        nonce: u64,
        slot: &mut Slot,
    ) -> StoreResult<()> {
        let skey = self.inner.keys.session(key);
        for attempt in 0..self.lifecycle_retries() {
            let now = Timestamp::now();
            let exp = exptime(record.expires_at(), now);
            let mode = match *slot {
                Slot::Free => Mode::Add,
                Slot::Dead(cas) | Slot::Reserved(cas) => Mode::Cas(cas),
                Slot::Cancelled => return Ok(()),
            };
            match self
                .t()
                .store(skey.clone(), value.to_vec(), exp, mode)
                .await?
            {
                Outcome::Applied => return Ok(()),
                Outcome::TooLarge => {
                    self.release(key, slot).await;
                    return Err(self.too_large(value.len()));
                }
                // Only a cancellation replaces a reservation.
                _ if matches!(slot, Slot::Reserved(_)) => return Ok(()),
                _ => {}
            }
            let item = self.t().get(skey.clone()).await?;
            *slot = match self.settle(key, item).await? {
                None => Slot::Free,
                Some(item) => match Stored::decode(&item.value) {
                    Ok(Stored::Marker(Marker::Ended { nonce: n, .. })) if n == nonce => {
                        Slot::Cancelled
                    }
                    Ok(s) if s.clone().live(now).is_some() || s.reserved_by(now).is_some() => {
                        return Err(StoreError::AlreadyExists)
                    }
                    _ => Slot::Dead(item.cas),
                },
            };
            if !matches!(slot, Slot::Cancelled) {
                Self::backoff(attempt).await;
            }
        }
        Err(self.contended("creating the session"))
    }

    /// Holds `key` for the creation with `nonce` with a reservation marker;
    /// `slot` becomes [`Slot::Reserved`] (or [`Slot::Cancelled`] if the
    /// creation was cancelled already).
    ///
    /// # Errors
    ///
    /// [`StoreError::AlreadyExists`] when another creation wrote the key
    /// first (nothing of this creation is written but its index entry).
    async fn reserve(
        &self,
        key: &StorageKey,
        record: &SessionRecord,
        nonce: u64,
        slot: &mut Slot,
    ) -> StoreResult<()> {
        let skey = self.inner.keys.session(key);
        let until = record.expires_at();
        for attempt in 0..self.lifecycle_retries() {
            let now = Timestamp::now();
            let mode = match *slot {
                Slot::Free => Mode::Add,
                Slot::Dead(cas) => Mode::Cas(cas),
                Slot::Reserved(_) | Slot::Cancelled => return Ok(()),
            };
            let marker = Marker::Reserved { nonce, until }.encode();
            let exp = exptime(until, now);
            let item = match self.t().store(skey.clone(), marker, exp, mode).await? {
                Outcome::Applied => match self.t().get(skey.clone()).await? {
                    // The token of what was just written.
                    Some(item) if is_reserved_by(&item, nonce, now) => {
                        *slot = Slot::Reserved(item.cas);
                        return Ok(());
                    }
                    other => other,
                },
                _ => self.t().get(skey.clone()).await?,
            };
            *slot = match self.settle(key, item).await? {
                None => Slot::Free,
                Some(item) => match Stored::decode(&item.value) {
                    Ok(Stored::Marker(Marker::Ended { nonce: n, .. })) if n == nonce => {
                        Slot::Cancelled
                    }
                    Ok(s) if s.clone().live(now).is_some() || s.reserved_by(now).is_some() => {
                        return Err(StoreError::AlreadyExists)
                    }
                    _ => Slot::Dead(item.cas),
                },
            };
            if !matches!(slot, Slot::Cancelled) {
                Self::backoff(attempt).await;
            }
        }
        Err(self.contended("reserving the session key"))
    }

    /// Gives up this creation's reservation of `key`, if it holds one.
    async fn release(&self, key: &StorageKey, slot: &Slot) {
        let Slot::Reserved(cas) = *slot else { return };
        let skey = self.inner.keys.session(key);
        if let Err(e) = self.t().delete(skey, Some(cas)).await {
            // It runs out with the record's deadline, or is cancelled with
            // the creation's index entry after `index_grace`.
            tracing::debug!(target: "session_memcached", error = %e, "reservation release deferred");
        }
    }

    /// Waits while `item` (read under `key`) is another creation's
    /// reservation: it soon becomes a record or goes away. Returns what
    /// the key holds then (still a reservation if it outlasted the wait).
    pub(super) async fn settle(
        &self,
        key: &StorageKey,
        mut item: Option<Item>,
    ) -> StoreResult<Option<Item>> {
        let skey = self.inner.keys.session(key);
        for attempt in 0..self.lifecycle_retries() {
            let reserved = item.as_ref().is_some_and(|item| {
                Stored::decode(&item.value).is_ok_and(|s| s.reserved_by(Timestamp::now()).is_some())
            });
            if !reserved {
                break;
            }
            Self::backoff(attempt).await;
            item = self.t().get(skey.clone()).await?;
        }
        Ok(item)
    }

    /// Takes back the index entry of a creation that failed.
    async fn unindex_creation(&self, user: Option<&str>, key: &StorageKey, nonce: u64) {
        let Some(u) = user else { return };
        if let Err(e) = self
            .index_remove(u, |e| &e.key == key && e.nonce == nonce)
            .await
        {
            // The entry stays pending until `index_grace`, then is cancelled.
            tracing::debug!(target: "session_memcached", error = %e, "index cleanup deferred");
        }
    }

    /// Applies `edit` to `user`'s index (if any) with a CAS; `edit` says
    /// whether it changed anything.
    async fn index_edit(
        &self,
        user: &str,
        edit: impl Fn(&mut Vec<Entry>) -> bool + Send + Sync,
    ) -> StoreResult<()> {
        let ikey = self.inner.keys.user(user);
        for attempt in 0..self.inner.cas_retries {
            let now = Timestamp::now();
            let Some(item) = self.t().get(ikey.clone()).await? else {
                return Ok(());
            };
            let mut index = Index::decode(&item.value)?;
            if !edit(&mut index.entries) {
                return Ok(());
            }
            index.entries.retain(|e| e.absolute_deadline > now);
            let outcome = match index.last_deadline() {
                None => self.t().delete(ikey.clone(), Some(item.cas)).await?,
                Some(last) => {
                    let exp = exptime(last, now);
                    let value = index.encode();
                    self.t()
                        .store(ikey.clone(), value, exp, Mode::Cas(item.cas))
                        .await?
                }
            };
            match outcome {
                Outcome::Applied | Outcome::NotFound => return Ok(()),
                _ => Self::backoff(attempt).await,
            }
        }
        Err(self.contended("changing the user index"))
    }
}

/// Whether `item` is the reservation of the creation with `nonce`.
fn is_reserved_by(item: &Item, nonce: u64, now: Timestamp) -> bool {
    Stored::decode(&item.value).is_ok_and(|s| s.reserved_by(now) == Some(nonce))
}

/// The rotation checks: the version the caller saw, and no change of user
/// (an anonymous record may move into a logged-in one).
fn check_replaceable(current: &SessionRecord, version: u64, user: Option<&str>) -> StoreResult<()> {
    let other_user = current.user_id.is_some() && current.user_id.as_deref() != user;
    if current.version != version || other_user {
        return Err(StoreError::Conflict);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    fn entry(k: &str, created: i64, replaces: Option<&str>) -> Entry {
        Entry {
            key: StorageKey::from_stored(k),
            nonce: 1,
            added: at(0),
            created_at: at(created),
            first_expiry: at(1_000),
            absolute_deadline: at(2_000),
            replaces: replaces.map(StorageKey::from_stored),
        }
    }

    fn live(created: i64) -> Status {
        let r = SessionRecord {
            data: Bytes::new(),
            user_id: Some("u".into()),
            created_at: at(created),
            last_access: at(created),
            idle_deadline: at(1_000),
            absolute_deadline: at(2_000),
            version: 1,
        };
        Status::Live(r, 7)
    }

    #[test]
    fn a_rotation_in_flight_is_one_session_and_dead_entries_none() {
        let resolved = Resolved {
            index: Index {
                entries: vec![
                    entry("old", 5, None),
                    entry("other", 9, None),
                    entry("gone", 1, None),
                    entry("new", 6, Some("old")),
                    entry("login", 8, Some("anon")),
                ],
            },
            status: vec![
                live(5),
                live(9),
                Status::Dead,
                Status::Pending,
                Status::Pending,
            ],
        };
        let units = resolved.units();
        let keys: Vec<&str> = units.iter().map(|u| u.key.as_str()).collect();
        assert_eq!(keys, ["new", "other", "login"]);
        // The rotation counts once, as its newest incarnation.
        assert_eq!(units[0].members, vec![0, 3]);
        assert_eq!(units[0].created_at, at(6));
        let old = StorageKey::from_stored("old");
        let anon = StorageKey::from_stored("anon");
        assert!(resolved.unit_touches(&units[0], &old));
        assert!(resolved.unit_touches(&units[2], &anon));
        assert!(!resolved.unit_touches(&units[1], &old));
        let kept: Vec<String> = resolved
            .kept_entries()
            .into_iter()
            .map(|e| e.key.as_str().to_owned())
            .collect();
        assert_eq!(kept, ["old", "other", "new", "login"]);
    }
}
