//! Embedded, versioned schema migrations for a configurable table.
//!
//! sqlx's `Migrator` expects fixed SQL and holds a session-level advisory
//! lock that leaks if a migration fails halfway; here the table name comes
//! from configuration, so the store carries its own small runner instead:
//!
//! - All pending migrations of one table run in **one transaction**: a
//!   failure leaves the database as it was.
//! - That transaction runs without the `statement_timeout` and
//!   `lock_timeout` the store sets on its connections for session
//!   operations (`SET LOCAL`-style, for the transaction only): a migration
//!   may rewrite a large table, or wait for another instance's migration
//!   or for its table lock, as long as it takes.
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
//!
//! Version 3 installs the moved-keys side table and the PL/pgSQL lifecycle
//! functions (`CREATE OR REPLACE`, so re-running it is harmless); see the
//! [crate docs](crate#lifecycle-and-locking). Version 4 adds the nullable
//! `label` column (`ADD COLUMN IF NOT EXISTS`: existing rows get `NULL`, no
//! table rewrite) and a `create_with` that takes the label.

use session_core::redact::RedactedError;
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
    Migration {
        version: 3,
        description:
            "moved-keys table and the lifecycle functions (create_with, delete, delete_user)",
        statements: v3,
    },
    Migration {
        version: 4,
        description: "nullable label column, and create_with taking the label",
        statements: v4,
    },
];

/// The schema version this library writes and expects.
pub const LATEST_VERSION: i32 = 4;

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

/// Result codes of the `create_with` function (migration 3).
pub(crate) mod code {
    /// Stored (or, under `EvictOldest`, evicted at once); nothing else to say.
    pub const OK: i32 = 0;
    /// The record to rotate is missing, expired, deleted or moved.
    pub const NOT_FOUND: i32 = 1;
    /// The record to rotate has another version or belongs to another user.
    pub const CONFLICT: i32 = 2;
    /// The new key holds a live record.
    pub const ALREADY_EXISTS: i32 = 3;
    /// `RejectNew`: the user is at the limit.
    pub const LIMIT_REACHED: i32 = 4;
}

/// Most moves the `delete` function follows from one key.
pub(crate) const MAX_MOVES: u32 = 64;

/// The moved-keys table of `table`: `"<table>_moved"`.
pub(crate) fn moved_table(table: &TableName) -> String {
    table.qualify(&table.index("moved"))
}

/// A lifecycle function of `table`: `"<table>_<name>"`.
pub(crate) fn function(table: &TableName, name: &str) -> String {
    table.qualify(&table.index(name))
}

/// The statement that takes the per-user lock of `table` for the user in
/// the PL/pgSQL variable `var`: a transaction-level advisory lock on a
/// 64-bit hash of the table's name and the user id.
fn user_lock(table: &TableName, var: &str) -> String {
    // The qualified name holds only `"`, `.` and `[a-z0-9_]`: safe inside
    // a string literal.
    let t = table.qualified();
    format!("PERFORM pg_advisory_xact_lock(hashtextextended('session_postgres.user:{t}:' || {var}, 0));")
}

/// The lifecycle functions rely on a fresh snapshot per statement, which
/// only READ COMMITTED gives; refuse loudly rather than decide on stale
/// data.
const READ_COMMITTED_ONLY: &str = "IF current_setting('transaction_isolation') <> 'read committed' THEN \
     RAISE EXCEPTION 'session-postgres needs READ COMMITTED transactions (the connection uses %)', \
     current_setting('transaction_isolation') \
     USING HINT = 'set default_transaction_isolation to read committed for the session store''s connections'; \
     END IF;";

