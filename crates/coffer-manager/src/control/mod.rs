//! The control layer: every operation the API offers, as methods of [`Manager`]. Each
//! operation validates fully before it writes, writes in one store transaction (so a
//! refused request changes nothing), records an audit event in that same transaction, and
//! returns once the manager's view has seen its write.

mod keys;
mod secrets;
mod services;
mod tasks;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use coffer_core::record::SECRETS_PREFIX;
use coffer_store::{SqliteStore, Store};

use crate::audit::{Actor, Audit, Pending};
use crate::error::ControlError;
use crate::keys::Keys;
use crate::view::View;

pub(crate) use secrets::parse_json;
pub use secrets::{open_version, ListFilters};
pub(crate) use services::replicas;
pub use tasks::ValueCache;

/// Where the manager keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// etcd endpoints and a key namespace.
    Etcd {
        /// `host:port` or `http://host:port`.
        endpoints: Vec<String>,
        /// Key prefix.
        namespace: String,
    },
}

impl StoreSpec {
    /// Parses `sqlite:PATH` or `etcd://HOST:PORT[,HOST:PORT...][/namespace]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("sqlite:") {
            if p.is_empty() {
                return Err(
                    "--store sqlite: needs a path, as in sqlite:/var/lib/coffer/state.db".into(),
                );
            }
            return Ok(Self::Sqlite(PathBuf::from(p)));
        }
        if let Some(rest) = s.strip_prefix("etcd://") {
            let (hosts, ns) = match rest.split_once('/') {
                Some((h, n)) if !n.is_empty() => (h, format!("/{}", n.trim_matches('/'))),
                Some((h, _)) => (h, "/coffer".to_owned()),
                None => (rest, "/coffer".to_owned()),
            };
            let endpoints: Vec<String> = hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("http://{h}"))
                .collect();
            if endpoints.is_empty() {
                return Err(
                    "--store etcd:// needs at least one HOST:PORT, as in etcd://127.0.0.1:2379"
                        .into(),
                );
            }
            return Ok(Self::Etcd {
                endpoints,
                namespace: ns,
            });
        }
        Err(format!(
            "--store {s:?} is not understood; use sqlite:PATH or etcd://HOST:PORT[,HOST:PORT...]"
        ))
    }
}

/// How to run a manager.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory (keyring, SQLite file, lock file); made 0700.
    pub data_dir: PathBuf,
    /// The store; `None` means `sqlite:<data_dir>/state.db`.
    pub store: Option<StoreSpec>,
    /// Seal the keyring under an unlock key.
    pub autolock: bool,
    /// Value versions kept per secret.
    pub keep_versions: u32,
}

/// A running manager's state and operations.
#[derive(Debug)]
pub struct Manager {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) keys: Keys,
    pub(crate) view: Arc<View<coffer_core::record::SecretRecord>>,
    pub(crate) services: Arc<View<coffer_core::record::ServiceRecord>>,
    pub(crate) tasks: Arc<View<coffer_core::record::TaskRecord>>,
    pub(crate) nodes: Arc<View<coffer_core::record::NodeRecord>>,
    /// Task output sent by the nodes, masked.
    pub logs: Arc<crate::logs::Logs>,
    /// Credential of the node listener (this boot only).
    /// (`SecretBytes`: zeroized, and `[REDACTED]` if the manager is ever Debug-printed.)
    pub(crate) node_token: coffer_crypto::SecretBytes,
    pub(crate) audit: Arc<Audit>,
    /// Creates and rotations hold it shared; a KEK rotation holds it exclusively, so no
    /// data key is wrapped by a KEK that is about to be retired.
    pub(crate) key_rotation: tokio::sync::RwLock<()>,
    pub(crate) keep_versions: u32,
    /// Stable id of this cluster (for `/info`).
    pub cluster_id: String,
    /// When this manager started.
    pub started: SystemTime,
    /// Description of the store, for logs and `/info`.
    pub store_description: String,
    _lock: std::fs::File,
}

/// What [`Manager::open`] has to tell the operator.
#[derive(Debug)]
pub struct Startup {
    /// The manager.
    pub manager: Arc<Manager>,
    /// An unlock key to print once (autolock was just turned on).
    pub new_unlock_key: Option<coffer_crypto::UnlockKey>,
    /// Whether the manager starts locked.
    pub locked: bool,
}

/// Opening the manager failed; the message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory is unusable.
    #[error("data directory {path}: {message}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong and the fix.
        message: String,
    },
    /// Another manager holds the data directory.
    #[error("another coffer manager is using {0}; stop it first, or pass another --data-dir")]
    InUse(PathBuf),
    /// The keyring file is missing while the store holds secrets.
    #[error("keyring file {path} is missing but the store holds {count} secrets; restore the keyring from a backup (a new one could not open them)")]
    KeyringMissing {
        /// Where it should be.
        path: PathBuf,
        /// Secrets in the store.
        count: usize,
    },
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] coffer_store::StoreError),
    /// The keyring failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// This build lacks the etcd backend.
    #[error("this coffer was built without the etcd backend; build it with `cargo build --release --features etcd` (needs protoc: apt-get install protobuf-compiler)")]
    NoEtcd,
}

