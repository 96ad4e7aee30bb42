//! The audit trail: a hash chain of events in the store.
//!
//! A request's event is written in the same store transaction as its effect, under
//! `/audit-pending/<random>` (in the transaction's success *and* failure branch, so a lost
//! compare is recorded too). The chainer then takes pending events in store-revision
//! order, gives each the next sequence number and `hash = SHA-256(fields | prev hash)`, and
//! moves them to `/audit/<seq>` in one transaction guarded by a compare on `/audit/head`.
//! Chaining in revision order means concurrent writers (and, later, several managers)
//! never fork the chain. `verify` walks the chain and reports the first break.
//!
//! What the chain proves: that no event was edited, inserted or deleted without
//! recomputing every later hash. Record the head (`coffer audit verify` prints it) to
//! detect a rewrite of the whole chain from a point on.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use coffer_core::api::{AuditEvent, AuditVerifyResponse};
use coffer_core::record::{
    audit_key, AuditHead, AUDIT_EVENTS_PREFIX, AUDIT_HEAD_KEY, AUDIT_PENDING_PREFIX,
};
use coffer_crypto::digest::{random_u128, sha256_hex};
use coffer_store::{Compare, Op, Store, StoreError, Txn};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Notify};

use crate::error::ControlError;

const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Events chained per transaction: 2 operations each, under etcd's 128-operation limit.
const CHAIN_CHUNK: usize = 60;

/// Who made a request: the peer credentials of the unix socket connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

impl Actor {
    /// The manager itself (start-up, background work).
    pub fn system() -> Self {
        Self("coffer".into())
    }
}

/// An event before it is chained.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Request time, RFC 3339.
    pub time: String,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Object id, if any.
    pub object_id: String,
    /// Object name, if any.
    pub object_name: String,
    /// Value version, 0 if none.
    pub version: u32,
    /// `ok` or `refused: ...`.
    pub outcome: String,
    /// Set once the event was written in the operation's own transaction.
    #[serde(skip)]
    pub recorded: bool,
}

impl Pending {
    /// A new event for `action` by `actor`, now.
    pub fn new(actor: &Actor, action: &str) -> Self {
        Self {
            time: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
            actor: actor.0.clone(),
            action: action.to_owned(),
            outcome: "ok".into(),
            ..Self::default()
        }
    }

    /// Sets the object.
    pub fn object(mut self, id: &str, name: &str) -> Self {
        id.clone_into(&mut self.object_id);
        name.clone_into(&mut self.object_name);
        self
    }

    /// Sets the version.
    pub fn version(mut self, v: u32) -> Self {
        self.version = v;
        self
    }

    /// Sets the outcome.
    pub fn outcome(mut self, o: impl Into<String>) -> Self {
        self.outcome = o.into();
        self
    }

    /// The put that records this event (for a transaction's branch).
    pub fn op(&self) -> Result<Op, ControlError> {
        let key = format!("{AUDIT_PENDING_PREFIX}{:032x}", random_u128()?);
        Ok(Op::Put(key, serde_json::to_vec(self).unwrap_or_default()))
    }
}

/// The fields a chained event's hash covers, in a fixed order.
#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    time: &'a str,
    actor: &'a str,
    action: &'a str,
    object_id: &'a str,
    object_name: &'a str,
    version: u32,
    outcome: &'a str,
    prev: &'a str,
}

fn hash_of(e: &AuditEvent) -> String {
    let h = Hashed {
        seq: e.seq,
        time: &e.time,
        actor: &e.actor,
        action: &e.action,
        object_id: &e.object_id,
        object_name: &e.object_name,
        version: e.version,
        outcome: &e.outcome,
        prev: &e.prev,
    };
    sha256_hex(&serde_json::to_vec(&h).unwrap_or_default())
}

/// The audit trail of one manager.
#[derive(Debug)]
pub struct Audit {
    store: Arc<dyn Store>,
    wake: Arc<Notify>,
    chaining: Mutex<()>,
}

