//! The node protocol: what the manager and a node's agent say to each other on the node
//! listener (never on the admin API).
//!
//! - `POST /coffer/node/register` [`RegisterRequest`] -> [`RegisterResponse`]
//! - `GET /coffer/node/assignments?node=ID`: a long-lived HTTP/2 response; each line is an
//!   [`Assignments`] message, the complete set of the node's tasks with the values of
//!   exactly the secret versions they reference. A new message follows every change.
//! - `POST /coffer/node/tasks/{id}/status` [`StatusReport`]
//! - `POST /coffer/node/tasks/{id}/logs` `[LogLine]`, already masked by the agent.
//!
//! Every request carries `Authorization: Bearer <token>` (the node's credential).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::Base64Value;
use crate::record::TaskState;

/// A node announces itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Host name.
    #[serde(rename = "Hostname")]
    pub hostname: String,
}

/// The node's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// Node id.
    #[serde(rename = "NodeID")]
    pub node_id: String,
}

/// Everything a node should run now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignments {
    /// Store revision the message reflects.
    #[serde(rename = "Revision")]
    pub revision: i64,
    /// The node's tasks.
    #[serde(rename = "Tasks")]
    pub tasks: Vec<Assignment>,
}

/// One task for a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Task id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Task name (`service.slot.id`).
    #[serde(rename = "Name")]
    pub name: String,
    /// Service id.
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// `running` or `shutdown`.
    #[serde(rename = "Desired")]
    pub desired: Option<TaskState>,
    /// What the manager last recorded (an agent that restarted finds tasks it had started).
    #[serde(rename = "State")]
    pub state: Option<TaskState>,
    /// Command and arguments.
    #[serde(rename = "Command")]
    pub command: Vec<String>,
    /// `KEY=VALUE` variables of the spec.
    #[serde(rename = "Env")]
    pub env: Vec<String>,
    /// `UID[:GID]`.
    #[serde(rename = "User")]
    pub user: Option<String>,
    /// Working directory.
    #[serde(rename = "Dir")]
    pub dir: Option<String>,
    /// Grace period before SIGKILL, milliseconds.
    #[serde(rename = "StopGraceMillis")]
    pub stop_grace_ms: u64,
    /// The task's secrets (empty once its desired state is shutdown).
    #[serde(rename = "Secrets")]
    pub secrets: Vec<AssignedSecret>,
}

/// One granted secret with its value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedSecret {
    /// Secret id.
    #[serde(rename = "SecretID")]
    pub secret_id: String,
    /// Secret name.
    #[serde(rename = "SecretName")]
    pub secret_name: String,
    /// The grant, as a canonical SPEC (see [`crate::grant::Grant`]).
    #[serde(rename = "Grant")]
    pub grant: String,
    /// Version delivered.
    #[serde(rename = "Version")]
    pub version: u32,
    /// The value, base64.
    #[serde(rename = "Value")]
    pub value: Base64Value,
}

/// A task's state as the node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// New state.
    #[serde(rename = "State")]
    pub state: TaskState,
    /// Human-readable status.
    #[serde(rename = "Message")]
    pub message: String,
    /// Why it failed.
    #[serde(rename = "Err", default)]
    pub err: String,
    /// Exit code, once exited.
    #[serde(rename = "ExitCode", default)]
    pub exit_code: Option<i32>,
    /// Secret id -> version now delivered.
    #[serde(rename = "Versions", default)]
    pub versions: BTreeMap<String, u32>,
    /// The task's process id on the node, while it runs.
    #[serde(rename = "Pid", default)]
    pub pid: Option<u32>,
}

/// One line of a task's output, masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// `stdout` or `stderr`.
    #[serde(rename = "Stream")]
    pub stream: String,
    /// When it was read, RFC 3339 with nanoseconds.
    #[serde(rename = "Time")]
    pub time: String,
    /// The line, without its newline.
    #[serde(rename = "Line")]
    pub line: String,
}
