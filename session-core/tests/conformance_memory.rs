//! The conformance suite against [`MemoryStore`].

use session_core::MemoryStore;

session_core::conformance_suite!(|_namespace: String| async { MemoryStore::new() });
