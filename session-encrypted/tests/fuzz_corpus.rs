//! Replays the fuzz corpus kept in the repository
//! (`fuzz/corpus/encrypted_open/`) through the harness the `cargo fuzz`
//! target calls. A missing or empty corpus directory fails.

#[test]
fn encrypted_open_corpus() {
    session_core::fuzzing::replay_corpus(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/encrypted_open"),
        session_encrypted::fuzzing::open_stored,
    );
}
