//! Criterion micro-benchmarks: ID generation and parsing, key derivation,
//! record encode/decode, and encryption at rest, at 200 B and 4 KiB.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use session_core::{KeyDeriver, MemoryStore, SessionId, SessionRecord, SessionStore, StorageKey};
use session_encrypted::{EncryptedStore, EncryptionKey, KeyRing};

fn ids(c: &mut Criterion) {
    c.bench_function("id/generate", |b| b.iter(SessionId::generate));
    let text = SessionId::generate().expose();
    c.bench_function("id/parse", |b| {
        b.iter(|| SessionId::parse(black_box(&text)).unwrap())
    });
    let id = SessionId::generate();
    let plain = KeyDeriver::new();
    let keyed = KeyDeriver::with_secret(b"an application secret of 32 bytes");
    c.bench_function("key/derive", |b| b.iter(|| plain.derive(black_box(&id))));
    c.bench_function("key/derive_keyed", |b| {
        b.iter(|| keyed.derive(black_box(&id)))
    });
}

fn record(size: usize) -> SessionRecord {
    let mut r =
        session_core::conformance::record(Some("alice"), &vec![b'x'; size], 60_000, 120_000);
    r.data = Bytes::from(vec![b'x'; size]);
    r
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    for size in [200usize, 4096] {
        let r = record(size);
        let enc = r.encode();
        g.bench_with_input(BenchmarkId::new("encode", size), &r, |b, r| {
            b.iter(|| r.encode())
        });
        g.bench_with_input(BenchmarkId::new("decode", size), &enc, |b, e| {
            b.iter(|| SessionRecord::decode(black_box(e)).unwrap())
        });
    }
    g.finish();
}

fn encryption(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("store_roundtrip");
    for size in [200usize, 4096] {
        let key = StorageKey::from_stored("bench");
        let r = record(size);
        let plain = MemoryStore::new();
        let enc = EncryptedStore::new(
            MemoryStore::new(),
            KeyRing::new(1, EncryptionKey::generate()),
        );
        rt.block_on(async {
            plain.create(&key, &r).await.unwrap();
            enc.create(&key, &r).await.unwrap();
        });
        // update (encrypt) + load (decrypt), against the same on MemoryStore.
        let stores: [(&str, &dyn SessionStore); 2] =
            [("memory", &plain), ("encrypted_memory", &enc)];
        for (name, store) in stores {
            // Criterion calls the routine several times: keep the version
            // outside it.
            let version = std::cell::Cell::new(1u64);
            g.bench_with_input(BenchmarkId::new(name, size), &r, |b, r| {
                b.iter(|| {
                    rt.block_on(async {
                        let v = version.get();
                        let next = r.clone().with_version(v + 1);
                        store.update(&key, v, &next).await.unwrap();
                        version.set(v + 1);
                        store.load(&key).await.unwrap().unwrap()
                    })
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, ids, codec, encryption);
criterion_main!(benches);
