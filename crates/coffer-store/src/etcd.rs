//! The etcd backend (etcd v3 API through `etcd-client`), for managers that share one state.
//!
//! Every key is stored under a namespace prefix (default `/coffer`), so one etcd cluster
//! can hold several coffer clusters or other data. Revisions, compares and watches are
//! etcd's own.
//!
//! etcd refuses transactions with more than `--max-txn-ops` operations (128 by default);
//! the manager keeps its transactions under that.

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, EventType, GetOptions, KeyValue as EtcdKv,
    Txn as EtcdTxn, TxnOp, WatchOptions,
};
use tokio::sync::mpsc;

use crate::{
    BoxFuture, Compare, Event, EventKind, KeyValue, Op, Range, Store, StoreError, Txn, TxnResponse,
    Watch, WatchBatch,
};

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        backend: "etcd",
        message: e.to_string(),
    }
}

/// A store in etcd.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    namespace: String,
    endpoints: Vec<String>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl EtcdStore {
    /// Connects to etcd at `endpoints` (`host:port` or `http://host:port`), keeping every
    /// key under `namespace`.
    pub async fn connect(endpoints: &[String], namespace: &str) -> Result<Self, StoreError> {
        let client = Client::connect(endpoints, None)
            .await
            .map_err(|e| StoreError::Backend {
                backend: "etcd",
                message: format!("cannot connect to {}: {e}", endpoints.join(",")),
            })?;
        let mut probe = client.clone();
        // Fail at start-up, not at the first request, when etcd is unreachable.
        probe.status().await.map_err(|e| StoreError::Backend {
            backend: "etcd",
            message: format!("etcd at {} does not answer: {e}", endpoints.join(",")),
        })?;
        Ok(Self {
            client,
            namespace: namespace.trim_end_matches('/').to_owned(),
            endpoints: endpoints.to_vec(),
        })
    }

    /// Compacts etcd's history up to `revision` (tests and maintenance).
    pub async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        self.client
            .clone()
            .compact(revision, None)
            .await
            .map_err(backend)?;
        Ok(())
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }

    fn convert(namespace: &str, kv: &EtcdKv) -> KeyValue {
        let key = String::from_utf8_lossy(kv.key());
        KeyValue {
            key: key.strip_prefix(namespace).unwrap_or(&key).to_owned(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
        }
    }
}

fn ops(store: &EtcdStore, ops: &[Op]) -> Vec<TxnOp> {
    ops.iter()
        .map(|op| match op {
            Op::Put(k, v) => TxnOp::put(store.full(k), v.clone(), None),
            Op::Delete(k) => TxnOp::delete(store.full(k), None),
        })
        .collect()
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> BoxFuture<'static, Result<Option<KeyValue>, StoreError>> {
        let mut c = self.client.clone();
        let full = self.full(key);
        let ns = self.namespace.clone();
        Box::pin(async move {
            let r = c.get(full, None).await.map_err(backend)?;
            Ok(r.kvs().first().map(|kv| Self::convert(&ns, kv)))
        })
    }

    fn range(&self, prefix: &str) -> BoxFuture<'static, Result<Range, StoreError>> {
        let mut c = self.client.clone();
        let full = self.full(prefix);
        let ns = self.namespace.clone();
        Box::pin(async move {
            let r = c
                .get(full, Some(GetOptions::new().with_prefix()))
                .await
                .map_err(backend)?;
            let revision = r.header().map(|h| h.revision()).unwrap_or(0);
            Ok(Range {
                kvs: r.kvs().iter().map(|kv| Self::convert(&ns, kv)).collect(),
                revision,
            })
        })
    }

    fn txn(&self, txn: Txn) -> BoxFuture<'static, Result<TxnResponse, StoreError>> {
        let mut c = self.client.clone();
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|cmp| match cmp {
                Compare::Absent(k) => EtcdCompare::version(self.full(k), CompareOp::Equal, 0),
                Compare::Exists(k) => EtcdCompare::version(self.full(k), CompareOp::Greater, 0),
                Compare::ModRevision(k, r) => {
                    EtcdCompare::mod_revision(self.full(k), CompareOp::Equal, *r)
                }
            })
            .collect();
        let t = EtcdTxn::new()
            .when(compares)
            .and_then(ops(self, &txn.success))
            .or_else(ops(self, &txn.failure));
        Box::pin(async move {
            let r = c.txn(t).await.map_err(backend)?;
            Ok(TxnResponse {
                succeeded: r.succeeded(),
                revision: r.header().map(|h| h.revision()).unwrap_or(0),
            })
        })
    }

    fn watch(
        &self,
        prefix: &str,
        from_revision: i64,
    ) -> BoxFuture<'static, Result<Watch, StoreError>> {
        let mut c = self.client.clone();
        let full = self.full(prefix);
        let ns = self.namespace.clone();
        Box::pin(async move {
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(from_revision);
            let mut stream = c.watch(full, Some(opts)).await.map_err(backend)?;
            let (tx, rx) = mpsc::channel(1024);
            tokio::spawn(async move {
                loop {
                    let resp = match stream.message().await {
                        Ok(Some(r)) => r,
                        Ok(None) => {
                            let _ = tx.send(Err(StoreError::Closed)).await;
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(backend(e))).await;
                            return;
                        }
                    };
                    if resp.compact_revision() > 0 {
                        let _ = tx
                            .send(Err(StoreError::Compacted {
                                requested: from_revision,
                                oldest: resp.compact_revision(),
                            }))
                            .await;
                        return;
                    }
                    if resp.canceled() {
                        let _ = tx
                            .send(Err(backend(format!(
                                "watch canceled: {}",
                                resp.cancel_reason()
                            ))))
                            .await;
                        return;
                    }
                    // etcd sends the events of one revision together, in order; split a
                    // response that spans several revisions.
                    let mut batch: Option<WatchBatch> = None;
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let mut kv = Self::convert(&ns, kv);
                        let kind = match ev.event_type() {
                            EventType::Put => EventKind::Put,
                            EventType::Delete => {
                                kv.value.clear();
                                EventKind::Delete
                            }
                        };
                        let rev = kv.mod_revision;
                        if batch.as_ref().is_some_and(|b| b.revision != rev) {
                            if let Some(b) = batch.take() {
                                if tx.send(Ok(b)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        batch
                            .get_or_insert_with(|| WatchBatch {
                                revision: rev,
                                events: Vec::new(),
                            })
                            .events
                            .push(Event { kind, kv });
                    }
                    if let Some(b) = batch {
                        if tx.send(Ok(b)).await.is_err() {
                            return;
                        }
                    }
                }
            });
            Ok(rx)
        })
    }
}
