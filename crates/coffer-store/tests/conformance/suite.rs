//! The store conformance suite, included by `sqlite.rs` and `etcd.rs` with `#[path]`.
//! Every function takes a fresh, empty store.

use std::sync::Arc;
use std::time::Duration;

use coffer_store::{Compare, EventKind, Op, Store, StoreError, Txn};

fn put(k: &str, v: &str) -> Op {
    Op::Put(k.to_owned(), v.as_bytes().to_vec())
}

pub(crate) async fn revisions_and_versions(s: Arc<dyn Store>) {
    let r1 = s.txn(Txn::ops(vec![put("/a/1", "x")])).await.unwrap();
    assert!(r1.succeeded);
    let r2 = s
        .txn(Txn::ops(vec![put("/a/1", "y"), put("/a/2", "z")]))
        .await
        .unwrap();
    assert_eq!(r2.revision, r1.revision + 1, "one revision per transaction");
    let kv = s.get("/a/1").await.unwrap().unwrap();
    assert_eq!(kv.value, b"y");
    assert_eq!(kv.create_revision, r1.revision);
    assert_eq!(kv.mod_revision, r2.revision);
    assert_eq!(kv.version, 2);
    assert_eq!(s.get("/a/3").await.unwrap(), None);
    let range = s.range("/a/").await.unwrap();
    assert_eq!(
        range.kvs.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
        ["/a/1", "/a/2"]
    );
    assert_eq!(range.revision, r2.revision);
    // A prefix does not match a longer sibling.
    s.txn(Txn::ops(vec![put("/ab", "w")])).await.unwrap();
    assert_eq!(s.range("/a/").await.unwrap().kvs.len(), 2);
}

pub(crate) async fn compare_and_swap(s: Arc<dyn Store>) {
    let create = |v: &str| Txn {
        compares: vec![Compare::Absent("/k".into())],
        success: vec![put("/k", v)],
        failure: vec![put("/log", v)],
    };
    assert!(s.txn(create("first")).await.unwrap().succeeded);
    let lost = s.txn(create("second")).await.unwrap();
    assert!(!lost.succeeded);
    assert_eq!(s.get("/k").await.unwrap().unwrap().value, b"first");
    assert_eq!(
        s.get("/log").await.unwrap().unwrap().value,
        b"second",
        "failure branch applied"
    );
    let kv = s.get("/k").await.unwrap().unwrap();
    let stale = Txn {
        compares: vec![Compare::ModRevision("/k".into(), kv.mod_revision - 1)],
        success: vec![put("/k", "stale")],
        failure: vec![],
    };
    assert!(!s.txn(stale).await.unwrap().succeeded);
    let fresh = Txn {
        compares: vec![
            Compare::ModRevision("/k".into(), kv.mod_revision),
            Compare::Exists("/k".into()),
        ],
        success: vec![Op::Delete("/k".into())],
        failure: vec![],
    };
    assert!(s.txn(fresh).await.unwrap().succeeded);
    assert_eq!(s.get("/k").await.unwrap(), None);
    let absent_by_rev = Txn {
        compares: vec![Compare::ModRevision("/k".into(), 0)],
        success: vec![put("/k", "again")],
        failure: vec![],
    };
    assert!(
        s.txn(absent_by_rev).await.unwrap().succeeded,
        "mod_revision 0 means absent"
    );
}

pub(crate) async fn concurrent_creates_one_winner(s: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            s.txn(Txn {
                compares: vec![Compare::Absent("/name".into())],
                success: vec![put("/name", &i.to_string())],
                failure: vec![],
            })
            .await
            .unwrap()
            .succeeded
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1);
}

pub(crate) async fn watch_from_revision(s: Arc<dyn Store>) {
    let r1 = s
        .txn(Txn::ops(vec![put("/w/a", "1")]))
        .await
        .unwrap()
        .revision;
    s.txn(Txn::ops(vec![put("/other", "x")])).await.unwrap();
    let mut w = s.watch("/w/", r1).await.unwrap();
    let b = tokio::time::timeout(Duration::from_secs(5), w.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(b.revision, r1, "history replayed from the asked revision");
    assert_eq!(b.events[0].kv.key, "/w/a");
    s.txn(Txn::ops(vec![put("/w/b", "2"), Op::Delete("/w/a".into())]))
        .await
        .unwrap();
    let b = tokio::time::timeout(Duration::from_secs(5), w.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(b.events.len(), 2);
    assert_eq!(b.events[0].kind, EventKind::Put);
    assert_eq!(b.events[0].kv.value, b"2");
    assert_eq!(b.events[1].kind, EventKind::Delete);
    assert_eq!(b.events[1].kv.key, "/w/a");
    // Changes outside the prefix are not delivered.
    s.txn(Txn::ops(vec![put("/other", "y")])).await.unwrap();
    let last = s
        .txn(Txn::ops(vec![put("/w/c", "3")]))
        .await
        .unwrap()
        .revision;
    let b = tokio::time::timeout(Duration::from_secs(5), w.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(b.revision, last);
}

/// `compact` makes the store forget history (etcd: compact; SQLite: reopen) and returns
/// the store to use afterwards.
pub(crate) async fn watch_compacted_is_an_error(
    s: Arc<dyn Store>,
    compact: impl AsyncFnOnce(Arc<dyn Store>, i64) -> Arc<dyn Store>,
) {
    s.txn(Txn::ops(vec![put("/c", "1")])).await.unwrap();
    let rev = s
        .txn(Txn::ops(vec![put("/c", "2")]))
        .await
        .unwrap()
        .revision;
    let s = compact(s, rev).await;
    assert_eq!(
        s.get("/c").await.unwrap().unwrap().value,
        b"2",
        "data survives compaction"
    );
    match s.watch("/c", 1).await {
        Err(StoreError::Compacted { requested: 1, .. }) => {}
        Ok(mut w) => match tokio::time::timeout(Duration::from_secs(5), w.recv())
            .await
            .unwrap()
        {
            Some(Err(StoreError::Compacted { .. })) => {}
            other => panic!("expected a compacted error, got {other:?}"),
        },
        Err(e) => panic!("expected Compacted, got {e}"),
    }
}

pub(crate) async fn large_values(s: Arc<dyn Store>) {
    let big = vec![0xabu8; 700 * 1024];
    s.txn(Txn::ops(vec![Op::Put("/big".into(), big.clone())]))
        .await
        .unwrap();
    assert_eq!(s.get("/big").await.unwrap().unwrap().value, big);
}
