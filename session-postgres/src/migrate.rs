//! Embedded, versioned schema migrations for a configurable table.
//!
//! sqlx's `Migrator` expects fixed SQL and holds a session-level advisory
//! lock that leaks if a migration fails halfway; here the table name comes
//! from configuration, so the store carries its own small runner instead:
//!
//! - All pending migrations of one table run in **one transaction**: a
//!   failure leaves the database as it was.
//! - The transaction first takes a **transaction-level advisory lock** per
//!   schema (`pg_advisory_xact_lock`), so concurrent `migrate()` calls from
//!   several instances queue up instead of racing; PostgreSQL releases it at
//!   commit or rollback, whatever happens to the client.
//! - Applied versions are recorded per table in
//!   `session_postgres_migrations`, in the same schema as the table.
//! - Every DDL statement is idempotent (`IF NOT EXISTS`), so a table created
//!   by hand or by an older bookkeeping-less version is adopted as is.
//! - When everything is applied already, no DDL runs at all: a role without
//!   `CREATE` privileges can call `migrate()` at every start-up.

use sqlx::{AssertSqlSafe, Executor, PgPool};

use crate::error::SetupError;
use crate::ident::TableName;

/// Name of the bookkeeping table (in the schema of the sessions table).
pub const MIGRATIONS_TABLE: &str = "session_postgres_migrations";

/// One schema version.
struct Migration {
    version: i32,
    description: &'static str,
    statements: fn(&TableName) -> Vec<String>,
}

/// Every migration, in order. Append only: never edit a released one.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "sessions table with user and expiry indexes",
        statements: v1,
    },
    Migration {
        version: 2,
        description: "expiry index on a 10-minute bucket, so that writes can be HOT updates",
        statements: v2,
    },
];

/// The schema version this library writes and expects.
pub const LATEST_VERSION: i32 = 2;

/// Width of the expiry buckets of migration 2.
pub(crate) const EXPIRY_BUCKET: &str = "10 minutes";
/// Origin of the expiry buckets.
pub(crate) const EXPIRY_BUCKET_ORIGIN: &str = "2000-01-01 00:00:00+00";

fn v1(table: &TableName) -> Vec<String> {
    let t = table.qualified();
    vec![
        // COLLATE "C": keys and user ids compare byte for byte (no
        // locale-dependent equality, faster index comparisons).
        format!(
            "CREATE TABLE IF NOT EXISTS {t} (\
             key text COLLATE \"C\" PRIMARY KEY, \
             data bytea NOT NULL, \
             version bigint NOT NULL, \
             user_id text COLLATE \"C\", \
             created_at timestamptz NOT NULL, \
             last_access timestamptz NOT NULL, \
             idle_deadline timestamptz NOT NULL, \
             absolute_deadline timestamptz NOT NULL, \
             expires_at timestamptz GENERATED ALWAYS AS (least(idle_deadline, absolute_deadline)) STORED)"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {} ON {t} (user_id) WHERE user_id IS NOT NULL",
            table.index("user_id_idx")
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {} ON {t} (expires_at)",
            table.index("expires_at_idx")
        ),
    ]
}

/// Every write moves a session's idle deadline, so an index on the exact
/// expiry (v1) changes on every write, and PostgreSQL cannot make the
/// update heap-only (HOT): each write inserted into all three indexes. The
/// cleanup only needs to find expired rows, so v2 indexes the expiry
/// rounded down to a 10-minute bucket instead: it changes about once per
/// ten minutes of a session's activity, and the other writes are HOT. A
/// fill factor of 90 leaves room on each page for the new row versions.
///
/// Adding the stored column rewrites the table once, under an exclusive
/// lock: on a large table, run `migrate()` at a quiet time.
fn v2(table: &TableName) -> Vec<String> {
    let t = table.qualified();
    vec![
        format!(
            "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS expiry_bucket timestamptz \
             GENERATED ALWAYS AS (date_bin('{EXPIRY_BUCKET}', least(idle_deadline, absolute_deadline), \
             '{EXPIRY_BUCKET_ORIGIN}')) STORED"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {} ON {t} (expiry_bucket)",
            table.index("expiry_idx")
        ),
        format!("DROP INDEX IF EXISTS {}", table.qualify(&table.index("expires_at_idx"))),
        format!("ALTER TABLE {t} SET (fillfactor = 90)"),
    ]
}

