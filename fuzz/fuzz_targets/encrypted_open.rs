#![no_main]

use libfuzzer_sys::fuzz_target;

// EncryptedStore opening arbitrary stored bytes.
fuzz_target!(|data: &[u8]| session_encrypted::fuzzing::open_stored(data));
