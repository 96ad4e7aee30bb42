//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`, so a
//! transaction is on disk when it is acknowledged.
//!
//! All writes go through one writer thread. It takes every transaction queued while the
//! previous commit was running and commits them together in one SQLite transaction (group
//! commit): each gets its own store revision, and all share one fsync. Reads use a separate
//! connection and see a consistent WAL snapshot.
//!
//! If a commit fails, the writer stops accepting writes ([`StoreError::Poisoned`]): after
//! a failed fsync nothing about the file's state can be trusted (PostgreSQL made the same
//! choice), and refusing is better than acknowledging what may be lost.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, PoisonError};
use std::thread;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::{
    prefix_end, BoxFuture, Compare, Event, EventKind, KeyValue, Observer, Op, Range, Store,
    StoreError, Txn, TxnResponse, Watch, WatchBatch,
};

/// Most transactions committed together.
const MAX_BATCH: usize = 512;
/// Watch history kept in memory, for watchers that start behind the current revision: at
/// most this many revisions ...
const HISTORY_REVISIONS: usize = 10_000;
/// ... and at most this many bytes of keys and values. In-process observers need none.
const HISTORY_BYTES: usize = 4 << 20;

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        backend: "sqlite",
        message: e.to_string(),
    }
}

/// The embedded SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    jobs: Mutex<Option<std_mpsc::Sender<Job>>>,
    writer: Mutex<Option<thread::JoinHandle<()>>>,
    reader: Arc<Mutex<Connection>>,
    history: Arc<Mutex<History>>,
}

struct Job {
    txn: Txn,
    reply: oneshot::Sender<Result<TxnResponse, StoreError>>,
}

struct History {
    /// Oldest revision a watch can start from.
    oldest: i64,
    batches: VecDeque<Arc<WatchBatch>>,
    bytes: usize,
    tx: broadcast::Sender<Arc<WatchBatch>>,
    /// Called in the writer thread after each commit, with the batch under their prefix.
    observers: Vec<(String, Observer)>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("oldest", &self.oldest)
            .field("batches", &self.batches.len())
            .field("observers", &self.observers.len())
            .finish()
    }
}

impl History {
    fn push(&mut self, batch: WatchBatch) {
        let batch = Arc::new(batch);
        self.bytes += batch_bytes(&batch);
        self.batches.push_back(Arc::clone(&batch));
        while self.batches.len() > HISTORY_REVISIONS || self.bytes > HISTORY_BYTES {
            let Some(old) = self.batches.pop_front() else {
                break;
            };
            self.bytes -= batch_bytes(&old);
            self.oldest = old.revision + 1;
        }
        for (prefix, observer) in &self.observers {
            if let Some(b) = filter(&batch, prefix) {
                observer(Ok(b));
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(batch);
    }
}

fn batch_bytes(b: &WatchBatch) -> usize {
    b.events
        .iter()
        .map(|e| e.kv.key.len() + e.kv.value.len() + 64)
        .sum()
}

/// Creates the database file 0600 (SQLite gives its `-wal` and `-shm` files the same
/// mode) and tightens an existing one.
fn ensure_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| StoreError::Backend {
            backend: "sqlite",
            message: format!("cannot open {}: {e}", path.display()),
        })?;
    let mode = f.metadata().map_err(backend)?.permissions().mode();
    if mode & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(backend)?;
    }
    Ok(())
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| StoreError::Backend {
        backend: "sqlite",
        message: format!("cannot open {}: {e}", path.display()),
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(backend)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(backend)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(backend)?;
    Ok(conn)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    key BLOB PRIMARY KEY,
    value BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0);
";

impl SqliteStore {
    /// Opens (or creates) the store at `path`. The file's directory must exist.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        ensure_private(path)?;
        let writer = open_connection(path)?;
        writer.execute_batch(SCHEMA).map_err(backend)?;
        let revision = read_revision(&writer)?;
        let reader = open_connection(path)?;
        let (tx, _) = broadcast::channel(4096);
        let history = Arc::new(Mutex::new(History {
            oldest: revision + 1,
            batches: VecDeque::new(),
            bytes: 0,
            tx,
            observers: Vec::new(),
        }));
        let (jobs_tx, jobs_rx) = std_mpsc::channel();
        let hist = Arc::clone(&history);
        let writer_thread = thread::Builder::new()
            .name("coffer-sqlite-writer".into())
            .spawn(move || {
                Writer {
                    conn: writer,
                    revision,
                    history: hist,
                    poisoned: None,
                }
                .run(jobs_rx)
            })
            .map_err(backend)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                jobs: Mutex::new(Some(jobs_tx)),
                writer: Mutex::new(Some(writer_thread)),
                reader: Arc::new(Mutex::new(reader)),
                history,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Commits the queued transactions, then stops the writer and waits until it has closed
    /// its connection; later writes get [`StoreError::Closed`].
    pub fn close(&self) {
        self.inner
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(w) = writer {
            let _ = w.join();
        }
    }

    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let reader = Arc::clone(&self.inner.reader);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut conn = reader.lock().unwrap_or_else(PoisonError::into_inner);
                f(&mut conn)
            })
            .await
            .map_err(backend)?
        })
    }
}

