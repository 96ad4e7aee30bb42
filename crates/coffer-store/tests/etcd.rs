//! The conformance suite against a real etcd that this test starts (Debian's
//! `etcd-server`). Without an `etcd` binary the tests say so and pass, unless
//! `COFFER_REQUIRE_ETCD=1`, in which case they fail.
#![cfg(feature = "etcd")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module,
    clippy::cast_possible_truncation,
    reason = "integration tests: a panic is the failure report"
)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_store::{EtcdStore, Store};

#[path = "conformance/suite.rs"]
mod suite;

/// A private etcd on free loopback ports, killed on drop.
struct Etcd {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn etcd_binary() -> Option<String> {
    let found = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    if found.is_none() {
        assert!(
            std::env::var("COFFER_REQUIRE_ETCD").as_deref() != Ok("1"),
            "COFFER_REQUIRE_ETCD=1 but no etcd binary; install Debian's etcd-server"
        );
        eprintln!("SKIP: no etcd binary (apt-get install etcd-server); the etcd conformance suite did not run");
    }
    found.map(str::to_owned)
}

async fn start() -> Option<(Etcd, Arc<dyn Store>)> {
    let bin = etcd_binary()?;
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let endpoint = format!("http://127.0.0.1:{client}");
    let child = Command::new(bin)
        .args(["--name", "test", "--data-dir"])
        .arg(dir.path())
        .args([
            "--listen-client-urls",
            &endpoint,
            "--advertise-client-urls",
            &endpoint,
        ])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ])
        .args([
            "--initial-cluster",
            &format!("test=http://127.0.0.1:{peer}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let etcd = Etcd {
        child,
        endpoint: endpoint.clone(),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match EtcdStore::connect(std::slice::from_ref(&etcd.endpoint), "/coffer-test").await {
            Ok(s) => return Some((etcd, Arc::new(s))),
            Err(e) if Instant::now() > deadline => panic!("etcd did not start: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

macro_rules! conformance {
    ($($name:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some((_etcd, s)) = start().await else { return };
            suite::$name(s).await;
        }
    )*};
}

conformance!(
    revisions_and_versions,
    compare_and_swap,
    concurrent_creates_one_winner,
    watch_from_revision,
    large_values
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_compacted_is_an_error() {
    let Some((etcd, s)) = start().await else {
        return;
    };
    let endpoint = etcd.endpoint.clone();
    let compact = async move |s: Arc<dyn Store>, rev: i64| -> Arc<dyn Store> {
        let e = EtcdStore::connect(&[endpoint], "/coffer-test")
            .await
            .unwrap();
        e.compact(rev).await.unwrap();
        s
    };
    suite::watch_compacted_is_an_error(s, compact).await;
}
