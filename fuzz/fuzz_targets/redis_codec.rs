#![no_main]

use libfuzzer_sys::fuzz_target;

// session-redis's stored value codec (records and markers).
fuzz_target!(|data: &[u8]| session_redis::fuzzing::codec(data));
