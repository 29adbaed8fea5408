//! Tamper, swap, rotation and "what does the backend see" tests over
//! `MemoryStore` (the same checks run over each real backend in their own
//! test files).

use std::sync::Arc;

use bytes::Bytes;
use session_core::{
    LoginOptions, MemoryStore, SessionManager, SessionRecord, SessionStore, StorageKey, StoreError,
};
use session_encrypted::{EncryptedStore, EncryptionKey, KeyRing};

fn ring(id: u16, key: &EncryptionKey) -> KeyRing {
    KeyRing::new(id, key.clone())
}

async fn logged_in(manager: &SessionManager, user: &str, secret: &str) -> session_core::Session {
    let mut s = manager.start();
    manager.login(&mut s, user).await.unwrap();
    s.insert("secret", secret).unwrap();
    manager.commit(&mut s).await.unwrap();
    s
}

async fn replace_raw(inner: &MemoryStore, key: &StorageKey, raw: &SessionRecord) {
    inner.delete(key).await.unwrap();
    inner.create(key, raw).await.unwrap();
}

#[tokio::test]
async fn flipping_any_byte_of_the_stored_data_is_rejected() {
    let inner = MemoryStore::new();
    let store = Arc::new(EncryptedStore::new(
        inner.clone(),
        ring(1, &EncryptionKey::generate()),
    ));
    let manager = SessionManager::builder_arc(store.clone()).build();
    let s = logged_in(&manager, "alice", "s3cr3t").await;
    let key = s.storage_key().clone();
    let original = inner.load(&key).await.unwrap().unwrap();
    for i in 0..original.data.len() {
        for bit in [0x01u8, 0x80] {
            let mut data = original.data.to_vec();
            data[i] ^= bit;
            let tampered = original.clone().with_data(Bytes::from(data));
            replace_raw(&inner, &key, &tampered).await;
            let err = store.load(&key).await.unwrap_err();
            assert!(matches!(err, StoreError::Corrupt(_)), "byte {i}: {err:?}");
            assert!(
                manager.load(s.id()).await.unwrap().is_none(),
                "manager accepted byte {i}"
            );
        }
    }
    // Every truncation too.
    for n in 0..original.data.len() {
        let tampered = original.clone().with_data(original.data.slice(..n));
        replace_raw(&inner, &key, &tampered).await;
        assert!(
            matches!(store.load(&key).await, Err(StoreError::Corrupt(_))),
            "len {n}"
        );
    }
    replace_raw(&inner, &key, &original).await;
    let back = manager
        .load(s.id())
        .await
        .unwrap()
        .expect("original record loads again");
    assert_eq!(
        back.get::<String>("secret").unwrap().as_deref(),
        Some("s3cr3t")
    );
}

#[tokio::test]
async fn extending_the_lifetime_or_changing_the_user_tag_is_rejected() {
    let inner = MemoryStore::new();
    let store = EncryptedStore::new(inner.clone(), ring(1, &EncryptionKey::generate()));
    let key = StorageKey::from_stored("k-meta");
    let rec = SessionRecord::new(
        Bytes::from_static(b"payload"),
        Some("alice".into()),
        session_core::Timestamp::now(),
        session_core::Timestamp::now().saturating_add(std::time::Duration::from_secs(60)),
        session_core::Timestamp::now().saturating_add(std::time::Duration::from_secs(120)),
    )
    .with_last_access(session_core::Timestamp::now())
    .with_version(1);
    store.create(&key, &rec).await.unwrap();
    let raw = inner.load(&key).await.unwrap().unwrap();
    let longer = raw.clone().with_absolute_deadline(
        raw.absolute_deadline
            .saturating_add(std::time::Duration::from_secs(3600)),
    );
    replace_raw(&inner, &key, &longer).await;
    assert!(matches!(
        store.load(&key).await,
        Err(StoreError::Corrupt(_))
    ));
    // Re-pointing the record at another user's index entry.
    let bob_tag = {
        let probe = StorageKey::from_stored("k-bob");
        store
            .create(&probe, &rec.clone().with_user_id(Some("bob".into())))
            .await
            .unwrap();
        inner.load(&probe).await.unwrap().unwrap().user_id
    };
    let other_user = raw.clone().with_user_id(bob_tag);
    assert_ne!(other_user.user_id, raw.user_id);
    replace_raw(&inner, &key, &other_user).await;
    assert!(matches!(
        store.load(&key).await,
        Err(StoreError::Corrupt(_))
    ));
    replace_raw(&inner, &key, &raw).await;
    assert_eq!(store.load(&key).await.unwrap().unwrap(), rec);
}

