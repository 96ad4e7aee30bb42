//! `coffer server --store etcd://...` against a real etcd started by the test: secrets
//! survive a manager restart because they live in etcd, and the data directory holds no
//! database. Without an etcd binary the test says so and passes, unless
//! `COFFER_REQUIRE_ETCD=1`.
#![cfg(feature = "etcd")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module,
    clippy::cast_possible_truncation,
    reason = "integration tests: a panic is the failure report"
)]

mod common;

use common::Server;

#[test]
fn server_on_etcd() {
    let Some(etcd) = coffer_test_support::Etcd::start("coffer on etcd was not tested") else {
        return;
    };
    let store = format!("etcd://127.0.0.1:{}/coffer-e2e", etcd.port);
    let mut s = Server::start(&["--store", &store]);
    s.create("db_password", b"from etcd");
    let (st, v) = s.api("GET", "/info", None);
    assert_eq!(st, 200);
    assert!(
        v["Coffer"]["Store"].as_str().unwrap().contains("etcd"),
        "{v}"
    );
    assert!(
        !s.data_dir().join("state.db").exists(),
        "no SQLite file with an etcd store"
    );
    s.stop();
    s.restart();
    let names: Vec<String> = s
        .list()
        .iter()
        .map(|x| x["Spec"]["Name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["db_password"]);
    let out = s.cli(&["secret", "verify"], None);
    assert!(out.status.success(), "{out:?}");
    let out = s.cli(&["audit", "verify"], None);
    assert!(out.status.success(), "{out:?}");
}
