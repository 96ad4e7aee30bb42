//! The scheduler: from services (desired) and tasks (observed) to actions. [`plan`] is a
//! pure function, so every rule is unit-tested; [`run`] applies its actions with
//! compare-and-swap transactions whenever services, tasks or nodes change, and on a short
//! tick for restart delays.
//!
//! Rules: each service has one task with desired `running` per slot 1..=replicas, spread
//! over ready, active nodes (fewest tasks of the service first). A task whose slot is gone,
//! or whose service is gone, is shut down. A task made from an older service revision is
//! replaced, one slot at a time, stop-first. A task that ended is replaced per the restart
//! policy (condition any | on-failure | none, delay, max attempts). Ended tasks are kept as
//! history, [`HISTORY_PER_SLOT`] per slot.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use coffer_core::grant::OnRotate;
use coffer_core::record::{
    service_key, task_key, NodeRecord, ServiceRecord, TaskRecord, TaskState,
};
use coffer_core::ObjectId;
use coffer_store::{Compare, Op, Txn};

use crate::control::Manager;
use crate::error::ControlError;
use crate::view::Entry;

/// Ended tasks kept per slot.
pub const HISTORY_PER_SLOT: usize = 5;

/// Docker's default restart delay.
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_secs(5);

/// When a task that ended is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartCondition {
    /// Always (Docker's default).
    Any,
    /// Only after a failure.
    OnFailure,
    /// Never.
    None,
}

/// What the scheduler needs to know of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceIntent {
    /// Service id.
    pub id: String,
    /// Service name.
    pub name: String,
    /// The service record's revision: tasks from older revisions are replaced.
    pub revision: i64,
    /// Tasks wanted.
    pub replicas: u64,
    /// Restart condition.
    pub condition: RestartCondition,
    /// Delay before a restart.
    pub delay: Duration,
    /// Restarts allowed per slot (0: unlimited).
    pub max_attempts: u64,
    /// Secret id -> current version, for grants that rotate by `restart`: a task given
    /// another version is replaced like a task of an older revision.
    pub restart_versions: BTreeMap<String, u32>,
    /// Replace a task by starting the new one first (`UpdateConfig.Order: start-first`):
    /// the old one stops once the new one runs.
    pub start_first: bool,
}

/// Whether a task must be replaced: made from an older service revision, or holding an
/// old version of a secret whose grant rotates by restart.
fn outdated(s: &ServiceIntent, t: &TaskRecord) -> bool {
    t.service_revision < s.revision
        || s.restart_versions
            .iter()
            .any(|(id, v)| t.versions.get(id).is_some_and(|have| have != v))
}

/// One change to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create a task for a slot on a node.
    Create {
        /// Service id.
        service_id: String,
        /// Service name.
        service_name: String,
        /// Service revision it is made from.
        service_revision: i64,
        /// Slot.
        slot: u64,
        /// Node.
        node_id: String,
        /// Restarts of the slot so far.
        attempt: u64,
    },
    /// Forget an ended task (history beyond the limit, or of a removed service).
    Delete {
        /// Task id.
        task_id: String,
    },
    /// Set a task's desired state to shutdown.
    Shutdown {
        /// Task id.
        task_id: String,
    },
}

