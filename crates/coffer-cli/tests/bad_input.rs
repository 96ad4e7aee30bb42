//! Every kind of bad input from the issue: a clear one-line error, a 4xx or non-zero exit,
//! and nothing changed (the secret list is byte-for-byte the same afterwards).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module,
    clippy::cast_possible_truncation,
    reason = "integration tests: a panic is the failure report"
)]

mod common;

use common::{cli_at, create_body, Server};

fn message(v: &serde_json::Value) -> String {
    v["message"].as_str().unwrap_or_default().to_owned()
}

/// Asserts a refusal with `status` whose one-line message contains `needle`, and that the
/// secrets did not change.
fn refused(s: &Server, method: &str, path: &str, body: Option<&[u8]>, status: u16, needle: &str) {
    let before = s.list();
    let (got, v) = s.api(method, path, body);
    assert_eq!(got, status, "{method} {path}: {v}");
    let m = message(&v);
    assert!(
        m.contains(needle),
        "{method} {path}: message {m:?} lacks {needle:?}"
    );
    assert!(!m.contains('\n'), "one line: {m:?}");
    assert_eq!(s.list(), before, "{method} {path} changed the secrets");
}

#[test]
fn secret_values_and_names() {
    let s = Server::start(&[]);
    let b64 = |n: usize| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(vec![b'x'; n])
    };
    refused(
        &s,
        "POST",
        "/secrets/create",
        Some(br#"{"Name":"a","Data":""}"#),
        400,
        "empty",
    );
    let big = format!(r#"{{"Name":"big","Data":"{}"}}"#, b64(512_000));
    refused(
        &s,
        "POST",
        "/secrets/create",
        Some(big.as_bytes()),
        400,
        "under 500 KiB",
    );
    let ok = format!(r#"{{"Name":"big","Data":"{}"}}"#, b64(511_999));
    assert_eq!(
        s.api("POST", "/secrets/create", Some(ok.as_bytes())).0,
        201,
        "511,999 bytes is accepted"
    );

    let long = "n".repeat(65);
    refused(
        &s,
        "POST",
        "/secrets/create",
        Some(&create_body(&long, b"v")),
        400,
        "the limit is 64",
    );
    s.create(&"n".repeat(64), b"v");
    for bad in ["a b", "-a", ".a", "a/b", "é", "a\u{0}b"] {
        refused(
            &s,
            "POST",
            "/secrets/create",
            Some(&create_body(bad, b"v")),
            400,
            "is invalid",
        );
    }
    s.create("db_password", b"v");
    refused(
        &s,
        "POST",
        "/secrets/create",
        Some(&create_body("db_password", b"w")),
        409,
        "\"db_password\" already exists",
    );
}

#[test]
fn malformed_requests() {
    let s = Server::start(&[]);
    s.create("keep", b"v");
    for (body, needle) in [
        (&b"{not json"[..], "malformed JSON"),
        (br#"{"Name": 5, "Data": "eA=="}"#, "malformed JSON"),
        (
            br#"{"Name": "x", "Labels": [1], "Data": "eA=="}"#,
            "malformed JSON",
        ),
        (br#"{"Data": "eA=="}"#, "Name is missing"),
        (br#"{"Name": "x"}"#, "Data is missing"),
        (
            br#"{"Name": "x", "Data": "not base64!"}"#,
            "not valid base64",
        ),
        (
            br#"{"Name": "x", "Data": "eA==", "Labels": {"": "v"}}"#,
            "empty key",
        ),
        (
            br#"{"Name": "x", "Data": "eA==", "Driver": {"Name": "vault"}}"#,
            "not supported",
        ),
        (b"", "body is empty"),
    ] {
        refused(&s, "POST", "/secrets/create", Some(body), 400, needle);
    }
    let huge = vec![b'a'; 1024 * 1024];
    refused(
        &s,
        "POST",
        "/secrets/create",
        Some(&huge),
        413,
        "request body is over",
    );
}

#[test]
fn lookups_updates_and_deletes() {
    let s = Server::start(&[]);
    let id = s.create("web_key", b"v");
    refused(
        &s,
        "GET",
        "/secrets/nosuch",
        None,
        404,
        "\"nosuch\" not found",
    );
    refused(&s, "DELETE", "/secrets/nosuch", None, 404, "not found");
    // Make two ids share a first character, then ask by that character.
    let mut ids = vec![id.clone()];
    let mut n = 0;
    let shared = loop {
        let other = s.create(&format!("s{n}"), b"v");
        n += 1;
        if let Some(p) = ids.iter().find(|i| i[..1] == other[..1]) {
            break p[..1].to_owned();
        }
        ids.push(other);
    };
    refused(
        &s,
        "GET",
        &format!("/secrets/{shared}"),
        None,
        400,
        "matches 2 secrets",
    );
    // A unique prefix works.
    assert_eq!(
        s.api("GET", &format!("/secrets/{}", &id[..20]), None).0,
        200
    );

    let (_, v) = s.api("GET", &format!("/secrets/{id}"), None);
    let ver = v["Version"]["Index"].as_u64().unwrap();
    let labels = br#"{"Name":"web_key","Labels":{"a":"b"}}"#;
    refused(
        &s,
        "POST",
        &format!("/secrets/{id}/update?version={}", ver - 1),
        Some(labels),
        409,
        "changed since version",
    );
    refused(
        &s,
        "POST",
        &format!("/secrets/{id}/update"),
        Some(labels),
        400,
        "version query parameter is missing",
    );
    refused(
        &s,
        "POST",
        &format!("/secrets/{id}/update?version={ver}"),
        Some(br#"{"Name":"web_key","Data":"eA=="}"#),
        400,
        "only updates to Labels are allowed",
    );
    refused(
        &s,
        "POST",
        &format!("/secrets/{id}/update?version={ver}"),
        Some(br#"{"Name":"renamed"}"#),
        400,
        "only updates to Labels are allowed",
    );
    let (st, _) = s.api(
        "POST",
        &format!("/secrets/{id}/update?version={ver}"),
        Some(labels),
    );
    assert_eq!(st, 200);
    let (_, v) = s.api("GET", "/secrets/web_key", None);
    assert_eq!(v["Spec"]["Labels"]["a"], "b");
    assert!(v["Version"]["Index"].as_u64().unwrap() > ver);
    // The value is never returned.
    assert!(v["Spec"].get("Data").is_none());
}

#[test]
fn twenty_concurrent_creates_one_wins() {
    let s = Server::start(&[]);
    let socket = s.socket();
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                common::http(
                    &socket,
                    "POST",
                    "/secrets/create",
                    Some(&create_body("race", format!("v{i}").as_bytes())),
                )
                .unwrap()
                .0
            })
        })
        .collect();
    let codes: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(codes.iter().filter(|&&c| c == 201).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 409).count(), 19, "{codes:?}");
    assert_eq!(s.list().len(), 1);
}

#[test]
fn locked_manager_and_unlock_keys() {
    let mut s = Server::start(&["--autolock"]);
    let key = String::from_utf8(s.cli(&["unlock-key", "-q"], None).stdout)
        .unwrap()
        .trim()
        .to_owned();
    assert!(key.starts_with("COFFER-KEY-1-"), "{key}");
    // The key was printed once, at start.
    assert!(s.log().contains(&key));
    s.create("db_password", b"v");
    s.stop();
    s.restart_with(&[]);
    for (m, p) in [
        ("GET", "/secrets"),
        ("GET", "/secrets/db_password"),
        ("DELETE", "/secrets/db_password"),
    ] {
        let (st, v) = s.api(m, p, None);
        assert_eq!(st, 503, "{m} {p}");
        assert!(message(&v).contains("run `coffer unlock`"), "{v}");
    }
    let (st, v) = s.api("POST", "/secrets/create", Some(&create_body("x", b"v")));
    assert_eq!((st, message(&v).contains("locked")), (503, true));
    // Wrong keys: malformed, then well-formed but wrong.
    let out = s.cli(&["unlock"], Some(b"SWMKEY-1-abc\n"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a coffer unlock key"));
    let wrong = "COFFER-KEY-1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let out = s.cli(&["unlock"], Some(format!("{wrong}\n").as_bytes()));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unlock key is wrong"),
        "{out:?}"
    );
    assert_eq!(s.api("GET", "/secrets", None).0, 503, "still locked");
    let out = s.cli(&["unlock"], Some(format!("{key}\n").as_bytes()));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(s.list().len(), 1);
    // Rotating the unlock key: the old one stops working after a restart.
    let out = s.cli(&["unlock-key", "--rotate", "-q"], None);
    let new_key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_ne!(new_key, key);
    s.stop();
    s.restart_with(&[]);
    assert!(!s
        .cli(&["unlock"], Some(format!("{key}\n").as_bytes()))
        .status
        .success());
    assert!(s
        .cli(&["unlock"], Some(format!("{new_key}\n").as_bytes()))
        .status
        .success());
    assert_eq!(s.list().len(), 1);
    let audit = String::from_utf8(s.cli(&["audit", "ls"], None).stdout).unwrap();
    assert!(audit.contains("refused: wrong-key"), "{audit}");
}

#[test]
fn cli_errors() {
    let s = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "secret".into(),
                "create".into(),
                "a".into(),
                missing.display().to_string(),
            ],
            "give an existing file",
        ),
        (
            vec![
                "secret".into(),
                "create".into(),
                "a".into(),
                dir.path().display().to_string(),
            ],
            "is a directory",
        ),
        (
            vec!["secret".into(), "inspect".into(), "nosuch".into()],
            "not found",
        ),
        (
            vec!["secret".into(), "rm".into(), "nosuch".into()],
            "not found",
        ),
        (
            vec![
                "secret".into(),
                "create".into(),
                "bad name".into(),
                "/etc/hostname".into(),
            ],
            "is invalid",
        ),
        (
            vec![
                "secret".into(),
                "ls".into(),
                "--filter".into(),
                "nope".into(),
            ],
            "not key=value",
        ),
        (vec!["unlock-key".into()], "autolock is off"),
    ];
    for (args, needle) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = s.cli(&a, None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{a:?} should fail");
        assert!(err.contains(needle), "{a:?}: {err:?} lacks {needle:?}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{a:?}: one line: {err:?}"
        );
    }
    // Unreadable file: not readable by a non-root user is not testable as root, so use a
    // FIFO-free proxy: a file we cannot open because it is a dangling symlink.
    let link = dir.path().join("dangling");
    std::os::unix::fs::symlink(dir.path().join("gone"), &link).unwrap();
    let out = s.cli(&["secret", "create", "a", link.to_str().unwrap()], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    assert!(s.list().is_empty(), "nothing was created");

    let out = cli_at("unix:///nonexistent/coffer.sock", &["secret", "ls"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("nothing is listening there") && err.contains("coffer dev"),
        "{err}"
    );
    let out = cli_at("unix:///x", &["secret", "bogus"], None);
    assert_eq!(out.status.code(), Some(64), "usage errors exit 64");
}
