//! Value versions: rotate appends n+1 under the same id, only the last N are kept (and the
//! dropped versions' ciphertexts and wrapped keys leave the store), rollback makes the
//! previous kept version current, and every version opens to what was written.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module,
    reason = "integration tests: a panic is the failure report"
)]

mod common;

use common::Server;

#[test]
fn rotate_keep_and_rollback() {
    let mut s = Server::start(&["--keep-versions", "3"]);
    let id = s.create("api_key", b"v1");
    for n in 2..=5 {
        let out = s.cli(
            &["secret", "rotate", "api_key", "-"],
            Some(format!("v{n}").as_bytes()),
        );
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("api_key: version {n} is current")
        );
    }
    let (_, v) = s.api("GET", "/secrets/api_key", None);
    assert_eq!(v["ID"], id.as_str(), "same id across versions");
    assert_eq!(v["CurrentVersion"], 5);
    let kept: Vec<u64> = v["Versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["Number"].as_u64().unwrap())
        .collect();
    assert_eq!(kept, [3, 4, 5]);
    let digests: Vec<&str> = v["Versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["Digest"].as_str().unwrap())
        .collect();
    assert!(digests.iter().all(|d| d.starts_with("hmac-sha256:")) && digests[0] != digests[1]);

    let out = s.cli(&["secret", "versions", "api_key"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().next().unwrap().starts_with("VERSION"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(
        text.lines().last().unwrap().trim_end().ends_with('*'),
        "current marked: {text}"
    );

    // Rollback twice walks back through the kept versions, then refuses.
    let out = s.cli(&["secret", "rollback", "api_key"], None);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "api_key: version 4 is current"
    );
    s.cli(&["secret", "rollback", "api_key"], None);
    let out = s.cli(&["secret", "rollback", "api_key"], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no version before 3"),
        "{out:?}"
    );
    // A rotation after a rollback appends after the highest version.
    s.cli(&["secret", "rotate", "api_key", "-"], Some(b"v6"));
    let (_, v) = s.api("GET", "/secrets/api_key", None);
    assert_eq!(v["CurrentVersion"], 6);
    s.stop();

    assert_eq!(
        common::read_all_values(&s.data_dir())["api_key"].as_deref(),
        Ok(&b"v6"[..])
    );
    let conn = rusqlite::Connection::open(s.data_dir().join("state.db")).unwrap();
    let count = |prefix: &str| -> i64 {
        conn.query_row(
            "SELECT count(*) FROM kv WHERE substr(key, 1, ?2) = CAST(?1 AS BLOB)",
            rusqlite::params![prefix, i64::try_from(prefix.len()).unwrap()],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(
        count(&format!("/secret-data/{id}/")),
        3,
        "only kept versions' ciphertexts remain"
    );
    assert_eq!(count(&format!("/secret-keys/{id}/")), 3);
    drop(conn);

    // Docker's update keeps Docker's behaviour: labels only, the value is untouched.
    s.restart();
    let (_, v) = s.api("GET", "/secrets/api_key", None);
    let ver = v["Version"]["Index"].as_u64().unwrap();
    let (st, _) = s.api(
        "POST",
        &format!("/secrets/{id}/update?version={ver}"),
        Some(br#"{"Name":"api_key","Labels":{"team":"x"}}"#),
    );
    assert_eq!(st, 200);
    let out = s.cli(
        &[
            "secret",
            "update",
            "--label-add",
            "env=prod",
            "--label-rm",
            "team",
            "api_key",
        ],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let (_, v) = s.api("GET", "/secrets/api_key", None);
    assert_eq!(v["Spec"]["Labels"], serde_json::json!({"env": "prod"}));
    assert_eq!(v["CurrentVersion"], 6);
    let out = s.cli(&["secret", "ls", "--format", "json"], None);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["Spec"]["Name"], "api_key");
    let out = s.cli(&["secret", "ls", "-q"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id);
    // Removing a secret removes every kept version.
    assert!(s.cli(&["secret", "rm", "api_key"], None).status.success());
    s.stop();
    let conn = rusqlite::Connection::open(s.data_dir().join("state.db")).unwrap();
    let left: i64 = conn.query_row("SELECT count(*) FROM kv WHERE key >= CAST('/secret' AS BLOB) AND key < CAST('/secreu' AS BLOB)", [], |r| r.get(0)).unwrap();
    assert_eq!(left, 0, "no record, name, ciphertext or key left behind");
}
