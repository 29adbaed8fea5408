//! `session-demo`: serves the session demo over HTTPS.
//!
//! ```text
//! cargo run -p session-demo                      # https://127.0.0.1:8443, in-memory store
//! cargo run -p session-demo -- --listen 0.0.0.0:9443 --idle-timeout-secs 60
//! DEMO_USERS=alice:pw1,bob:pw2 cargo run -p session-demo
//! ```

use std::process::ExitCode;

use clap::Parser;
use session_demo::{Config, Demo};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::parse();
    let demo = match Demo::bind(config).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("session-demo: {}", session_core::ErrorChain(&e));
            return ExitCode::from(2);
        }
    };
    print!("{}", demo.banner());
    match demo.serve().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "session-demo: server failed: {}",
                session_core::ErrorChain(&e)
            );
            ExitCode::FAILURE
        }
    }
}
