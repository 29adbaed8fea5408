//! Audit events name sessions by a salted tag, never by ID or storage key.
//!
//! Alone in its own test binary: `tracing` caches per-callsite interest
//! process-wide, and a thread-local subscriber racing with tests on other
//! threads that have none can miss events.

use std::sync::{Arc, Mutex};

use session_core::{ManualClock, MemoryStore, SessionManager, Timestamp};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn audit_events_name_sessions_by_tag_only() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let clock = Arc::new(ManualClock::new(Timestamp::from_unix_millis(
        1_800_000_000_000,
    )));
    let manager = SessionManager::builder(MemoryStore::with_clock(clock.clone()))
        .clock(clock)
        .build();
    let mut s = manager.start();
    manager.login(&mut s, "kim").await.unwrap();
    let first = s.id().clone();
    manager.rotate(&mut s).await.unwrap();
    manager.logout(&mut s).await.unwrap();
    let log = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    for event in ["logged_in", "rotated", "logged_out"] {
        assert!(log.contains(event), "{event} missing from {log}");
    }
    for id in [&first, s.id()] {
        assert!(!log.contains(&id.expose()), "session id in the log");
        assert!(
            !log.contains(manager.storage_key(id).as_str()),
            "storage key in the log"
        );
    }
}
