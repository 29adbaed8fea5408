//! Validated SQL identifiers: where the store's table lives.
//!
//! The table and schema names are the only parts of the store's SQL that
//! come from configuration rather than bind parameters, so they are checked
//! once, when the store is built: an [`Identifier`] is 1 to 63 bytes of
//! `[a-z0-9_]` starting with a letter or `_`, and is always double-quoted in
//! SQL. Nothing that could close a quote, start a comment or end a statement
//! gets through, whatever the configuration says.

use std::fmt;

/// Longest identifier PostgreSQL keeps without truncating (`NAMEDATALEN - 1`).
pub const MAX_IDENTIFIER_LEN: usize = 63;

/// Longest table name: the store derives index names by appending up to 15
/// bytes (`_expires_at_idx`), and those must fit in 63 bytes too, or
/// PostgreSQL would truncate them and two tables could collide.
pub const MAX_TABLE_NAME_LEN: usize = MAX_IDENTIFIER_LEN - 15;

/// Why a name was rejected as a table or schema name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentifierError {
    /// The name is empty.
    #[error("the {what} name is empty")]
    Empty {
        /// `"table"` or `"schema"`.
        what: &'static str,
    },
    /// The name is longer than PostgreSQL (or the derived index names) allow.
    #[error("the {what} name {name:?} is {len} bytes long; at most {max} are allowed")]
    TooLong {
        /// `"table"` or `"schema"`.
        what: &'static str,
        /// The rejected name.
        name: String,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The name contains something other than lowercase ASCII letters,
    /// digits and underscores, or starts with a digit.
    #[error(
        "the {what} name {name:?} is not a plain lowercase identifier: use only a-z, 0-9 and _, \
         starting with a letter or _"
    )]
    InvalidCharacters {
        /// `"table"` or `"schema"`.
        what: &'static str,
        /// The rejected name.
        name: String,
    },
    /// The name starts with `pg_`, which PostgreSQL reserves for system
    /// schemas.
    #[error("the {what} name {name:?} starts with pg_, which PostgreSQL reserves")]
    Reserved {
        /// `"table"` or `"schema"`.
        what: &'static str,
        /// The rejected name.
        name: String,
    },
}

/// A table or schema name that is safe to splice into SQL.
///
/// Only lowercase names are accepted: PostgreSQL folds unquoted names to
/// lowercase, so a name with capitals would have to be quoted in every query
/// an operator types by hand.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identifier(String);

impl Identifier {
    /// Validates `name` as a schema name.
    ///
    /// # Errors
    ///
    /// [`IdentifierError`] if it is empty, longer than 63 bytes, contains
    /// anything but `[a-z0-9_]`, starts with a digit, or starts with `pg_`.
    pub fn schema(name: &str) -> Result<Self, IdentifierError> {
        Self::validate("schema", name, MAX_IDENTIFIER_LEN)
    }

    /// Validates `name` as a table name.
    ///
    /// # Errors
    ///
    /// As [`Identifier::schema`], with a limit of
    /// [`MAX_TABLE_NAME_LEN`] bytes.
    pub fn table(name: &str) -> Result<Self, IdentifierError> {
        Self::validate("table", name, MAX_TABLE_NAME_LEN)
    }

    fn validate(what: &'static str, name: &str, max: usize) -> Result<Self, IdentifierError> {
        let owned = || name.to_owned();
        let mut chars = name.chars();
        let Some(first) = chars.next() else {
            return Err(IdentifierError::Empty { what });
        };
        if name.len() > max {
            return Err(IdentifierError::TooLong {
                what,
                name: owned(),
                len: name.len(),
                max,
            });
        }
        let plain = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
        if !(first.is_ascii_lowercase() || first == '_') || !chars.all(plain) {
            return Err(IdentifierError::InvalidCharacters {
                what,
                name: owned(),
            });
        }
        if name.starts_with("pg_") {
            return Err(IdentifierError::Reserved {
                what,
                name: owned(),
            });
        }
        Ok(Self(name.to_owned()))
    }

    /// The bare name, as PostgreSQL's catalogs store it.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name double-quoted for SQL text.
    ///
    /// Validation guarantees there is no `"` to escape.
    #[must_use]
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl fmt::Debug for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A table, optionally qualified by its schema.
///
/// Without a schema, the table is found through the connection's
/// `search_path` (usually `public`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    schema: Option<Identifier>,
    table: Identifier,
}