#[tokio::test]
async fn records_swapped_between_keys_are_rejected() {
    let inner = MemoryStore::new();
    let store = Arc::new(EncryptedStore::new(
        inner.clone(),
        ring(1, &EncryptionKey::generate()),
    ));
    let manager = SessionManager::builder_arc(store.clone()).build();
    let alice = logged_in(&manager, "alice", "a").await;
    let mallory = logged_in(&manager, "mallory", "m").await;
    // Mallory, with write access to the store, copies Alice's record under
    // her own key to take over Alice's session.
    let alice_raw = inner.load(alice.storage_key()).await.unwrap().unwrap();
    replace_raw(&inner, mallory.storage_key(), &alice_raw).await;
    assert!(matches!(
        store.load(mallory.storage_key()).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(manager.load(mallory.id()).await.unwrap().is_none());
}

#[tokio::test]
async fn foreign_and_unknown_key_ciphertext_is_rejected() {
    let inner = MemoryStore::new();
    let ours = EncryptedStore::new(inner.clone(), ring(1, &EncryptionKey::generate()));
    let theirs = EncryptedStore::new(inner.clone(), ring(1, &EncryptionKey::generate()));
    let unknown_id = EncryptedStore::new(inner.clone(), ring(9, &EncryptionKey::generate()));
    let rec = session_core::conformance::record(None, b"x", 60_000, 120_000);
    let k1 = StorageKey::from_stored("k1");
    let k2 = StorageKey::from_stored("k2");
    theirs.create(&k1, &rec).await.unwrap();
    unknown_id.create(&k2, &rec).await.unwrap();
    for k in [&k1, &k2] {
        match ours.load(k).await {
            Err(StoreError::Corrupt(why)) => assert!(!why.contains('\0')),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
    // Plaintext written by a store without encryption is rejected too.
    let k3 = StorageKey::from_stored("k3");
    inner.create(&k3, &rec).await.unwrap();
    assert!(matches!(ours.load(&k3).await, Err(StoreError::Corrupt(_))));
}

#[tokio::test]
async fn rotation_keeps_old_sessions_and_reencrypts_on_write() {
    let inner = MemoryStore::new();
    let old = EncryptionKey::generate();
    let new = EncryptionKey::generate();
    let before =
        SessionManager::builder_arc(Arc::new(EncryptedStore::new(inner.clone(), ring(1, &old))))
            .build();
    let mut s = logged_in(&before, "alice", "kept").await;
    let raw = inner.load(s.storage_key()).await.unwrap().unwrap();
    assert_eq!(u16::from_be_bytes([raw.data[1], raw.data[2]]), 1);

    let rotated_ring = KeyRing::new(2, new.clone())
        .with_old_key(1, old.clone())
        .unwrap();
    let after =
        SessionManager::builder_arc(Arc::new(EncryptedStore::new(inner.clone(), rotated_ring)))
            .build();
    let mut loaded = after
        .load(s.id())
        .await
        .unwrap()
        .expect("old session readable after rotation");
    assert_eq!(
        loaded.get::<String>("secret").unwrap().as_deref(),
        Some("kept")
    );
    assert_eq!(after.list_user_sessions("alice").await.unwrap().len(), 1);
    let mut fresh = logged_in(&after, "alice", "new").await;
    assert_eq!(
        after.list_user_sessions("alice").await.unwrap().len(),
        2,
        "index covers both keys"
    );

    loaded.insert("n", &1).unwrap();
    after.commit(&mut loaded).await.unwrap();
    let raw = inner.load(s.storage_key()).await.unwrap().unwrap();
    assert_eq!(
        u16::from_be_bytes([raw.data[1], raw.data[2]]),
        2,
        "rewritten under the primary"
    );

    // Once the old key is retired (kept only as the index key), the
    // new-key records still load.
    let only_new = SessionManager::builder_arc(Arc::new(EncryptedStore::new(
        inner.clone(),
        ring(2, &new).with_index_key(1, old.clone()),
    )))
    .build();
    assert!(only_new.load(fresh.id()).await.unwrap().is_some());
    assert!(only_new.load(s.id()).await.unwrap().is_some());
    assert_eq!(after.logout_everywhere(&mut fresh).await.unwrap(), 2);
    assert!(before.load(s.id()).await.unwrap().is_none());
    before.logout(&mut s).await.unwrap();
}

#[tokio::test]
async fn an_older_ciphertext_put_back_under_a_later_version_is_rejected() {
    let inner = MemoryStore::new();
    let store = Arc::new(EncryptedStore::new(
        inner.clone(),
        ring(1, &EncryptionKey::generate()),
    ));
    let manager = SessionManager::builder_arc(store.clone()).build();
    let mut s = logged_in(&manager, "alice", "a").await;
    let token = manager.issue_token(&mut s, "transfer");
    manager.commit(&mut s).await.unwrap();
    let with_token = inner.load(s.storage_key()).await.unwrap().unwrap();
    assert!(manager
        .consume_token(&mut s, "transfer", token.expose())
        .await
        .unwrap()
        .is_accepted());
    let current = inner.load(s.storage_key()).await.unwrap().unwrap();
    assert_ne!(current.version, with_token.version);

    // The attacker writes the old ciphertext with the current version (or
    // any later one): it no longer opens, and the token stays used.
    for version in [current.version, current.version + 1] {
        let spliced = current
            .clone()
            .with_data(with_token.data.clone())
            .with_version(version);
        replace_raw(&inner, s.storage_key(), &spliced).await;
        match store.load(s.storage_key()).await {
            Err(StoreError::Corrupt(why)) => assert!(why.contains("authentication failed")),
            other => panic!("spliced ciphertext opened: {other:?}"),
        }
        assert!(manager.load(s.id()).await.unwrap().is_none());
    }

    // What the crate docs say it cannot prevent: the whole earlier state,
    // version included, opens again.
    replace_raw(&inner, s.storage_key(), &with_token).await;
    let mut back = manager.load(s.id()).await.unwrap().expect("earlier state");
    assert!(manager
        .consume_token(&mut back, "transfer", token.expose())
        .await
        .unwrap()
        .is_accepted());
}

#[tokio::test]
async fn a_missing_key_is_named_in_the_error() {
    let inner = MemoryStore::new();
    let old = EncryptedStore::new(inner.clone(), ring(1, &EncryptionKey::generate()));
    let new = EncryptedStore::new(inner.clone(), ring(2, &EncryptionKey::generate()));
    let key = StorageKey::from_stored("k-missing");
    let rec = session_core::conformance::record(None, b"x", 60_000, 120_000);
    old.create(&key, &rec).await.unwrap();
    match new.load(&key).await {
        Err(StoreError::Corrupt(why)) => {
            assert!(
                why.contains("written under a key this ring does not hold (key id 1"),
                "{why}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn format_1_records_open_and_move_to_format_2() {
    let inner = MemoryStore::new();
    let k = EncryptionKey::generate();
    let store = EncryptedStore::new(inner.clone(), ring(1, &k));
    let key = StorageKey::from_stored("k-format-1");
    let rec = session_core::conformance::record(Some("alice"), b"legacy", 60_000, 120_000);
    let sealed = session_encrypted::fuzzing::seal_format_1(&store, &key, &rec);
    assert_eq!(sealed.data[0], 1);
    inner.create(&key, &sealed).await.unwrap();
    let opened = store.load(&key).await.unwrap().expect("format 1 opens");
    assert_eq!(opened.data.as_ref(), b"legacy");
    assert_eq!(opened.user_id.as_deref(), Some("alice"));
    let raw = inner.load(&key).await.unwrap().unwrap();
    assert_eq!(raw.data[0], 2, "rewritten in format 2 on load");
    assert_eq!(raw.version, opened.version);
    assert_eq!(store.load(&key).await.unwrap().unwrap(), opened);
    // With migration off, a format 1 record stays as it is on load.
    let read_only = EncryptedStore::new(inner.clone(), ring(1, &k)).migrate_on_load(false);
    let key2 = StorageKey::from_stored("k-format-1b");
    inner
        .create(
            &key2,
            &session_encrypted::fuzzing::seal_format_1(&store, &key2, &rec),
        )
        .await
        .unwrap();
    assert!(read_only.load(&key2).await.unwrap().is_some());
    assert_eq!(inner.load(&key2).await.unwrap().unwrap().data[0], 1);
}

#[tokio::test]
async fn the_backend_sees_neither_plaintext_nor_user_id() {
    let inner = MemoryStore::new();
    let manager = SessionManager::builder_arc(Arc::new(EncryptedStore::new(
        inner.clone(),
        ring(1, &EncryptionKey::generate()),
    )))
    .build();
    let user = "alice.liddell@example.com";
    let secret = "card-4111111111111111";
    let s = logged_in(&manager, user, secret).await;
    let raw = inner.load(s.storage_key()).await.unwrap().unwrap();
    let hay = raw.data.to_vec();
    let contains = |needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(secret.as_bytes()), "plaintext in the backend");
    assert!(!contains(user.as_bytes()), "user id in the backend data");
    let tag = raw.user_id.expect("indexed under a tag");
    assert!(
        !tag.contains("alice"),
        "user id in the backend index: {tag}"
    );
    assert!(inner.list_user_sessions(user).await.unwrap().is_empty());
    assert_eq!(inner.list_user_sessions(&tag).await.unwrap().len(), 1);
}

#[tokio::test]
async fn same_plaintext_never_gives_the_same_ciphertext() {
    let inner = MemoryStore::new();
    let store = EncryptedStore::new(inner.clone(), ring(1, &EncryptionKey::generate()));
    let rec = session_core::conformance::record(None, b"same", 60_000, 120_000);
    let (a, b) = (StorageKey::from_stored("a"), StorageKey::from_stored("b"));
    store.create(&a, &rec).await.unwrap();
    store.create(&b, &rec).await.unwrap();
    let ra = inner.load(&a).await.unwrap().unwrap();
    let rb = inner.load(&b).await.unwrap().unwrap();
    assert_ne!(ra.data[3..15], rb.data[3..15], "nonce reused");
    assert_ne!(ra.data, rb.data);
}

/// The label (a device name, personal data) is encrypted at rest: the
/// backend holds a sealed label that names neither the label nor the user,
/// that changes on every write, and that opens only under its own storage
/// key; the encrypted store's load and listing give back the plain label.
#[tokio::test]
async fn labels_are_sealed_at_rest_and_bound_to_their_session() {
    let inner = MemoryStore::new();
    let store = Arc::new(EncryptedStore::new(
        inner.clone(),
        ring(1, &EncryptionKey::generate()),
    ));
    let manager = SessionManager::builder_arc(store.clone()).build();
    let label = "Firefox on Ada's laptop";
    let mut s = manager.start();
    manager
        .login_with(&mut s, "ada", LoginOptions::new().with_label(label))
        .await
        .unwrap();
    let raw = inner.load(s.storage_key()).await.unwrap().unwrap();
    let sealed = raw.label.clone().expect("a sealed label");
    assert!(
        !sealed.contains("Ada") && !sealed.contains("Firefox"),
        "{sealed}"
    );
    assert!(sealed.starts_with("e1."));
    // The inner index lists the sealed label; the encrypted store opens it.
    let tag = raw.user_id.clone().unwrap();
    assert_eq!(
        inner.list_user_sessions(&tag).await.unwrap()[0].label,
        Some(sealed.clone())
    );
    let listed = manager.list_sessions_for(&s).await.unwrap();
    assert_eq!(listed[0].label(), Some(label));
    assert!(listed[0].is_current());
    assert_eq!(
        store
            .load(s.storage_key())
            .await
            .unwrap()
            .unwrap()
            .label
            .as_deref(),
        Some(label)
    );
    // A data write keeps it (this inner store keeps the stored label, as
    // the contract allows); a rotation seals it anew for the new key.
    s.insert("n", &1).unwrap();
    manager.commit(&mut s).await.unwrap();
    let loaded = manager.load(s.id()).await.unwrap().expect("loads");
    assert_eq!(loaded.label(), Some(label));
    manager.rotate(&mut s).await.unwrap();
    let resealed = inner.load(s.storage_key()).await.unwrap().unwrap().label;
    assert!(resealed.is_some() && resealed.as_deref() != Some(sealed.as_str()));
    let loaded = manager.load(s.id()).await.unwrap().expect("rotated loads");
    assert_eq!(loaded.label(), Some(label));

    // A sealed label copied onto another session does not open: that
    // session no longer loads, and the listing leaves the label out.
    let mut other = manager.start();
    manager
        .login_with(&mut other, "ada", LoginOptions::new().with_label("Phone"))
        .await
        .unwrap();
    let mut raw_other = inner.load(other.storage_key()).await.unwrap().unwrap();
    raw_other.label = inner.load(s.storage_key()).await.unwrap().unwrap().label;
    replace_raw(&inner, other.storage_key(), &raw_other).await;
    assert!(matches!(
        store.load(other.storage_key()).await,
        Err(StoreError::Corrupt(_))
    ));
    let mut labels: Vec<Option<String>> = store
        .list_user_sessions("ada")
        .await
        .unwrap()
        .into_iter()
        .map(|summary| summary.label)
        .collect();
    labels.sort();
    assert_eq!(labels, vec![None, Some(label.to_owned())]);
}
