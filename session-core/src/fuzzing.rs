//! Fuzzing entry points (not part of the public API).
//!
//! Each function takes the raw fuzzer input, runs the parser it covers and
//! checks the properties that must hold for every input; it panics only
//! when a property fails. The `cargo fuzz` targets under `fuzz/` and the
//! corpus replay test (`tests/fuzz_corpus.rs`) call the same functions, so
//! the two cannot drift apart.
#![allow(missing_docs)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use crate::clock::{ManualClock, Timestamp};
use crate::cookie::{CookiePolicy, MAX_SESSION_ID_CANDIDATES};
use crate::id::{InvalidSessionId, SessionId, SESSION_ID_LEN};
use crate::manager::SessionManager;
use crate::memory::MemoryStore;
use crate::record::SessionRecord;
use crate::session::Payload;
use crate::store::SessionStore;

/// Cookie headers and session IDs.
///
/// The input is split on `\n` into `Cookie` header lines (any bytes, not
/// necessarily UTF-8) and read under the default cookie name and a short
/// one; the whole input and every line are also parsed as session IDs.
pub fn cookie_headers(data: &[u8]) {
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let short = CookiePolicy::builder()
        .name("s")
        .secure(false)
        .build()
        .expect("a valid policy");
    for policy in [CookiePolicy::default(), short] {
        let found = policy.session_id_candidates(lines.iter().copied());
        assert!(found.len() <= MAX_SESSION_ID_CANDIDATES, "over the cap");
        for (i, id) in found.iter().enumerate() {
            assert!(!found[..i].contains(id), "duplicate candidate");
            // Every candidate is a strictly parsed value that is present,
            // as `name=value`, in one of the lines.
            let text = id.expose();
            assert_eq!(SessionId::parse(&text).as_ref(), Ok(id));
            assert!(
                lines.iter().any(|l| contains(l, text.as_bytes())),
                "candidate not in the input"
            );
        }
        assert_eq!(
            policy.find_session_id(lines.iter().copied()),
            found.first().cloned()
        );
    }
    session_id(data);
    for line in &lines {
        session_id(line);
    }
}