fn prepare_data_dir(dir: &std::path::Path) -> Result<std::fs::File, OpenError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |message: String| OpenError::DataDir {
        path: dir.to_owned(),
        message,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| err(format!("cannot create it: {e}; pass a writable --data-dir")))?;
    let meta = std::fs::metadata(dir).map_err(|e| err(e.to_string()))?;
    if !meta.is_dir() {
        return Err(err(
            "is not a directory; pass a directory as --data-dir".into()
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            err(format!(
                "is accessible to others and cannot be made 0700: {e}"
            ))
        })?;
    }
    use std::os::unix::fs::OpenOptionsExt;
    let lock = std::fs::OpenOptions::new()
        .mode(0o600)
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(|e| err(format!("cannot create its lock file: {e}")))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(OpenError::InUse(dir.to_owned())),
        Err(std::fs::TryLockError::Error(e)) => Err(err(format!("cannot lock it: {e}"))),
    }
}

impl Manager {
    /// Opens the data directory, the store and the keyring, and starts following the store.
    pub async fn open(config: &Config) -> Result<Startup, OpenError> {
        let lock = prepare_data_dir(&config.data_dir)?;
        let spec = config
            .store
            .clone()
            .unwrap_or_else(|| StoreSpec::Sqlite(config.data_dir.join("state.db")));
        let (store, store_description): (Arc<dyn Store>, String) = match &spec {
            StoreSpec::Sqlite(path) => (
                Arc::new(SqliteStore::open(path)?),
                format!("sqlite:{}", path.display()),
            ),
            #[cfg(feature = "etcd")]
            StoreSpec::Etcd {
                endpoints,
                namespace,
            } => (
                Arc::new(connect_etcd(endpoints, namespace).await?),
                format!("etcd {} (namespace {namespace})", endpoints.join(",")),
            ),
            #[cfg(not(feature = "etcd"))]
            StoreSpec::Etcd { .. } => return Err(OpenError::NoEtcd),
        };
        let keyring_path = config.data_dir.join("keyring.json");
        if !keyring_path.exists() {
            let existing = store.range(SECRETS_PREFIX).await?.kvs.len();
            if existing > 0 {
                return Err(OpenError::KeyringMissing {
                    path: keyring_path,
                    count: existing,
                });
            }
        }
        let opened = Keys::open(&keyring_path, config.autolock)?;
        let view = View::start(Arc::clone(&store), SECRETS_PREFIX, "secret").await?;
        let services = View::start(
            Arc::clone(&store),
            coffer_core::record::SERVICES_PREFIX,
            "service",
        )
        .await?;
        let tasks = View::start(
            Arc::clone(&store),
            coffer_core::record::TASKS_PREFIX,
            "task",
        )
        .await?;
        let nodes = View::start(
            Arc::clone(&store),
            coffer_core::record::NODES_PREFIX,
            "node",
        )
        .await?;
        let audit = Audit::start(Arc::clone(&store));
        let node_token = coffer_crypto::SecretBytes::new(
            format!(
                "{:032x}{:032x}",
                coffer_crypto::digest::random_u128().map_err(ControlError::from)?,
                coffer_crypto::digest::random_u128().map_err(ControlError::from)?
            )
            .into_bytes(),
        );
        let cluster_id = cluster_id(&*store).await?;
        let locked = opened.keys.is_locked().await;
        let manager = Arc::new(Self {
            store,
            keys: opened.keys,
            view,
            services,
            tasks,
            nodes,
            logs: Arc::default(),
            node_token,
            audit,
            key_rotation: tokio::sync::RwLock::new(()),
            keep_versions: config.keep_versions.max(1),
            cluster_id,
            started: SystemTime::now(),
            store_description,
            _lock: lock,
        });
        let action = if opened.created {
            "manager.init"
        } else {
            "manager.start"
        };
        let outcome = if locked { "ok (locked)" } else { "ok" };
        manager
            .audit
            .record(Pending::new(&Actor::system(), action).outcome(outcome))
            .await?;
        Ok(Startup {
            manager,
            new_unlock_key: opened.new_unlock_key,
            locked,
        })
    }

    /// Whether the manager is locked.
    pub async fn is_locked(&self) -> bool {
        self.keys.is_locked().await
    }

    /// Whether autolock is on.
    pub async fn autolock(&self) -> bool {
        self.keys.autolock().await
    }

