//! The conformance suite against `EncryptedStore<MemoryStore>`.

use session_core::MemoryStore;
use session_encrypted::{EncryptedStore, EncryptionKey, KeyRing};

session_core::conformance_suite!(|_namespace: String| async {
    EncryptedStore::new(
        MemoryStore::new(),
        KeyRing::new(1, EncryptionKey::generate()),
    )
});
