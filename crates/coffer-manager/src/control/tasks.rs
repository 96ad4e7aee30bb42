//! Tasks and nodes: the Docker-shaped reads (`GET /tasks`, `GET /nodes`), and the node
//! side: registration, status reports and the assignments a node receives (the only place
//! values leave the manager, on the node listener, never on the admin API).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use coffer_core::api::{Base64Value, SecretHolder};
use coffer_core::grant::{Grant, OnRotate};
use coffer_core::node::{AssignedSecret, Assignment, Assignments, StatusReport};
use coffer_core::record::{node_key, task_key, NodeRecord, TaskRecord, TaskState};
use coffer_core::ObjectId;
use coffer_crypto::SecretBytes;
use coffer_store::{Compare, Op, Txn};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::secrets::{open_version, parse_filter_map};
use super::Manager;
use crate::error::ControlError;
use crate::view::Entry;

fn now() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

fn index(rev: i64) -> u64 {
    u64::try_from(rev).unwrap_or(0)
}

/// Store key reserving a node's host name.
fn node_name_key(hostname: &str) -> String {
    format!("/node-names/{hostname}")
}

/// Docker's `Task` shape.
fn task_to_api(e: &Entry<TaskRecord>) -> Value {
    let t = &e.record;
    json!({
        "ID": t.id,
        "Version": {"Index": index(e.mod_revision)},
        "CreatedAt": t.created_at,
        "UpdatedAt": t.updated_at,
        "Name": t.name,
        "Labels": {},
        "Spec": t.spec,
        "ServiceID": t.service_id,
        "Slot": t.slot,
        "NodeID": t.node_id,
        "Status": {
            "Timestamp": t.updated_at,
            "State": t.state,
            "Message": t.message,
            "Err": t.err,
            "ContainerStatus": {"ContainerID": "", "PID": t.pid.unwrap_or(0), "ExitCode": t.exit_code.unwrap_or(0)},
            "PortStatus": {}
        },
        "DesiredState": t.desired,
        "Coffer": {"Versions": t.versions, "Attempt": t.attempt, "ServiceRevision": t.service_revision},
    })
}

/// Docker's `Node` shape.
fn node_to_api(e: &Entry<NodeRecord>) -> Value {
    let n = &e.record;
    json!({
        "ID": n.id,
        "Version": {"Index": index(e.mod_revision)},
        "CreatedAt": n.created_at,
        "UpdatedAt": n.updated_at,
        "Spec": {"Labels": {}, "Role": n.role, "Availability": n.availability},
        "Description": {
            "Hostname": n.hostname,
            "Platform": {"Architecture": std::env::consts::ARCH, "OS": "linux"},
            "Resources": {},
            "Engine": {"EngineVersion": format!("coffer {}", env!("CARGO_PKG_VERSION"))}
        },
        "Status": {"State": n.state, "Addr": "127.0.0.1"},
        "ManagerStatus": {"Leader": true, "Reachability": "reachable", "Addr": "127.0.0.1:0"}
    })
}

/// Values opened for a node's stream, by secret id and version; reused across messages
/// so a change to one task does not decrypt every value again.
#[derive(Debug, Default)]
pub struct ValueCache {
    values: HashMap<(String, u32), Arc<SecretBytes>>,
}

impl Manager {
    /// Names of tasks not yet ended that hold `secret_id`.
    pub(crate) fn running_tasks_holding(&self, secret_id: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .tasks
            .all()
            .iter()
            .filter(|e| !e.record.state.is_terminal() && e.record.versions.contains_key(secret_id))
            .map(|e| e.record.name.clone())
            .collect();
        names.sort();
        names
    }

    /// The services granted `secret_id` and the tasks holding a version of it.
    pub(crate) fn holders(&self, secret_id: &str) -> Vec<SecretHolder> {
        let mut out = Vec::new();
        for s in self.services.all() {
            if let Some(r) = s
                .record
                .spec
                .task_template
                .container_spec
                .secrets
                .iter()
                .flatten()
                .find(|r| r.secret_id == secret_id)
            {
                {
                    out.push(SecretHolder {
                        service: s.record.spec.name.clone(),
                        task: String::new(),
                        version: r.coffer.as_ref().and_then(|c| c.version).unwrap_or(0),
                        state: String::new(),
                    });
                }
            }
        }
        for t in self.tasks.all() {
            let t = &t.record;
            if let Some(v) = t.versions.get(secret_id) {
                if !t.state.is_terminal() {
                    out.push(SecretHolder {
                        service: t.service_name.clone(),
                        task: t.name.clone(),
                        version: *v,
                        state: t.state.as_str().to_owned(),
                    });
                }
            }
        }
        out
    }

