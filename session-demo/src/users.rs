//! The demo's users: names and Argon2id password hashes, parsed from
//! `DEMO_USERS` (`alice:pw1,bob:pw2`).

use std::collections::HashMap;
use std::fmt;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;

/// Why the user list was refused.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// An entry is not `name:password` with a non-empty name and password.
    #[error("DEMO_USERS entry {index} must be name:password with both non-empty (names up to 64 printable characters)")]
    Malformed {
        /// 1-based position of the entry.
        index: usize,
    },
    /// A name appears twice.
    #[error("DEMO_USERS names user {0:?} twice")]
    Duplicate(String),
    /// Hashing failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Users and their password hashes. Plain passwords are never kept.
pub struct Users {
    hashes: HashMap<String, String>,
    /// Verified against for unknown names, so that a login for an unknown
    /// user costs as much as a wrong password.
    dummy: String,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.hashes.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Users")
            .field("names", &names)
            .finish_non_exhaustive()
    }
}

fn hash(password: &str) -> Result<String, UsersError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h: PasswordHash| h.to_string())
        .map_err(|e| UsersError::Hash(e.to_string()))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().count() <= 64 && !name.chars().any(char::is_control)
}

impl Users {
    /// Parses `name:password,name:password` (the password may contain `:`;
    /// neither part may contain `,`). Surrounding spaces of names are
    /// trimmed; passwords are taken as written.
    ///
    /// # Errors
    ///
    /// [`UsersError`] for an empty list, a malformed entry or a duplicate.
    pub fn parse(spec: &str) -> Result<Self, UsersError> {
        let mut hashes = HashMap::new();
        for (i, entry) in spec.split(',').enumerate() {
            let malformed = UsersError::Malformed { index: i + 1 };
            let (name, password) = entry.split_once(':').ok_or(malformed)?;
            let name = name.trim();
            if !valid_name(name) || password.is_empty() {
                return Err(UsersError::Malformed { index: i + 1 });
            }
            if hashes.contains_key(name) {
                return Err(UsersError::Duplicate(name.to_owned()));
            }
            hashes.insert(name.to_owned(), hash(password)?);
        }
        Ok(Self {
            hashes,
            dummy: hash("dummy password for unknown users")?,
        })
    }

    /// One user `name` with a random password, returned for printing.
    ///
    /// # Errors
    ///
    /// [`UsersError::Hash`].
    pub fn generated(name: &str) -> Result<(Self, String), UsersError> {
        let mut raw = [0u8; 12];
        getrandom::fill(&mut raw).map_err(|e| UsersError::Hash(e.to_string()))?;
        let password: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        Ok((Self::parse(&format!("{name}:{password}"))?, password))
    }

    /// The user names, sorted.
    #[must_use]
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.hashes.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Whether `password` is `name`'s password. Takes about as long for an
    /// unknown name as for a wrong password. CPU-heavy: call it off the
    /// async executor.
    #[must_use]
    pub fn verify(&self, name: &str, password: &str) -> bool {
        let (stored, known) = match self.hashes.get(name) {
            Some(h) => (h.as_str(), true),
            None => (self.dummy.as_str(), false),
        };
        let ok = PasswordHash::new(stored).is_ok_and(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        });
        ok && known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_verifies_without_keeping_passwords() {
        let users = Users::parse("alice:pw1, bob:p:w2").unwrap();
        assert_eq!(users.names(), ["alice", "bob"]);
        assert!(users.verify("alice", "pw1"));
        assert!(users.verify("bob", "p:w2"));
        assert!(!users.verify("alice", "pw2"));
        assert!(!users.verify("carol", "pw1"));
        assert!(!format!("{users:?}").contains("pw1"));
        assert!(users.hashes["alice"].starts_with("$argon2id$"));
    }

    #[test]
    fn refuses_malformed_lists() {
        for bad in ["", "alice", ":pw", "alice:", "alice:pw,", "a\u{7}b:pw"] {
            assert!(Users::parse(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            Users::parse("a:1,a:2"),
            Err(UsersError::Duplicate(_))
        ));
    }

    #[test]
    fn generated_user_has_a_random_password() {
        let (users, pw) = Users::generated("demo").unwrap();
        assert_eq!(pw.len(), 24);
        assert!(users.verify("demo", &pw));
    }
}