fn read_revision(conn: &Connection) -> Result<i64, StoreError> {
    conn.query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| {
        r.get(0)
    })
    .map_err(backend)
}

fn row_to_kv(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyValue> {
    let key: Vec<u8> = r.get(0)?;
    Ok(KeyValue {
        key: String::from_utf8_lossy(&key).into_owned(),
        value: r.get(1)?,
        create_revision: r.get(2)?,
        mod_revision: r.get(3)?,
        version: r.get(4)?,
    })
}

impl Store for SqliteStore {
    fn observe(
        &self,
        prefix: &str,
        from_revision: i64,
        observer: Observer,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        let r = self.observe_now(prefix, from_revision, observer);
        Box::pin(async move { r })
    }

    fn get(&self, key: &str) -> BoxFuture<'static, Result<Option<KeyValue>, StoreError>> {
        let key = key.as_bytes().to_vec();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT key, value, create_rev, mod_rev, version FROM kv WHERE key = ?1",
            )
            .and_then(|mut s| s.query_row([&key], row_to_kv).optional())
            .map_err(backend)
        })
    }

    fn range(&self, prefix: &str) -> BoxFuture<'static, Result<Range, StoreError>> {
        let start = prefix.as_bytes().to_vec();
        let end = prefix_end(prefix);
        self.read(move |conn| {
            let tx = conn.transaction().map_err(backend)?;
            let revision = read_revision(&tx)?;
            let kvs = {
                let mut s = tx
                    .prepare_cached(
                        "SELECT key, value, create_rev, mod_rev, version FROM kv \
                         WHERE key >= ?1 AND key < ?2 ORDER BY key",
                    )
                    .map_err(backend)?;
                let rows = s.query_map([&start, &end], row_to_kv).map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)?
            };
            tx.commit().map_err(backend)?;
            Ok(Range { kvs, revision })
        })
    }

    fn txn(&self, txn: Txn) -> BoxFuture<'static, Result<TxnResponse, StoreError>> {
        let (reply, rx) = oneshot::channel();
        let sent = self
            .inner
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|j| j.send(Job { txn, reply }).is_ok())
            .unwrap_or(false);
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Closed);
            }
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn watch(
        &self,
        prefix: &str,
        from_revision: i64,
    ) -> BoxFuture<'static, Result<Watch, StoreError>> {
        let history = Arc::clone(&self.inner.history);
        let prefix = prefix.to_owned();
        Box::pin(async move {
            let (replay, mut sub) = {
                let h = history.lock().unwrap_or_else(PoisonError::into_inner);
                if from_revision < h.oldest {
                    return Err(StoreError::Compacted {
                        requested: from_revision,
                        oldest: h.oldest,
                    });
                }
                let replay: Vec<_> = h
                    .batches
                    .iter()
                    .filter(|b| b.revision >= from_revision)
                    .cloned()
                    .collect();
                (replay, h.tx.subscribe())
            };
            let (tx, rx) = mpsc::channel(1024);
            tokio::spawn(async move {
                let mut last = from_revision - 1;
                for b in replay {
                    last = b.revision;
                    if let Some(f) = filter(&b, &prefix) {
                        if tx.send(Ok(f)).await.is_err() {
                            return;
                        }
                    }
                }
                loop {
                    match sub.recv().await {
                        Ok(b) if b.revision <= last => {}
                        Ok(b) => {
                            last = b.revision;
                            if let Some(f) = filter(&b, &prefix) {
                                if tx.send(Ok(f)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let oldest = history
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .oldest;
                            let _ = tx
                                .send(Err(StoreError::Compacted {
                                    requested: last + 1,
                                    oldest,
                                }))
                                .await;
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => {
                            let _ = tx.send(Err(StoreError::Closed)).await;
                            return;
                        }
                    }
                }
            });
            Ok(rx)
        })
    }
}

impl SqliteStore {
    fn observe_now(
        &self,
        prefix: &str,
        from_revision: i64,
        observer: Observer,
    ) -> Result<(), StoreError> {
        let mut h = self
            .inner
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if from_revision < h.oldest {
            return Err(StoreError::Compacted {
                requested: from_revision,
                oldest: h.oldest,
            });
        }
        for b in h.batches.iter().filter(|b| b.revision >= from_revision) {
            if let Some(f) = filter(b, prefix) {
                observer(Ok(f));
            }
        }
        h.observers.push((prefix.to_owned(), observer));
        Ok(())
    }
}

fn filter(b: &WatchBatch, prefix: &str) -> Option<WatchBatch> {
    let events: Vec<Event> = b
        .events
        .iter()
        .filter(|e| e.kv.key.starts_with(prefix))
        .cloned()
        .collect();
    (!events.is_empty()).then_some(WatchBatch {
        revision: b.revision,
        events,
    })
}

struct Writer {
    conn: Connection,
    revision: i64,
    history: Arc<Mutex<History>>,
    poisoned: Option<String>,
}

impl Writer {
    fn run(mut self, jobs: std_mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
        tracing::debug!("sqlite writer stopped");
    }

    fn commit(&mut self, batch: Vec<Job>) {
        if let Some(why) = &self.poisoned {
            for job in batch {
                let _ = job.reply.send(Err(StoreError::Poisoned(why.clone())));
            }
            return;
        }
        let start_rev = self.revision;
        match self.apply(&batch) {
            Ok((results, events)) => {
                {
                    let mut h = self.history.lock().unwrap_or_else(PoisonError::into_inner);
                    for b in events {
                        h.push(b);
                    }
                }
                for (job, r) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(Ok(r));
                }
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.revision = start_rev;
                let why = e.to_string();
                tracing::error!(error = %why, "sqlite commit failed; refusing further writes");
                self.poisoned = Some(why.clone());
                for job in batch {
                    let _ = job.reply.send(Err(StoreError::Poisoned(why.clone())));
                }
            }
        }
    }

    fn apply(&mut self, batch: &[Job]) -> Result<(Vec<TxnResponse>, Vec<WatchBatch>), StoreError> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(backend)?;
        let mut results = Vec::with_capacity(batch.len());
        let mut batches = Vec::new();
        for job in batch {
            let succeeded = self.compares_hold(&job.txn.compares)?;
            let ops = if succeeded {
                &job.txn.success
            } else {
                &job.txn.failure
            };
            let rev = self.revision + 1;
            let mut events = Vec::with_capacity(ops.len());
            for op in ops {
                if let Some(ev) = self.apply_op(op, rev)? {
                    events.push(ev);
                }
            }
            if !events.is_empty() {
                self.revision = rev;
                batches.push(WatchBatch {
                    revision: rev,
                    events,
                });
            }
            results.push(TxnResponse {
                succeeded,
                revision: self.revision,
            });
        }
        self.conn
            .prepare_cached("UPDATE meta SET value = ?1 WHERE name = 'revision'")
            .and_then(|mut s| s.execute([self.revision]))
            .map_err(backend)?;
        self.conn.execute_batch("COMMIT").map_err(backend)?;
        Ok((results, batches))
    }

    fn mod_revision(&self, key: &str) -> Result<i64, StoreError> {
        self.conn
            .prepare_cached("SELECT mod_rev FROM kv WHERE key = ?1")
            .and_then(|mut s| s.query_row([key.as_bytes()], |r| r.get(0)).optional())
            .map(|r| r.unwrap_or(0))
            .map_err(backend)
    }

    fn compares_hold(&self, compares: &[Compare]) -> Result<bool, StoreError> {
        for c in compares {
            let ok = match c {
                Compare::Absent(k) => self.mod_revision(k)? == 0,
                Compare::Exists(k) => self.mod_revision(k)? != 0,
                Compare::ModRevision(k, r) => self.mod_revision(k)? == *r,
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn apply_op(&self, op: &Op, rev: i64) -> Result<Option<Event>, StoreError> {
        match op {
            Op::Put(key, value) => {
                let (create_revision, version): (i64, i64) = self
                    .conn
                    .prepare_cached(
                        "INSERT INTO kv (key, value, create_rev, mod_rev, version) \
                         VALUES (?1, ?2, ?3, ?3, 1) \
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                         mod_rev = excluded.mod_rev, version = version + 1 \
                         RETURNING create_rev, version",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![key.as_bytes(), value, rev], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })
                    })
                    .map_err(backend)?;
                Ok(Some(Event {
                    kind: EventKind::Put,
                    kv: KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision,
                        mod_revision: rev,
                        version,
                    },
                }))
            }
            Op::Delete(key) => {
                let n = self
                    .conn
                    .prepare_cached("DELETE FROM kv WHERE key = ?1")
                    .and_then(|mut s| s.execute([key.as_bytes()]))
                    .map_err(backend)?;
                Ok((n > 0).then(|| Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key: key.clone(),
                        value: Vec::new(),
                        create_revision: 0,
                        mod_revision: rev,
                        version: 0,
                    },
                }))
            }
        }
    }
}

/// Runs SQLite's `PRAGMA integrity_check` on a database file; `Ok` when it says "ok".
pub fn integrity_check(path: &Path) -> Result<(), StoreError> {
    let conn = open_connection(path)?;
    let r: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(backend)?;
    if r == "ok" {
        Ok(())
    } else {
        Err(backend(format!(
            "integrity check of {}: {r}",
            path.display()
        )))
    }
}