    /// Tasks whose process runs, per service id.
    pub(crate) fn running_counts(&self) -> HashMap<String, u64> {
        let mut counts = HashMap::new();
        for t in self.tasks.all() {
            if t.record.state == TaskState::Running && t.record.desired == TaskState::Running {
                *counts.entry(t.record.service_id.clone()).or_default() += 1;
            }
        }
        counts
    }

    /// `GET /tasks` with Docker's filters: id, name, service, node, desired-state, label.
    pub fn list_tasks(&self, filters: Option<&str>) -> Result<Bytes, ControlError> {
        let f = match filters {
            Some(j) if !j.is_empty() => parse_filter_map(
                j,
                "tasks",
                &["id", "name", "service", "node", "desired-state", "label"],
            )?,
            _ => BTreeMap::new(),
        };
        let get = |k: &str| f.get(k).map(Vec::as_slice).unwrap_or(&[]);
        let services: Vec<String> = get("service")
            .iter()
            .map(|s| {
                self.services
                    .lookup(s)
                    .map(|e| e.record.id.clone())
                    .unwrap_or_else(|_| s.clone())
            })
            .collect();
        let nodes: Vec<String> = get("node")
            .iter()
            .map(|n| {
                self.nodes
                    .lookup(n)
                    .map(|e| e.record.id.clone())
                    .unwrap_or_else(|_| n.clone())
            })
            .collect();
        for d in get("desired-state") {
            if !["running", "shutdown", "accepted"].contains(&d.as_str()) {
                return Err(ControlError::Invalid(format!(
                    "invalid desired-state filter {d:?}; use running, shutdown or accepted"
                )));
            }
        }
        let any = |list: &[String], f: &dyn Fn(&str) -> bool| {
            list.is_empty() || list.iter().any(|x| f(x))
        };
        let list: Vec<Value> = self
            .tasks
            .all()
            .iter()
            .filter(|e| {
                let t = &e.record;
                let desired = t.desired.as_str();
                any(get("id"), &|p| t.id.starts_with(p))
                    && any(get("name"), &|p| t.name.starts_with(p))
                    && any(&services, &|s| t.service_id == s)
                    && any(&nodes, &|n| t.node_id == n)
                    && any(get("desired-state"), &|d| {
                        d == desired || (d == "accepted" && desired == "running")
                    })
                    && get("label").is_empty()
            })
            .map(|e| task_to_api(e))
            .collect();
        Ok(Bytes::from(serde_json::to_vec(&list).unwrap_or_default()))
    }

    /// `GET /tasks/{id}`.
    pub fn inspect_task(&self, key: &str) -> Result<Value, ControlError> {
        Ok(task_to_api(&*self.tasks.lookup(key)?))
    }

    /// `GET /nodes`.
    pub fn list_nodes(&self) -> Bytes {
        let list: Vec<Value> = self.nodes.all().iter().map(|e| node_to_api(e)).collect();
        Bytes::from(serde_json::to_vec(&list).unwrap_or_default())
    }

    /// `GET /nodes/{id}`.
    pub fn inspect_node(&self, key: &str) -> Result<Value, ControlError> {
        Ok(node_to_api(&*self.nodes.lookup(key)?))
    }

