//! The redaction rule: session IDs, storage keys, one-time tokens and URL
//! credentials never show in `Display`, `Debug` or an error chain.

use std::error::Error;
use std::fmt;

use session_core::conformance::redaction::{assert_debug_hides, assert_error_hides};
use session_core::redact::{redact_text, redact_url, RedactedError, RedactedUrl};
use session_core::{MemoryStore, SessionError, SessionId, SessionManager, StoreError};

const PW: &str = "S3CRETPW";

/// A driver error that quotes the URL it was given in its message, its
/// `Debug` and its source, as some clients do.
#[derive(Debug)]
struct LeakyDriverError {
    url: String,
    cause: Option<Box<LeakyDriverError>>,
}

impl fmt::Display for LeakyDriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot use {}", self.url)
    }
}

impl Error for LeakyDriverError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.cause.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

fn leaky(url: &str) -> LeakyDriverError {
    LeakyDriverError {
        url: url.to_owned(),
        cause: Some(Box::new(LeakyDriverError {
            url: format!("password={PW} (decoded from {url})"),
            cause: None,
        })),
    }
}

/// Wrapped the way a backend wraps a driver error, then the way the store
/// contract and the manager wrap it in turn.
fn through_the_stack(err: RedactedError) -> SessionError {
    SessionError::Store(StoreError::unavailable(err))
}

#[test]
fn malformed_url_errors_hide_the_password() {
    for url in [
        "redis://u:S3CRETPW@127.0.0.1:notaport",
        "postgres://u:S3CRETPW@[::1/db",
        "memcache://:S3CRETPW@host:11211:extra",
        "u:S3CRETPW@127.0.0.1:1",
        "redis://u:S3CRET%50W@h", // %50 is 'P': decoded, the password reads S3CRETPW
    ] {
        assert!(!redact_url(url).contains("S3CRET"), "{url}");
        let shown = RedactedUrl::new(url);
        assert_debug_hides(&shown, &[PW, "S3CRET"]);
        assert!(!shown.to_string().contains("S3CRET"));
        let err = through_the_stack(RedactedError::with_url_secrets(leaky(url), [url]));
        assert_error_hides(&err, &[PW, "S3CRET"]);
    }
}

#[test]
fn unreachable_port_errors_hide_the_password() {
    let url = "redis://app:S3CRETPW@127.0.0.1:1/0";
    let io = std::net::TcpStream::connect("127.0.0.1:1").expect_err("port 1 is closed");
    let driver = LeakyDriverError {
        url: format!("{url}: {io}"),
        cause: None,
    };
    let err = through_the_stack(RedactedError::with_url_secrets(driver, [url]));
    assert_error_hides(&err, &[PW]);
    let shown = session_core::ErrorChain(&err).to_string();
    assert!(shown.contains("redis://***:***@127.0.0.1:1/0"), "{shown}");
    // Without being told the URL, the wrapper still finds it in the text.
    let err = through_the_stack(RedactedError::new(leaky(url)));
    assert_error_hides(&err, &[PW]);
}

#[test]
fn the_original_error_stays_reachable_for_downcasting() {
    let err = RedactedError::new(leaky("redis://:S3CRETPW@h"));
    let inner = err.get_ref().expect("the wrapped error");
    assert!(inner.downcast_ref::<LeakyDriverError>().is_some());
    assert_eq!(
        err.source().map(|s| s.to_string()).as_deref(),
        Some("cannot use password=*** (decoded from redis://:***@h)")
    );
    assert_eq!(redact_text("no url here"), "no url here");
}

#[tokio::test]
async fn session_debug_hides_id_key_token_and_data() {
    let manager = SessionManager::new(MemoryStore::new());
    let mut session = manager.start();
    session.insert("card", "S3CRETDATA").unwrap();
    manager.login(&mut session, "kim").await.unwrap();
    let token = manager.issue_token(&mut session, "transfer");
    manager.commit(&mut session).await.unwrap();
    let id = session.id().expose();
    let key = session.storage_key().clone();
    let secrets = [id.as_str(), key.as_str(), token.expose(), "S3CRETDATA"];
    assert_debug_hides(&session, &secrets);
    assert_debug_hides(&token, &secrets);
    assert_debug_hides(session.id(), &secrets);
    assert_debug_hides(&key, &secrets);
    for shown in [token.to_string(), session.id().to_string(), key.to_string()] {
        for secret in secrets {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
    // The session's Debug names the key by its tag, which logs can match.
    assert!(format!("{session:?}").contains(&key.to_string()));
    let listed = manager.list_user_sessions("kim").await.unwrap();
    assert_debug_hides(&listed, &secrets);
    // A loaded copy too.
    let loaded = manager.load(session.id()).await.unwrap().expect("stored");
    assert_debug_hides(&loaded, &secrets);
    assert_debug_hides(&manager, &secrets);
}

#[test]
fn session_ids_are_redacted() {
    let id = SessionId::generate();
    let secret = id.expose();
    assert_debug_hides(&id, &[&secret]);
    assert!(!id.to_string().contains(&secret));
    let err = SessionId::parse(&format!("{secret}x")).unwrap_err();
    assert_error_hides(&err, &[&secret]);
}
