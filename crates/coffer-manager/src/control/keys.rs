//! Key operations: KEK rotation, unlock, unlock key.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use coffer_core::api::KeyRotateResponse;
use coffer_core::record::{WrappedKeyRecord, SECRET_KEYS_PREFIX};
use coffer_crypto::value::rewrap_key;
use coffer_crypto::UnlockKey;
use coffer_store::{Compare, Op, Txn};

use super::Manager;
use crate::audit::{Actor, Pending};
use crate::error::ControlError;

/// Data keys re-wrapped per transaction (under etcd's 128-operation limit).
const REWRAP_CHUNK: usize = 100;

impl Manager {
    /// `POST /coffer/key/rotate`: a new KEK; every data key re-wrapped under it; the old KEK
    /// dropped once nothing references it. Crash-safe at every step: the keyring file holds
    /// both KEKs until every wrapped key in the store names the new one.
    pub async fn rotate_kek(&self, actor: &Actor) -> Result<KeyRotateResponse, ControlError> {
        self.audited(Pending::new(actor, "key.rotate"), async |ev: &mut Pending| {
            let _exclusive = self.key_rotation.write().await;
            let mut next = self.keys.material().await?.duplicate();
            let new_id = next.rotate()?;
            let keys = self.keys.replace(next).await?;
            ev.object_id = format!("kek-{new_id}");
            let mut rewrapped = 0u64;
            let mut failures = Vec::new();
            loop {
                let range = self.store.range(SECRET_KEYS_PREFIX).await?;
                let todo: Vec<_> = range
                    .kvs
                    .into_iter()
                    .filter_map(|kv| {
                        let w: WrappedKeyRecord = serde_json::from_slice(&kv.value).ok()?;
                        (w.kek != new_id && !failures.contains(&kv.key)).then_some((kv, w))
                    })
                    .collect();
                if todo.is_empty() {
                    break;
                }
                for chunk in todo.chunks(REWRAP_CHUNK) {
                    let mut compares = Vec::new();
                    let mut ops = Vec::new();
                    for (kv, w) in chunk {
                        // Key: /secret-keys/<id>/<version>
                        let mut parts = kv.key.trim_start_matches(SECRET_KEYS_PREFIX).split('/');
                        let (Some(id), Some(ver)) = (parts.next(), parts.next().and_then(|v| v.parse::<u32>().ok())) else {
                            failures.push(kv.key.clone());
                            continue;
                        };
                        let rewrapped_key = STANDARD
                            .decode(&w.wrapped)
                            .ok()
                            .and_then(|wrapped| rewrap_key(&keys, id, ver, w.kek, &wrapped).ok());
                        let Some((kek, wrapped)) = rewrapped_key else {
                            tracing::error!(key = %kv.key, "data key failed its integrity check; left under its old KEK");
                            failures.push(kv.key.clone());
                            continue;
                        };
                        let rec = WrappedKeyRecord { kek, wrapped: STANDARD.encode(wrapped) };
                        compares.push(Compare::ModRevision(kv.key.clone(), kv.mod_revision));
                        ops.push(Op::Put(kv.key.clone(), serde_json::to_vec(&rec).unwrap_or_default()));
                    }
                    if ops.is_empty() {
                        continue;
                    }
                    let n = ops.len() as u64;
                    // A lost compare (the secret changed meanwhile) is retried by the loop.
                    if self.store.txn(Txn { compares, success: ops, failure: vec![] }).await?.succeeded {
                        rewrapped += n;
                    }
                }
            }
            // Drop every KEK nothing references any more.
            let still: Vec<u32> = self
                .store
                .range(SECRET_KEYS_PREFIX)
                .await?
                .kvs
                .iter()
                .filter_map(|kv| serde_json::from_slice::<WrappedKeyRecord>(&kv.value).ok().map(|w| w.kek))
                .collect();
            let mut pruned = self.keys.material().await?.duplicate();
            pruned.retain(&still);
            self.keys.replace(pruned).await?;
            if !failures.is_empty() {
                ev.outcome = format!("ok; {} data keys failed their integrity check", failures.len());
            }
            Ok(KeyRotateResponse { kek_id: new_id, rewrapped })
        })
        .await
    }

    /// `POST /coffer/unlock`.
    pub async fn unlock(&self, actor: &Actor, key: &str) -> Result<(), ControlError> {
        self.audited(Pending::new(actor, "unlock"), async |_ev: &mut Pending| {
            self.keys.unlock(key).await
        })
        .await
    }

    /// `GET /coffer/unlock-key`.
    pub async fn unlock_key(&self, actor: &Actor) -> Result<UnlockKey, ControlError> {
        self.audited(
            Pending::new(actor, "unlock-key.show"),
            async |_ev: &mut Pending| self.keys.unlock_key().await,
        )
        .await
    }

    /// `POST /coffer/unlock-key/rotate`.
    pub async fn rotate_unlock_key(&self, actor: &Actor) -> Result<UnlockKey, ControlError> {
        self.audited(
            Pending::new(actor, "unlock-key.rotate"),
            async |_ev: &mut Pending| self.keys.rotate_unlock_key().await,
        )
        .await
    }
}
