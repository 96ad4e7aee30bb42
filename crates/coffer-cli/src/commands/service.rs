//! `coffer service ...`: services in Docker's shapes, with coffer's grant extensions, and
//! progress until a change has converged (as `docker service create` without `--detach`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use coffer_core::api::{Service, ServiceCreateResponse};
use coffer_core::grant::{Delivery, Grant, OnRotate};
use coffer_core::service::{SecretReference, ServiceSpec};
use http::Method;
use http_body_util::BodyExt;
use serde_json::{json, Value};

use super::secret::{enc, parse_label};
use crate::client::Client;
use crate::output::{ago, table};

/// What a task runs and with which secrets (shared by `service create` and `run`).
#[derive(Debug, Args)]
pub(crate) struct TaskArgs {
    /// Grant a secret: NAME or source=NAME,target=FILE,uid=U,gid=G,mode=0400, plus coffer's
    /// version=N, on-rotate=live|restart|signal:SIGHUP, type=env (repeatable).
    #[arg(long = "secret")]
    pub(crate) secrets: Vec<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(short, long = "env")]
    pub(crate) env: Vec<String>,
    /// Run as UID[:GID] (numeric).
    #[arg(short, long)]
    pub(crate) user: Option<String>,
    /// Working directory.
    #[arg(short = 'w', long)]
    pub(crate) workdir: Option<String>,
    /// Time to wait after SIGTERM before SIGKILL (e.g. 10s).
    #[arg(long, default_value = "10s")]
    pub(crate) stop_grace_period: humantime::Duration,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub(crate) command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ServiceCommand {
    /// Create a service.
    Create {
        /// Service name.
        #[arg(long)]
        name: String,
        /// Number of tasks.
        #[arg(long, default_value = "1", allow_hyphen_values = true)]
        replicas: String,
        /// Restart condition: any, on-failure or none.
        #[arg(long, default_value = "any")]
        restart_condition: String,
        /// Delay between restarts.
        #[arg(long, default_value = "5s")]
        restart_delay: humantime::Duration,
        /// Restarts per slot before giving up (0: unlimited).
        #[arg(long, default_value_t = 0)]
        restart_max_attempts: u64,
        /// Service label key=value (repeatable).
        #[arg(short, long = "label")]
        labels: Vec<String>,
        /// Return at once instead of waiting until the service converges.
        #[arg(short, long)]
        detach: bool,
        /// Print only the id.
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        task: TaskArgs,
    },
    /// List services.
    #[command(alias = "list")]
    Ls {
        /// Only print IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// List a service's tasks.
    Ps {
        /// Service name or ID.
        service: String,
        /// Only print task IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show services as JSON.
    Inspect {
        /// Names or IDs.
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Change a service; its tasks are replaced one at a time.
    Update {
        /// Service name or ID.
        service: String,
        /// Grant another secret (SPEC as in create; repeatable).
        #[arg(long)]
        secret_add: Vec<String>,
        /// Remove grants of a secret by name (repeatable).
        #[arg(long)]
        secret_rm: Vec<String>,
        /// Number of tasks.
        #[arg(long, allow_hyphen_values = true)]
        replicas: Option<String>,
        /// Add or replace an environment variable KEY=VALUE (repeatable).
        #[arg(long)]
        env_add: Vec<String>,
        /// Remove an environment variable by name (repeatable).
        #[arg(long)]
        env_rm: Vec<String>,
        /// Restart condition: any, on-failure or none.
        #[arg(long)]
        restart_condition: Option<String>,
        /// Update order: stop-first, or start-first (the new task runs before the old stops).
        #[arg(long)]
        update_order: Option<String>,
        /// Replace the tasks even if nothing changed.
        #[arg(long)]
        force: bool,
        /// Return at once.
        #[arg(short, long)]
        detach: bool,
    },
    /// Remove services (their tasks stop, their secret mounts go).
    #[command(alias = "remove")]
    Rm {
        /// Names or IDs.
        #[arg(required = true)]
        services: Vec<String>,
        /// Return at once.
        #[arg(short, long)]
        detach: bool,
    },
    /// Show a service's output (granted values appear as ****).
    Logs {
        /// Service name or ID.
        service: String,
        /// Keep following.
        #[arg(short, long)]
        follow: bool,
        /// Show timestamps.
        #[arg(short, long)]
        timestamps: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
    },
}

fn check_condition(c: &str) -> Result<()> {
    if !["any", "on-failure", "none"].contains(&c) {
        bail!("--restart-condition {c:?} is invalid; use any, on-failure or none");
    }
    Ok(())
}

/// Parses `--replicas` with a clear message (a negative count is the usual mistake).
fn replicas(s: &str) -> Result<u64> {
    s.parse::<u64>()
        .map_err(|_| anyhow!("--replicas {s:?} is invalid; give a whole number from 0"))
}

fn env_warning(grants: &[Grant]) {
    let vars: Vec<&str> = grants
        .iter()
        .filter_map(|g| match &g.delivery {
            Delivery::Env { var } => Some(var.as_str()),
            Delivery::File { .. } => None,
        })
        .collect();
    if !vars.is_empty() {
        eprintln!(
            "warning: {} delivered as environment variable{}; environments leak more easily than files (child processes inherit them, crash reports and debug endpoints print them); prefer files under /run/secrets",
            vars.join(", "),
            if vars.len() > 1 { "s" } else { "" }
        );
    }
}

/// The grants of `--secret` SPECs, as references the manager resolves by name.
pub(crate) fn references(specs: &[String]) -> Result<Vec<SecretReference>> {
    let grants: Vec<Grant> = specs
        .iter()
        .map(|s| Grant::parse(s, OnRotate::Live).map_err(|e| anyhow!("{e}")))
        .collect::<Result<_>>()?;
    coffer_core::grant::check_unique_targets(&grants).map_err(|e| anyhow!("{e}"))?;
    env_warning(&grants);
    Ok(grants.iter().map(|g| g.to_reference("")).collect())
}

fn user_ok(u: &str) -> Result<()> {
    let (uid, gid) = u.split_once(':').unwrap_or((u, "0"));
    if uid.parse::<u32>().is_err() || gid.parse::<u32>().is_err() {
        bail!("--user {u:?} is invalid; give a numeric UID[:GID], such as 1000:1000");
    }
    Ok(())
}

/// A service spec from flags.
pub(crate) fn spec(
    name: &str,
    t: &TaskArgs,
    replicas: u64,
    restart: Value,
    labels: &[String],
) -> Result<Value> {
    if let Some(u) = &t.user {
        user_ok(u)?;
    }
    for e in &t.env {
        if !e.contains('=') || e.starts_with('=') {
            bail!("--env {e:?} is not KEY=VALUE");
        }
    }
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|l| parse_label(l).map(|(k, v)| (k, Value::String(v))))
        .collect::<Result<_>>()?;
    let grace = i64::try_from(t.stop_grace_period.as_nanos()).unwrap_or(i64::MAX);
    Ok(json!({
        "Name": name,
        "Labels": labels,
        "TaskTemplate": {
            "ContainerSpec": {
                "Command": t.command,
                "Env": t.env,
                "User": t.user,
                "Dir": t.workdir,
                "StopGracePeriod": grace,
                "Secrets": references(&t.secrets)?,
            },
            "RestartPolicy": restart,
        },
        "Mode": {"Replicated": {"Replicas": replicas}},
    }))
}

/// `POST /services/create`; returns the new service's id.
pub(crate) async fn create(c: &Client, spec: &Value) -> Result<String> {
    let b = c
        .call(
            Method::POST,
            "/services/create",
            Some(serde_json::to_vec(spec)?),
        )
        .await?;
    let resp: ServiceCreateResponse = serde_json::from_slice(&b)?;
    Ok(resp.id)
}

pub(crate) async fn inspect(c: &Client, key: &str) -> Result<Service> {
    let b = c
        .call(Method::GET, &format!("/services/{}", enc(key)), None)
        .await?;
    Ok(serde_json::from_slice(&b)?)
}

pub(crate) async fn tasks(c: &Client, service_id: &str) -> Result<Vec<Value>> {
    let f = json!({"service": {service_id: true}}).to_string();
    let b = c
        .call(Method::GET, &format!("/tasks?filters={}", enc(&f)), None)
        .await?;
    Ok(serde_json::from_slice(&b)?)
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().unwrap_or("")
}

/// Waits until the service runs `replicas` tasks of its current version and nothing it
/// replaced still runs; prints progress. Fails when a new task fails (its reason shown).
pub(crate) async fn converge(c: &Client, id: &str, quiet: bool) -> Result<()> {
    let started = Instant::now();
    let mut last_line = String::new();
    // The version this change made: its tasks are the ones to wait for.
    let svc = inspect(c, id).await?;
    let want = svc
        .spec
        .mode
        .as_ref()
        .and_then(|m| m.replicated.as_ref())
        .and_then(|r| r.replicas)
        .unwrap_or(1);
    let rev = i64::try_from(svc.version.index).unwrap_or(0);
    let mut nodes_checked = false;
    loop {
        let ts = tasks(c, id).await?;
        let current = |t: &&Value| t["Coffer"]["ServiceRevision"].as_i64() == Some(rev);
        let running = ts
            .iter()
            .filter(current)
            .filter(|t| {
                s(t, &["DesiredState"]) == "running" && s(t, &["Status", "State"]) == "running"
            })
            .count() as u64;
        let old_alive = ts.iter().any(|t| {
            !current(&t)
                && !matches!(
                    s(t, &["Status", "State"]),
                    "complete" | "shutdown" | "failed" | "rejected"
                )
        });
        let line = format!("overall progress: {running} out of {want} tasks");
        if !quiet && line != last_line {
            eprintln!("{line}");
            last_line = line;
        }
        if running == want && !old_alive {
            if !quiet {
                eprintln!("verify: Service converged");
            }
            return Ok(());
        }
        if let Some(t) = ts.iter().filter(current).find(|t| {
            matches!(s(t, &["Status", "State"]), "failed" | "rejected")
                && s(t, &["DesiredState"]) == "running"
        }) {
            bail!(
                "service {} did not converge: task {}: {} (restarted per its restart policy; see `coffer service ps {}`)",
                svc.spec.name,
                s(t, &["Name"]),
                s(t, &["Status", "Err"]),
                svc.spec.name
            );
        }
        if !nodes_checked && started.elapsed() > Duration::from_secs(2) && running < want {
            nodes_checked = true;
            let nodes: Vec<Value> =
                serde_json::from_slice(&c.call(Method::GET, "/nodes", None).await?)?;
            if !nodes.iter().any(|n| s(n, &["Status", "State"]) == "ready") {
                bail!(
                    "service {} cannot run: no node is ready (a manager started with --no-agent runs no tasks; start `coffer dev` or `coffer server` without it)",
                    svc.spec.name
                );
            }
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!(
                "service {} has not converged after 2 minutes; see `coffer service ps {}`",
                svc.spec.name,
                svc.spec.name
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until no task of a removed service is alive.
pub(crate) async fn gone(c: &Client, id: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ts = tasks(c, id).await?;
        if ts.iter().all(|t| {
            matches!(
                s(t, &["Status", "State"]),
                "complete" | "shutdown" | "failed" | "rejected"
            )
        }) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("tasks of service {id} are still stopping after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Streams a service's logs to stdout and stderr (Docker's multiplexed frames).
pub(crate) async fn print_logs(
    mut body: hyper::body::Incoming,
    mut until: impl FnMut() -> bool,
) -> Result<()> {
    use std::io::Write;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_millis(200), body.frame()).await;
        let frame = match frame {
            Err(_) => {
                if until() {
                    return Ok(());
                }
                continue;
            }
            Ok(None) => return Ok(()),
            Ok(Some(f)) => f?,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while buf.len() >= 8 {
            let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
            if buf.len() < 8 + len {
                break;
            }
            let payload = &buf[8..8 + len];
            if buf[0] == 2 {
                let _ = std::io::stderr().write_all(payload);
            } else {
                let mut out = std::io::stdout();
                let _ = out.write_all(payload);
                let _ = out.flush();
            }
            buf.drain(..8 + len);
        }
    }
}

pub(crate) async fn run(host: Option<&str>, cmd: ServiceCommand) -> Result<ExitCode> {
    let c = Client::new(host)?;
    match cmd {
        ServiceCommand::Create {
            name,
            replicas: r,
            restart_condition,
            restart_delay,
            restart_max_attempts,
            labels,
            detach,
            quiet,
            task,
        } => {
            let r = replicas(&r)?;
            check_condition(&restart_condition)?;
            let restart = json!({
                "Condition": restart_condition,
                "Delay": i64::try_from(restart_delay.as_nanos()).unwrap_or(i64::MAX),
                "MaxAttempts": restart_max_attempts,
            });
            let body = spec(&name, &task, r, restart, &labels)?;
            let id = create(&c, &body).await?;
            println!("{id}");
            if !detach {
                converge(&c, &id, quiet).await?;
            }
        }
        ServiceCommand::Ls { quiet } => {
            let b = c.call(Method::GET, "/services?status=true", None).await?;
            let list: Vec<Service> = serde_json::from_slice(&b)?;
            if quiet {
                for s in &list {
                    println!("{}", s.id);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| {
                    let st = s.service_status.as_ref();
                    let cmd = s
                        .spec
                        .task_template
                        .container_spec
                        .command
                        .clone()
                        .unwrap_or_default()
                        .join(" ");
                    vec![
                        s.id.chars().take(12).collect(),
                        s.spec.name.clone(),
                        "replicated".into(),
                        format!(
                            "{}/{}",
                            st.map_or(0, |x| x.running_tasks),
                            st.map_or(0, |x| x.desired_tasks)
                        ),
                        cmd.chars().take(40).collect(),
                    ]
                })
                .collect();
            table(&["ID", "NAME", "MODE", "REPLICAS", "COMMAND"], &rows);
        }
        ServiceCommand::Ps { service, quiet } => {
            let svc = inspect(&c, &service).await?;
            let mut ts = tasks(&c, &svc.id).await?;
            ts.sort_by(|a, b| {
                (a["Slot"].as_u64(), s(b, &["CreatedAt"]))
                    .cmp(&(b["Slot"].as_u64(), s(a, &["CreatedAt"])))
            });
            if quiet {
                for t in &ts {
                    println!("{}", s(t, &["ID"]));
                }
                return Ok(ExitCode::SUCCESS);
            }
            let nodes: Vec<Value> =
                serde_json::from_slice(&c.call(Method::GET, "/nodes", None).await?)?;
            let node_name = |id: &str| {
                nodes
                    .iter()
                    .find(|n| s(n, &["ID"]) == id)
                    .map_or(id, |n| s(n, &["Description", "Hostname"]))
                    .to_owned()
            };
            let rows: Vec<Vec<String>> = ts
                .iter()
                .map(|t| {
                    let state = s(t, &["Status", "State"]);
                    let mut st = state.to_owned();
                    if let Some(first) = st.get_mut(..1) {
                        first.make_ascii_uppercase();
                    }
                    vec![
                        s(t, &["ID"]).chars().take(12).collect(),
                        format!("{}.{}", svc.spec.name, t["Slot"].as_u64().unwrap_or(0)),
                        node_name(s(t, &["NodeID"])),
                        s(t, &["DesiredState"]).to_owned(),
                        format!("{st} {}", ago(s(t, &["Status", "Timestamp"]))),
                        s(t, &["Status", "Err"]).to_owned(),
                    ]
                })
                .collect();
            table(
                &[
                    "ID",
                    "NAME",
                    "NODE",
                    "DESIRED STATE",
                    "CURRENT STATE",
                    "ERROR",
                ],
                &rows,
            );
        }
        ServiceCommand::Inspect { services } => {
            let mut out = Vec::new();
            for s in &services {
                out.push(inspect(&c, s).await?);
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        ServiceCommand::Update {
            service,
            secret_add,
            secret_rm,
            replicas: r,
            env_add,
            env_rm,
            restart_condition,
            update_order,
            force,
            detach,
        } => {
            let svc = inspect(&c, &service).await?;
            let mut spec: ServiceSpec = svc.spec.clone();
            if let Some(c) = restart_condition {
                check_condition(&c)?;
                spec.task_template
                    .restart_policy
                    .get_or_insert_with(Default::default)
                    .condition = Some(c);
            }
            if let Some(order) = update_order {
                if order != "stop-first" && order != "start-first" {
                    bail!("--update-order {order:?} is invalid; use stop-first or start-first");
                }
                let mut uc = spec
                    .other
                    .get("UpdateConfig")
                    .cloned()
                    .unwrap_or_else(|| json!({}));
                uc["Order"] = json!(order);
                spec.other.insert("UpdateConfig".into(), uc);
            }
            if let Some(r) = r {
                let n = replicas(&r)?;
                spec.mode
                    .get_or_insert_with(Default::default)
                    .replicated
                    .get_or_insert_with(Default::default)
                    .replicas = Some(n);
            }
            let cs = &mut spec.task_template.container_spec;
            let mut refs = cs.secrets.take().unwrap_or_default();
            for rm in &secret_rm {
                let before = refs.len();
                refs.retain(|r| &r.secret_name != rm && &r.secret_id != rm);
                if refs.len() == before {
                    bail!("--secret-rm {rm:?}: the service has no grant of that secret");
                }
            }
            refs.extend(references(&secret_add)?);
            cs.secrets = Some(refs);
            let mut env = cs.env.take().unwrap_or_default();
            for e in &env_rm {
                env.retain(|x| x.split_once('=').map_or(x.as_str(), |(k, _)| k) != e);
            }
            for e in &env_add {
                let Some((k, _)) = e.split_once('=') else {
                    bail!("--env-add {e:?} is not KEY=VALUE");
                };
                env.retain(|x| x.split_once('=').map_or(x.as_str(), |(kk, _)| kk) != k);
                env.push(e.clone());
            }
            cs.env = Some(env);
            if force {
                let n = spec
                    .task_template
                    .other
                    .get("ForceUpdate")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                spec.task_template
                    .other
                    .insert("ForceUpdate".into(), json!(n + 1));
            }
            c.call(
                Method::POST,
                &format!("/services/{}/update?version={}", svc.id, svc.version.index),
                Some(serde_json::to_vec(&spec)?),
            )
            .await?;
            println!("{}", svc.spec.name);
            if !detach {
                converge(&c, &svc.id, false).await?;
            }
        }
        ServiceCommand::Rm { services, detach } => {
            let mut failed = false;
            for name in &services {
                let id = match inspect(&c, name).await {
                    Ok(s) => s.id,
                    Err(e) => {
                        eprintln!("Error: {e}");
                        failed = true;
                        continue;
                    }
                };
                match c
                    .call(Method::DELETE, &format!("/services/{}", enc(&id)), None)
                    .await
                {
                    Ok(_) => {
                        if !detach {
                            gone(&c, &id).await?;
                        }
                        println!("{name}");
                    }
                    Err(e) => {
                        eprintln!("Error: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        ServiceCommand::Logs {
            service,
            follow,
            timestamps,
            tail,
        } => {
            let svc = inspect(&c, &service).await?;
            let mut q = format!(
                "/services/{}/logs?stdout=1&stderr=1&follow={}&timestamps={}",
                svc.id,
                u8::from(follow),
                u8::from(timestamps)
            );
            if let Some(t) = tail {
                q.push_str(&format!("&tail={t}"));
            }
            let body = c.stream(&q).await?;
            print_logs(body, || false).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
