//! The manager builder's plain-value settings and the per-call conflict
//! policy.

use std::time::Duration;

use session_core::{
    CommitOutcome, ConfigError, ConflictPolicy, CookiePolicy, LimitStrategy, MemoryStore,
    SessionConfig, SessionError, SessionManager,
};

#[test]
fn plain_values_set_every_policy() {
    let manager = SessionManager::builder(MemoryStore::new())
        .idle_timeout(Duration::from_secs(600))
        .absolute_timeout(Duration::from_secs(3600))
        .touch_interval(Duration::from_secs(30))
        .token_ttl(Duration::from_secs(120))
        .max_sessions_per_user(3)
        .conflict_policy(ConflictPolicy::Fail)
        .try_build()
        .unwrap();
    let c = manager.config();
    assert_eq!(c.idle_timeout(), Duration::from_secs(600));
    assert_eq!(c.absolute_timeout(), Duration::from_secs(3600));
    assert_eq!(c.touch_interval(), Duration::from_secs(30));
    assert_eq!(c.token_ttl(), Duration::from_secs(120));
    assert_eq!(c.conflict_policy(), ConflictPolicy::Fail);
    let limit = c.user_limit().unwrap();
    assert_eq!(limit.max.get(), 3);
    assert_eq!(limit.strategy, LimitStrategy::EvictOldest);
}

#[test]
fn invalid_values_are_typed_errors() {
    let err = |b: session_core::SessionManagerBuilder| b.try_build().unwrap_err();
    let b = || SessionManager::builder(MemoryStore::new());
    assert_eq!(
        err(b().max_sessions_per_user(0)),
        ConfigError::Zero("max sessions per user")
    );
    assert!(matches!(
        err(b()
            .idle_timeout(Duration::from_secs(60))
            .absolute_timeout(Duration::from_secs(30))),
        ConfigError::IdleExceedsAbsolute { .. }
    ));
    assert_eq!(
        err(b().on_session_limit(LimitStrategy::RejectNew)),
        ConfigError::StrategyWithoutLimit
    );
}

#[test]
#[should_panic(expected = "max sessions per user must be greater than zero")]
fn build_panics_on_what_try_build_refuses() {
    let _ = SessionManager::builder(MemoryStore::new())
        .max_sessions_per_user(0)
        .build();
}

#[test]
fn the_strategy_applies_to_a_limit_from_either_place() {
    let m = SessionManager::builder(MemoryStore::new())
        .on_session_limit(LimitStrategy::RejectNew)
        .max_sessions_per_user(2)
        .try_build()
        .unwrap();
    assert_eq!(
        m.config().user_limit().unwrap().strategy,
        LimitStrategy::RejectNew
    );
    let config = SessionConfig::builder()
        .max_sessions_per_user(2.try_into().unwrap(), LimitStrategy::EvictOldest)
        .build()
        .unwrap();
    let m = SessionManager::builder(MemoryStore::new())
        .config(config)
        .on_session_limit(LimitStrategy::RejectNew)
        .try_build()
        .unwrap();
    let limit = m.config().user_limit().unwrap();
    assert_eq!(
        (limit.max.get(), limit.strategy),
        (2, LimitStrategy::RejectNew)
    );
}

#[tokio::test]
async fn the_limit_is_enforced() {
    let manager = SessionManager::builder(MemoryStore::new())
        .max_sessions_per_user(1)
        .on_session_limit(LimitStrategy::RejectNew)
        .try_build()
        .unwrap();
    let mut first = manager.start();
    manager.login(&mut first, "ann").await.unwrap();
    let mut second = manager.start();
    assert!(matches!(
        manager.login(&mut second, "ann").await,
        Err(SessionError::TooManySessions { .. })
    ));
}

#[test]
fn insecure_local_http_names_the_cookie_session() {
    let manager = SessionManager::builder(MemoryStore::new())
        .insecure_local_http()
        .try_build()
        .unwrap();
    assert_eq!(manager.cookie_policy(), &CookiePolicy::local_development());
    assert_eq!(manager.cookie_policy().name(), "session");
}

#[tokio::test]
async fn commit_with_overrides_the_conflict_policy_for_one_call() {
    // The manager merges; one commit fails instead.
    let manager = SessionManager::new(MemoryStore::new());
    let mut s = manager.start();
    s.insert("n", &0).unwrap();
    manager.commit(&mut s).await.unwrap();
    let mut a = manager.load(s.id()).await.unwrap().unwrap();
    let mut b = manager.load(s.id()).await.unwrap().unwrap();
    let mut c = manager.load(s.id()).await.unwrap().unwrap();
    a.insert("n", &1).unwrap();
    b.insert("n", &2).unwrap();
    c.insert("m", &3).unwrap();
    manager.commit(&mut a).await.unwrap();
    assert!(matches!(
        manager.commit_with(&mut b, ConflictPolicy::Fail).await,
        Err(SessionError::Conflict)
    ));
    // The configured policy still merges for the others.
    assert_eq!(
        manager.commit(&mut c).await.unwrap(),
        CommitOutcome::Updated
    );
    let end = manager.load(s.id()).await.unwrap().unwrap();
    assert_eq!(end.get::<i32>("n").unwrap(), Some(1));
    assert_eq!(end.get::<i32>("m").unwrap(), Some(3));
}
