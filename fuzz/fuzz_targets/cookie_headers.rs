#![no_main]

use libfuzzer_sys::fuzz_target;

// Cookie header lines (split on newlines) and session ids; see the function's docs.
fuzz_target!(|data: &[u8]| session_core::fuzzing::cookie_headers(data));
