//! PostgreSQL schemas a test binary owns.

use std::collections::HashSet;

use session_core::redact::redact_url;
use tokio::sync::Mutex;

/// Makes `schema` an empty schema on the server at `url`, once per process:
/// the first call of a test binary drops it (with everything in it, left by
/// an earlier run) and creates it again; later calls with the same name
/// return at once, so the tests of one binary share it. Each binary must
/// use its own schema name.
///
/// # Panics
///
/// When the server does not answer or refuses (the message shows the URL
/// without its password), or `schema` is not a plain identifier
/// (`[a-z0-9_]`).
pub async fn fresh_schema(url: &str, schema: &str) {
    static READY: Mutex<Option<HashSet<String>>> = Mutex::const_new(None);
    assert!(
        !schema.is_empty()
            && schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "schema names here are [a-z0-9_]: {schema:?}"
    );
    let mut ready = READY.lock().await;
    let ready = ready.get_or_insert_with(HashSet::new);
    if ready.contains(schema) {
        return;
    }
    let pool = sqlx::PgPool::connect(url)
        .await
        .unwrap_or_else(|e| panic!("no PostgreSQL at {}: {e}", redact_url(url)));
    for stmt in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(stmt))
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("preparing schema {schema}: {e}"));
    }
    pool.close().await;
    ready.insert(schema.to_owned());
}
