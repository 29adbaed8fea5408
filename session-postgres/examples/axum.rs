//! An axum service with sessions on PostgreSQL: login (at most three
//! sessions per user), a page that counts visits, a one-time token guarding
//! a transfer, and logout.
//!
//! ```sh
//! DATABASE_URL=postgres://user:password@127.0.0.1:5432/app cargo run -p session-postgres --example axum_postgres
//! ```
//!
//! It serves plain HTTP on `127.0.0.1:3000` (`LISTEN=host:port` to change),
//! so the cookie is the local-development one; see `manager` below.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::Form;
use axum::routing::{get, post};
use axum::Router;
use session_axum::prelude::*;
use session_axum::session_core::redact::redact_url;
use session_axum::{ConfigError, ErrorChain, SessionStore};
use session_postgres::PostgresStore;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").map_err(|_| {
        "set DATABASE_URL to the PostgreSQL server to keep sessions in, \
         e.g. DATABASE_URL=postgres://user:password@127.0.0.1:5432/app"
    })?;
    let store = PostgresStore::builder()
        .table("axum_example_sessions")
        .connect(&url)
        .await
        .map_err(|e| {
            format!(
                "cannot use PostgreSQL at {}: {}. Is the server running, and may this user log in?",
                redact_url(&url),
                ErrorChain(&e)
            )
        })?;
    // Creates the table on first run; a no-op when it is up to date.
    store
        .migrate()
        .await
        .map_err(|e| format!("cannot create the sessions table: {}", ErrorChain(&e)))?;
    // Expired rows are invisible at once; this deletes them every 5 minutes.
    let _cleanup = store.spawn_cleanup(Duration::from_secs(300));
    serve(manager(store)?).await
}

async fn login(
    session: Session,
    Form(form): Form<HashMap<String, String>>,
) -> Result<String, session_axum::Error> {
    let Some(user) = form.get("user").filter(|u| !u.is_empty()) else {
        return Ok("send user=<name>\n".to_owned());
    };
    // A real service checks the password here, before logging in.
    session.login(user).await?;
    Ok(format!("logged in as {user}\n"))
}

async fn profile(session: Session) -> Result<String, session_axum::Error> {
    let visits = session
        .update("visits", |n: Option<u64>| Some(n.unwrap_or(0) + 1))
        .await?
        .unwrap_or(0);
    Ok(match session.user_id().await? {
        Some(user) => format!("{user}, visit {visits}\n"),
        None => format!("anonymous, visit {visits}\n"),
    })
}

async fn issue_transfer_token(session: Session) -> Result<String, session_axum::Error> {
    if session.user_id().await?.is_none() {
        return Ok("log in first\n".to_owned());
    }
    let token = session.issue_token("transfer").await?;
    Ok(format!("{}\n", token.expose()))
}

async fn transfer(
    session: Session,
    Form(form): Form<HashMap<String, String>>,
) -> Result<&'static str, session_axum::Error> {
    let presented = form.get("token").map(String::as_str).unwrap_or_default();
    Ok(match session.consume_token("transfer", presented).await? {
        TokenCheck::Accepted => "transfer done\n",
        _ => "token already used, expired or wrong\n",
    })
}

async fn logout(session: Session) -> Result<&'static str, session_axum::Error> {
    session.logout().await?;
    Ok("logged out\n")
}

fn app(manager: SessionManager) -> Router {
    Router::new()
        .route("/login", post(login))
        .route("/profile", get(profile))
        .route("/transfer/new", post(issue_transfer_token))
        .route("/transfer", post(transfer))
        .route("/logout", post(logout))
        .layer(SessionLayer::new(manager))
}

/// The session manager: three sessions per user (a fourth login ends the
/// oldest), and a cookie a browser sends over plain HTTP, since this example
/// serves `http://`. Behind TLS, drop `insecure_local_http()`.
fn manager(store: impl SessionStore) -> Result<SessionManager, ConfigError> {
    SessionManager::builder(store)
        .idle_timeout(Duration::from_secs(30 * 60))
        .max_sessions_per_user(3)
        .insecure_local_http()
        .try_build()
}

async fn serve(manager: SessionManager) -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} ({e}); set LISTEN=host:port"))?;
    println!("listening on http://{addr}");
    println!("  curl -c jar -b jar -d user=alice http://{addr}/login");
    println!("  curl -c jar -b jar http://{addr}/profile");
    axum::serve(listener, app(manager)).await?;
    Ok(())
}
