//! The life of one session as the demo saw it: logged in, ID rotated at
//! login, one-time tokens issued, used or refused. Kept in the session's
//! own data (so it ends with the session) and shown on the profile page.

use serde::{Deserialize, Serialize};
use session_axum::{Error, Session};
use session_core::Timestamp;

/// The session value holding the events.
pub const KEY: &str = "demo.events";

/// The most events kept; older ones are dropped first.
pub const MAX_EVENTS: usize = 20;

/// One thing that happened to the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When, in Unix milliseconds.
    pub at: i64,
    /// What happened, as a sentence (plain text, escaped when shown).
    pub what: String,
}

impl Event {
    /// `what`, happening now.
    pub fn now(what: impl Into<String>) -> Self {
        Self {
            at: Timestamp::now().as_unix_millis(),
            what: what.into(),
        }
    }

    /// When it happened.
    pub fn timestamp(&self) -> Timestamp {
        Timestamp::from_unix_millis(self.at)
    }
}

/// Replaces the session's events with `events` (at login: a new session
/// life begins).
///
/// # Errors
///
/// A store failure while loading.
pub async fn start(session: &Session, events: Vec<Event>) -> Result<(), Error> {
    session.insert(KEY, &events).await
}

/// Appends `what` to the session's events, keeping the newest
/// [`MAX_EVENTS`], committed at once (concurrent appends are all kept).
///
/// # Errors
///
/// As [`Session::update`].
pub async fn record(session: &Session, what: &str) -> Result<(), Error> {
    let event = Event::now(what);
    session
        .update(KEY, |old: Option<Vec<Event>>| {
            let mut events = old.unwrap_or_default();
            events.push(event.clone());
            let excess = events.len().saturating_sub(MAX_EVENTS);
            events.drain(..excess);
            Some(events)
        })
        .await
        .map(|_| ())
}

/// The session's events, oldest first (none if it has none).
///
/// # Errors
///
/// A store failure while loading.
pub async fn list(session: &Session) -> Result<Vec<Event>, Error> {
    Ok(session.get::<Vec<Event>>(KEY).await?.unwrap_or_default())
}