    /// Number of secrets.
    pub fn secret_count(&self) -> usize {
        self.view.len()
    }

    /// Chains pending audit events now (used before shutdown).
    pub async fn flush_audit(&self) {
        if let Err(e) = self.audit.flush().await {
            tracing::warn!(error = %e, "audit flush failed");
        }
    }

    /// Runs `compares -> success` with the operation's audit event in both branches (the
    /// failure branch records `refused`), marks the event recorded and wakes the chainer.
    pub(crate) async fn commit_audited(
        &self,
        ev: &mut Pending,
        compares: Vec<coffer_store::Compare>,
        mut success: Vec<coffer_store::Op>,
        refused: impl Into<String>,
    ) -> Result<coffer_store::TxnResponse, ControlError> {
        success.push(ev.op()?);
        let failure = vec![ev.clone().outcome(refused).op()?];
        let r = self
            .store
            .txn(coffer_store::Txn {
                compares,
                success,
                failure,
            })
            .await?;
        ev.recorded = true;
        self.audit.poke();
        Ok(r)
    }

    /// Runs `f`, recording its audit event: `f` marks the event recorded when it wrote it
    /// in its own transaction; otherwise it is recorded here with the outcome.
    pub(crate) async fn audited<T>(
        &self,
        mut event: Pending,
        f: impl AsyncFnOnce(&mut Pending) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        let mut recorded = false;
        let r = f(&mut event).await;
        if let Ok(_) | Err(ControlError::NameConflict { .. } | ControlError::StaleVersion { .. }) =
            &r
        {
            recorded = event.recorded;
        }
        if !recorded {
            let outcome = match &r {
                Ok(_) => "ok".to_owned(),
                Err(e) => e.outcome(),
            };
            if let Err(e) = self.audit.record(event.outcome(outcome)).await {
                tracing::error!(error = %e, "could not record an audit event");
                // An operation that succeeded but could not be audited is still done; a
                // refused one reports its own error.
            }
        }
        r
    }
}

/// Connects to etcd, waiting up to 5 s for it (a manager often starts alongside etcd).
#[cfg(feature = "etcd")]
async fn connect_etcd(
    endpoints: &[String],
    namespace: &str,
) -> Result<coffer_store::EtcdStore, coffer_store::StoreError> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match coffer_store::EtcdStore::connect(endpoints, namespace).await {
            Ok(s) => return Ok(s),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::info!(error = %e, "waiting for etcd");
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
    }
}

async fn cluster_id(store: &dyn Store) -> Result<String, coffer_store::StoreError> {
    use coffer_store::{Compare, Op, Txn};
    const KEY: &str = "/cluster/id";
    if let Some(kv) = store.get(KEY).await? {
        return Ok(String::from_utf8_lossy(&kv.value).into_owned());
    }
    let id =
        coffer_core::ObjectId::from_random(coffer_crypto::digest::random_u128().map_err(|e| {
            coffer_store::StoreError::Backend {
                backend: "random",
                message: e.to_string(),
            }
        })?);
    store
        .txn(Txn {
            compares: vec![Compare::Absent(KEY.into())],
            success: vec![Op::Put(KEY.into(), id.as_str().as_bytes().to_vec())],
            failure: vec![],
        })
        .await?;
    Ok(store
        .get(KEY)
        .await?
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_specs() {
        assert_eq!(
            StoreSpec::parse("sqlite:/x/y.db").unwrap(),
            StoreSpec::Sqlite("/x/y.db".into())
        );
        assert_eq!(
            StoreSpec::parse("etcd://a:1,b:2/ns").unwrap(),
            StoreSpec::Etcd {
                endpoints: vec!["http://a:1".into(), "http://b:2".into()],
                namespace: "/ns".into()
            }
        );
        assert_eq!(
            StoreSpec::parse("etcd://a:1").unwrap(),
            StoreSpec::Etcd {
                endpoints: vec!["http://a:1".into()],
                namespace: "/coffer".into()
            }
        );
        assert!(StoreSpec::parse("mysql://x")
            .unwrap_err()
            .contains("sqlite:PATH"));
        StoreSpec::parse("etcd://").unwrap_err();
        StoreSpec::parse("sqlite:").unwrap_err();
    }

    #[tokio::test]
    async fn debug_output_carries_no_node_credential() {
        let dir = tempfile::tempdir().unwrap();
        let started = Manager::open(&Config {
            data_dir: dir.path().join("data"),
            store: None,
            autolock: false,
            keep_versions: 3,
        })
        .await
        .unwrap();
        let token = crate::api::node::node_token(&started.manager);
        assert_eq!(token.len(), 64);
        let shown = format!("{:?}", started.manager);
        assert!(
            !shown.contains(token.as_str()),
            "the node token is in Debug output"
        );
    }
}
