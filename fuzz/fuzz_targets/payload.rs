#![no_main]

use libfuzzer_sys::fuzz_target;

// Stored session data loaded through MemoryStore + SessionManager::load.
fuzz_target!(|data: &[u8]| session_core::fuzzing::payload(data));
