#![no_main]

use libfuzzer_sys::fuzz_target;

// SessionRecord::decode, and encode/decode round trip.
fuzz_target!(|data: &[u8]| session_core::fuzzing::record(data));