impl TableName {
    /// Validates and combines a schema (optional) and table name.
    ///
    /// # Errors
    ///
    /// [`IdentifierError`] if either name is rejected.
    pub fn new(schema: Option<&str>, table: &str) -> Result<Self, IdentifierError> {
        Ok(Self {
            schema: schema.map(Identifier::schema).transpose()?,
            table: Identifier::table(table)?,
        })
    }

    /// The schema, if one was configured.
    #[must_use]
    pub fn schema(&self) -> Option<&Identifier> {
        self.schema.as_ref()
    }

    /// The table.
    #[must_use]
    pub fn table(&self) -> &Identifier {
        &self.table
    }

    /// `"schema"."table"` (or `"table"`), ready for SQL text.
    #[must_use]
    pub fn qualified(&self) -> String {
        self.qualify(&self.table.quoted())
    }

    /// Another object (a quoted name) in the same schema as this table.
    pub(crate) fn qualify(&self, quoted: &str) -> String {
        match &self.schema {
            Some(s) => format!("{}.{quoted}", s.quoted()),
            None => quoted.to_owned(),
        }
    }

    /// The name of an index on this table: `"<table>_<suffix>"`.
    pub(crate) fn index(&self, suffix: &str) -> String {
        debug_assert!(suffix.len() < 15);
        format!("\"{}_{suffix}\"", self.table.as_str())
    }
}

impl Default for TableName {
    /// The table `sessions`, found through the `search_path`.
    fn default() -> Self {
        Self {
            schema: None,
            table: Identifier(DEFAULT_TABLE.to_owned()),
        }
    }
}

/// The default table name.
pub const DEFAULT_TABLE: &str = "sessions";

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.qualified())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_lowercase_names() {
        for name in ["sessions", "_s", "a", "web_sessions_v2", "x1_2_3"] {
            assert_eq!(Identifier::table(name).unwrap().as_str(), name);
            assert_eq!(Identifier::schema(name).unwrap().as_str(), name);
        }
        assert_eq!(
            TableName::new(Some("auth"), "sessions")
                .unwrap()
                .qualified(),
            r#""auth"."sessions""#
        );
        assert_eq!(
            TableName::new(None, "sessions").unwrap().qualified(),
            r#""sessions""#
        );
        assert_eq!(TableName::default().qualified(), r#""sessions""#);
    }

    #[test]
    fn rejects_injection_attempts() {
        let hostile = [
            "sessions\"; DROP TABLE users; --",
            "a\"b",
            "a;b",
            "a b",
            "a--b",
            "a/*b*/",
            "a.b",
            "a'b",
            "a\\b",
            "a\0b",
            "a\nb",
            "a$1",
            "\u{0430}bc", // Cyrillic a
            "caf\u{e9}",
        ];
        for name in hostile {
            assert!(
                matches!(
                    Identifier::table(name),
                    Err(IdentifierError::InvalidCharacters { .. })
                ),
                "{name:?} accepted as a table"
            );
            assert!(
                Identifier::schema(name).is_err(),
                "{name:?} accepted as a schema"
            );
            assert!(TableName::new(Some(name), "ok").is_err());
            assert!(TableName::new(Some("ok"), name).is_err());
        }
    }

    #[test]
    fn rejects_case_digits_first_empty_reserved() {
        assert!(matches!(
            Identifier::table("Sessions"),
            Err(IdentifierError::InvalidCharacters { .. })
        ));
        assert!(matches!(
            Identifier::table("1sessions"),
            Err(IdentifierError::InvalidCharacters { .. })
        ));
        assert_eq!(
            Identifier::table(""),
            Err(IdentifierError::Empty { what: "table" })
        );
        assert!(matches!(
            Identifier::schema("pg_catalog"),
            Err(IdentifierError::Reserved { .. })
        ));
    }

    #[test]
    fn enforces_length_limits() {
        let table_max = "t".repeat(MAX_TABLE_NAME_LEN);
        assert!(Identifier::table(&table_max).is_ok());
        let err = Identifier::table(&format!("{table_max}t")).unwrap_err();
        assert!(matches!(err, IdentifierError::TooLong { max: 48, .. }));
        assert!(Identifier::schema(&"s".repeat(63)).is_ok());
        assert!(Identifier::schema(&"s".repeat(64)).is_err());
        // Derived index names still fit without truncation.
        let t = TableName::new(None, &table_max).unwrap();
        assert_eq!(t.index("expires_at_idx").len() - 2, MAX_IDENTIFIER_LEN);
    }

    #[test]
    fn errors_name_the_problem() {
        let msg = Identifier::schema("bad name").unwrap_err().to_string();
        assert!(msg.contains("schema") && msg.contains("bad name"), "{msg}");
    }
}
