//! What the manager keeps in the store. Metadata only: values are sealed by `coffer-crypto`
//! and stored under their own keys.
//!
//! Store keys:
//! - `/secrets/<id>`: [`SecretRecord`] (JSON)
//! - `/secret-names/<name>`: the id owning that name (uniqueness through a compare)
//! - `/secret-data/<id>/<n>`: sealed value of version n (binary envelope)
//! - `/secret-keys/<id>/<n>`: [`WrappedKeyRecord`]: the version's data key wrapped by a KEK
//! - `/audit/<seq>`: chained audit events; `/audit-pending/<key>`: events not yet chained
//! - `/audit/head`: [`AuditHead`]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Prefix of secret metadata records.
pub const SECRETS_PREFIX: &str = "/secrets/";

/// Store key of a secret's metadata.
pub fn secret_key(id: &str) -> String {
    format!("{SECRETS_PREFIX}{id}")
}

/// Store key reserving a secret name.
pub fn secret_name_key(name: &str) -> String {
    format!("/secret-names/{name}")
}

/// Store key of a sealed value version.
pub fn secret_data_key(id: &str, version: u32) -> String {
    format!("/secret-data/{id}/{version:010}")
}

/// Prefix of wrapped data keys.
pub const SECRET_KEYS_PREFIX: &str = "/secret-keys/";

/// Store key of a version's wrapped data key.
pub fn secret_dek_key(id: &str, version: u32) -> String {
    format!("{SECRET_KEYS_PREFIX}{id}/{version:010}")
}

/// A stored record with an id and a unique name (what the manager's views index).
pub trait Named {
    /// The object id.
    fn id(&self) -> &str;
    /// The unique name.
    fn name(&self) -> &str;
}

impl Named for SecretRecord {
    fn id(&self) -> &str {
        &self.id
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// A secret's metadata as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    /// Object id.
    pub id: String,
    /// Name (validated when created).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Last change, RFC 3339.
    pub updated_at: String,
    /// Version given to new tasks.
    pub current: u32,
    /// Kept versions, oldest first.
    pub versions: Vec<VersionRecord>,
}

/// One kept value version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Version number.
    pub number: u32,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Keyed digest, `hmac-sha256:<hex>`.
    pub digest: String,
}

impl SecretRecord {
    /// The highest version number kept.
    pub fn latest(&self) -> u32 {
        self.versions.iter().map(|v| v.number).max().unwrap_or(0)
    }
}

/// A data key wrapped by a key-encryption key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKeyRecord {
    /// Which KEK wrapped it.
    pub kek: u32,
    /// Envelope bytes, base64.
    pub wrapped: String,
}

/// Where the audit chain ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    /// Sequence number of the last chained event (0: none).
    pub seq: u64,
    /// Its hash, hex (64 zeros when none).
    pub hash: String,
}

/// Store key of a chained audit event.
pub fn audit_key(seq: u64) -> String {
    format!("/audit/{seq:020}")
}

/// Store key of the audit chain head.
pub const AUDIT_HEAD_KEY: &str = "/audit/head";

/// Prefix of chained audit events (`/audit/0...`); the head key sorts after them.
pub const AUDIT_EVENTS_PREFIX: &str = "/audit/0";

/// Prefix of audit events waiting to be chained.
pub const AUDIT_PENDING_PREFIX: &str = "/audit-pending/";

/// Prefix of service records.
pub const SERVICES_PREFIX: &str = "/services/";

/// Store key of a service.
pub fn service_key(id: &str) -> String {
    format!("{SERVICES_PREFIX}{id}")
}

/// Store key reserving a service name.
pub fn service_name_key(name: &str) -> String {
    format!("/service-names/{name}")
}

/// Put by every service write: a secret removal compares its revision, so no service can
/// start referencing a secret between the removal's check and its commit.
pub const SERVICE_INDEX_KEY: &str = "/service-index";

/// A service as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Object id.
    pub id: String,
    /// The spec, with every grant's `SecretID` and `SecretName` resolved.
    pub spec: crate::service::ServiceSpec,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Last change, RFC 3339.
    pub updated_at: String,
}

