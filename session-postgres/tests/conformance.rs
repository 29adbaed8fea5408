//! The session-core conformance suite against a real PostgreSQL server
//! (see `common` for which one). Every case gets its own table, named after
//! its namespace, in the `session_postgres_test` schema; the table is
//! dropped when the case ends.

mod common;

session_core::conformance_suite!(|namespace: String| async move {
    common::Scratch::new(&namespace).await
});