impl Audit {
    /// Starts the chainer.
    pub fn start(store: Arc<dyn Store>) -> Arc<Self> {
        let wake = Arc::new(Notify::new());
        let audit = Arc::new(Self {
            store,
            wake: Arc::clone(&wake),
            chaining: Mutex::new(()),
        });
        let weak = Arc::downgrade(&audit);
        tokio::spawn(async move {
            loop {
                let Some(a) = weak.upgrade() else { return };
                if let Err(e) = a.flush().await {
                    tracing::warn!(error = %e, "audit chaining failed; will retry");
                }
                drop(a);
                // Let a burst of requests accumulate, then chain them in one transaction.
                wake.notified().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        audit
    }

    /// Records an event on its own (a refused request, an unlock attempt).
    pub async fn record(&self, event: Pending) -> Result<(), ControlError> {
        self.store.txn(Txn::ops(vec![event.op()?])).await?;
        self.poke();
        Ok(())
    }

    /// Tells the chainer there is work.
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Chains every pending event now.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let _one = self.chaining.lock().await;
        loop {
            let pending = self.store.range(AUDIT_PENDING_PREFIX).await?;
            if pending.kvs.is_empty() {
                return Ok(());
            }
            let mut kvs = pending.kvs;
            kvs.sort_by_key(|kv| (kv.mod_revision, kv.key.clone()));
            let head_kv = self.store.get(AUDIT_HEAD_KEY).await?;
            let (mut head, head_rev) = match &head_kv {
                Some(kv) => (
                    serde_json::from_slice::<AuditHead>(&kv.value).unwrap_or_default(),
                    kv.mod_revision,
                ),
                None => (
                    AuditHead {
                        seq: 0,
                        hash: ZERO_HASH.into(),
                    },
                    0,
                ),
            };
            let mut ops = Vec::new();
            for kv in kvs.iter().take(CHAIN_CHUNK) {
                let p: Pending = serde_json::from_slice(&kv.value).unwrap_or_else(|_| Pending {
                    action: "unreadable-pending-event".into(),
                    object_id: kv.key.clone(),
                    ..Pending::default()
                });
                let mut e = AuditEvent {
                    seq: head.seq + 1,
                    time: p.time,
                    actor: p.actor,
                    action: p.action,
                    object_id: p.object_id,
                    object_name: p.object_name,
                    version: p.version,
                    outcome: p.outcome,
                    prev: head.hash.clone(),
                    hash: String::new(),
                };
                e.hash = hash_of(&e);
                head = AuditHead {
                    seq: e.seq,
                    hash: e.hash.clone(),
                };
                ops.push(Op::Put(
                    audit_key(e.seq),
                    serde_json::to_vec(&e).unwrap_or_default(),
                ));
                ops.push(Op::Delete(kv.key.clone()));
            }
            ops.push(Op::Put(
                AUDIT_HEAD_KEY.into(),
                serde_json::to_vec(&head).unwrap_or_default(),
            ));
            let guard = if head_rev == 0 {
                Compare::Absent(AUDIT_HEAD_KEY.into())
            } else {
                Compare::ModRevision(AUDIT_HEAD_KEY.into(), head_rev)
            };
            // A lost compare means another chainer moved the head: read again.
            self.store
                .txn(Txn {
                    compares: vec![guard],
                    success: ops,
                    failure: vec![],
                })
                .await?;
        }
    }

    /// Chained events with `seq > after`, at most `limit`.
    pub async fn list(&self, after: u64, limit: usize) -> Result<Vec<AuditEvent>, ControlError> {
        self.flush().await?;
        let r = self.store.range(AUDIT_EVENTS_PREFIX).await?;
        Ok(r.kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<AuditEvent>(&kv.value).ok())
            .filter(|e| e.seq > after)
            .take(limit)
            .collect())
    }

    /// Walks the whole chain.
    pub async fn verify(&self) -> Result<AuditVerifyResponse, ControlError> {
        self.flush().await?;
        let r = self.store.range(AUDIT_EVENTS_PREFIX).await?;
        let head = self
            .store
            .get(AUDIT_HEAD_KEY)
            .await?
            .and_then(|kv| serde_json::from_slice::<AuditHead>(&kv.value).ok())
            .unwrap_or(AuditHead {
                seq: 0,
                hash: ZERO_HASH.into(),
            });
        Ok(verify_chain(
            r.kvs
                .iter()
                .map(|kv| (kv.key.as_str(), kv.value.as_slice())),
            &head,
        ))
    }
}

/// Checks a chain given as (key, value) pairs in key order against its head.
pub fn verify_chain<'a>(
    events: impl Iterator<Item = (&'a str, &'a [u8])>,
    head: &AuditHead,
) -> AuditVerifyResponse {
    let mut prev_hash = ZERO_HASH.to_owned();
    let mut count = 0u64;
    let fail = |count, prev: &str, error: String| AuditVerifyResponse {
        events: count,
        head: prev.to_owned(),
        error,
    };
    for (expected, (key, value)) in (1u64..).zip(events) {
        let Ok(e) = serde_json::from_slice::<AuditEvent>(value) else {
            return fail(
                count,
                &prev_hash,
                format!("audit record {key} is not an event: it was edited"),
            );
        };
        if audit_key(e.seq) != key {
            return fail(
                count,
                &prev_hash,
                format!(
                    "audit record {key} claims sequence {}: it was edited or moved",
                    e.seq
                ),
            );
        }
        if e.seq != expected {
            return fail(count, &prev_hash, format!("audit event {expected} is missing (the chain jumps to {}): events were deleted", e.seq));
        }
        if e.prev != prev_hash {
            return fail(count, &prev_hash, format!("audit event {} does not follow event {}: an event was inserted, deleted or replaced", e.seq, e.seq - 1));
        }
        if hash_of(&e) != e.hash {
            return fail(
                count,
                &prev_hash,
                format!(
                    "audit event {} was edited (its hash does not match its content)",
                    e.seq
                ),
            );
        }
        prev_hash = e.hash;
        count += 1;
    }
    if head.seq != count || head.hash != prev_hash {
        return fail(count, &prev_hash, format!("the chain ends at event {count} but its head says {}: events at the end were deleted or added", head.seq));
    }
    AuditVerifyResponse {
        events: count,
        head: prev_hash,
        error: String::new(),
    }
}
