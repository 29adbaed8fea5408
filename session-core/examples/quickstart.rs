//! A login / request / logout cycle on the in-memory store, printing what a
//! web framework would send and receive.
//!
//! Run with `cargo run -p session-core --example quickstart`.

use session_core::{MemoryStore, SessionError, SessionManager};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), SessionError> {
    let manager = SessionManager::new(MemoryStore::new());

    // POST /login: whatever cookie came in, login issues a fresh ID.
    let mut session = manager.start();
    manager.login(&mut session, "alice").await?;
    session.insert("theme", "dark")?;
    manager.commit(&mut session).await?;
    let set_cookie = manager
        .response_cookie(&session)
        .expect("login sets the cookie");
    println!(
        "login      -> Set-Cookie: {}=<redacted>; {}",
        set_cookie.name(),
        attributes(&set_cookie)
    );

    // GET /profile: the browser sends the cookie back.
    let cookie_header = format!("{}={}", set_cookie.name(), set_cookie.value());
    let mut session = manager
        .load_from_cookie_headers([cookie_header.as_str()])
        .await?
        .expect("the session loads");
    println!(
        "profile    -> user {:?}, theme {:?}, session {:?}",
        session.user_id(),
        session.get::<String>("theme")?,
        session
    );

    // A sensitive operation guarded by a one-time token.
    let token = manager.issue_token(&mut session, "transfer");
    manager.commit(&mut session).await?;
    let first = manager
        .consume_token(&mut session, "transfer", token.expose())
        .await?
        .is_accepted();
    let replay = manager
        .consume_token(&mut session, "transfer", token.expose())
        .await?
        .is_accepted();
    println!("transfer   -> first use accepted: {first}, replay accepted: {replay}");

    // POST /logout: the server forgets the session; the cookie is removed.
    manager.logout(&mut session).await?;
    let removal = manager
        .response_cookie(&session)
        .expect("logout removes the cookie");
    println!("logout     -> Set-Cookie: {removal}");
    let replayed = manager
        .load_from_cookie_headers([cookie_header.as_str()])
        .await?;
    println!(
        "old cookie -> {}",
        if replayed.is_some() {
            "still valid (bug!)"
        } else {
            "no session"
        }
    );
    Ok(())
}

fn attributes(c: &cookie::Cookie<'_>) -> String {
    let full = c.to_string();
    full.split_once("; ")
        .map(|(_, a)| a.to_owned())
        .unwrap_or_default()
}
