//! Writes the seed inputs of every target into `fuzz/corpus/<target>/`,
//! made by the crates' real encoders (`fuzzing::*seeds` functions). Files
//! are named by a hash of their content, as libFuzzer names its own, so
//! rerunning adds nothing twice.
//!
//! Run from the repository root:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus`

use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let targets: [(&str, Vec<Vec<u8>>); 6] = [
        ("cookie_headers", session_core::fuzzing::cookie_seeds()),
        ("record_decode", session_core::fuzzing::record_seeds()),
        ("payload", session_core::fuzzing::payload_seeds()),
        ("encrypted_open", session_encrypted::fuzzing::seeds()),
        ("redis_codec", session_redis::fuzzing::seeds()),
        ("memcached_codec", session_memcached::fuzzing::seeds()),
    ];
    for (target, seeds) in targets {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).expect("create corpus directory");
        for seed in &seeds {
            let name = format!("seed-{}", &blake3::hash(seed).to_hex()[..16]);
            std::fs::write(d.join(name), seed).expect("write seed");
        }
        println!("{target}: {} seeds", seeds.len());
    }
}
