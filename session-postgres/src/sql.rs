//! The SQL text of every operation, built once per store.
//!
//! Each operation is exactly one statement, so one round trip; sqlx prepares
//! it once per connection and reuses it (persistent statements). The
//! lifecycle operations (`create_with`, `delete`, `delete_user`) are one
//! call each of a PL/pgSQL function installed by migration 3 (see
//! [`crate::migrate`]). Every comparison with "now" uses the server's
//! `now()`, so all application instances agree on expiry whatever their own
//! clocks say.

use std::sync::Arc;

use crate::ident::TableName;
use crate::migrate::{function, moved_table, EXPIRY_BUCKET, EXPIRY_BUCKET_ORIGIN};

/// Prepared SQL strings for one table.
///
/// `Arc<str>` so that handing one to sqlx costs a reference-count increment,
/// not a copy.
#[derive(Debug)]
pub(crate) struct Statements {
    /// `$1 key, $2 data, $3 version, $4 user_id, $5 created_at,
    /// $6 last_access, $7 idle_deadline, $8 absolute_deadline, $9 label`;
    /// one row affected when written, none when a live record holds the
    /// key.
    pub create: Arc<str>,
    /// `$1 key`; the row's record columns when live.
    pub load: Arc<str>,
    /// `$1 key, $2 expected version, $3 data, $4 version, $5 created_at,
    /// $6 last_access, $7 idle_deadline, $8 absolute_deadline`; one row
    /// affected when written. User and label are fixed at creation: not
    /// written. When none is, [`Statements::live`] tells a
    /// stale version from a missing record.
    pub update: Arc<str>,
    /// `$1 key`; one row when a live record exists.
    pub live: Arc<str>,
    /// `$1 key, $2 last_access, $3 idle_deadline`; one row affected when
    /// live. Committed asynchronously: see [`Statements::new`].
    pub touch: Arc<str>,
    /// `$1 key, $2 data, $3 version, $4 user_id, $5 created_at,
    /// $6 last_access, $7 idle_deadline, $8 absolute_deadline, $9 old key,
    /// $10 old version, $11 limit, $12 evict oldest, $13 label`; one row:
    /// an `int4` result code (`migrate::code`) and the evicted keys
    /// (`text[]`).
    pub create_with: Arc<str>,
    /// `$1 key`: deletes the record and follows its moves.
    pub delete: Arc<str>,
    /// `$1 user_id`; summaries of the live sessions, labels included.
    pub list_user_sessions: Arc<str>,
    /// `$1 user_id`; one `int8`: how many live sessions were deleted.
    pub delete_user: Arc<str>,
    /// `$1 batch size`; one row: expired records removed, expired move
    /// entries removed (two `int8`).
    pub delete_expired: Arc<str>,
}

/// The columns a load returns, in the order `decode_record` reads them.
pub(crate) const RECORD_COLUMNS: &str =
    "data, version, user_id, created_at, last_access, idle_deadline, absolute_deadline, label";

impl Statements {
    /// The statements for `table`.
    ///
    /// `touch` turns `synchronous_commit` off for its own transaction
    /// (`set_config(…, true)` is transaction-local and still in force when
    /// the statement's implicit transaction commits): PostgreSQL answers
    /// before the touch's WAL is flushed. A touch only moves the idle
    /// deadline forward, so a database crash can at worst lose the last
    /// fraction of a second of touches, and those sessions expire up to one
    /// touch interval early. Every other write waits for its flush as the
    /// server is configured to.
    pub(crate) fn new(table: &TableName) -> Self {
        let t = table.qualified();
        let s = |text: String| -> Arc<str> { Arc::from(text) };
        Self {
            create: s(format!(
                "INSERT INTO {t} AS s \
                 (key, data, version, user_id, created_at, last_access, idle_deadline, absolute_deadline, label) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (key) DO UPDATE SET \
                 data = excluded.data, version = excluded.version, user_id = excluded.user_id, \
                 created_at = excluded.created_at, last_access = excluded.last_access, \
                 idle_deadline = excluded.idle_deadline, absolute_deadline = excluded.absolute_deadline, \
                 label = excluded.label \
                 WHERE s.expires_at <= now()"
            )),
            load: s(format!(
                "SELECT {RECORD_COLUMNS} FROM {t} WHERE key = $1 AND expires_at > now()"
            )),
            update: s(format!(
                "UPDATE {t} SET data = $3, version = $4, created_at = $5, last_access = $6, \
                 idle_deadline = $7, absolute_deadline = $8 \
                 WHERE key = $1 AND version = $2 AND expires_at > now()"
            )),
            live: s(format!(
                "SELECT 1 FROM {t} WHERE key = $1 AND expires_at > now()"
            )),
            touch: s(format!(
                "UPDATE {t} SET last_access = $2, idle_deadline = $3 \
                 FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit \
                 WHERE key = $1 AND expires_at > now()"
            )),
            create_with: s(format!(
                "SELECT code, evicted FROM {}($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                function(table, "create_with")
            )),
            delete: s(format!("SELECT {}($1)", function(table, "delete"))),
            list_user_sessions: s(format!(
                "SELECT key, created_at, last_access, idle_deadline, absolute_deadline, label \
                 FROM {t} WHERE user_id = $1 AND expires_at > now()"
            )),
            delete_user: s(format!("SELECT {}($1)", function(table, "delete_user"))),
            delete_expired: s(format!(
                "WITH gone AS (DELETE FROM {t} WHERE key IN (\
                 SELECT key FROM {t} \
                 WHERE expiry_bucket <= date_bin('{EXPIRY_BUCKET}', now(), '{EXPIRY_BUCKET_ORIGIN}') \
                 AND expires_at <= now() \
                 LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 AND expires_at <= now() RETURNING 1), \
                 unmoved AS (DELETE FROM {m} WHERE key IN (\
                 SELECT key FROM {m} WHERE until <= now() LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 AND until <= now() RETURNING 1) \
                 SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM unmoved)",
                m = moved_table(table)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_names_the_qualified_table() {
        let table = TableName::new(Some("auth"), "web_sessions").unwrap();
        let s = Statements::new(&table);
        for sql in [
            &s.create,
            &s.load,
            &s.update,
            &s.live,
            &s.touch,
            &s.list_user_sessions,
            &s.delete_expired,
        ] {
            assert!(sql.contains(r#""auth"."web_sessions""#), "{sql}");
            assert!(!sql.contains(';'), "one statement only: {sql}");
        }
        for (sql, function) in [
            (&s.create_with, "create_with"),
            (&s.delete, "delete"),
            (&s.delete_user, "delete_user"),
        ] {
            let name = format!(r#""auth"."web_sessions_{function}"("#);
            assert!(sql.contains(&name), "{sql}");
            assert!(!sql.contains(';'), "one statement only: {sql}");
        }
    }

    #[test]
    fn reads_filter_on_server_time() {
        let s = Statements::new(&TableName::default());
        for sql in [&s.load, &s.update, &s.live, &s.touch, &s.list_user_sessions] {
            assert!(sql.contains("expires_at > now()"), "{sql}");
        }
        assert!(s.create.contains("WHERE s.expires_at <= now()"));
    }

    #[test]
    fn only_touch_commits_asynchronously() {
        let s = Statements::new(&TableName::default());
        assert!(s
            .touch
            .contains("set_config('synchronous_commit', 'off', true)"));
        for sql in [&s.create, &s.load, &s.update, &s.delete, &s.delete_user] {
            assert!(!sql.contains("synchronous_commit"), "{sql}");
        }
    }
}
