//! The manager's in-memory views of stored records (secrets, services), kept current from
//! the store. Reads (list, inspect, name lookups) are served from here; writes go to the
//! store and then wait until the view has seen their revision, so a client reads its own
//! writes. With several managers on etcd, each view follows the same stream.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use coffer_core::record::Named;
use coffer_store::{EventKind, Store, StoreError, WatchBatch};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::error::ControlError;

/// A record as the view holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<R> {
    /// The stored record.
    pub record: R,
    /// Store revision of its last change: the Docker `Version.Index`.
    pub mod_revision: i64,
}

#[derive(Debug)]
struct State<R> {
    by_id: BTreeMap<String, Arc<Entry<R>>>,
    by_name: HashMap<String, String>,
    /// Serialized unfiltered list, valid for `revision` (the list endpoint's hot path).
    list_cache: Option<(i64, Bytes)>,
}

impl<R> Default for State<R> {
    fn default() -> Self {
        Self {
            by_id: BTreeMap::new(),
            by_name: HashMap::new(),
            list_cache: None,
        }
    }
}

/// A view of the records under one prefix.
#[derive(Debug)]
pub struct View<R> {
    prefix: &'static str,
    /// What the records are, for messages ("secret", "service").
    kind: &'static str,
    state: RwLock<State<R>>,
    revision: watch::Sender<i64>,
}

impl<R> View<R>
where
    R: Named + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    /// Reads every record under `prefix` (keys `<prefix><id>`) and follows the store.
    pub async fn start(
        store: Arc<dyn Store>,
        prefix: &'static str,
        kind: &'static str,
    ) -> Result<Arc<Self>, StoreError> {
        let (tx, _) = watch::channel(0);
        let view = Arc::new(Self {
            prefix,
            kind,
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
                tracing::warn!(error = %e, kind = view.kind, "store watch ended; reading again");
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let followed = match view.reload(&*store).await {
                        Ok(rev) => Self::observe(&view, &store, rev + 1, resync_tx.clone()).await,
                        Err(e) => Err(e),
                    };
                    match followed {
                        Ok(()) => break,
                        Err(e) => tracing::warn!(error = %e, "re-reading failed; retrying"),
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
        store.observe(view.prefix, from, observer).await
    }

    fn id_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        let id = key.strip_prefix(self.prefix)?;
        (!id.is_empty() && !id.contains('/')).then_some(id)
    }

    async fn reload(&self, store: &dyn Store) -> Result<i64, StoreError> {
        let range = store.range(self.prefix).await?;
        let mut fresh = State::default();
        for kv in range.kvs {
            if self.id_of(&kv.key).is_none() {
                continue;
            }
            match serde_json::from_slice::<R>(&kv.value) {
                Ok(record) => {
                    fresh
                        .by_name
                        .insert(record.name().to_owned(), record.id().to_owned());
                    fresh.by_id.insert(
                        record.id().to_owned(),
                        Arc::new(Entry {
                            record,
                            mod_revision: kv.mod_revision,
                        }),
                    );
                }
                Err(e) => tracing::error!(key = %kv.key, error = %e, "unreadable record skipped"),
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
                let Some(id) = self.id_of(&ev.kv.key).map(str::to_owned) else {
                    continue;
                };
                match ev.kind {
                    EventKind::Put => match serde_json::from_slice::<R>(&ev.kv.value) {
                        Ok(record) => {
                            if let Some(old) = s.by_id.get(&id) {
                                let old_name = old.record.name().to_owned();
                                s.by_name.remove(&old_name);
                            }
                            s.by_name.insert(record.name().to_owned(), id.clone());
                            s.by_id.insert(
                                id,
                                Arc::new(Entry {
                                    record,
                                    mod_revision: ev.kv.mod_revision,
                                }),
                            );
                        }
                        Err(e) => {
                            tracing::error!(key = %ev.kv.key, error = %e, "unreadable record")
                        }
                    },
                    EventKind::Delete => {
                        if let Some(old) = s.by_id.remove(&id) {
                            s.by_name.remove(old.record.name());
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

    /// A receiver that changes whenever the view applies a batch.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.revision.subscribe()
    }

    /// Waits until the view has applied `rev` (a write's own revision).
    pub async fn wait_for(&self, rev: i64) {
        let mut rx = self.revision.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|r| *r >= rev)).await;
    }

    /// Finds a record by full id, then exact name, then unique id prefix (Docker's order).
    pub fn lookup(&self, key: &str) -> Result<Arc<Entry<R>>, ControlError> {
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
                    kind: self.kind,
                    prefix: key.to_owned(),
                    count: extra + 1,
                });
            }
        }
        Err(ControlError::NotFound {
            kind: self.kind,
            key: key.to_owned(),
        })
    }

    /// The error for a write on `id` that lost its compare on revision `given`.
    pub fn stale(&self, id: &str, name: &str, given: i64) -> ControlError {
        let current = self.lookup(id).map_or(0, |e| e.mod_revision);
        ControlError::StaleVersion {
            kind: self.kind,
            name: name.to_owned(),
            given: u64::try_from(given).unwrap_or(0),
            current: u64::try_from(current).unwrap_or(0),
        }
    }

    /// Checks an update's `?version=N` against `entry` (Docker's `Version.Index`);
    /// returns the revision to compare in the write.
    pub fn check_version(
        &self,
        entry: &Entry<R>,
        version: Option<&str>,
    ) -> Result<i64, ControlError> {
        let kind = self.kind;
        let v = version.ok_or_else(|| {
            ControlError::Invalid(format!(
                "the version query parameter is missing; inspect the {kind} and pass ?version=<Version.Index>"
            ))
        })?;
        let given: u64 = v.parse().map_err(|_| {
            ControlError::Invalid(format!(
                "invalid version {v:?}; it is the {kind}'s Version.Index, a number"
            ))
        })?;
        let current = u64::try_from(entry.mod_revision).unwrap_or(0);
        if given != current {
            return Err(ControlError::StaleVersion {
                kind,
                name: entry.record.name().to_owned(),
                given,
                current,
            });
        }
        Ok(entry.mod_revision)
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
    pub fn all(&self) -> Vec<Arc<Entry<R>>> {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_id
            .values()
            .cloned()
            .collect()
    }

    /// Number of records.
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
    pub fn cached_list(&self, render: impl FnOnce(&[Arc<Entry<R>>]) -> Bytes) -> Bytes {
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