/// The `create_with` function of migration 3 (`label` false: the
/// statement v3 always ran) or 4 (`label` true: one more parameter,
/// `p_label`, stored in the `label` column). Two overloads, told apart by
/// their number of parameters: v4 adds the new one and keeps the old, so
/// instances still running the previous version keep working during a
/// rolling upgrade (their sessions get no label).
fn create_with_function(table: &TableName, label: bool) -> String {
    let t = table.qualified();
    let moved = moved_table(table);
    let create_with = function(table, "create_with");
    let lock = user_lock(table, "p_user");
    let rc = READ_COMMITTED_ONLY;
    let (ok, not_found, conflict, exists, limit) = (
        code::OK,
        code::NOT_FOUND,
        code::CONFLICT,
        code::ALREADY_EXISTS,
        code::LIMIT_REACHED,
    );
    let (label_param, label_column, label_value, label_update) = if label {
        (
            " p_label text,",
            ", label",
            ", p_label",
            ", label = excluded.label",
        )
    } else {
        ("", "", "", "")
    };
    format!(
        r#"CREATE OR REPLACE FUNCTION {create_with}(
    p_key text, p_data bytea, p_version bigint, p_user text,
    p_created timestamptz, p_last_access timestamptz,
    p_idle timestamptz, p_absolute timestamptz,
    p_old text, p_old_version bigint, p_max bigint, p_evict boolean,{label_param}
    OUT code integer, OUT evicted text[])
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    old_version bigint;
    old_user text;
    old_until timestamptz;
    others bigint;
BEGIN
    {rc}
    evicted := '{{}}';
    -- 1. Serialize with every other lifecycle call for this user. Each
    -- statement below takes a fresh snapshot, after the lock was granted.
    IF p_user IS NOT NULL THEN
        {lock}
    END IF;
    -- 2. Rotation: the old record, locked until commit.
    IF p_old IS NOT NULL THEN
        SELECT s.version, s.user_id, s.expires_at INTO old_version, old_user, old_until
        FROM {t} AS s WHERE s.key = p_old AND s.expires_at > now() FOR UPDATE;
        IF NOT FOUND THEN
            code := {not_found};
            RETURN;
        END IF;
        IF old_version <> p_old_version
           OR (old_user IS NOT NULL AND old_user IS DISTINCT FROM p_user) THEN
            code := {conflict};
            RETURN;
        END IF;
    END IF;
    -- 3. The new key must be free.
    IF EXISTS (SELECT 1 FROM {t} AS s WHERE s.key = p_key AND s.expires_at > now()) THEN
        code := {exists};
        RETURN;
    END IF;
    -- 4. The per-user limit, over the user's other live sessions.
    IF p_user IS NOT NULL AND p_max IS NOT NULL THEN
        IF p_evict THEN
            SELECT coalesce(array_agg(c.key), '{{}}') INTO evicted
            FROM (
                SELECT u.key, row_number() OVER (
                    ORDER BY u.created_at DESC, u.key COLLATE "C" DESC) AS rank
                FROM (
                    SELECT s.key, s.created_at FROM {t} AS s
                    WHERE s.user_id = p_user AND s.expires_at > now()
                      AND s.key <> p_key AND s.key IS DISTINCT FROM p_old
                    UNION ALL
                    SELECT p_key, p_created
                ) AS u
            ) AS c
            WHERE c.rank > p_max;
        ELSE
            SELECT count(*) INTO others FROM {t} AS s
            WHERE s.user_id = p_user AND s.expires_at > now()
              AND s.key <> p_key AND s.key IS DISTINCT FROM p_old;
            IF others >= p_max THEN
                code := {limit};
                RETURN;
            END IF;
        END IF;
    END IF;
    -- 5. The writes: every check passed.
    IF p_old IS NOT NULL THEN
        DELETE FROM {t} AS s WHERE s.key = p_old;
        INSERT INTO {moved} AS m (key, moved_to, until) VALUES (p_old, p_key, old_until)
        ON CONFLICT (key) DO UPDATE SET moved_to = excluded.moved_to, until = excluded.until;
    END IF;
    IF cardinality(evicted) > 0 THEN
        DELETE FROM {t} AS s WHERE s.key = ANY (evicted) AND s.key <> p_key;
        DELETE FROM {moved} AS m WHERE m.key = ANY (evicted);
    END IF;
    IF NOT (p_key = ANY (evicted)) THEN
        INSERT INTO {t} AS s
            (key, data, version, user_id, created_at, last_access, idle_deadline, absolute_deadline{label_column})
        VALUES (p_key, p_data, p_version, p_user, p_created, p_last_access, p_idle, p_absolute{label_value})
        ON CONFLICT (key) DO UPDATE SET
            data = excluded.data, version = excluded.version, user_id = excluded.user_id,
            created_at = excluded.created_at, last_access = excluded.last_access,
            idle_deadline = excluded.idle_deadline, absolute_deadline = excluded.absolute_deadline{label_update}
        WHERE s.expires_at <= now();
        IF NOT FOUND THEN
            -- A plain create (which takes no lock) stored this key since
            -- step 3: undo everything.
            RAISE EXCEPTION 'a session record already exists under this key'
                USING ERRCODE = 'unique_violation';
        END IF;
        DELETE FROM {moved} AS m WHERE m.key = p_key;
    END IF;
    code := {ok};
END
$fn$"#
    )
}