/// `SessionId::parse` on the input read as text (lossily, so every input
/// reaches the parser): an accepted value is exactly the canonical encoding
/// of the ID, and a rejection names the right reason.
pub fn session_id(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match SessionId::parse(&text) {
        Ok(id) => assert_eq!(id.expose(), text, "accepted a non-canonical id"),
        Err(InvalidSessionId::WrongLength(n)) => {
            assert_eq!(n, text.len());
            assert_ne!(n, SESSION_ID_LEN);
        }
        Err(InvalidSessionId::InvalidCharacter) => {
            assert_eq!(text.len(), SESSION_ID_LEN);
            assert!(text
                .bytes()
                .any(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_')));
        }
        Err(InvalidSessionId::NonCanonical) => assert_eq!(text.len(), SESSION_ID_LEN),
    }
    // Debug and Display never panic (nor show the value).
    if let Ok(id) = SessionId::parse(&text) {
        assert!(!format!("{id:?}{id}").contains(text.as_ref()));
    }
}

/// `SessionRecord::decode` on arbitrary bytes: no panic, and what decodes
/// re-encodes to something that decodes to the same record.
pub fn record(data: &[u8]) {
    let Ok(r) = SessionRecord::decode(data) else {
        return;
    };
    let enc = r.encode();
    assert!(enc.len() <= data.len(), "re-encoding grew");
    assert_eq!(
        SessionRecord::decode(&enc).ok(),
        Some(r.clone()),
        "round trip"
    );
    // Formatting the timestamps must not panic, whatever their value.
    let _ = format!(
        "{r:?} {} {} {} {}",
        r.created_at, r.last_access, r.idle_deadline, r.absolute_deadline
    );
    let _ = r.expires_at();
}

/// The session payload (`SessionRecord::data` as the manager writes it).
///
/// The input is stored as the data of a live record in a [`MemoryStore`],
/// loaded through [`SessionManager::load`] and every key is read; then one
/// value is added and committed, and the stored payload must hold exactly
/// the old entries plus the new one. Arbitrary stored data must load as a
/// session or as no session, never panic or fail.
pub fn payload(data: &[u8]) {
    let data = Bytes::copy_from_slice(data);
    let direct = Payload::decode(&data);
    if let Ok(p) = &direct {
        if !data.is_empty() {
            assert_eq!(p.encode(), data, "decode then encode changed the bytes");
        }
    }

    let now = Timestamp::from_unix_millis(1_700_000_000_000);
    let clock = Arc::new(ManualClock::new(now));
    let store = MemoryStore::with_clock(clock.clone());
    let manager = SessionManager::builder(store.clone()).clock(clock).build();
    let id = SessionId::from_bytes([7; 32]);
    let key = manager.storage_key(&id);
    let stored = SessionRecord {
        data: data.clone(),
        user_id: Some("fuzz".to_owned()),
        created_at: now,
        last_access: now,
        idle_deadline: now.saturating_add(Duration::from_secs(3600)),
        absolute_deadline: now.saturating_add(Duration::from_secs(7200)),
        version: 1,
        label: None,
    };
    runtime().block_on(async {
        store.create(&key, &stored).await.expect("store accepts");
        let loaded = manager.load(&id).await.expect("a memory store never fails");
        let Some(mut session) = loaded else {
            assert!(direct.is_err(), "a readable payload loaded as no session");
            return;
        };
        let p = direct.expect("an unreadable payload loaded as a session");
        let keys: Vec<String> = session.keys().map(str::to_owned).collect();
        assert_eq!(keys.len(), p.data.len());
        for k in &keys {
            assert!(session.contains(k));
            // Values are arbitrary bytes: reading may fail, never panic.
            let _ = session.get::<serde_json::Value>(k);
            let _ = session.get::<String>(k);
        }
        for (purpose, _) in &p.tokens {
            let ok = manager
                .consume_token(&mut session, purpose, "not-the-token")
                .await
                .expect("a memory store never fails")
                .is_accepted();
            assert!(!ok, "a wrong token was accepted");
        }
        let new_key = "\u{0}fuzz-added";
        session.insert(new_key, &1u8).expect("serializable");
        manager.commit(&mut session).await.expect("commit");
        let after = store
            .load(&key)
            .await
            .expect("a memory store never fails")
            .expect("still stored");
        let after = Payload::decode(&after.data).expect("the manager writes readable data");
        let mut want = p.data.clone();
        if let Some(i) = want.iter().position(|(k, _)| k == new_key) {
            want[i].1 = Bytes::from_static(b"1");
        } else {
            want.push((new_key.to_owned(), Bytes::from_static(b"1")));
        }
        assert_eq!(after.data, want, "entries changed across a commit");
        assert_eq!(after.tokens, p.tokens, "tokens changed across a commit");
    });
}

/// Runs `f` to completion on a shared single-threaded runtime (for the
/// harnesses of crates that wrap a [`MemoryStore`]).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
    })
}