    /// A node announces itself: its record is created or marked ready. Returns its id.
    pub async fn register_node(&self, hostname: &str) -> Result<String, ControlError> {
        if hostname.is_empty() || hostname.len() > 253 || hostname.contains(['/', '\0']) {
            return Err(ControlError::Invalid(format!(
                "node host name {:?} is not valid",
                hostname.chars().take(64).collect::<String>()
            )));
        }
        for _ in 0..10 {
            if let Ok(e) = self.nodes.lookup(hostname) {
                if e.record.hostname == hostname {
                    let id = e.record.id.clone();
                    self.set_node_state(&id, "ready").await?;
                    return Ok(id);
                }
            }
            let id = ObjectId::from_random(coffer_crypto::digest::random_u128()?).to_string();
            let t = now();
            let rec = NodeRecord {
                id: id.clone(),
                hostname: hostname.to_owned(),
                role: "manager".into(),
                availability: "active".into(),
                state: "ready".into(),
                created_at: t.clone(),
                updated_at: t,
            };
            let r = self
                .store
                .txn(Txn {
                    compares: vec![Compare::Absent(node_name_key(hostname))],
                    success: vec![
                        Op::Put(node_key(&id), serde_json::to_vec(&rec).unwrap_or_default()),
                        Op::Put(node_name_key(hostname), id.as_bytes().to_vec()),
                    ],
                    failure: vec![],
                })
                .await?;
            if r.succeeded {
                self.nodes.wait_for(r.revision).await;
                return Ok(id);
            }
            if let Some(kv) = self.store.get(&node_name_key(hostname)).await? {
                self.nodes.wait_for(kv.mod_revision).await;
            }
        }
        Err(ControlError::Invalid(format!(
            "node {hostname} changed concurrently; retry"
        )))
    }

    /// Sets a node's state (`ready` when its agent connects, `down` when it goes away).
    pub async fn set_node_state(&self, id: &str, state: &str) -> Result<(), ControlError> {
        self.update_record::<NodeRecord>(&node_key(id), |n| {
            if n.state == state {
                return false;
            }
            n.state = state.to_owned();
            n.updated_at = now();
            true
        })
        .await
        .map(|_| ())
    }

    /// Marks every node down (at start-up: agents announce themselves again).
    pub async fn mark_nodes_down(&self) -> Result<(), ControlError> {
        for n in self.nodes.all() {
            self.set_node_state(&n.record.id, "down").await?;
        }
        Ok(())
    }

    /// Reads a record from the store, lets `change` edit it (false: nothing to do) and
    /// writes it back with a compare on its revision, retrying on conflicts.
    pub(crate) async fn update_record<R>(
        &self,
        key: &str,
        mut change: impl FnMut(&mut R) -> bool,
    ) -> Result<Option<i64>, ControlError>
    where
        R: serde::Serialize + serde::de::DeserializeOwned,
    {
        for _ in 0..50 {
            let Some(kv) = self.store.get(key).await? else {
                return Err(ControlError::NotFound {
                    kind: "record",
                    key: key.to_owned(),
                });
            };
            let mut rec: R = serde_json::from_slice(&kv.value).map_err(|e| {
                ControlError::Invalid(format!("stored record {key} is unreadable: {e}"))
            })?;
            if !change(&mut rec) {
                return Ok(None);
            }
            let r = self
                .store
                .txn(Txn {
                    compares: vec![Compare::ModRevision(key.to_owned(), kv.mod_revision)],
                    success: vec![Op::Put(
                        key.to_owned(),
                        serde_json::to_vec(&rec).unwrap_or_default(),
                    )],
                    failure: vec![],
                })
                .await?;
            if r.succeeded {
                return Ok(Some(r.revision));
            }
        }
        Err(ControlError::Invalid(format!("{key} kept changing; retry")))
    }

    /// A node reports a task's state. A task that ended stays ended.
    pub async fn report_status(
        &self,
        node_id: &str,
        task_id: &str,
        report: &StatusReport,
    ) -> Result<(), ControlError> {
        let mut foreign = false;
        let rev = self
            .update_record::<TaskRecord>(&task_key(task_id), |t| {
                if t.node_id != node_id {
                    foreign = true;
                    return false;
                }
                if t.state.is_terminal() {
                    return false;
                }
                t.state = report.state;
                t.message.clone_from(&report.message);
                t.err.clone_from(&report.err);
                t.exit_code = report.exit_code;
                t.pid = report.pid;
                for (id, v) in &report.versions {
                    t.versions.insert(id.clone(), *v);
                }
                t.updated_at = now();
                true
            })
            .await?;
        if foreign {
            return Err(ControlError::Invalid(format!(
                "task {task_id} is not assigned to node {node_id}"
            )));
        }
        if let Some(rev) = rev {
            self.tasks.wait_for(rev).await;
        }
        Ok(())
    }

