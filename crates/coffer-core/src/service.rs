//! Service specs in Docker Engine API shapes, as the docker client sends them
//! (`tests/fixtures/docker-cli-28.2` holds real requests). Fields coffer does not model are
//! kept in `other` and returned as they came, so `docker service inspect` shows what was
//! sent and an update round-trips them.
//!
//! Scheduling, tasks and delivery build on these types (issue: services and the agent).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::grant::{Delivery, Grant, GrantError, OnRotate};

/// Fields a type does not model, kept verbatim.
pub type Other = BTreeMap<String, serde_json::Value>;

/// `ServiceSpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Service name.
    #[serde(rename = "Name", default)]
    pub name: String,
    /// Labels.
    #[serde(rename = "Labels", default)]
    pub labels: BTreeMap<String, String>,
    /// What each task runs.
    #[serde(rename = "TaskTemplate", default)]
    pub task_template: TaskSpec,
    /// Replicated (with a count) or global.
    #[serde(rename = "Mode", default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ServiceMode>,
    /// Everything else (UpdateConfig, EndpointSpec, ...).
    #[serde(flatten)]
    pub other: Other,
}

/// `TaskSpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The process.
    #[serde(rename = "ContainerSpec", default)]
    pub container_spec: ContainerSpec,
    /// Restart policy.
    #[serde(
        rename = "RestartPolicy",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub restart_policy: Option<RestartPolicy>,
    /// Everything else (Resources, Placement, ForceUpdate, ...).
    #[serde(flatten)]
    pub other: Other,
}

/// `ContainerSpec`: the parts the exec driver uses, plus the grants.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Image (docker driver; the exec driver ignores it).
    #[serde(rename = "Image", default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Entrypoint override.
    #[serde(rename = "Command", default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Arguments.
    #[serde(rename = "Args", default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// `K=V` environment.
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Working directory.
    #[serde(rename = "Dir", default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// `UID[:GID]`.
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Grants.
    #[serde(rename = "Secrets", default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<SecretReference>>,
    /// Grace period before SIGKILL, nanoseconds.
    #[serde(
        rename = "StopGracePeriod",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_grace_period: Option<i64>,
    /// Everything else.
    #[serde(flatten)]
    pub other: Other,
}

/// `SecretReference`: one grant, as Docker has it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretReference {
    /// The secret's id.
    #[serde(rename = "SecretID", default)]
    pub secret_id: String,
    /// The secret's name.
    #[serde(rename = "SecretName", default)]
    pub secret_name: String,
    /// Where the file goes.
    #[serde(rename = "File", default, skip_serializing_if = "Option::is_none")]
    pub file: Option<SecretReferenceFile>,
    /// coffer's extensions (the docker client ignores the field and drops it on update;
    /// the manager carries it over from the previous spec).
    #[serde(rename = "Coffer", default, skip_serializing_if = "Option::is_none")]
    pub coffer: Option<GrantExtensions>,
}

/// coffer's additions to a grant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantExtensions {
    /// Pinned value version.
    #[serde(rename = "Version", default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// `live`, `restart` or `signal:SIGHUP|SIGUSR1|SIGUSR2`.
    #[serde(rename = "OnRotate", default, skip_serializing_if = "Option::is_none")]
    pub on_rotate: Option<String>,
    /// Deliver as this environment variable instead of a file.
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

/// `SecretReference.File`. Docker sends uid and gid as strings and the mode as a decimal
/// integer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretReferenceFile {
    /// File name under /run/secrets.
    #[serde(rename = "Name", default)]
    pub name: String,
    /// Owner uid, as a string.
    #[serde(rename = "UID", default)]
    pub uid: String,
    /// Owner gid, as a string.
    #[serde(rename = "GID", default)]
    pub gid: String,
    /// Mode bits.
    #[serde(rename = "Mode", default)]
    pub mode: u32,
}

/// `Mode`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceMode {
    /// Replicated, with a count.
    #[serde(
        rename = "Replicated",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub replicated: Option<Replicated>,
    /// Global (one task per node).
    #[serde(rename = "Global", default, skip_serializing_if = "Option::is_none")]
    pub global: Option<serde_json::Value>,
}

/// `Mode.Replicated`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replicated {
    /// Number of tasks.
    #[serde(rename = "Replicas", default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u64>,
}

/// `RestartPolicy`. Durations in nanoseconds, as Docker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// `none`, `on-failure` or `any`.
    #[serde(rename = "Condition", default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Delay between restarts.
    #[serde(rename = "Delay", default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<i64>,
    /// Attempts before giving up (0: unlimited).
    #[serde(
        rename = "MaxAttempts",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_attempts: Option<u64>,
    /// Window in which attempts are counted.
    #[serde(rename = "Window", default, skip_serializing_if = "Option::is_none")]
    pub window: Option<i64>,
}

impl SecretReference {
    /// The grant this reference makes. References from the docker client rotate by
    /// `restart` (Docker's only way); coffer's own extensions arrive separately.
    pub fn to_grant(&self) -> Result<Grant, GrantError> {
        let ext = self.coffer.clone().unwrap_or_default();
        let mut spec = match (&self.file, &ext.env) {
            (_, Some(var)) => format!("source={},type=env,target={var}", self.secret_name),
            (None, None) => format!("source={}", self.secret_name),
            (Some(f), None) => {
                let mut s = format!("source={}", self.secret_name);
                if !f.name.is_empty() {
                    s.push_str(&format!(",target={}", f.name));
                }
                for (k, v) in [("uid", &f.uid), ("gid", &f.gid)] {
                    if !v.is_empty() {
                        s.push_str(&format!(",{k}={v}"));
                    }
                }
                s.push_str(&format!(",mode={:o}", f.mode));
                s
            }
        };
        if let Some(v) = ext.version {
            spec.push_str(&format!(",version={v}"));
        }
        if let Some(r) = &ext.on_rotate {
            spec.push_str(&format!(",on-rotate={r}"));
        }
        Grant::parse(&spec, OnRotate::Restart)
    }
}

impl Grant {
    /// The Docker `SecretReference` of a file grant (env grants have none: the docker
    /// client cannot express them), given the secret's id.
    pub fn to_reference(&self, secret_id: &str) -> SecretReference {
        let on_rotate = self.to_string();
        let on_rotate = on_rotate
            .rsplit_once("on-rotate=")
            .map(|(_, r)| r.to_owned());
        let (file, env) = match &self.delivery {
            Delivery::File {
                target,
                uid,
                gid,
                mode,
            } => (
                Some(SecretReferenceFile {
                    name: target.clone(),
                    uid: uid.to_string(),
                    gid: gid.to_string(),
                    mode: *mode,
                }),
                None,
            ),
            Delivery::Env { var } => (None, Some(var.clone())),
        };
        SecretReference {
            secret_id: secret_id.to_owned(),
            secret_name: self.source.to_string(),
            file,
            coffer: Some(GrantExtensions {
                version: self.version,
                on_rotate,
                env,
            }),
        }
    }
}