/// The atomic lifecycle step, the moves it leaves behind, and the calls
/// that must be serialized with it. See the crate docs, "Lifecycle and
/// locking", for why these interleave safely.
///
/// - `<table>_moved (key, moved_to, until)`: where a rotated-away key's
///   session went, until the old record's own deadline. A side table, so
///   the sessions table, its indexes and its hot statements (and their HOT
///   updates) stay exactly as they were.
/// - `<table>_create_with(...)`: `create_with` in one call: the user's
///   advisory lock, the old row `FOR UPDATE`, every check, then the writes;
///   returns a result code and the evicted keys.
/// - `<table>_delete(key)`: deletes the row and follows its moves, each
///   step a fresh statement (so a fresh snapshot).
/// - `<table>_delete_user(user)`: deletes the user's rows under the user's
///   advisory lock.
///
/// The functions are `VOLATILE` PL/pgSQL: under READ COMMITTED each
/// statement inside takes a new snapshot, so a statement that runs after a
/// lock was granted sees everything committed before it was. (A single SQL
/// statement takes its snapshot before it acquires any lock, which is why
/// these are functions.)
fn v3(table: &TableName) -> Vec<String> {
    let t = table.qualified();
    let moved = moved_table(table);
    let delete = function(table, "delete");
    let delete_user = function(table, "delete_user");
    let lock = user_lock(table, "p_user");
    let rc = READ_COMMITTED_ONLY;
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {moved} (\
             key text COLLATE \"C\" PRIMARY KEY, \
             moved_to text COLLATE \"C\" NOT NULL, \
             until timestamptz NOT NULL)"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {} ON {moved} (until)",
            table.index("moved_idx")
        ),
        create_with_function(table, false),
        format!(
            r#"CREATE OR REPLACE FUNCTION {delete}(p_key text) RETURNS void
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    k text := p_key;
    next_key text;
    next_until timestamptz;
BEGIN
    {rc}
    FOR i IN 1..{MAX_MOVES} LOOP
        -- Waits for a rotation holding the row; then sees it gone.
        DELETE FROM {t} AS s WHERE s.key = k;
        -- A fresh snapshot: sees the move that rotation committed.
        DELETE FROM {moved} AS m WHERE m.key = k RETURNING m.moved_to, m.until INTO next_key, next_until;
        EXIT WHEN NOT FOUND OR next_until <= now();
        k := next_key;
    END LOOP;
END
$fn$"#
        ),
        format!(
            r#"CREATE OR REPLACE FUNCTION {delete_user}(p_user text) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    n bigint;
BEGIN
    {rc}
    {lock}
    WITH gone AS (DELETE FROM {t} AS s WHERE s.user_id = p_user RETURNING s.expires_at)
    SELECT count(*) FILTER (WHERE gone.expires_at > now()) INTO n FROM gone;
    RETURN n;
END
$fn$"#
        ),
    ]
}

/// The label column, and the `create_with` overload that stores it. The
/// column is nullable with no default, so adding it touches no row (no
/// table rewrite, a brief exclusive lock only); rows written before it, or
/// by instances still on schema 3, have no label.
fn v4(table: &TableName) -> Vec<String> {
    let t = table.qualified();
    vec![
        format!("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS label text"),
        create_with_function(table, true),
    ]
}

/// Applies the pending migrations of `table`; returns how many ran.
pub(crate) async fn run(pool: &PgPool, table: &TableName) -> Result<u32, SetupError> {
    let bookkeeping = table.qualify(&format!("\"{MIGRATIONS_TABLE}\""));
    let name = table.table().as_str();
    let schema = table.schema().map(|s| s.as_str());

    let mut tx = pool.begin().await.map_err(SetupError::migrate)?;
    // The store's connections carry a statement and a lock timeout sized
    // for session operations; DDL may rewrite a large table or wait for
    // its exclusive lock far longer. Lifted for this transaction only.
    sqlx::query(
        "SELECT set_config('statement_timeout', '0', true), \
         set_config('lock_timeout', '0', true)",
    )
    .persistent(false)
    .execute(&mut *tx)
    .await
    .map_err(SetupError::migrate)?;
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(\
         'session_postgres.migrate:' || coalesce($1, current_schema(), ''), 0))",
    )
    .bind(schema)
    .persistent(false)
    .execute(&mut *tx)
    .await
    .map_err(SetupError::migrate)?;

    if let Some(schema) = table.schema() {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(schema.as_str())
                .persistent(false)
                .fetch_one(&mut *tx)
                .await
                .map_err(SetupError::migrate)?;
        if !exists {
            tx.execute(AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                schema.quoted()
            )))
            .await
            .map_err(SetupError::migrate)?;
        }
    }

    let has_bookkeeping: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&bookkeeping)
        .persistent(false)
        .fetch_one(&mut *tx)
        .await
        .map_err(SetupError::migrate)?;
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
        .map_err(SetupError::migrate)?;
    }

    let applied: Vec<i32> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT version FROM {bookkeeping} WHERE table_name = $1"
    )))
    .bind(name)
    .persistent(false)
    .fetch_all(&mut *tx)
    .await
    .map_err(SetupError::migrate)?;

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
                    source: RedactedError::new(source),
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
        .map_err(SetupError::migrate)?;
        tracing::info!(
            target: "session_postgres",
            table = %table,
            version = m.version,
            description = m.description,
            "applied migration"
        );
        ran += 1;
    }
    tx.commit().await.map_err(SetupError::migrate)?;
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
                    || sql.starts_with("CREATE OR REPLACE FUNCTION")
                    || sql.contains(" SET (");
                assert!(idempotent, "{sql}");
                assert!(sql.contains(r#""auth"."#), "{sql}");
            }
        }
    }
}
