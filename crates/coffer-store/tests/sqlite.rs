//! The conformance suite against [`SqliteStore`], plus what only SQLite has (reopen,
//! group commit).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module,
    clippy::cast_possible_truncation,
    reason = "integration tests: a panic is the failure report"
)]

use std::sync::Arc;

use coffer_store::{Op, SqliteStore, Store, Txn};

#[path = "conformance/suite.rs"]
mod suite;

fn fresh() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("state.db")).unwrap();
    (dir, Arc::new(s))
}

macro_rules! conformance {
    ($($name:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (_d, s) = fresh();
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

#[tokio::test]
async fn watch_before_open_is_compacted() {
    // SQLite keeps watch history in memory: after a reopen, earlier revisions are gone.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let s: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    let reopen = async |s: Arc<dyn Store>, _rev: i64| -> Arc<dyn Store> {
        drop(s);
        let fresh: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
        fresh
    };
    suite::watch_compacted_is_an_error(s, reopen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_survive_reopen_and_batches_are_ordered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let s = SqliteStore::open(&path).unwrap();
    let futs: Vec<_> = (0..200)
        .map(|i| s.txn(Txn::ops(vec![Op::Put(format!("/k/{i}"), vec![1])])))
        .collect();
    let mut revs = Vec::new();
    for f in futs {
        revs.push(f.await.unwrap().revision);
    }
    let mut sorted = revs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 200, "each transaction has its own revision");
    let last = *sorted.last().unwrap();
    s.close();
    drop(s);
    let s = SqliteStore::open(&path).unwrap();
    let r = s
        .txn(Txn::ops(vec![Op::Put("/x".into(), vec![])]))
        .await
        .unwrap();
    assert_eq!(r.revision, last + 1);
    coffer_store::sqlite::integrity_check(&path).unwrap();
}
