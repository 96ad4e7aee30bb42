//! Secret hygiene: a planted canary never appears on disk, in logs (at the most verbose
//! level), in error messages or in API answers, in any encoding; tampered ciphertexts and
//! audit events are detected and named.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module,
    clippy::cast_possible_truncation,
    reason = "integration tests: a panic is the failure report"
)]

mod common;

use base64::Engine;
use common::{create_body, files_under, read_all_values, Server};

fn encodings(v: &[u8]) -> Vec<(String, Vec<u8>)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        ("raw".into(), v.to_vec()),
        ("base64".into(), b64.encode(v).into_bytes()),
        (
            "base64url".into(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(v)
                .into_bytes(),
        ),
        ("hex".into(), hex.clone().into_bytes()),
        ("HEX".into(), hex.to_uppercase().into_bytes()),
    ]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn canary_never_leaks() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let canary = format!("CANARY-{nanos:x}-coffer-Zq9").into_bytes();
    let canary2 = format!("CANARY2-{nanos:x}-rotated").into_bytes();
    let mut s = Server::start_with(&[], "trace");
    let mut seen: Vec<u8> = Vec::new();
    let mut note = |b: &[u8]| seen.extend_from_slice(b);

    // Good requests carrying the canaries.
    let out = s.cli(
        &[
            "secret",
            "create",
            "db_password",
            "-",
            "--label",
            "env=prod",
        ],
        Some(&canary),
    );
    assert!(out.status.success(), "{out:?}");
    note(&out.stdout);
    note(&out.stderr);
    let out = s.cli(&["secret", "rotate", "db_password", "-"], Some(&canary2));
    assert!(out.status.success());
    note(&out.stdout);
    // Refused requests carrying them: duplicate, too large, update with Data, locked-out
    // kinds of mistakes. Their error messages must not echo the value.
    for body in [
        create_body("db_password", &canary),
        create_body("bad name", &canary),
        // A value put in the wrong field: serde's type error would quote it.
        serde_json::to_vec(
            &serde_json::json!({"Name": "x", "Labels": String::from_utf8_lossy(&canary)}),
        )
        .unwrap(),
        [canary.as_slice(); 40000].concat(),
        serde_json::to_vec(
            &serde_json::json!({"Name": "x", "Data": String::from_utf8_lossy(&canary)}),
        )
        .unwrap(),
    ] {
        let (st, b) = s.try_api("POST", "/secrets/create", Some(&body)).unwrap();
        assert!((400..500).contains(&st));
        note(&b);
    }
    let (_, v) = s.api("GET", "/secrets/db_password", None);
    let ver = v["Version"]["Index"].as_u64().unwrap();
    let upd = serde_json::to_vec(&serde_json::json!({"Name": "db_password", "Data": base64::engine::general_purpose::STANDARD.encode(&canary)})).unwrap();
    let (st, b) = s
        .try_api(
            "POST",
            &format!("/secrets/db_password/update?version={ver}"),
            Some(&upd),
        )
        .unwrap();
    assert_eq!(st, 400);
    note(&b);
    for path in [
        "/secrets",
        "/secrets/db_password",
        "/info",
        "/coffer/audit",
        "/coffer/audit/verify",
    ] {
        note(&s.try_api("GET", path, None).unwrap().1);
    }
    for args in [
        &["secret", "inspect", "db_password"][..],
        &["secret", "ls"],
        &["secret", "versions", "db_password"],
        &["audit", "ls"],
    ] {
        let out = s.cli(args, None);
        note(&out.stdout);
        note(&out.stderr);
    }
    let out = s.cli(&["key", "rotate"], None);
    assert!(out.status.success());
    // /proc of the running server: its environment and command line.
    let pid = s.child.as_ref().unwrap().id();
    for f in ["environ", "cmdline"] {
        note(&std::fs::read(format!("/proc/{pid}/{f}")).unwrap());
    }
    s.stop();
    let log = s.log();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the server logged verbosely"
    );

    // The value really is stored (so the search below is meaningful).
    let values = read_all_values(&s.data_dir());
    assert_eq!(values["db_password"].as_deref(), Ok(canary2.as_slice()));

    let files = files_under(&s.data_dir());
    assert!(
        files.iter().any(|f| f.ends_with("state.db"))
            && files.iter().any(|f| f.ends_with("keyring.json"))
    );
    for c in [&canary, &canary2] {
        for (enc, needle) in encodings(c) {
            for f in &files {
                let bytes = std::fs::read(f).unwrap();
                assert!(
                    !contains(&bytes, &needle),
                    "{enc} canary found in {}",
                    f.display()
                );
            }
            assert!(
                !contains(log.as_bytes(), &needle),
                "{enc} canary found in the server log"
            );
            assert!(
                !contains(&seen, &needle),
                "{enc} canary found in an answer or error message"
            );
        }
    }
}

