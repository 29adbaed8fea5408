//! The demo's users: names and Argon2id password hashes, parsed from
//! `DEMO_USERS` (`alice:pw1,bob:pw2`).

use std::collections::HashMap;
use std::fmt;

use argon2::password_hash::phc::{Output, PasswordHash};
use argon2::password_hash::PasswordHasher;
use argon2::{Algorithm, Argon2, Block, Params, Version};

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
    ///
    /// Allocates the check's memory (19 MiB) for this call only; a thread
    /// that checks many passwords should keep a [`Scratch`] and call
    /// [`Users::verify_with`].
    #[must_use]
    pub fn verify(&self, name: &str, password: &str) -> bool {
        self.verify_with(&mut Scratch::default(), name, password)
    }

    /// [`Users::verify`] with the check's memory taken from `scratch`,
    /// which keeps it for the next check.
    ///
    /// Why: Argon2's 19 MiB block array is 64-byte aligned, and with glibc a
    /// fresh aligned allocation per check is not reliably reused: a thread
    /// checking passwords one after the other grew by about 19 MiB per check
    /// (measured: 8 sequential checks took a process from 21 to 157 MB).
    /// Reusing one array per thread keeps it at one array per thread.
    #[must_use]
    pub fn verify_with(&self, scratch: &mut Scratch, name: &str, password: &str) -> bool {
        let (stored, known) = match self.hashes.get(name) {
            Some(h) => (h.as_str(), true),
            None => (self.dummy.as_str(), false),
        };
        let ok = PasswordHash::new(stored).is_ok_and(|h| scratch.check(&h, password.as_bytes()));
        ok && known
    }
}

/// Memory reused by successive password checks on one thread: Argon2's
/// block array, grown to the largest parameters seen (19 MiB for the
/// defaults).
#[derive(Default)]
pub struct Scratch {
    blocks: Vec<Block>,
}

impl fmt::Debug for Scratch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scratch")
            .field("blocks", &self.blocks.len())
            .finish()
    }
}

impl Scratch {
    /// Recomputes `stored`'s hash of `password` with `stored`'s algorithm,
    /// version and parameters, and compares the outputs in constant time
    /// (what `PasswordVerifier::verify_password` does, without allocating
    /// the block array each time).
    fn check(&mut self, stored: &PasswordHash, password: &[u8]) -> bool {
        let (Some(salt), Some(expected)) = (&stored.salt, &stored.hash) else {
            return false;
        };
        let Ok(algorithm) = Algorithm::try_from(stored.algorithm.as_str()) else {
            return false;
        };
        let version = match stored.version.map(Version::try_from).transpose() {
            Ok(v) => v.unwrap_or_default(),
            Err(_) => return false,
        };
        let Ok(params) = Params::try_from(stored) else {
            return false;
        };
        let blocks = params.block_count();
        if self.blocks.len() < blocks {
            self.blocks = vec![Block::default(); blocks];
        }
        let mut buffer = [0u8; Output::MAX_LENGTH];
        let Some(out) = buffer.get_mut(..expected.len()) else {
            return false;
        };
        let hashed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
            password,
            salt.as_ref(),
            out,
            &mut self.blocks[..blocks],
        );
        // `Output`'s equality is constant-time.
        hashed.is_ok() && Output::new(out).is_ok_and(|computed| computed == *expected)
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
    fn a_reused_scratch_gives_the_same_answers_as_the_library() {
        use argon2::password_hash::PasswordVerifier;

        let users = Users::parse("alice:pw1,bob:pw2").unwrap();
        let mut scratch = Scratch::default();
        for _ in 0..3 {
            assert!(users.verify_with(&mut scratch, "alice", "pw1"));
            assert!(!users.verify_with(&mut scratch, "alice", "pw2"));
            assert!(users.verify_with(&mut scratch, "bob", "pw2"));
            assert!(!users.verify_with(&mut scratch, "carol", "pw1"));
        }
        assert_eq!(scratch.blocks.len(), 19 * 1024);
        // The stored hashes are ordinary PHC strings the library verifies.
        let h = PasswordHash::new(&users.hashes["alice"]).unwrap();
        assert!(Argon2::default().verify_password(b"pw1", &h).is_ok());
        // Other parameters and versions are honoured, and a hash without
        // an output never matches.
        let small = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x10,
            Params::new(64, 2, 1, Some(16)).unwrap(),
        );
        let salt = [7u8; 16];
        let h = small.hash_password_with_salt(b"pw", &salt).unwrap();
        assert!(scratch.check(&h, b"pw"));
        assert!(!scratch.check(&h, b"pW"));
        let mut bare = h.clone();
        bare.hash = None;
        assert!(!scratch.check(&bare, b"pw"));
    }

    #[test]
    fn generated_user_has_a_random_password() {
        let (users, pw) = Users::generated("demo").unwrap();
        assert_eq!(pw.len(), 24);
        assert!(users.verify("demo", &pw));
    }
}
