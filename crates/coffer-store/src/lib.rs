//! The store seam: a key-value space with etcd's semantics, so one interface fits the
//! embedded SQLite store and etcd.
//!
//! - every committed change gets the next value of one global **revision**;
//! - each key carries its `create_revision`, `mod_revision` and `version`;
//! - [`Txn`] is etcd's transaction: if every compare holds, apply `success`, else `failure`;
//! - [`Store::watch`] streams the changes under a prefix from a revision on.
//!
//! The store never sees plaintext: the manager seals secret values before they get here.
//!
//! # Layout
//! - [`sqlite`]: [`SqliteStore`], WAL, `synchronous=FULL`, a writer thread that commits
//!   queued transactions together (group commit).
//! - `etcd` (feature `etcd`): `EtcdStore` over the etcd v3 API.
//!
//! # Current limitations
//! - SQLite keeps watch history in memory only (recent revisions, bounded): a watcher that
//!   falls further behind gets [`StoreError::Compacted`] and must re-read, as with a
//!   compacted etcd.
#![warn(missing_docs)]

use std::fmt;
use std::future::Future;
use std::pin::Pin;

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod sqlite;

#[cfg(feature = "etcd")]
pub use etcd::EtcdStore;
pub use sqlite::SqliteStore;

/// A boxed future, so that [`Store`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A stored key and its value, with etcd's bookkeeping.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value (empty in delete events).
    pub value: Vec<u8>,
    /// Revision that created the key.
    pub create_revision: i64,
    /// Revision of the last change.
    pub mod_revision: i64,
    /// Number of changes since creation (1 after create).
    pub version: i64,
}

impl fmt::Debug for KeyValue {
    // Values can be ciphertext of secrets: print their size only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyValue")
            .field("key", &self.key)
            .field("value_len", &self.value.len())
            .field("create_revision", &self.create_revision)
            .field("mod_revision", &self.mod_revision)
            .field("version", &self.version)
            .finish()
    }
}

/// One condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists.
    Exists(String),
    /// The key's `mod_revision` equals this (0 = absent, as in etcd).
    ModRevision(String, i64),
}

/// One operation of a transaction.
#[derive(Clone, PartialEq, Eq)]
pub enum Op {
    /// Remove a key (no effect if absent).
    Delete(String),
    /// Create or replace a key.
    Put(String, Vec<u8>),
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Delete(k) => write!(f, "Delete({k:?})"),
            Self::Put(k, v) => write!(f, "Put({k:?}, {} bytes)", v.len()),
        }
    }
}

/// An etcd transaction: `if all(compares) { success } else { failure }`, atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions, all of which must hold.
    pub compares: Vec<Compare>,
    /// Applied when they hold.
    pub success: Vec<Op>,
    /// Applied when one does not.
    pub failure: Vec<Op>,
}

impl Txn {
    /// A transaction that applies `ops` unconditionally.
    pub fn ops(ops: Vec<Op>) -> Self {
        Self {
            compares: Vec::new(),
            success: ops,
            failure: Vec::new(),
        }
    }
}

/// Outcome of a committed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the compares held (and `success` was applied).
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: i64,
}

/// A consistent read of every key under a prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Range {
    /// Keys in ascending order.
    pub kvs: Vec<KeyValue>,
    /// The store revision the read saw.
    pub revision: i64,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Removed.
    Delete,
    /// Created or replaced.
    Put,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change (for a delete: key and revision, empty value).
    pub kv: KeyValue,
}

/// The changes of one revision that fall under a watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    /// The revision.
    pub revision: i64,
    /// Its events under the prefix, in order.
    pub events: Vec<Event>,
}

/// A stream of watch batches; an `Err` ends it.
pub type Watch = tokio::sync::mpsc::Receiver<Result<WatchBatch, StoreError>>;

/// A function called with each batch under a prefix, in revision order; an `Err` is the last
/// call.
pub type Observer = std::sync::Arc<dyn Fn(Result<WatchBatch, StoreError>) + Send + Sync>;

/// A store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, SQLite, etcd).
    #[error("store backend {backend}: {message}")]
    Backend {
        /// `sqlite` or `etcd`.
        backend: &'static str,
        /// What failed.
        message: String,
    },
    /// The revisions asked for are no longer kept.
    #[error("watch from revision {requested} is no longer possible (history starts at {oldest}); read again")]
    Compacted {
        /// Revision asked for.
        requested: i64,
        /// Oldest revision that can be watched from.
        oldest: i64,
    },
    /// A write failed earlier and the store stopped writing.
    #[error("the store stopped accepting writes after a failed commit ({0}); restart coffer")]
    Poisoned(String),
    /// The store is shutting down.
    #[error("the store is closed")]
    Closed,
}

/// A key-value store with etcd semantics.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Reads one key.
    fn get(&self, key: &str) -> BoxFuture<'static, Result<Option<KeyValue>, StoreError>>;

    /// Reads every key under `prefix`, consistently, with the revision read.
    fn range(&self, prefix: &str) -> BoxFuture<'static, Result<Range, StoreError>>;

    /// Runs a transaction. It is durable when the future resolves `Ok`.
    fn txn(&self, txn: Txn) -> BoxFuture<'static, Result<TxnResponse, StoreError>>;

    /// Streams changes under `prefix` with revision >= `from_revision`.
    fn watch(
        &self,
        prefix: &str,
        from_revision: i64,
    ) -> BoxFuture<'static, Result<Watch, StoreError>>;

    /// Calls `observer` with every change under `prefix` from `from_revision` on, in order.
    /// A backend that commits in-process (SQLite) calls it right after each commit, before
    /// the writers are answered, so a writer sees its own write without a task hop; the
    /// default follows [`Store::watch`] in a task.
    fn observe(
        &self,
        prefix: &str,
        from_revision: i64,
        observer: Observer,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        let watch = self.watch(prefix, from_revision);
        Box::pin(async move {
            let mut w = watch.await?;
            tokio::spawn(async move {
                while let Some(b) = w.recv().await {
                    let end = b.is_err();
                    observer(b);
                    if end {
                        return;
                    }
                }
                observer(Err(StoreError::Closed));
            });
            Ok(())
        })
    }
}

/// The end of the key range that starts with `prefix` (etcd's `prefix_end`).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