#[test]
fn tampered_ciphertexts_are_detected_and_named() {
    let mut s = Server::start(&[]);
    let ids: Vec<String> = ["alpha", "bravo", "charlie", "delta"]
        .iter()
        .map(|n| s.create(n, format!("value of {n}").as_bytes()))
        .collect();
    s.stop();
    let conn = rusqlite::Connection::open(s.data_dir().join("state.db")).unwrap();
    let key = |id: &str| format!("/secret-data/{id}/{:010}", 1).into_bytes();
    let get = |id: &str| -> Vec<u8> {
        conn.query_row("SELECT value FROM kv WHERE key = ?1", [key(id)], |r| {
            r.get(0)
        })
        .unwrap()
    };
    let set = |id: &str, v: &[u8]| {
        assert_eq!(
            conn.execute(
                "UPDATE kv SET value = ?1 WHERE key = ?2",
                rusqlite::params![v, key(id)]
            )
            .unwrap(),
            1
        );
    };
    let mut a = get(&ids[0]);
    let mid = a.len() / 2;
    a[mid] ^= 0x01;
    set(&ids[0], &a);
    let (b, c) = (get(&ids[1]), get(&ids[2]));
    set(&ids[1], &c);
    set(&ids[2], &b);
    drop(conn);

    let values = read_all_values(&s.data_dir());
    for name in ["alpha", "bravo", "charlie"] {
        let e = values[name].as_ref().unwrap_err();
        assert!(
            e.contains(&format!(
                "secret \"{name}\" version 1 failed its integrity check"
            )),
            "{e}"
        );
    }
    assert_eq!(values["delta"].as_deref(), Ok(&b"value of delta"[..]));

    s.restart();
    let out = s.cli(&["secret", "verify"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for name in ["alpha", "bravo", "charlie"] {
        assert!(err.contains(&format!("\"{name}\"")), "{err}");
    }
    assert!(!err.contains("delta"));
    assert!(s.cli(&["secret", "verify", "delta"], None).status.success());
    // Other operations keep working.
    s.create("echo", b"e");
    assert_eq!(s.list().len(), 5);
}

#[test]
fn audit_tampering_is_detected() {
    let mut s = Server::start(&[]);
    for n in ["a", "b", "c"] {
        s.create(n, b"v");
    }
    s.api("DELETE", "/secrets/b", None);
    let ok = s.cli(&["audit", "verify"], None);
    assert!(ok.status.success(), "{ok:?}");
    s.stop();
    let db = s.data_dir().join("state.db");
    let key = |seq: u64| format!("/audit/{seq:020}").into_bytes();
    let read = |seq: u64| -> Vec<u8> {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row("SELECT value FROM kv WHERE key = ?1", [key(seq)], |r| {
            r.get(0)
        })
        .unwrap()
    };
    let write = |seq: u64, v: Option<&[u8]>| {
        let conn = rusqlite::Connection::open(&db).unwrap();
        match v {
            Some(v) => conn.execute("INSERT OR REPLACE INTO kv (key, value, create_rev, mod_rev, version) VALUES (?1, ?2, 1, 1, 1)", rusqlite::params![key(seq), v]).unwrap(),
            None => conn.execute("DELETE FROM kv WHERE key = ?1", [key(seq)]).unwrap(),
        };
    };
    let original = read(3);
    let mut verify = |what: &str, needle: &str| {
        s.restart();
        let out = s.cli(&["audit", "verify"], None);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{what}: verify passed");
        assert!(err.contains(needle), "{what}: {err}");
        s.stop();
    };
    // Edited: the outcome of event 3 changed.
    let edited = String::from_utf8(original.clone())
        .unwrap()
        .replace("\"Outcome\":\"ok\"", "\"Outcome\":\"refused: invalid\"");
    assert_ne!(edited.as_bytes(), original.as_slice());
    write(3, Some(edited.as_bytes()));
    verify("edit", "event 3 was edited");
    // Deleted: event 3 removed.
    write(3, None);
    verify("delete", "audit event 3 is missing");
    // Inserted: a forged event 3 whose hash is consistent with itself but not the chain.
    let mut forged: serde_json::Value = serde_json::from_slice(&original).unwrap();
    forged["Prev"] = serde_json::Value::String("f".repeat(64));
    write(3, Some(&serde_json::to_vec(&forged).unwrap()));
    verify("insert", "does not follow event 2");
    write(3, Some(&original));
    s.restart();
    assert!(
        s.cli(&["audit", "verify"], None).status.success(),
        "restored chain verifies"
    );
}
