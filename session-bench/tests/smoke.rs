//! A tiny run of every system per backend, asserting only that every
//! operation succeeded. Speed is measured by the binary, never here.

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

#[tokio::test]
async fn memory_systems_all_succeed() {
    let servers = Servers::from_env();
    let store = systems::our_store("memory", &servers, "smoke")
        .await
        .unwrap();
    smoke("floor", Box::<systems::MemoryFloor>::default()).await;
    smoke("manager", Box::new(systems::Manager::new(store.clone()))).await;
    smoke("login", Box::new(systems::Login::new(store.clone()))).await;
    smoke("list", Box::new(systems::PerUser::new(store, false))).await;
    for (name, peer) in systems::peers("memory", &servers, "smoke").await.unwrap() {
        smoke(&name, peer).await;
    }
}
