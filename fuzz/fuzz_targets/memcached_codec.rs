#![no_main]

use libfuzzer_sys::fuzz_target;

// session-memcached's index item, marker and session item decoders.
fuzz_target!(|data: &[u8]| session_memcached::fuzzing::codec(data));
