//! A tiny run of every system per backend, asserting only that every
//! operation succeeded. Speed is measured by the binary, never here.
//! Needs the servers `scripts/services.sh` starts (or the `*_URL` variables).

use std::sync::Arc;

use session_bench::systems::{self, Servers};
use session_bench::workload::{self, System};

async fn smoke(name: &str, mut system: Box<dyn System>) {
    system
        .setup(50, 200)
        .await
        .unwrap_or_else(|e| panic!("{name}: setup failed: {e}"));
    let ops = workload::ops(7, 50, 300, 0.3);
    let m = workload::run(Arc::from(system), ops, 8).await;
    assert_eq!(m.errors, 0, "{name}: {:?}", m.first_error);
    assert_eq!(m.ok, 300, "{name}");
}

async fn ours(backend: &str, tag: &str) -> Arc<dyn session_core::SessionStore> {
    systems::our_store(
        backend,
        &Servers::from_env(),
        &format!("smoke{}{tag}", std::process::id()),
    )
    .await
    .unwrap_or_else(|e| panic!("{backend}: {e}; start the servers with scripts/services.sh"))
}

async fn all_systems(backend: &str) {
    let servers = Servers::from_env();
    let ns = format!("smoke{}{backend}", std::process::id());
    let variants: &[&str] = match backend {
        "memcached" => &["memcached", "memcached-blocking"],
        "redis" => &["redis", "redis-near-cache"],
        other => &[other],
    };
    for &variant in variants {
        smoke(
            &format!("{variant} manager"),
            Box::new(systems::Manager::new(ours(variant, "m").await)),
        )
        .await;
    }
    smoke(
        "login",
        Box::new(systems::Login::new(ours(backend, "l").await)),
    )
    .await;
    smoke(
        "list",
        Box::new(systems::PerUser::new(ours(backend, "u").await, false)),
    )
    .await;
    let floor: Box<dyn System> = match backend {
        "memory" => Box::<systems::MemoryFloor>::default(),
        "redis" => Box::new(
            systems::RedisFloor::connect(&servers.redis, &ns)
                .await
                .unwrap(),
        ),
        "postgres" => Box::new(
            systems::PostgresFloor::connect(&servers.postgres, "session_bench.floor_smoke", 4)
                .await
                .unwrap(),
        ),
        _ => Box::new(
            systems::MemcachedFloor::connect(&servers.memcached_addr(), &ns, 8)
                .await
                .unwrap(),
        ),
    };
    smoke("floor", floor).await;
    if backend == "memcached" {
        let crate_floor = systems::MemcacheCrateFloor::connect(
            &servers.memcached_addr(),
            &format!("{ns}c"),
            4,
            8,
        )
        .await
        .unwrap();
        smoke("floor (memcache crate)", Box::new(crate_floor)).await;
    }
    for (name, peer) in systems::peers(backend, &servers, &ns).await.unwrap() {
        smoke(&name, peer).await;
    }
}

#[tokio::test]
async fn memory_systems_all_succeed() {
    all_systems("memory").await;
}

#[tokio::test]
async fn redis_systems_all_succeed() {
    all_systems("redis").await;
}

#[tokio::test]
async fn postgres_systems_all_succeed() {
    systems::reset_postgres_schema(&Servers::from_env())
        .await
        .unwrap();
    all_systems("postgres").await;
}

#[tokio::test]
async fn memcached_systems_all_succeed() {
    all_systems("memcached").await;
}