fn updated(t: &TaskRecord) -> SystemTime {
    humantime::parse_rfc3339(&t.updated_at).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Computes the actions that move `tasks` toward `services` on `nodes` at `now`.
pub fn plan(
    services: &[ServiceIntent],
    tasks: &[TaskRecord],
    nodes: &[NodeRecord],
    now: SystemTime,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut by_service: BTreeMap<&str, Vec<&TaskRecord>> = BTreeMap::new();
    for t in tasks {
        by_service.entry(t.service_id.as_str()).or_default().push(t);
    }
    // Tasks of removed services: stop, then forget.
    for (sid, ts) in &by_service {
        if services.iter().any(|s| s.id == *sid) {
            continue;
        }
        for t in ts {
            if t.desired == TaskState::Running {
                actions.push(Action::Shutdown {
                    task_id: t.id.clone(),
                });
            } else if t.state.is_terminal() {
                actions.push(Action::Delete {
                    task_id: t.id.clone(),
                });
            }
        }
    }
    let ready: Vec<&NodeRecord> = nodes
        .iter()
        .filter(|n| n.state == "ready" && n.availability == "active")
        .collect();
    let mut load: BTreeMap<&str, usize> = ready.iter().map(|n| (n.id.as_str(), 0)).collect();
    for t in tasks.iter().filter(|t| t.desired == TaskState::Running) {
        if let Some(l) = load.get_mut(t.node_id.as_str()) {
            *l += 1;
        }
    }
    for s in services {
        let ts = by_service.get(s.id.as_str()).cloned().unwrap_or_default();
        let mut service_load: BTreeMap<&str, usize> = BTreeMap::new();
        for t in ts.iter().filter(|t| t.desired == TaskState::Running) {
            *service_load.entry(t.node_id.as_str()).or_default() += 1;
        }
        // A slot is "replacing" while an old task is still stopping: one at a time.
        // A slot is also "replacing" until its new task runs.
        let mut replacing = ts.iter().any(|t| {
            t.slot <= s.replicas
                && ((t.desired == TaskState::Shutdown && !t.state.is_terminal())
                    || (t.desired == TaskState::Running
                        && !outdated(s, t)
                        && t.state < TaskState::Running
                        && ts
                            .iter()
                            .any(|o| o.slot == t.slot && o.id != t.id && outdated(s, o))))
        });
        for t in ts
            .iter()
            .filter(|t| t.desired == TaskState::Running && t.slot > s.replicas)
        {
            actions.push(Action::Shutdown {
                task_id: t.id.clone(),
            });
        }
        for slot in 1..=s.replicas {
            let in_slot: Vec<&&TaskRecord> = ts.iter().filter(|t| t.slot == slot).collect();
            let mut live = in_slot.iter().find(|t| t.desired == TaskState::Running);
            let attempts = in_slot.iter().map(|t| t.attempt).max().unwrap_or(0);
            let mut create = |actions: &mut Vec<Action>, attempt: u64| {
                let Some(node) = ready.iter().min_by_key(|n| {
                    (
                        service_load.get(n.id.as_str()).copied().unwrap_or(0),
                        load.get(n.id.as_str()).copied().unwrap_or(0),
                        n.id.clone(),
                    )
                }) else {
                    return;
                };
                *service_load.entry(node.id.as_str()).or_default() += 1;
                *load.entry(node.id.as_str()).or_default() += 1;
                actions.push(Action::Create {
                    service_id: s.id.clone(),
                    service_name: s.name.clone(),
                    service_revision: s.revision,
                    slot,
                    node_id: node.id.clone(),
                    attempt,
                });
            };
            if s.start_first {
                let fresh = in_slot
                    .iter()
                    .find(|t| t.desired == TaskState::Running && !outdated(s, t));
                let old = in_slot.iter().find(|t| {
                    t.desired == TaskState::Running && outdated(s, t) && !t.state.is_terminal()
                });
                if let Some(o) = old {
                    match fresh {
                        None => {
                            if !replacing {
                                replacing = true;
                                create(&mut actions, 0);
                            }
                            continue;
                        }
                        Some(f) => {
                            if f.state == TaskState::Running {
                                replacing = true;
                                actions.push(Action::Shutdown {
                                    task_id: o.id.clone(),
                                });
                            }
                            live = Some(f);
                        }
                    }
                }
            }
            match live {
                Some(t) if t.state.is_terminal() => {
                    let restart = match s.condition {
                        RestartCondition::Any => true,
                        RestartCondition::OnFailure => {
                            matches!(t.state, TaskState::Failed | TaskState::Rejected)
                        }
                        RestartCondition::None => false,
                    };
                    let allowed = s.max_attempts == 0 || t.attempt < s.max_attempts;
                    if restart && allowed && now >= updated(t) + s.delay {
                        actions.push(Action::Shutdown {
                            task_id: t.id.clone(),
                        });
                        create(&mut actions, t.attempt + 1);
                    }
                }
                Some(t) if outdated(s, t) => {
                    if !replacing {
                        replacing = true;
                        actions.push(Action::Shutdown {
                            task_id: t.id.clone(),
                        });
                    }
                }
                Some(_) => {}
                None => {
                    let stopping = in_slot.iter().any(|t| !t.state.is_terminal());
                    if !stopping {
                        // A replaced or restarted slot keeps counting its attempts only
                        // across failures; an update starts it afresh.
                        let last_was_update =
                            !in_slot.is_empty() && in_slot.iter().all(|t| outdated(s, t));
                        replacing |= last_was_update;
                        create(&mut actions, if last_was_update { 0 } else { attempts });
                    }
                }
            }
            // History: keep the newest ended tasks of the slot.
            let mut ended: Vec<&&&TaskRecord> = in_slot
                .iter()
                .filter(|t| t.desired == TaskState::Shutdown && t.state.is_terminal())
                .collect();
            if ended.len() > HISTORY_PER_SLOT {
                ended.sort_by_key(|t| std::cmp::Reverse(t.created_at.clone()));
                for t in &ended[HISTORY_PER_SLOT..] {
                    actions.push(Action::Delete {
                        task_id: t.id.clone(),
                    });
                }
            }
        }
    }
    actions
}

/// What the scheduler needs to know of a stored service.
fn intent(m: &Manager, e: &Entry<ServiceRecord>) -> ServiceIntent {
    let spec = &e.record.spec;
    let rp = spec
        .task_template
        .restart_policy
        .clone()
        .unwrap_or_default();
    let mut restart_versions = BTreeMap::new();
    for r in spec.task_template.container_spec.secrets.iter().flatten() {
        let Ok(g) = r.to_grant() else { continue };
        if g.on_rotate == OnRotate::Restart && g.version.is_none() {
            if let Ok(secret) = m.view.lookup(&r.secret_id) {
                restart_versions.insert(r.secret_id.clone(), secret.record.current);
            }
        }
    }
    ServiceIntent {
        id: e.record.id.clone(),
        name: spec.name.clone(),
        revision: e.mod_revision,
        replicas: crate::control::replicas(spec),
        condition: match rp.condition.as_deref() {
            Some("none") => RestartCondition::None,
            Some("on-failure") => RestartCondition::OnFailure,
            _ => RestartCondition::Any,
        },
        delay: rp
            .delay
            .and_then(|ns| u64::try_from(ns).ok())
            .map_or(DEFAULT_RESTART_DELAY, Duration::from_nanos),
        max_attempts: rp.max_attempts.unwrap_or(0),
        restart_versions,
        start_first: spec
            .other
            .get("UpdateConfig")
            .and_then(|u| u.get("Order"))
            .and_then(serde_json::Value::as_str)
            == Some("start-first"),
    }
}

fn now_text() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// Applies one action; returns the store revision it wrote, if it wrote.
async fn apply(m: &Manager, action: Action) -> Result<Option<i64>, ControlError> {
    match action {
        Action::Create {
            service_id,
            service_name,
            service_revision,
            slot,
            node_id,
            attempt,
        } => {
            let Ok(svc) = m.services.lookup(&service_id) else {
                return Ok(None);
            };
            if svc.mod_revision != service_revision {
                return Ok(None);
            }
            let id = ObjectId::from_random(coffer_crypto::digest::random_u128()?).to_string();
            let spec = svc.record.spec.task_template.clone();
            let mut versions = BTreeMap::new();
            for r in spec.container_spec.secrets.iter().flatten() {
                let pinned = r.to_grant().ok().and_then(|g| g.version);
                let v = match pinned {
                    Some(v) => v,
                    None => m.view.lookup(&r.secret_id).map_or(0, |e| e.record.current),
                };
                versions.insert(r.secret_id.clone(), v);
            }
            let t = now_text();
            let record = TaskRecord {
                name: format!("{service_name}.{slot}.{id}"),
                id: id.clone(),
                service_id: service_id.clone(),
                service_name,
                slot,
                node_id,
                service_revision,
                desired: TaskState::Running,
                state: TaskState::Assigned,
                message: "assigned".into(),
                err: String::new(),
                exit_code: None,
                attempt,
                created_at: t.clone(),
                updated_at: t,
                stop_grace_ns: spec.container_spec.stop_grace_period,
                spec,
                versions,
                pid: None,
            };
            let r = m
                .store
                .txn(Txn {
                    compares: vec![
                        Compare::ModRevision(service_key(&service_id), service_revision),
                        Compare::Absent(task_key(&id)),
                    ],
                    success: vec![Op::Put(
                        task_key(&id),
                        serde_json::to_vec(&record).unwrap_or_default(),
                    )],
                    failure: vec![],
                })
                .await?;
            Ok(r.succeeded.then_some(r.revision))
        }
        Action::Shutdown { task_id } => {
            m.update_record::<TaskRecord>(&task_key(&task_id), |t| {
                if t.desired == TaskState::Shutdown {
                    return false;
                }
                t.desired = TaskState::Shutdown;
                t.updated_at = now_text();
                true
            })
            .await
        }
        Action::Delete { task_id } => {
            let r = m
                .store
                .txn(Txn {
                    compares: vec![Compare::Exists(task_key(&task_id))],
                    success: vec![Op::Delete(task_key(&task_id))],
                    failure: vec![],
                })
                .await?;
            Ok(r.succeeded.then_some(r.revision))
        }
    }
}

/// Applies [`plan`] for as long as the manager runs: after every change to services,
/// tasks, nodes or secrets, and every 250 ms while a restart delay is running.
pub async fn run(m: Arc<Manager>) {
    let mut watches = [
        m.services.subscribe(),
        m.tasks.subscribe(),
        m.nodes.subscribe(),
        m.view.subscribe(),
    ];
    loop {
        // Mark the changes seen before reading, so one that lands while planning wakes the
        // next round instead of being lost.
        for w in &mut watches {
            w.borrow_and_update();
        }
        let services: Vec<ServiceIntent> = m.services.all().iter().map(|e| intent(&m, e)).collect();
        let tasks: Vec<TaskRecord> = m.tasks.all().iter().map(|e| e.record.clone()).collect();
        let nodes: Vec<NodeRecord> = m.nodes.all().iter().map(|e| e.record.clone()).collect();
        // Time matters only while an ended task waits out its restart delay.
        let delayed = tasks
            .iter()
            .any(|t| t.desired == TaskState::Running && t.state.is_terminal());
        let mut wrote = 0;
        for action in plan(&services, &tasks, &nodes, SystemTime::now()) {
            match apply(&m, action.clone()).await {
                Ok(Some(rev)) => wrote = wrote.max(rev),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, ?action, "scheduler action failed"),
            }
        }
        if wrote > 0 {
            // Plan again once the views show what was written (never on a stale view).
            m.tasks.wait_for(wrote).await;
            continue;
        }
        // Wait for a change that can alter the plan. A secret change matters only when it
        // changes an intent (the current version behind a restart grant); most do not
        // (creates, label updates, rotations of other secrets), and then the tasks are not
        // read again.
        loop {
            let [a, b, c, d] = &mut watches;
            let secrets_only = tokio::select! {
                _ = a.changed() => false,
                _ = b.changed() => false,
                _ = c.changed() => false,
                _ = d.changed() => true,
                () = tokio::time::sleep(Duration::from_millis(250)), if delayed => false,
            };
            if !secrets_only {
                break;
            }
            watches[3].borrow_and_update();
            let now: Vec<ServiceIntent> = m.services.all().iter().map(|e| intent(&m, e)).collect();
            if now != services {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            hostname: id.into(),
            role: "manager".into(),
            availability: "active".into(),
            state: "ready".into(),
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    fn svc(replicas: u64, revision: i64) -> ServiceIntent {
        ServiceIntent {
            id: "s".into(),
            name: "web".into(),
            revision,
            replicas,
            condition: RestartCondition::Any,
            delay: Duration::from_secs(1),
            max_attempts: 0,
            restart_versions: BTreeMap::new(),
            start_first: false,
        }
    }

    fn task(
        id: &str,
        slot: u64,
        node: &str,
        desired: TaskState,
        state: TaskState,
        rev: i64,
        attempt: u64,
    ) -> TaskRecord {
        TaskRecord {
            id: id.into(),
            service_id: "s".into(),
            service_name: "web".into(),
            slot,
            node_id: node.into(),
            service_revision: rev,
            desired,
            state,
            message: String::new(),
            err: String::new(),
            exit_code: None,
            attempt,
            created_at: format!("2026-01-01T00:00:{:02}Z", id.len()),
            updated_at: "2026-01-01T00:00:00Z".into(),
            name: id.into(),
            spec: Default::default(),
            versions: BTreeMap::new(),
            stop_grace_ns: None,
            pid: None,
        }
    }

    fn creates(a: &[Action]) -> Vec<(u64, String, u64)> {
        a.iter()
            .filter_map(|x| match x {
                Action::Create {
                    slot,
                    node_id,
                    attempt,
                    ..
                } => Some((*slot, node_id.clone(), *attempt)),
                _ => None,
            })
            .collect()
    }

    const T0: SystemTime = SystemTime::UNIX_EPOCH;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn replicas_spread_over_nodes() {
        let a = plan(&[svc(3, 1)], &[], &[node("a"), node("b")], T0);
        assert_eq!(
            creates(&a),
            vec![(1, "a".into(), 0), (2, "b".into(), 0), (3, "a".into(), 0)]
        );
        assert!(
            plan(&[svc(3, 1)], &[], &[], T0).is_empty(),
            "no ready node: nothing to place"
        );
    }

    #[test]
    fn scale_down_and_removal() {
        use TaskState::*;
        let ts = vec![
            task("t1", 1, "a", Running, Running, 1, 0),
            task("t2", 2, "a", Running, Running, 1, 0),
        ];
        assert_eq!(
            plan(&[svc(1, 1)], &ts, &[node("a")], T0),
            vec![Action::Shutdown {
                task_id: "t2".into()
            }]
        );
        let gone = plan(&[], &ts, &[node("a")], T0);
        assert_eq!(gone.len(), 2);
        let ended = vec![task("t1", 1, "a", Shutdown, Shutdown, 1, 0)];
        assert_eq!(
            plan(&[], &ended, &[node("a")], T0),
            vec![Action::Delete {
                task_id: "t1".into()
            }]
        );
    }

    #[test]
    fn restart_policy() {
        use TaskState::*;
        let failed = vec![task("t1", 1, "a", Running, Failed, 1, 0)];
        assert!(
            plan(
                &[svc(1, 1)],
                &failed,
                &[node("a")],
                at("2026-01-01T00:00:00.5Z")
            )
            .is_empty(),
            "waits the delay"
        );
        let a = plan(
            &[svc(1, 1)],
            &failed,
            &[node("a")],
            at("2026-01-01T00:00:01Z"),
        );
        assert_eq!(
            a[0],
            Action::Shutdown {
                task_id: "t1".into()
            }
        );
        assert_eq!(creates(&a), vec![(1, "a".into(), 1)]);
        let mut limited = svc(1, 1);
        limited.max_attempts = 1;
        let failed_again = vec![task("t2", 1, "a", Running, Failed, 1, 1)];
        assert!(plan(
            &[limited],
            &failed_again,
            &[node("a")],
            at("2026-01-02T00:00:00Z")
        )
        .is_empty());
        let mut on_failure = svc(1, 1);
        on_failure.condition = RestartCondition::OnFailure;
        let done = vec![task("t1", 1, "a", Running, Complete, 1, 0)];
        assert!(plan(
            &[on_failure],
            &done,
            &[node("a")],
            at("2026-01-02T00:00:00Z")
        )
        .is_empty());
        let mut none = svc(1, 1);
        none.condition = RestartCondition::None;
        assert!(plan(&[none], &failed, &[node("a")], at("2026-01-02T00:00:00Z")).is_empty());
    }

    #[test]
    fn rolling_update_one_slot_at_a_time_stop_first() {
        use TaskState::*;
        let ts = vec![
            task("t1", 1, "a", Running, Running, 1, 0),
            task("t2", 2, "a", Running, Running, 1, 0),
        ];
        let a = plan(&[svc(2, 2)], &ts, &[node("a")], T0);
        assert_eq!(
            a,
            vec![Action::Shutdown {
                task_id: "t1".into()
            }],
            "one slot, stop first"
        );
        let stopping = vec![
            task("t1", 1, "a", Shutdown, Running, 1, 0),
            task("t2", 2, "a", Running, Running, 1, 0),
        ];
        assert!(
            plan(&[svc(2, 2)], &stopping, &[node("a")], T0).is_empty(),
            "waits for the old task to stop"
        );
        let stopped = vec![
            task("t1", 1, "a", Shutdown, Shutdown, 1, 0),
            task("t2", 2, "a", Running, Running, 1, 0),
        ];
        let a = plan(&[svc(2, 2)], &stopped, &[node("a")], T0);
        assert_eq!(creates(&a), vec![(1, "a".into(), 0)]);
        assert!(
            !a.contains(&Action::Shutdown {
                task_id: "t2".into()
            }),
            "slot 2 waits for slot 1"
        );
    }

    #[test]
    fn history_is_bounded() {
        use TaskState::*;
        let mut ts: Vec<TaskRecord> = (0..8)
            .map(|i| task(&"h".repeat(i + 1), 1, "a", Shutdown, Failed, 1, 0))
            .collect();
        ts.push(task("live", 1, "a", Running, Running, 1, 0));
        let a = plan(&[svc(1, 1)], &ts, &[node("a")], T0);
        let deleted: Vec<_> = a
            .iter()
            .filter(|x| matches!(x, Action::Delete { .. }))
            .collect();
        assert_eq!(deleted.len(), 3);
    }

    #[test]
    fn start_first_runs_the_new_task_before_stopping_the_old() {
        let n = [node("n1")];
        let mut s = svc(2, 2);
        s.start_first = true;
        let old1 = task(
            "old1",
            1,
            "n1",
            TaskState::Running,
            TaskState::Running,
            1,
            0,
        );
        let old2 = task(
            "old2",
            2,
            "n1",
            TaskState::Running,
            TaskState::Running,
            1,
            0,
        );
        // First: one new task, nothing stopped.
        let a = plan(
            std::slice::from_ref(&s),
            &[old1.clone(), old2.clone()],
            &n,
            SystemTime::now(),
        );
        assert_eq!(creates(&a), vec![(1, "n1".to_owned(), 0)]);
        assert!(
            !a.iter().any(|x| matches!(x, Action::Shutdown { .. })),
            "{a:?}"
        );
        // While the new one starts: nothing more (one slot at a time).
        let new1 = task(
            "new1",
            1,
            "n1",
            TaskState::Running,
            TaskState::Starting,
            2,
            0,
        );
        let a = plan(
            std::slice::from_ref(&s),
            &[old1.clone(), old2.clone(), new1.clone()],
            &n,
            SystemTime::now(),
        );
        assert!(a.is_empty(), "{a:?}");
        // Once it runs, the old one stops.
        let mut new1 = new1;
        new1.state = TaskState::Running;
        let a = plan(
            std::slice::from_ref(&s),
            &[old1, old2, new1],
            &n,
            SystemTime::now(),
        );
        assert_eq!(
            a,
            vec![Action::Shutdown {
                task_id: "old1".into()
            }]
        );
    }

    #[test]
    fn restart_grant_rotation_replaces_the_task() {
        let n = [node("n1")];
        let mut s = svc(1, 1);
        s.restart_versions.insert("sec".into(), 2);
        let mut t = task("t1", 1, "n1", TaskState::Running, TaskState::Running, 1, 0);
        t.versions.insert("sec".into(), 1);
        let a = plan(
            std::slice::from_ref(&s),
            std::slice::from_ref(&t),
            &n,
            SystemTime::now(),
        );
        assert_eq!(
            a,
            vec![Action::Shutdown {
                task_id: "t1".into()
            }]
        );
        t.versions.insert("sec".into(), 2);
        assert!(plan(&[s], &[t], &n, SystemTime::now()).is_empty());
    }
}