    /// The current version of every secret granted to the node's running tasks: what a
    /// secret change must alter before the node's assignments are built again.
    pub(crate) fn node_secret_currents(&self, node_id: &str) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for e in self.tasks.all() {
            let t = &e.record;
            if t.node_id != node_id || t.state.is_terminal() || t.desired != TaskState::Running {
                continue;
            }
            for r in t.spec.container_spec.secrets.iter().flatten() {
                let current = self
                    .view
                    .lookup(&r.secret_id)
                    .map_or(0, |s| s.record.current);
                out.push((r.secret_id.clone(), current));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Everything node `node_id` should run now, with the values its tasks reference.
    /// Fails while the manager is locked.
    pub async fn assignments(
        &self,
        node_id: &str,
        cache: &mut ValueCache,
    ) -> Result<Assignments, ControlError> {
        let keys = self.keys.material().await?;
        let revision = self.tasks.revision().max(self.view.revision());
        let mut tasks = Vec::new();
        let mut used = std::collections::HashSet::new();
        for e in self.tasks.all() {
            let t = &e.record;
            if t.node_id != node_id || t.state.is_terminal() {
                continue;
            }
            let c = &t.spec.container_spec;
            let mut command = c.command.clone().unwrap_or_default();
            command.extend(c.args.clone().unwrap_or_default());
            let mut a = Assignment {
                id: t.id.clone(),
                name: t.name.clone(),
                service_id: t.service_id.clone(),
                desired: Some(t.desired),
                state: Some(if t.state >= TaskState::Starting {
                    TaskState::Starting
                } else {
                    TaskState::Assigned
                }),
                command,
                env: c.env.clone().unwrap_or_default(),
                user: c.user.clone().filter(|u| !u.is_empty()),
                dir: c.dir.clone().filter(|d| !d.is_empty()),
                stop_grace_ms: t
                    .stop_grace_ns
                    .and_then(|ns| u64::try_from(ns / 1_000_000).ok())
                    .unwrap_or(10_000),
                secrets: Vec::new(),
            };
            if t.desired == TaskState::Running {
                for r in c.secrets.iter().flatten() {
                    let grant = match r.to_grant() {
                        Ok(g) => g,
                        Err(e) => {
                            tracing::warn!(task = %t.name, error = %e, "grant skipped");
                            continue;
                        }
                    };
                    let Ok(secret) = self.view.lookup(&r.secret_id) else {
                        tracing::warn!(task = %t.name, secret = %r.secret_name, "granted secret is gone");
                        continue;
                    };
                    let version = delivered_version(
                        &grant,
                        t.versions.get(&r.secret_id).copied(),
                        secret.record.current,
                    );
                    let key = (r.secret_id.clone(), version);
                    let value = match cache.values.get(&key) {
                        Some(v) => Arc::clone(v),
                        None => {
                            let v = Arc::new(
                                open_version(&*self.store, &keys, &secret.record, version).await?,
                            );
                            cache.values.insert(key.clone(), Arc::clone(&v));
                            v
                        }
                    };
                    used.insert(key);
                    a.secrets.push(AssignedSecret {
                        secret_id: r.secret_id.clone(),
                        secret_name: r.secret_name.clone(),
                        grant: grant.to_string(),
                        version,
                        value: Base64Value(Zeroizing::new(STANDARD.encode(value.expose()))),
                    });
                }
            }
            tasks.push(a);
        }
        cache.values.retain(|k, _| used.contains(k));
        Ok(Assignments { revision, tasks })
    }
}

/// The version a task gets of a grant's secret: the pinned one; for `restart` grants the
/// one the task was made with (`given`; a new version means a new task); else the current.
fn delivered_version(grant: &Grant, given: Option<u32>, current: u32) -> u32 {
    match (grant.version, grant.on_rotate) {
        (Some(v), _) => v,
        (None, OnRotate::Restart) => given.unwrap_or(current),
        (None, _) => current,
    }
}
