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

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use common::Server;

struct Etcd(
    Child,
    #[allow(dead_code, reason = "kept alive until etcd is killed")] tempfile::TempDir,
);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn server_on_etcd() {
    let Some(bin) = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        assert!(
            std::env::var("COFFER_REQUIRE_ETCD").as_deref() != Ok("1"),
            "COFFER_REQUIRE_ETCD=1 but no etcd binary"
        );
        eprintln!(
            "SKIP: no etcd binary (apt-get install etcd-server); coffer on etcd was not tested"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (c, p) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{c}");
    let child = Command::new(bin)
        .args(["--name", "e", "--data-dir"])
        .arg(dir.path())
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{p}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{p}"),
        ])
        .args(["--initial-cluster", &format!("e=http://127.0.0.1:{p}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _etcd = Etcd(child, dir);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", c)).is_err() {
        assert!(std::time::Instant::now() < deadline, "etcd did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let store = format!("etcd://127.0.0.1:{c}/coffer-e2e");
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
