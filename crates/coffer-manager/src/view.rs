//! The manager's in-memory view of secret metadata, kept current from the store's watch
//! stream. Reads (list, inspect, name lookups) are served from here; writes go to the
//! store and then wait until the view has seen their revision, so a client reads its own
//! writes. With several managers on etcd, each view follows the same stream.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use coffer_core::record::{SecretRecord, SECRETS_PREFIX};
use coffer_store::{EventKind, Store, StoreError, WatchBatch};
use tokio::sync::watch;

use crate::error::ControlError;

/// A secret as the view holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The stored record.
    pub record: SecretRecord,
    /// Store revision of its last change: the Docker `Version.Index`.
    pub mod_revision: i64,
}

#[derive(Debug, Default)]
struct State {
    by_id: BTreeMap<String, Arc<Entry>>,
    by_name: HashMap<String, String>,
    /// Serialized unfiltered list, valid for `revision` (the list endpoint's hot path).
    list_cache: Option<(i64, Bytes)>,
}

/// The view.
#[derive(Debug)]
pub struct View {
    state: RwLock<State>,
    revision: watch::Sender<i64>,
}

impl View {
    /// Reads every secret record and starts following the store.
    pub async fn start(store: Arc<dyn Store>) -> Result<Arc<Self>, StoreError> {
        let (tx, _) = watch::channel(0);
        let view = Arc::new(Self {
            state: RwLock::new(State::default()),
            revision: tx,
        });
        let rev = view.reload(&*store).await?;
        let (resync_tx, mut resync) = tokio::sync::mpsc::unbounded_channel::<StoreError>();
        Self::observe(&view, &store, rev + 1, resync_tx.clone()).await?;
        let weak = Arc::downgrade(&view);
        // Only when following fails (etcd compaction, a broken stream): read everything
        // again and follow from there.
        tokio::spawn(async move {
            while let Some(e) = resync.recv().await {
                let Some(view) = weak.upgrade() else { return };
                if matches!(e, StoreError::Closed) && Arc::strong_count(&store) == 1 {
                    return;
                }
                tracing::warn!(error = %e, "store watch ended; reading the secrets again");
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let followed = match view.reload(&*store).await {
                        Ok(rev) => Self::observe(&view, &store, rev + 1, resync_tx.clone()).await,
                        Err(e) => Err(e),
                    };
                    match followed {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "re-reading the secrets failed; retrying")
                        }
                    }
                }
            }
        });
        Ok(view)
    }

    async fn observe(
        view: &Arc<Self>,
        store: &Arc<dyn Store>,
        from: i64,
        resync: tokio::sync::mpsc::UnboundedSender<StoreError>,
    ) -> Result<(), StoreError> {
        let weak = Arc::downgrade(view);
        let observer: coffer_store::Observer = Arc::new(move |b| {
            let Some(view) = weak.upgrade() else { return };
            match b {
                Ok(batch) => view.apply(batch),
                Err(e) => {
                    let _ = resync.send(e);
                }
            }
        });
        store.observe(SECRETS_PREFIX, from, observer).await
    }

    async fn reload(&self, store: &dyn Store) -> Result<i64, StoreError> {
        let range = store.range(SECRETS_PREFIX).await?;
        let mut fresh = State::default();
        for kv in range.kvs {
            match serde_json::from_slice::<SecretRecord>(&kv.value) {
                Ok(record) => {
                    fresh.by_name.insert(record.name.clone(), record.id.clone());
                    fresh.by_id.insert(
                        record.id.clone(),
                        Arc::new(Entry {
                            record,
                            mod_revision: kv.mod_revision,
                        }),
                    );
                }
                Err(e) => {
                    tracing::error!(key = %kv.key, error = %e, "unreadable secret record skipped")
                }
            }
        }
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        self.revision.send_modify(|r| *r = (*r).max(range.revision));
        Ok(range.revision)
    }

    fn apply(&self, batch: WatchBatch) {
        {
            let mut s = self.state.write().unwrap_or_else(PoisonError::into_inner);
            for ev in batch.events {
                let id = ev.kv.key.trim_start_matches(SECRETS_PREFIX).to_owned();
                match ev.kind {
                    EventKind::Put => match serde_json::from_slice::<SecretRecord>(&ev.kv.value) {
                        Ok(record) => {
                            if let Some(old) = s.by_id.get(&id) {
                                let old_name = old.record.name.clone();
                                s.by_name.remove(&old_name);
                            }
                            s.by_name.insert(record.name.clone(), id.clone());
                            s.by_id.insert(
                                id,
                                Arc::new(Entry {
                                    record,
                                    mod_revision: ev.kv.mod_revision,
                                }),
                            );
                        }
                        Err(e) => {
                            tracing::error!(key = %ev.kv.key, error = %e, "unreadable secret record")
                        }
                    },
                    EventKind::Delete => {
                        if let Some(old) = s.by_id.remove(&id) {
                            s.by_name.remove(&old.record.name);
                        }
                    }
                }
            }
            s.list_cache = None;
        }
        self.revision.send_modify(|r| *r = (*r).max(batch.revision));
    }

    /// The last revision applied.
    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// Waits until the view has applied `rev` (a write's own revision).
    pub async fn wait_for(&self, rev: i64) {
        let mut rx = self.revision.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|r| *r >= rev)).await;
    }

    /// Finds a secret by full id, then exact name, then unique id prefix (Docker's order).
    pub fn lookup(&self, key: &str) -> Result<Arc<Entry>, ControlError> {
        let s = self.state.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = s.by_id.get(key) {
            return Ok(Arc::clone(e));
        }
        if let Some(e) = s.by_name.get(key).and_then(|id| s.by_id.get(id)) {
            return Ok(Arc::clone(e));
        }
        if !key.is_empty() && key.len() < coffer_core::id::ID_LEN {
            let mut matches = s
                .by_id
                .range(key.to_owned()..)
                .take_while(|(id, _)| id.starts_with(key));
            if let Some((_, first)) = matches.next() {
                let extra = matches.count();
                if extra == 0 {
                    return Ok(Arc::clone(first));
                }
                return Err(ControlError::Ambiguous {
                    prefix: key.to_owned(),
                    count: extra + 1,
                });
            }
        }
        Err(ControlError::NotFound(key.to_owned()))
    }

    /// Whether a name is taken.
    pub fn name_taken(&self, name: &str) -> bool {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_name
            .contains_key(name)
    }

    /// All entries, ordered by id.
    pub fn all(&self) -> Vec<Arc<Entry>> {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_id
            .values()
            .cloned()
            .collect()
    }

    /// Number of secrets.
    pub fn len(&self) -> usize {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_id
            .len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached serialized full list, if still valid; else builds it with `render`.
    pub fn cached_list(&self, render: impl FnOnce(&[Arc<Entry>]) -> Bytes) -> Bytes {
        let rev = self.revision();
        {
            let s = self.state.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((r, b)) = &s.list_cache {
                if *r == rev {
                    return b.clone();
                }
            }
        }
        let entries = self.all();
        let body = render(&entries);
        let mut s = self.state.write().unwrap_or_else(PoisonError::into_inner);
        // Only cache if nothing changed while rendering.
        if self.revision() == rev {
            s.list_cache = Some((rev, body.clone()));
        }
        body
    }
}
