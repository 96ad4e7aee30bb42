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

use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_store::{EtcdStore, Store};
use coffer_test_support::Etcd;

#[path = "conformance/suite.rs"]
mod suite;

async fn start() -> Option<(Etcd, Arc<dyn Store>)> {
    let etcd = Etcd::start("the etcd conformance suite did not run")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match EtcdStore::connect(std::slice::from_ref(&etcd.endpoint), "/coffer-test").await {
            Ok(s) => return Some((etcd, Arc::new(s))),
            Err(e) if Instant::now() > deadline => panic!("etcd did not answer: {e}"),
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
