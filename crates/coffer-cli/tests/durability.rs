//! Crash safety with real processes and a real SQLite file: `kill -9` at random moments
//! while clients create secrets, and while a KEK rotation runs. Afterwards every
//! acknowledged secret is present and opens to its exact value, read through the store and
//! keyring as a library, and SQLite's integrity check passes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module,
    clippy::cast_possible_truncation,
    reason = "integration tests: a panic is the failure report"
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{create_body, read_all_values, Server};

fn random_below(n: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    u64::from(nanos.wrapping_mul(2_654_435_761)) % n.max(1)
}

#[test]
fn kill9_during_concurrent_creates_loses_nothing_acknowledged() {
    let mut s = Server::start(&[]);
    type Acked = Arc<Mutex<Vec<(String, Vec<u8>)>>>;
    let acked: Acked = Arc::default();
    for round in 0..3 {
        let socket = s.socket();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let socket = socket.clone();
                let acked = Arc::clone(&acked);
                std::thread::spawn(move || {
                    for i in 0.. {
                        let name = format!("r{round}_t{t}_{i}");
                        let value = format!("value-of-{name}-{}", "x".repeat(i % 50)).into_bytes();
                        match common::http(
                            &socket,
                            "POST",
                            "/secrets/create",
                            Some(&create_body(&name, &value)),
                        ) {
                            Ok((201, _)) => acked.lock().unwrap().push((name, value)),
                            Ok((code, body)) => {
                                panic!("create {name}: {code} {}", String::from_utf8_lossy(&body))
                            }
                            Err(_) => return, // the server died mid-request: not acknowledged
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150 + random_below(500)));
        s.kill9();
        for t in threads {
            t.join().unwrap();
        }
        let db = s.data_dir().join("state.db");
        coffer_store::sqlite::integrity_check(&db).unwrap();
        let values = read_all_values(&s.data_dir());
        let acked = acked.lock().unwrap();
        assert!(
            acked.len() > 10,
            "round {round}: only {} creates before the kill",
            acked.len()
        );
        for (name, value) in acked.iter() {
            match values.get(name) {
                Some(Ok(v)) => assert_eq!(v, value, "{name} decrypts to its exact value"),
                Some(Err(e)) => panic!("{name}: {e}"),
                None => {
                    panic!("acknowledged secret {name} is missing after kill -9 (round {round})")
                }
            }
        }
        eprintln!(
            "round {round}: {} acknowledged creates all present",
            acked.len()
        );
        drop(acked);
        s.restart();
        assert!(s.list().len() >= 10);
    }
    let out = s.cli(&["audit", "verify"], None);
    assert!(
        out.status.success(),
        "audit chain survives kill -9: {out:?}"
    );
}

#[test]
fn kill9_during_key_rotation_leaves_every_secret_readable() {
    let mut s = Server::start(&[]);
    let n = 1500;
    let mut expected = Vec::new();
    for i in 0..n {
        let name = format!("k{i}");
        let value = format!("v{i}").into_bytes();
        s.create(&name, &value);
        expected.push((name, value));
    }
    let mut saw_mixed = false;
    for round in 0..6 {
        let socket = s.socket();
        let rotating =
            std::thread::spawn(move || common::http(&socket, "POST", "/coffer/key/rotate", None));
        std::thread::sleep(Duration::from_micros(random_below(60_000)));
        s.kill9();
        let _ = rotating.join().unwrap();
        coffer_store::sqlite::integrity_check(&s.data_dir().join("state.db")).unwrap();
        let values = read_all_values(&s.data_dir());
        for (name, value) in &expected {
            assert_eq!(
                values.get(name).map(|r| r.as_deref()),
                Some(Ok(value.as_slice())),
                "round {round}: {name}"
            );
        }
        saw_mixed |= keks_in_use(&s.data_dir()).len() > 1;
        s.restart();
    }
    eprintln!("a kill landed between two re-wrap transactions: {saw_mixed}");
    // A completed rotation leaves one KEK, and everything still opens.
    let (st, v) = s.api("POST", "/coffer/key/rotate", None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["Rewrapped"].as_u64().unwrap(), n);
    assert_eq!(keks_in_use(&s.data_dir()).len(), 1);
    s.stop();
    let values = read_all_values(&s.data_dir());
    assert!(expected
        .iter()
        .all(|(name, value)| values.get(name) == Some(&Ok(value.clone()))));
}

fn keks_in_use(data_dir: &std::path::Path) -> std::collections::BTreeSet<u32> {
    let conn = rusqlite::Connection::open(data_dir.join("state.db")).unwrap();
    let mut st = conn.prepare("SELECT value FROM kv WHERE key >= CAST('/secret-keys/' AS BLOB) AND key < CAST('/secret-keys0' AS BLOB)").unwrap();
    let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap();
    rows.map(|v| {
        serde_json::from_slice::<serde_json::Value>(&v.unwrap()).unwrap()["kek"]
            .as_u64()
            .unwrap() as u32
    })
    .collect()
}
