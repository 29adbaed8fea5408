//! The calls that create, move and end sessions: `create_with`, `delete`,
//! `delete_user`, and the index resolution `list_user_sessions` shares with them.
//! Why their steps are ordered as they are is in the crate documentation
//! ("Lifecycle changes").

use std::collections::{HashMap, HashSet};

use session_core::store::{newest_first, CreateOptions, Created};
use session_core::{LimitStrategy, SessionRecord, SessionSummary, StorageKey, StoreError};
use session_core::{StoreResult, Timestamp};

use super::MemcachedStore;
use crate::expiry::exptime;
use crate::index::{Entry, Eviction, Index, UserItem};
use crate::tombstone::{Marker, Stored};
use crate::transport::{Item, Mode, Outcome};

/// How long `list_user_sessions` waits for a rotation or an evicting login that
/// has written its index entry to write its record (a few round trips):
/// entries older than this belong to a creation that stopped.
const IN_FLIGHT: std::time::Duration = std::time::Duration::from_secs(2);

/// The least time a reservation holds its key (a creation writes its
/// record within a few round trips; one that stopped is cancelled with
/// its index entry after `index_grace`).
const RESERVATION: std::time::Duration = std::time::Duration::from_secs(30);

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
    /// The login that evicted each entry, if one did: such a session
    /// neither counts nor lists, whatever its record still says.
    evicted_by: Vec<Option<u64>>,
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
            // Only a rotation still in flight links two keys: once its
            // record is written, the old key may be another session's.
            let replaces = e
                .replaces
                .as_ref()
                .filter(|_| matches!(self.status[i], Status::Pending));
            let linked = of
                .get(&e.key)
                .copied()
                .or_else(|| replaces.and_then(|r| of.get(r).copied()));
            let g = linked.unwrap_or_else(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(i);
            of.insert(&e.key, g);
            if let Some(r) = replaces {
                of.entry(r).or_insert(g);
            }
        }
        groups
            .into_iter()
            .filter_map(|members| {
                let alive: Vec<usize> = members
                    .iter()
                    .copied()
                    .filter(|&i| self.status[i].alive() && self.evicted_by[i].is_none())
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
            let in_flight = matches!(self.status[i], Status::Pending);
            &e.key == key || (in_flight && e.replaces.as_ref() == Some(key))
        })
    }

    /// Whether a rotation or a login that evicts is writing its record:
    /// until it has, neither the sessions it ends nor its own list.
    fn in_flight(&self, evicted: &[Eviction], now: Timestamp) -> bool {
        self.index.entries.iter().zip(&self.status).any(|(e, s)| {
            matches!(s, Status::Pending)
                && e.added.saturating_add(IN_FLIGHT) > now
                && (e.replaces.is_some() || evicted.iter().any(|v| v.by == e.nonce))
        })
    }

    /// The entries that are not dead (evicted ones included, until their
    /// sessions are ended).
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
    /// The move markers followed: item key, CAS token, deadline.
    followed: Vec<(String, u64, Timestamp)>,
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
    Dead(u64, Vec<u8>),
    /// This creation's reservation, with its CAS token and what the key
    /// held before (put back if the creation gives the key up).
    Reserved(u64, Option<Vec<u8>>),
    /// Another creation wrote the key after this one indexed it while it
    /// was absent: this one starts again.
    Lost,
    /// A marker cancelling this creation.
    Cancelled,
}

impl MemcachedStore {
    /// How often the lifecycle loops on a contended index retry: they are
    /// where many logins of one user meet, so they get a larger budget.
    fn lifecycle_retries(&self) -> u32 {
        self.inner.cas_retry.max_attempts().saturating_mul(4)
    }

    /// Reads the sessions of `index`'s entries and classifies them.
    /// Pending entries older than `index_grace` are cancelled (their
    /// creation can then never write) and count as dead.
    async fn resolve(&self, user: &str, item: UserItem) -> StoreResult<Resolved> {
        let evicted_by = item
            .index
            .entries
            .iter()
            .map(|e| item.evicted_by(e))
            .collect();
        let index = item.index;
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
        self.recheck_replaced(user, &index, &mut status).await?;
        Ok(Resolved {
            index,
            status,
            evicted_by,
        })
    }