/// Runs `harness` on every file of the corpus directory `dir`, for the
/// replay tests. Panics, naming the directory or the file, when the
/// directory is missing or empty or when an input fails.
pub fn replay_corpus(dir: impl AsRef<std::path::Path>, harness: fn(&[u8])) {
    let dir = dir.as_ref();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| {
        panic!(
            "fuzz corpus directory {} is missing ({e}); it is kept in the repository",
            dir.display()
        )
    });
    let mut files: Vec<std::path::PathBuf> = entries
        .map(|e| e.expect("readable corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "fuzz corpus directory {} is empty; it is kept in the repository",
        dir.display()
    );
    for file in &files {
        let data = std::fs::read(file).expect("readable corpus file");
        let outcome = std::panic::catch_unwind(|| harness(&data));
        assert!(
            outcome.is_ok(),
            "corpus input {} fails its fuzz harness",
            file.display()
        );
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Seed inputs for [`cookie_headers`]: real cookie values and near misses.
#[must_use]
pub fn cookie_seeds() -> Vec<Vec<u8>> {
    let ids: Vec<String> = (0u8..6)
        .map(|i| SessionId::from_bytes([i.wrapping_mul(37); 32]).expose())
        .collect();
    let id = &ids[1];
    let mut out: Vec<Vec<u8>> = vec![
        id.clone().into_bytes(),
        format!("__Host-session={id}").into_bytes(),
        format!("a=1; __Host-session={id}; b=2").into_bytes(),
        format!("a=1\n__Host-session={id}\ns={}", ids[2]).into_bytes(),
        format!("__Host-session=garbage; __Host-session={id}").into_bytes(),
        format!("__Host-session={}=", &id[..42]).into_bytes(),
        format!("__Host-session={}B", &ids[0][..42]).into_bytes(),
        format!("\t __Host-session={id} \t;junk").into_bytes(),
        b"\x00\x01; ;;==".to_vec(),
        [
            b"x=\xff\xfe\x00; ".as_slice(),
            format!("s={id}").as_bytes(),
            b"; y=\x80",
        ]
        .concat(),
        ids.iter()
            .map(|i| format!("__Host-session={i}"))
            .collect::<Vec<_>>()
            .join("; ")
            .into_bytes(),
    ];
    out.push(Vec::new());
    out
}

fn sample_record(user: Option<&str>, data: &[u8]) -> SessionRecord {
    let now = Timestamp::from_unix_millis(1_700_000_000_000);
    SessionRecord {
        data: Bytes::copy_from_slice(data),
        user_id: user.map(str::to_owned),
        created_at: now,
        last_access: now,
        idle_deadline: now.saturating_add(Duration::from_secs(1800)),
        absolute_deadline: now.saturating_add(Duration::from_secs(86_400)),
        version: 3,
        label: None,
    }
}

/// Records as [`SessionRecord::encode`] writes them, for the seeds of the
/// record-shaped targets of every crate.
#[must_use]
pub fn sample_records() -> Vec<SessionRecord> {
    let payload = payload_seeds().swap_remove(1);
    let mut extreme = sample_record(Some("ünï:{x}"), b"\x00\xff");
    extreme.created_at = Timestamp::from_unix_millis(i64::MIN);
    extreme.idle_deadline = Timestamp::from_unix_millis(i64::MAX);
    extreme.version = u64::MAX;
    vec![
        sample_record(None, b""),
        sample_record(Some(""), b"x"),
        sample_record(Some("alice"), &payload),
        extreme,
        sample_record(Some("carol"), &payload).with_label(Some("Firefox – Linux".to_owned())),
        sample_record(None, b"").with_label(Some(String::new())),
    ]
}

/// Seed inputs for [`record`]: encodings, truncations, bad header bytes.
#[must_use]
pub fn record_seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = sample_records().iter().map(SessionRecord::encode).collect();
    let enc = out[2].clone();
    out.push(enc[..45].to_vec());
    out.push(enc[..50].to_vec());
    let mut bad = enc.clone();
    bad[1] = 2;
    out.push(bad);
    let mut long_user = enc;
    long_user[42..46].copy_from_slice(&u32::MAX.to_be_bytes());
    out.push(long_user);
    out
}

/// Seed inputs for [`payload`]: what the manager writes, and near misses.
#[must_use]
pub fn payload_seeds() -> Vec<Vec<u8>> {
    let mut p = Payload::default();
    p.set_value("user", Some(Bytes::from_static(b"\"alice\"")));
    p.set_value("ключ", Some(Bytes::from_static(b"[1,2,{\"a\":null}]")));
    p.set_value("n", Some(Bytes::from_static(b"1")));
    let mut with_token = p.clone();
    with_token.set_token(
        "transfer",
        Some(crate::token::TokenEntry {
            hash: [7; 32],
            expires_at: Timestamp::from_unix_millis(1_700_000_060_000),
        }),
    );
    let enc = with_token.encode().to_vec();
    let mut huge = enc.clone();
    huge[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
    vec![
        Vec::new(),
        p.encode().to_vec(),
        enc.clone(),
        Payload::default().encode().to_vec(),
        enc[..enc.len() - 3].to_vec(),
        huge,
        b"{\"d\":{}}".to_vec(),
    ]
}
