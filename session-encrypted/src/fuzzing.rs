//! Fuzzing entry point (not part of the public API): [`open_stored`], which
//! the `cargo fuzz` target `encrypted_open` and the corpus replay test
//! (`tests/fuzz_corpus.rs`) both call.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use aes_gcm::aead::{AeadInOut, Nonce};
use aes_gcm::Aes256Gcm;
use bytes::Bytes;
use session_core::fuzzing::block_on;
use session_core::{
    ManualClock, MemoryStore, SessionRecord, SessionStore, StorageKey, StoreError, Timestamp,
};

use crate::store::{aad, FORMAT_V1, FORMAT_V2, HEADER_LEN, NONCE_LEN};
use crate::{EncryptedStore, EncryptionKey, KeyRing};

/// Seals `record` as the first format did (the version not bound), under
/// `store`'s primary key, to test that such records still open.
#[must_use]
pub fn seal_format_1<S: SessionStore>(
    store: &EncryptedStore<S>,
    key: &StorageKey,
    record: &SessionRecord,
) -> SessionRecord {
    let ring = store.ring();
    let k = ring.primary();
    let nonce_bytes = [7u8; NONCE_LEN];
    let user = record.user_id.as_deref().unwrap_or("").as_bytes();
    let mut out = vec![FORMAT_V1];
    out.extend_from_slice(&k.id.to_be_bytes());
    out.extend_from_slice(&nonce_bytes);
    out.push(u8::from(record.user_id.is_some()));
    out.extend_from_slice(&(user.len() as u32).to_be_bytes());
    out.extend_from_slice(user);
    out.extend_from_slice(&record.data);
    let tag = k
        .cipher
        .encrypt_inout_detached(
            &Nonce::<Aes256Gcm>::from(nonce_bytes),
            &aad(FORMAT_V1, k.id, key, record),
            (&mut out[HEADER_LEN..]).into(),
        )
        .expect("AES-GCM accepts messages of this size");
    out.extend_from_slice(&tag);
    record
        .clone()
        .with_data(Bytes::from(out))
        .with_user_id(record.user_id.as_deref().map(|u| ring.user_tag(u)))
}

/// The fixed instant the harness runs at.
pub const NOW_MS: i64 = 1_700_000_000_000;
/// The storage key the harness stores under.
pub const KEY: &str = "fuzz-storage-key";

/// The harness's fixed key ring: primary key 1, older key 7.
#[must_use]
pub fn ring() -> KeyRing {
    KeyRing::new(1, EncryptionKey::from_bytes(&[0x42; 32]).expect("32 bytes"))
        .with_old_key(7, EncryptionKey::from_bytes(&[0x17; 32]).expect("32 bytes"))
        .expect("distinct ids")
}

/// An [`EncryptedStore`] over a [`MemoryStore`] (returned too, to plant raw
/// records), both on a clock stopped at [`NOW_MS`].
#[must_use]
pub fn stores() -> (EncryptedStore<MemoryStore>, MemoryStore) {
    let clock = Arc::new(ManualClock::new(Timestamp::from_unix_millis(NOW_MS)));
    let inner = MemoryStore::with_clock(clock);
    (EncryptedStore::new(inner.clone(), ring()), inner)
}

/// Opening arbitrary stored bytes through [`EncryptedStore::load`].
///
/// The first input byte picks a mode (modulo 3):
///
/// - 0: the rest is a stored record ([`SessionRecord::encode`]'s format, or
///   else just the stored `data`) planted in the inner store;
/// - 1: the rest is a tag choice byte then a *plaintext*, sealed with the
///   primary key as the store would, so the fuzzer reaches the parsing that
///   follows a successful decryption;
/// - 2: the rest is a record written through the store, which must load
///   back unchanged and fail to load once one stored byte is flipped.
///
/// Loading must give the record or [`StoreError::Corrupt`]: never a panic,
/// another error or `None`.
pub fn open_stored(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => raw(rest),
        1 => sealed_plaintext(rest),
        _ => round_trip(rest),
    }
}

fn live(mut r: SessionRecord) -> SessionRecord {
    let now = Timestamp::from_unix_millis(NOW_MS);
    if r.is_expired_at(now) {
        r.idle_deadline = now.saturating_add(Duration::from_secs(3600));
        r.absolute_deadline = now.saturating_add(Duration::from_secs(7200));
    }
    r
}

fn record_from(bytes: &[u8]) -> SessionRecord {
    SessionRecord::decode(bytes).unwrap_or_else(|_| {
        SessionRecord::new(
            Bytes::copy_from_slice(bytes),
            None,
            Timestamp::from_unix_millis(NOW_MS),
            Timestamp::from_unix_millis(0),
            Timestamp::from_unix_millis(0),
        )
        .with_last_access(Timestamp::from_unix_millis(NOW_MS))
        .with_version(1)
    })
}

fn load(store: &EncryptedStore<MemoryStore>) -> Result<SessionRecord, String> {
    match block_on(store.load(&StorageKey::from_stored(KEY))) {
        Ok(Some(r)) => Ok(r),
        Ok(None) => panic!("a planted live record loaded as absent"),
        Err(StoreError::Corrupt(why)) => Err(why),
        Err(e) => panic!("opening stored bytes failed with {e:?}, not Corrupt"),
    }
}