/// Applies the pending migrations of `table`; returns how many ran.
pub(crate) async fn run(pool: &PgPool, table: &TableName) -> Result<u32, SetupError> {
    let bookkeeping = table.qualify(&format!("\"{MIGRATIONS_TABLE}\""));
    let name = table.table().as_str();
    let schema = table.schema().map(|s| s.as_str());

    let mut tx = pool.begin().await.map_err(SetupError::Migrate)?;
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(\
         'session_postgres.migrate:' || coalesce($1, current_schema(), ''), 0))",
    )
    .bind(schema)
    .persistent(false)
    .execute(&mut *tx)
    .await
    .map_err(SetupError::Migrate)?;

    if let Some(schema) = table.schema() {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(schema.as_str())
                .persistent(false)
                .fetch_one(&mut *tx)
                .await
                .map_err(SetupError::Migrate)?;
        if !exists {
            tx.execute(AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                schema.quoted()
            )))
            .await
            .map_err(SetupError::Migrate)?;
        }
    }

    let has_bookkeeping: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&bookkeeping)
        .persistent(false)
        .fetch_one(&mut *tx)
        .await
        .map_err(SetupError::Migrate)?;
    if !has_bookkeeping {
        tx.execute(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {bookkeeping} (\
             table_name text NOT NULL, \
             version integer NOT NULL, \
             description text NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT now(), \
             PRIMARY KEY (table_name, version))"
        )))
        .await
        .map_err(SetupError::Migrate)?;
    }

    let applied: Vec<i32> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT version FROM {bookkeeping} WHERE table_name = $1"
    )))
    .bind(name)
    .persistent(false)
    .fetch_all(&mut *tx)
    .await
    .map_err(SetupError::Migrate)?;

    if let Some(newest) = applied
        .iter()
        .copied()
        .max()
        .filter(|v| *v > LATEST_VERSION)
    {
        tracing::warn!(
            target: "session_postgres",
            table = %table,
            database_version = newest,
            library_version = LATEST_VERSION,
            "the sessions table was migrated by a newer version of session-postgres"
        );
    }

    let mut ran = 0;
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        for statement in (m.statements)(table) {
            tx.execute(AssertSqlSafe(statement))
                .await
                .map_err(|source| SetupError::MigrationFailed {
                    version: m.version,
                    description: m.description,
                    source,
                })?;
        }
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {bookkeeping} (table_name, version, description) VALUES ($1, $2, $3)"
        )))
        .bind(name)
        .bind(m.version)
        .bind(m.description)
        .persistent(false)
        .execute(&mut *tx)
        .await
        .map_err(SetupError::Migrate)?;
        tracing::info!(
            target: "session_postgres",
            table = %table,
            version = m.version,
            description = m.description,
            "applied migration"
        );
        ran += 1;
    }
    tx.commit().await.map_err(SetupError::Migrate)?;
    Ok(ran)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_increasing_and_latest_is_last() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        assert_eq!(versions.last().copied(), Some(LATEST_VERSION));
    }

    #[test]
    fn ddl_is_idempotent_and_names_the_configured_table() {
        let table = TableName::new(Some("auth"), "web").unwrap();
        for m in MIGRATIONS {
            for sql in (m.statements)(&table) {
                let idempotent = sql.contains("IF NOT EXISTS")
                    || sql.contains("IF EXISTS")
                    || sql.contains(" SET (");
                assert!(idempotent, "{sql}");
                assert!(sql.contains(r#""auth"."#), "{sql}");
            }
        }
    }
}
