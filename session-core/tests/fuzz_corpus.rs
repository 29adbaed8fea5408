//! Replays the fuzz corpus kept in the repository (`fuzz/corpus/<target>/`)
//! through the same harness functions the `cargo fuzz` targets call, so
//! every input the fuzzer kept (fixed crashes included) is checked by an
//! ordinary `cargo test`. A missing or empty corpus directory fails.

use session_core::fuzzing;

fn corpus(target: &str) -> String {
    format!("{}/../fuzz/corpus/{target}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn cookie_headers_corpus() {
    fuzzing::replay_corpus(corpus("cookie_headers"), fuzzing::cookie_headers);
}

#[test]
fn record_decode_corpus() {
    fuzzing::replay_corpus(corpus("record_decode"), fuzzing::record);
}

#[test]
fn payload_corpus() {
    fuzzing::replay_corpus(corpus("payload"), fuzzing::payload);
}