    /// The keys of one index are not read at one instant (several servers,
    /// or one pipeline the server answers key by key), so a rotation can
    /// fall between the reads of its old and its new key: the old record
    /// read before its move (4), the new one after its write (6). Both
    /// look live, and the one session would count and list twice. A
    /// rotation marks the old key moved before it writes the new record,
    /// so reading the old key again, after the read that saw the new
    /// record, sees what the rotation left there: only a record written
    /// again under that key since stays live.
    async fn recheck_replaced(
        &self,
        user: &str,
        index: &Index,
        status: &mut [Status],
    ) -> StoreResult<()> {
        let live_keys: HashMap<&StorageKey, usize> = index
            .entries
            .iter()
            .enumerate()
            .filter(|&(i, _)| matches!(status[i], Status::Live(..)))
            .map(|(i, e)| (&e.key, i))
            .collect();
        let mut again: Vec<usize> = index
            .entries
            .iter()
            .enumerate()
            .filter(|&(i, _)| matches!(status[i], Status::Live(..)))
            .filter_map(|(_, e)| e.replaces.as_ref().and_then(|r| live_keys.get(r).copied()))
            .collect();
        if again.is_empty() {
            return Ok(());
        }
        again.sort_unstable();
        again.dedup();
        let keys = again
            .iter()
            .map(|&j| self.inner.keys.session(&index.entries[j].key))
            .collect();
        let items = self.t().get_many(keys).await?;
        let now = Timestamp::now();
        for (j, item) in again.into_iter().zip(items) {
            status[j] = match item {
                Some(item) => self.classify(user, &item, now),
                None => Status::Dead,
            };
        }
        Ok(())
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
    ///
    /// The move markers it followed are ended too (replaced with `Ended`
    /// markers, on the token they were read with), once the session they
    /// lead to is: the session is gone, so a later `delete` of an old key
    /// follows nothing, even to a record written again under the new key.
    async fn end_chain(
        &self,
        key: &StorageKey,
        known: Option<Option<Item>>,
        cancel: Option<(u64, Timestamp)>,
        owner: Option<Owner<'_>>,
    ) -> StoreResult<Ending> {
        let mut ending = self.follow_chain(key, known, cancel, owner).await?;
        let now = Timestamp::now();
        let ends = std::mem::take(&mut ending.followed)
            .into_iter()
            .map(|(skey, cas, until)| {
                let marker = Marker::Ended {
                    nonce: random_u64(),
                    until,
                };
                (skey, marker.encode(), exptime(until, now), Mode::Cas(cas))
            })
            .collect();
        // A marker written over meanwhile is left as it is.
        self.put_many(ends).await?;
        Ok(ending)
    }

    /// [`end_chain`](Self::end_chain) without ending the markers followed.
    async fn follow_chain(
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
                        .put(skey.clone(), value, exptime(until, now), Mode::Add)
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
                            .put(
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
                            _ => self.backoff(attempt).await,
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
                        ending.followed.push((skey.clone(), item.cas, until));
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
                            .put(skey.clone(), value, exp, Mode::Cas(item.cas))
                            .await?
                        {
                            Outcome::Applied => {
                                ending.cancelled = true;
                                return Ok(ending);
                            }
                            _ => self.backoff(attempt).await,
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
            self.prune_key(&user, &k).await?;
        }
        Ok(())
    }

    /// Drops `user`'s index entries for `key` that are dead, judged on the
    /// index and the key read together: an entry of a creation that wrote
    /// `key` again meanwhile (or is about to) stays.
    async fn prune_key(&self, user: &str, key: &StorageKey) -> StoreResult<()> {
        let ikey = self.inner.keys.user(user);
        let skey = self.inner.keys.session(key);
        for attempt in 0..self.inner.cas_retry.max_attempts() {
            let mut items = self.t().get_many(vec![ikey.clone(), skey.clone()]).await?;
            let (Some(index_item), item) = (items.remove(0), items.remove(0)) else {
                return Ok(());
            };
            let mut user_item = UserItem::decode(&index_item.value)?;
            let now = Timestamp::now();
            let live = item
                .as_ref()
                .is_some_and(|item| matches!(self.classify(user, item, now), Status::Live(..)));
            let before = user_item.index.entries.len();
            user_item.index.entries.retain(|e| {
                let pending = match &item {
                    None => now < e.first_expiry,
                    Some(item) => is_reserved_by(item, e.nonce, now),
                };
                &e.key != key || live || pending
            });
            if user_item.index.entries.len() == before {
                return Ok(());
            }
            let outcome = match user_item.last_deadline() {
                None => self.t().delete(ikey.clone(), Some(index_item.cas)).await?,
                Some(last) => {
                    let value = user_item.encode();
                    let exp = exptime(last, now);
                    self.put(ikey.clone(), value, exp, Mode::Cas(index_item.cas))
                        .await?
                }
            };
            match outcome {
                Outcome::Applied | Outcome::NotFound => return Ok(()),
                _ => self.backoff(attempt).await,
            }
        }
        Err(self.contended("removing from the user index"))
    }

    /// `list_user_sessions`: the live sessions; dead entries are pruned. Waits
    /// while a rotation or an evicting login is between its decision and
    /// its record, so that it lists the sessions before or after it.
    pub(super) async fn lifecycle_list(&self, user: &str) -> StoreResult<Vec<SessionSummary>> {
        let ikey = self.inner.keys.user(user);
        let mut attempt = 0;
        let resolved = loop {
            let Some(index_item) = self.t().get(ikey.clone()).await? else {
                return Ok(Vec::new());
            };
            let item = UserItem::decode(&index_item.value)?;
            if item.closed {
                // `delete_user` has decided: none of these sessions is live.
                return Ok(Vec::new());
            }
            let evicted = item.evicted.clone();
            let resolved = self.resolve(user, item).await?;
            attempt += 1;
            let last = attempt >= self.lifecycle_retries();
            if !last && resolved.in_flight(&evicted, Timestamp::now()) {
                self.backoff(attempt).await;
                continue;
            }
            // The records were read after the index: if no decision (a
            // login's, `delete_user`'s close) changed it meanwhile, none of
            // them ended a session listed here, and the list is of one
            // moment. Otherwise read again.
            let now_item = self.t().get(ikey.clone()).await?;
            if last || now_item.is_some_and(|i| i.cas == index_item.cas) {
                break resolved;
            }
            self.backoff(attempt).await;
        };
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut dead = Vec::new();
        for (i, (e, s)) in resolved
            .index
            .entries
            .iter()
            .zip(&resolved.status)
            .enumerate()
        {
            match s {
                Status::Live(r, _)
                    if resolved.evicted_by[i].is_none() && seen.insert(e.key.clone()) =>
                {
                    out.push(r.summary(&e.key));
                }
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

    /// `delete_user`: closes the user's index (the decision: every session
    /// it lists ends, and the count is made on that version), ends them
    /// (cancelling creations that have not written yet), then drops the
    /// index unless a login has already replaced it.
    pub(super) async fn lifecycle_delete_user(&self, user: &str) -> StoreResult<u64> {
        let ikey = self.inner.keys.user(user);
        let mut deleted: Option<u64> = None;
        for attempt in 0..self.lifecycle_retries() {
            let Some(item) = self.t().get(ikey.clone()).await? else {
                return Ok(deleted.unwrap_or(0));
            };
            let mut user_item = UserItem::decode(&item.value)?;
            let now = Timestamp::now();
            if !user_item.closed {
                if let Some(n) = deleted {
                    // A login helped end them and started a new index.
                    return Ok(n);
                }
                // Counted on the version the close commits on, before
                // anyone acts on the close.
                user_item
                    .index
                    .entries
                    .retain(|e| e.absolute_deadline > now);
                let mut closed = user_item.clone();
                closed.closed = true;
                let resolved = self.resolve(user, user_item).await?;
                let outcome = match closed.last_deadline() {
                    None => self.t().delete(ikey.clone(), Some(item.cas)).await?,
                    Some(last) => {
                        let value = closed.encode();
                        self.put(ikey.clone(), value, exptime(last, now), Mode::Cas(item.cas))
                            .await?
                    }
                };
                match outcome {
                    Outcome::Applied if closed.index.entries.is_empty() => return Ok(0),
                    Outcome::Applied => {}
                    _ => {
                        self.backoff(attempt).await;
                        continue;
                    }
                }
                let count = resolved.units().len();
                deleted = Some(u64::try_from(count).unwrap_or(u64::MAX));
                self.end_all(user, &resolved).await?;
            } else {
                // Closed (by this call or another): make sure all ended.
                let resolved = self.resolve(user, user_item).await?;
                self.end_all(user, &resolved).await?;
                match self.t().delete(ikey.clone(), Some(item.cas)).await? {
                    // Closed by another call: it counts them.
                    Outcome::Applied | Outcome::NotFound => return Ok(deleted.unwrap_or(0)),
                    _ => self.backoff(attempt).await,
                }
            }
        }
        match deleted {
            // Ended and counted; only dropping the closed index lost races.
            Some(n) => Ok(n),
            None => Err(self.contended("deleting the user's sessions")),
        }
    }

    /// Ends every session a closed index lists (evicted ones included) and
    /// cancels every creation it lists that has not written yet. Each
    /// ending applies only to the session the entry stands for.
    async fn end_all(&self, user: &str, resolved: &Resolved) -> StoreResult<()> {
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
        // Each live record becomes an `Ended` marker, on the token it was
        // read with.
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
        let outcomes = self.put_many(ends).await?;
        for (&(i, r, _), outcome) in live.iter().zip(outcomes) {
            self.inner.recent.forget(&entries[i].key);
            if outcome != Outcome::Applied {
                // Changed since read (moved, say): follow it.
                let owner = Owner::new(user, r.created_at);
                self.end_chain(&entries[i].key, None, None, Some(owner))
                    .await?;
            }
        }
        for (i, e) in entries.iter().enumerate() {
            if matches!(resolved.status[i], Status::Pending) {
                let cancel = Some((e.nonce, e.first_expiry));
                let owner = Owner::new(user, e.created_at);
                self.end_chain(&e.key, None, cancel, Some(owner)).await?;
            }
        }
        Ok(())
    }

    /// `create_with`; see the crate documentation for the order of steps.
    pub(super) async fn lifecycle_create(
        &self,
        key: &StorageKey,
        record: &SessionRecord,
        options: &CreateOptions,
    ) -> StoreResult<Created> {
        for attempt in 0..self.inner.cas_retry.max_attempts() {
            if let Some(created) = self.create_once(key, record, options).await? {
                return Ok(created);
            }
            self.backoff(attempt).await;
        }
        Err(self.contended("creating the session"))
    }

    /// One attempt at `create_with`. `None`: another creation wrote the
    /// key (something dead: a record written expired, a marker) after this
    /// one wrote its index entry for an absent key; the entry was taken
    /// back, nothing else was written, and the caller starts again.
    async fn create_once(
        &self,
        key: &StorageKey,
        record: &SessionRecord,
        options: &CreateOptions,
    ) -> StoreResult<Option<Created>> {
        let value = record.encode();
        self.check_size(value.len()).await?;
        let user = record.user_id.as_deref();
        if user.is_none() && options.replaces.is_none() {
            self.insert(key, record, value).await?;
            return Ok(Some(Created::default()));
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
                Ok(_) | Err(_) => Slot::Dead(item.cas, item.value.clone()),
            },
        };

        // 2b. A key that holds something (a marker, an expired record) is
        // held with a reservation before the decision: an index entry is
        // taken for a creation in flight only while its key is absent or
        // reserved by it; anything else there means the entry is dead.
        if matches!(slot, Slot::Dead(..)) {
            self.reserve(key, record, nonce, &mut slot, false).await?;
        }

        // 3. The decision, committed by a CAS on the user's index.
        let mut evicted = Vec::new();
        let mut victims: Vec<(Entry, Status)> = Vec::new();
        let mut stays = true;
        let mut indexed = false;
        let decided: StoreResult<()> = async {
            if let Some(u) = user {
                let ikey = self.inner.keys.user(u);
                let mut attempt = 0;
                loop {
                    if attempt >= self.lifecycle_retries() {
                        return Err(self.contended("deciding the login"));
                    }
                    let (mut current, mode) = match index_item.take() {
                        Some(item) => (UserItem::decode(&item.value)?, Mode::Cas(item.cas)),
                        None => (UserItem::default(), Mode::Add),
                    };
                    if current.closed {
                        // A `delete_user` decided before this login: help it
                        // end what it closed, then start a new index.
                        let resolved = self.resolve(u, current).await?;
                        self.end_all(u, &resolved).await?;
                        current = UserItem::default();
                    }
                    let mut evictions = current.evicted.clone();
                    let now = Timestamp::now();
                    let limit = options.limit;
                    let mut entries;
                    victims.clear();
                    evicted.clear();
                    stays = true;
                    if let Some(limit) = limit {
                        let resolved = self.resolve(u, current).await?;
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
                                        evictions.push(Eviction {
                                            key: e.key.clone(),
                                            nonce: e.nonce,
                                            by: nonce,
                                        });
                                    }
                                }
                            }
                            _ => {}
                        }
                        entries = resolved.kept_entries();
                    } else {
                        entries = current.index.entries;
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
                    let decided = UserItem {
                        index: Index { entries },
                        closed: false,
                        evicted: evictions,
                    };
                    let outcome = match (decided.last_deadline(), mode) {
                        (None, Mode::Add) => Outcome::Applied,
                        (None, Mode::Cas(cas)) => self.t().delete(ikey.clone(), Some(cas)).await?,
                        (Some(last), mode) => {
                            let value = decided.encode();
                            self.check_size(value.len()).await?;
                            let size = value.len();
                            let exp = exptime(last, now);
                            match self.put(ikey.clone(), value, exp, mode).await? {
                                Outcome::TooLarge => return Err(self.too_large(size)),
                                o => o,
                            }
                        }
                    };
                    if outcome == Outcome::Applied {
                        indexed = stays;
                        break;
                    }
                    self.backoff(attempt).await;
                    attempt += 1;
                    index_item = self.t().get(ikey.clone()).await?;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = decided {
            self.release(key, &slot).await;
            return Err(e);
        }
        if !stays {
            // Evicted at once: the key is not written.
            self.release(key, &slot).await;
        }

        // 3b. Hold the new key before changing anything else (moving the
        // old key, ending sessions), so that no other creation can take it
        // meanwhile and leave those changes made by a call that fails.
        if stays && (old.is_some() || !victims.is_empty()) {
            let reserved = self.reserve(key, record, nonce, &mut slot, true).await;
            if reserved.is_err() || matches!(slot, Slot::Lost) {
                if indexed {
                    self.unindex_creation(user, key, nonce).await;
                }
                return reserved.map(|()| None);
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
            let written = self
                .write_new(key, record, &value, nonce, &mut slot, indexed)
                .await;
            if written.is_ok() && matches!(slot, Slot::Lost) {
                self.unindex_creation(user, key, nonce).await;
                return Ok(None);
            }
            if let Err(e) = written {
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
        Ok(Some(Created::with_evicted(evicted)))
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
                .put(
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
            self.backoff(attempt).await;
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
        indexed: bool,
    ) -> StoreResult<()> {
        let skey = self.inner.keys.session(key);
        if let Err(e) = self.check_size(value.len()).await {
            self.release(key, slot).await;
            return Err(e);
        }
        for attempt in 0..self.lifecycle_retries() {
            let now = Timestamp::now();
            let exp = exptime(record.expires_at(), now);
            let mode = match *slot {
                Slot::Free => Mode::Add,
                Slot::Dead(cas, _) | Slot::Reserved(cas, _) => Mode::Cas(cas),
                Slot::Cancelled | Slot::Lost => return Ok(()),
            };
            match self.put(skey.clone(), value.to_vec(), exp, mode).await? {
                Outcome::Applied => return Ok(()),
                Outcome::TooLarge => {
                    self.release(key, slot).await;
                    return Err(self.too_large(value.len()));
                }
                // Only a cancellation replaces a reservation.
                _ if matches!(slot, Slot::Reserved(..)) => return Ok(()),
                _ => {}
            }
            let item = self.t().get(skey.clone()).await?;
            *slot = self.slot_after_loss(key, item, nonce, indexed).await?;
            if !matches!(slot, Slot::Cancelled) {
                self.backoff(attempt).await;
            }
        }
        Err(self.contended("creating the session"))
    }

    /// Holds `key` for the creation with `nonce` with a reservation marker;
    /// `slot` becomes [`Slot::Reserved`] (or [`Slot::Cancelled`] if the
    /// creation was cancelled already).
    ///
    /// `indexed`: the creation's index entry is written. Its key was then
    /// absent, and finding anything but a cancellation of it there now
    /// means another creation took the key meanwhile: its entry may
    /// already be judged dead, so it must not write.
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
        indexed: bool,
    ) -> StoreResult<()> {
        let skey = self.inner.keys.session(key);
        for attempt in 0..self.lifecycle_retries() {
            let now = Timestamp::now();
            // Held until the record is written, and at least a while for a
            // record written already expired.
            let until = record.expires_at().max(now.saturating_add(RESERVATION));
            let (mode, prior) = match slot {
                Slot::Free => (Mode::Add, None),
                Slot::Dead(cas, prior) => (Mode::Cas(*cas), Some(prior.clone())),
                Slot::Reserved(..) | Slot::Cancelled | Slot::Lost => return Ok(()),
            };
            let marker = Marker::Reserved { nonce, until }.encode();
            let exp = exptime(until, now);
            let item = match self.put(skey.clone(), marker, exp, mode).await? {
                Outcome::Applied => match self.t().get(skey.clone()).await? {
                    // The token of what was just written.
                    Some(item) if is_reserved_by(&item, nonce, now) => {
                        *slot = Slot::Reserved(item.cas, prior);
                        return Ok(());
                    }
                    other => other,
                },
                _ => self.t().get(skey.clone()).await?,
            };
            *slot = self.slot_after_loss(key, item, nonce, indexed).await?;
            if !matches!(slot, Slot::Cancelled) {
                self.backoff(attempt).await;
            }
        }
        Err(self.contended("reserving the session key"))
    }

    /// What a creation with `nonce` may do with `key` after its `add` or
    /// `cas` there failed and it read `item` (see [`reserve`](Self::reserve)
    /// for `indexed`).
    async fn slot_after_loss(
        &self,
        key: &StorageKey,
        item: Option<Item>,
        nonce: u64,
        indexed: bool,
    ) -> StoreResult<Slot> {
        let now = Timestamp::now();
        Ok(match self.settle(key, item).await? {
            None => Slot::Free,
            Some(item) => match Stored::decode(&item.value) {
                Ok(Stored::Marker(Marker::Ended { nonce: n, .. })) if n == nonce => Slot::Cancelled,
                Ok(s) if s.clone().live(now).is_some() || s.reserved_by(now).is_some() => {
                    return Err(StoreError::AlreadyExists)
                }
                _ if indexed => Slot::Lost,
                _ => Slot::Dead(item.cas, item.value),
            },
        })
    }

    /// Gives up this creation's reservation of `key`, if it holds one,
    /// putting back what the key held before (a move marker must keep
    /// leading `delete` to the session).
    async fn release(&self, key: &StorageKey, slot: &Slot) {
        let Slot::Reserved(cas, prior) = slot else {
            return;
        };
        let skey = self.inner.keys.session(key);
        let now = Timestamp::now();
        let restore = prior.as_ref().and_then(|value| {
            let until = match Stored::decode(value).ok()? {
                Stored::Record(r) => r.expires_at(),
                Stored::Marker(
                    Marker::Moved { until, .. }
                    | Marker::Ended { until, .. }
                    | Marker::Reserved { until, .. },
                ) => until,
            };
            (now < until).then(|| (value.clone(), exptime(until, now)))
        });
        let released = match restore {
            Some((value, exp)) => self.put(skey, value, exp, Mode::Cas(*cas)).await,
            None => self.t().delete(skey, Some(*cas)).await,
        };
        if let Err(e) = released {
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
            self.backoff(attempt).await;
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
        for attempt in 0..self.inner.cas_retry.max_attempts() {
            let now = Timestamp::now();
            let Some(item) = self.t().get(ikey.clone()).await? else {
                return Ok(());
            };
            let mut user_item = UserItem::decode(&item.value)?;
            if !edit(&mut user_item.index.entries) {
                return Ok(());
            }
            user_item
                .index
                .entries
                .retain(|e| e.absolute_deadline > now);
            let outcome = match user_item.last_deadline() {
                None => self.t().delete(ikey.clone(), Some(item.cas)).await?,
                Some(last) => {
                    let exp = exptime(last, now);
                    let value = user_item.encode();
                    self.put(ikey.clone(), value, exp, Mode::Cas(item.cas))
                        .await?
                }
            };
            match outcome {
                Outcome::Applied | Outcome::NotFound => return Ok(()),
                _ => self.backoff(attempt).await,
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
        let r = SessionRecord::new(
            Bytes::new(),
            Some("u".into()),
            at(created),
            at(1_000),
            at(2_000),
        )
        .with_last_access(at(created))
        .with_version(1);
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
            evicted_by: vec![None; 5],
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

    #[test]
    fn an_evicted_session_neither_counts_nor_is_dropped_while_live() {
        let resolved = Resolved {
            index: Index {
                entries: vec![
                    entry("victim", 1, None),
                    entry("login", 8, None),
                    entry("other", 9, None),
                ],
            },
            status: vec![live(1), Status::Pending, live(9)],
            evicted_by: vec![Some(1), None, None],
        };
        let keys: Vec<String> = resolved
            .units()
            .iter()
            .map(|u| u.key.as_str().to_owned())
            .collect();
        assert_eq!(keys, ["login", "other"]);
        assert_eq!(resolved.kept_entries().len(), 3);
        let by_login = [Eviction {
            key: StorageKey::from_stored("victim"),
            nonce: 1,
            by: 1,
        }];
        assert!(resolved.in_flight(&by_login, at(1)));
        assert!(!resolved.in_flight(&[], at(1)));
        assert!(!resolved.in_flight(&by_login, at(10_000)));
    }
}
