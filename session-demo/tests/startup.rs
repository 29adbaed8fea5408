//! What a newcomer sees at start, and startup errors.

mod common;

use clap::Parser;
use session_demo::{Config, Demo};

#[tokio::test]
async fn without_demo_users_a_printed_password_logs_in() {
    let demo = common::bind(&[], None).await;
    let banner = demo.banner().to_owned();
    let port = demo.local_addr().port();
    assert!(
        banner.contains(&format!("https://127.0.0.1:{port}/")),
        "{banner}"
    );
    assert!(banner.contains("session store: memory"), "{banner}");
    let start = banner.find("with password \"").unwrap() + "with password \"".len();
    let password = banner[start..start + 24].to_owned();
    let client = common::client(demo.certificate_pem().unwrap());
    tokio::spawn(demo.serve());
    let s = common::Server {
        base: format!("https://127.0.0.1:{port}"),
        client,
    };
    let r = s.login_with(None, "demo", &password).await;
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(s.whoami(&r.cookie()).await.as_deref(), Some("demo"));
}

#[tokio::test]
async fn certificate_files_are_used_when_given() {
    let dir = std::env::temp_dir().join(format!("session-demo-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let demo = common::bind(
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        Some(common::USERS),
    )
    .await;
    assert!(demo.certificate_pem().is_none());
    let s = common::Server {
        base: format!("https://127.0.0.1:{}", demo.local_addr().port()),
        client: common::client(&ck.cert.pem()),
    };
    tokio::spawn(demo.serve());
    assert_eq!(s.get("/", None).await.status, 200);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn startup_errors_say_what_to_fix() {
    let err = |args: &[&str], users: Option<&str>| {
        let mut argv = vec!["session-demo", "--listen", "127.0.0.1:0"];
        argv.extend_from_slice(args);
        let mut config = Config::try_parse_from(argv).unwrap();
        config.users = users.map(str::to_owned);
        async move {
            let e = Demo::bind(config).await.unwrap_err();
            // What main prints: the message and every cause.
            session_core::ErrorChain(&e).to_string()
        }
    };
    let e = err(&["--backend", "cassandra"], Some("a:b")).await;
    assert!(e.contains("unknown SESSION_BACKEND \"cassandra\""), "{e}");
    let e = err(&[], Some("alice")).await;
    assert!(e.contains("DEMO_USERS entry 1"), "{e}");
    let e = err(
        &[
            "--idle-timeout-secs",
            "100",
            "--absolute-timeout-secs",
            "10",
        ],
        Some("a:b"),
    )
    .await;
    assert!(e.contains("idle timeout"), "{e}");
    let e = err(
        &[
            "--cert",
            "/nonexistent/c.pem",
            "--key",
            "/nonexistent/k.pem",
        ],
        Some("a:b"),
    )
    .await;
    assert!(e.contains("cannot read certificate"), "{e}");
}
