//! The session-core conformance suite, then the fault scenarios, against a
//! real PostgreSQL server (see `common` for which one). Every case gets its
//! own table, named after its namespace, in the `session_postgres_test`
//! schema; the table is dropped when the case ends.

mod common;

use common::{builder, database_url, Scratch};
use session_core::conformance::faults::FaultTarget;

session_core::conformance_suite!(|namespace: String| async move {
    Scratch::new(&namespace).await.into_store()
});

session_core::fault_scenarios!(database_url(), |target: FaultTarget| async move {
    let builder = builder(target.namespace())
        .acquire_timeout(target.timeout())
        .connect_timeout(target.timeout())
        .operation_timeout(target.timeout());
    Scratch::at(builder, target.url()).await.into_store()
});