fn plant(inner: &MemoryStore, r: &SessionRecord) {
    let key = StorageKey::from_stored(KEY);
    block_on(async {
        inner.delete(&key).await.expect("memory store");
        inner.create(&key, r).await.expect("memory store");
    });
}

fn raw(rest: &[u8]) {
    let (store, inner) = stores();
    plant(&inner, &live(record_from(rest)));
    let _ = load(&store);
}

fn sealed_plaintext(rest: &[u8]) {
    let Some((&tag_choice, plain)) = rest.split_first() else {
        return;
    };
    let ring = ring();
    let k = ring.primary();
    let key = StorageKey::from_stored(KEY);
    let now = Timestamp::from_unix_millis(NOW_MS);
    let (created, absolute) = (now, now.saturating_add(Duration::from_secs(7200)));
    // Both formats: the first, without the version in the associated data,
    // must still open.
    let format = if tag_choice & 0x80 == 0 {
        FORMAT_V2
    } else {
        FORMAT_V1
    };
    let mut stored = SessionRecord::new(
        Bytes::new(),
        None,
        created,
        now.saturating_add(Duration::from_secs(3600)),
        absolute,
    )
    .with_last_access(now)
    .with_version(1);
    let nonce_bytes = [tag_choice; NONCE_LEN];
    let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + 16);
    out.push(format);
    out.extend_from_slice(&k.id.to_be_bytes());
    out.extend_from_slice(&nonce_bytes);
    out.extend_from_slice(plain);
    let tag = k
        .cipher
        .encrypt_inout_detached(
            &Nonce::<Aes256Gcm>::from(nonce_bytes),
            &aad(format, k.id, &key, &stored),
            (&mut out[HEADER_LEN..]).into(),
        )
        .expect("AES-GCM accepts messages of this size");
    out.extend_from_slice(&tag);
    // The user the plaintext claims, if its header is readable.
    let claimed = plain
        .get(1..5)
        .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
        .and_then(|n| plain.get(5..5usize.saturating_add(n)))
        .map(|u| String::from_utf8_lossy(u).into_owned());
    let user_tag = match tag_choice % 3 {
        0 => None,
        1 => Some(ring.user_tag(claimed.as_deref().unwrap_or(""))),
        _ => Some(String::from_utf8_lossy(plain).into_owned()),
    };
    stored.data = Bytes::from(out);
    stored.user_id.clone_from(&user_tag);
    let (store, inner) = stores();
    plant(&inner, &stored);
    if let Ok(r) = load(&store) {
        // Accepted: the plaintext header was well formed and the index tag
        // is the keyed hash of the user it names.
        assert!(plain.len() >= 5 && plain[0] <= 1, "bad header accepted");
        let n = u32::from_be_bytes([plain[1], plain[2], plain[3], plain[4]]) as usize;
        assert_eq!(r.data.as_ref(), &plain[5 + n..]);
        match &r.user_id {
            Some(u) => {
                assert_eq!(plain[0], 1);
                assert_eq!(u.as_bytes(), &plain[5..5 + n]);
                assert_eq!(user_tag, Some(ring.user_tag(u)));
            }
            None => {
                assert_eq!(plain[0], 0);
                assert_eq!(user_tag, None);
            }
        }
    }
}

fn round_trip(rest: &[u8]) {
    let record = live(record_from(rest));
    let (store, inner) = stores();
    let key = StorageKey::from_stored(KEY);
    block_on(store.create(&key, &record)).expect("memory store");
    let loaded = load(&store).expect("what the store wrote must open");
    assert_eq!(loaded, record, "seal then open changed the record");

    // One flipped bit anywhere in the stored data is detected.
    let mut sealed = block_on(inner.load(&key))
        .expect("memory store")
        .expect("stored");
    let mut bytes = sealed.data.to_vec();
    let at = rest.len() % bytes.len();
    bytes[at] ^= 1 << (rest.len() % 8);
    sealed.data = Bytes::from(bytes);
    plant(&inner, &sealed);
    assert!(load(&store).is_err(), "a tampered record opened");
}

/// Seed inputs for [`open_stored`], made by the real store: sealed records
/// (mode 0), well-formed and broken plaintexts (mode 1), records to write
/// (mode 2).
#[must_use]
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, record) in session_core::fuzzing::sample_records()
        .into_iter()
        .map(live)
        .enumerate()
    {
        let (store, inner) = stores();
        let key = StorageKey::from_stored(KEY);
        block_on(store.create(&key, &record)).expect("memory store");
        let sealed = block_on(inner.load(&key))
            .expect("memory store")
            .expect("stored");
        out.push([&[0u8][..], &sealed.encode()].concat());
        let encoded = record.encode();
        out.push([&[2u8][..], &encoded].concat());
        let user = record.user_id.as_deref().unwrap_or("");
        let mut plain = vec![u8::from(record.user_id.is_some())];
        plain.extend_from_slice(&(user.len() as u32).to_be_bytes());
        plain.extend_from_slice(user.as_bytes());
        plain.extend_from_slice(&record.data);
        let tag_choice = if record.user_id.is_some() { 1 } else { 0 };
        out.push([&[1u8, tag_choice][..], &plain].concat());
        if i == 2 {
            out.push([&[1u8, 2][..], &plain].concat());
            out.push(vec![1, 0, 2, 0, 0, 0, 0]);
            out.push(vec![0, 1, 0, 1]);
        }
    }
    out
}