impl Named for ServiceRecord {
    fn id(&self) -> &str {
        &self.id
    }

    fn name(&self) -> &str {
        &self.spec.name
    }
}

impl ServiceRecord {
    /// Ids of the secrets this service is granted.
    pub fn secret_ids(&self) -> impl Iterator<Item = &str> {
        self.spec
            .task_template
            .container_spec
            .secrets
            .iter()
            .flatten()
            .map(|r| r.secret_id.as_str())
    }
}

/// Prefix of task records.
pub const TASKS_PREFIX: &str = "/tasks/";

/// Store key of a task.
pub fn task_key(id: &str) -> String {
    format!("{TASKS_PREFIX}{id}")
}

/// Prefix of node records.
pub const NODES_PREFIX: &str = "/nodes/";

/// Store key of a node.
pub fn node_key(id: &str) -> String {
    format!("{NODES_PREFIX}{id}")
}

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id.
    pub id: String,
    /// Host name (unique among nodes).
    pub hostname: String,
    /// `manager` or `worker`.
    pub role: String,
    /// `active`, `pause` or `drain`.
    pub availability: String,
    /// `ready` or `down`.
    pub state: String,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
}

impl Named for NodeRecord {
    fn id(&self) -> &str {
        &self.id
    }

    fn name(&self) -> &str {
        &self.hostname
    }
}

/// The states of a task, in Docker's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Created by the scheduler.
    New,
    /// Given to a node.
    Assigned,
    /// The node is setting it up (secrets, process).
    Starting,
    /// Its process runs.
    Running,
    /// Exited with status 0.
    Complete,
    /// Stopped because it was asked to.
    Shutdown,
    /// Exited non-zero or could not start.
    Failed,
    /// The node refused it (e.g. no way to mount memory-only storage).
    Rejected,
}

impl TaskState {
    /// The state's name, as serialized (`running`, `shutdown`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Assigned => "assigned",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Complete => "complete",
            Self::Shutdown => "shutdown",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
        }
    }

    /// Whether the task will not run again.
    pub fn is_terminal(self) -> bool {
        self >= Self::Complete
    }
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Task id.
    pub id: String,
    /// Its service.
    pub service_id: String,
    /// Its service's name (for display and the task name).
    pub service_name: String,
    /// Replica slot, from 1.
    pub slot: u64,
    /// Node it is assigned to.
    pub node_id: String,
    /// The service revision it was made from (a newer one replaces it).
    pub service_revision: i64,
    /// `running` or `shutdown`.
    pub desired: TaskState,
    /// What the node last reported.
    pub state: TaskState,
    /// Human-readable status.
    pub message: String,
    /// Why it failed, if it did.
    pub err: String,
    /// Exit code, once exited.
    pub exit_code: Option<i32>,
    /// Restarts of this slot before this task (for MaxAttempts).
    pub attempt: u64,
    /// When it was created.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// Name shown to users: `<service>.<slot>.<id>`, unique.
    pub name: String,
    /// The service's task template when the task was made (grants resolved).
    #[serde(default)]
    pub spec: crate::service::TaskSpec,
    /// Secret id -> value version: given at creation, then as the node reports delivery.
    #[serde(default)]
    pub versions: BTreeMap<String, u32>,
    /// Grace period between SIGTERM and SIGKILL, nanoseconds (Docker's unit).
    #[serde(default)]
    pub stop_grace_ns: Option<i64>,
    /// The process id on its node, while it runs.
    #[serde(default)]
    pub pid: Option<u32>,
}

impl Named for TaskRecord {
    fn id(&self) -> &str {
        &self.id
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_state_names_are_the_serialized_ones() {
        for st in [
            TaskState::New,
            TaskState::Assigned,
            TaskState::Starting,
            TaskState::Running,
            TaskState::Complete,
            TaskState::Shutdown,
            TaskState::Failed,
            TaskState::Rejected,
        ] {
            assert_eq!(serde_json::to_value(st).unwrap(), st.as_str());
        }
    }
}
