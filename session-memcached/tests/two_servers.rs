//! The whole conformance suite with keys hashed across two servers
//! (`MEMCACHED_URL` and `MEMCACHED_URL_2`), plus a check that both servers
//! really hold keys.

mod common;

use session_core::conformance::record;
use session_core::{KeyDeriver, SessionId, SessionStore};

session_core::conformance_suite!(|namespace: String| async move {
    let (a, b) = (common::url(), common::url2());
    common::store(&[&a, &b], &namespace)
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_spread_over_both_servers() {
    let (a, b) = (common::url(), common::url2());
    let ns = format!("spread_{}", std::process::id());
    let both = common::store(&[&a, &b], &ns);
    let only_a = common::store(&[&a], &ns);
    let only_b = common::store(&[&b], &ns);
    let user = format!("spread-user-{}", std::process::id());
    let keys: Vec<_> = (0..40)
        .map(|_| KeyDeriver::new().derive(&SessionId::generate()))
        .collect();
    for k in &keys {
        both.create(k, &record(Some(&user), b"x", 60_000, 120_000))
            .await
            .unwrap();
    }
    let (mut on_a, mut on_b) = (0, 0);
    for k in &keys {
        let in_a = only_a.load(k).await.unwrap().is_some();
        let in_b = only_b.load(k).await.unwrap().is_some();
        assert!(in_a ^ in_b, "each session lives on exactly one server");
        on_a += usize::from(in_a);
        on_b += usize::from(in_b);
    }
    assert!(on_a > 0 && on_b > 0, "keys not spread: {on_a} / {on_b}");
    // The index lives on one server but lists sessions from both.
    assert_eq!(
        both.list_user_sessions(&user).await.unwrap().len(),
        keys.len()
    );
    assert_eq!(both.delete_user(&user).await.unwrap(), keys.len() as u64);
    for k in &keys {
        assert!(both.load(k).await.unwrap().is_none());
    }
}
