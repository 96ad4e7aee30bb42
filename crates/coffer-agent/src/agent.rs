//! The node agent: registers with a manager on its node listener, follows its
//! assignments (HTTP/2), runs each task with the exec driver and reports back.
//!
//! Per task: secrets on their own memory-only mount ([`TaskSecrets`]), the workload
//! started through the `coffer task-exec` helper (private mount namespace, read-only
//! `/run/secrets`, the task's user, exactly the task's environment), output masked
//! ([`Masker`]) and shipped to the manager, rotation applied in place (`live`, `signal:*`),
//! and on stop the whole process tree ended and the mount removed.
//!
//! After a crash (`kill -9`) the agent first stops the processes it had started (recorded
//! in its state file), removes every secret mount left behind, and then reconciles: tasks
//! the manager still thinks are running are reported failed, so the restart policy
//! replaces them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use coffer_core::grant::{Delivery, Grant, OnRotate, Signal as RotateSignal};
use coffer_core::node::{
    AssignedSecret, Assignment, Assignments, LogLine, RegisterRequest, RegisterResponse,
    StatusReport,
};
use coffer_core::record::TaskState;
use coffer_crypto::SecretBytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::exec::TaskProcess;
use crate::files::{SecretFile, TargetName};
use crate::mask::{LineBuffer, Masker};
use crate::mount::Mounter;
use crate::task::TaskSecrets;

/// How to run an agent.
#[derive(Clone)]
pub struct AgentConfig {
    /// The manager's node listener.
    pub node_socket: PathBuf,
    /// The node credential.
    pub token: Zeroizing<String>,
    /// This node's host name.
    pub hostname: String,
    /// Where task secret mounts go (`<base>/<task>`).
    pub base_dir: PathBuf,
    /// Where the agent records the processes it started (no secrets in it).
    pub state_file: PathBuf,
    /// The `coffer` binary, run as `coffer task-exec`.
    pub helper: PathBuf,
    /// Mounts memory-only filesystems.
    pub mounter: Arc<dyn Mounter + Send + Sync>,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("node_socket", &self.node_socket)
            .field("token", &"[REDACTED]")
            .field("hostname", &self.hostname)
            .field("base_dir", &self.base_dir)
            .finish_non_exhaustive()
    }
}

/// The agent failed in a way it cannot retry.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Talking to the manager failed.
    #[error("manager: {0}")]
    Manager(String),
}

type Client = SendRequest<Full<Bytes>>;

/// What an agent shares between its tasks.
struct Shared {
    cfg: AgentConfig,
    node_id: Mutex<String>,
    client: Mutex<Option<Client>>,
    /// Task id -> (pid, mount namespace), persisted for recovery after a crash.
    procs: Mutex<BTreeMap<String, ProcEntry>>,
    /// Bumped on every change to `procs`; one writer task saves the latest table.
    procs_changed: tokio::sync::watch::Sender<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ProcEntry {
    pid: u32,
    mnt_ns: Option<String>,
}

enum Control {
    /// Stop the task: its desired state is shutdown, or it is no longer assigned.
    Stop,
    /// Stop the task because the agent itself stops: reported as failed, so the restart
    /// policy (any or on-failure) brings it back when the agent returns.
    AgentExit,
    Secrets(Vec<AssignedSecret>),
}

struct Handle {
    ctl: mpsc::UnboundedSender<Control>,
    versions: BTreeMap<String, u32>,
    stopping: bool,
}

fn now() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

impl Shared {
    fn client(&self) -> Option<Client> {
        self.client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn node_id(&self) -> String {
        self.node_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Asks the state-file writer to save the process table (never blocks a task).
    fn save_procs(&self) {
        self.procs_changed.send_modify(|n| *n += 1);
    }

    async fn request(&self, method: Method, path: &str, body: Vec<u8>) -> Result<Bytes, String> {
        let mut client = self.client().ok_or("not connected")?;
        client.ready().await.map_err(|e| e.to_string())?;
        let req = Request::builder()
            .method(method)
            .uri(format!("http://coffer{path}"))
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.cfg.token.as_str()),
            )
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = client.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        Ok(body)
    }

    async fn report(&self, task: &str, r: StatusReport) {
        let path = format!("/coffer/node/{}/tasks/{task}/status", self.node_id());
        let body = serde_json::to_vec(&r).unwrap_or_default();
        for attempt in 0..20 {
            match self.request(Method::POST, &path, body.clone()).await {
                Ok(_) => return,
                Err(e) if attempt == 19 => tracing::warn!(task, error = %e, "status report lost"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

fn status(state: TaskState, message: impl Into<String>) -> StatusReport {
    StatusReport {
        state,
        message: message.into(),
        err: String::new(),
        exit_code: None,
        versions: BTreeMap::new(),
        pid: None,
    }
}

/// Stops what a previous run of the agent left: its processes (only if the pid still
/// has the recorded mount namespace: pids are reused) and every secret mount.
fn recover(cfg: &AgentConfig) {
    if let Ok(data) = std::fs::read(&cfg.state_file) {
        let procs: BTreeMap<String, ProcEntry> = serde_json::from_slice(&data).unwrap_or_default();
        for (task, p) in procs {
            let ns = std::fs::read_link(format!("/proc/{}/ns/mnt", p.pid))
                .ok()
                .map(|l| l.display().to_string());
            if p.mnt_ns.is_some() && ns == p.mnt_ns {
                tracing::info!(
                    task,
                    pid = p.pid,
                    "stopping a task left by the previous agent"
                );
                let tp = TaskProcess {
                    pid: p.pid,
                    mnt_ns: p.mnt_ns,
                };
                let pid = p.pid;
                tp.stop(Duration::from_secs(2), || {
                    !std::path::Path::new(&format!("/proc/{pid}")).exists()
                });
            }
        }
        let _ = std::fs::remove_file(&cfg.state_file);
    }
    match TaskSecrets::sweep(&*cfg.mounter, &cfg.base_dir, &[]) {
        Ok(swept) if !swept.is_empty() => tracing::info!(
            count = swept.len(),
            "removed secret mounts of tasks that no longer run"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not sweep secret mounts"),
    }
}

async fn connect(cfg: &AgentConfig) -> Result<Client, String> {
    let stream = tokio::net::UnixStream::connect(&cfg.node_socket)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", cfg.node_socket.display()))?;
    let (client, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "node connection ended");
        }
    });
    Ok(client)
}

/// Saves the process table whenever it changes, off the async threads; changes that come
/// while a write is under way are coalesced into the next one.
async fn write_state_file(shared: std::sync::Weak<Shared>) {
    let Some(mut changed) = shared.upgrade().map(|s| s.procs_changed.subscribe()) else {
        return;
    };
    // Ends when the agent (which owns the sender) is gone.
    while changed.changed().await.is_ok() {
        changed.borrow_and_update();
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let data = {
            let procs = shared.procs.lock().unwrap_or_else(PoisonError::into_inner);
            serde_json::to_vec(&*procs).unwrap_or_default()
        };
        let path = shared.cfg.state_file.clone();
        drop(shared);
        let written = tokio::task::spawn_blocking(move || {
            coffer_crypto::keyring::write_private(&path, &data)
        })
        .await;
        if let Ok(Err(e)) = written {
            tracing::warn!(error = %e, "could not save the agent state file");
        }
    }
}

/// Runs the agent until `shutdown` resolves; then stops every task it runs.
pub async fn run(
    cfg: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || recover(&cfg))
            .await
            .map_err(|e| AgentError::Manager(e.to_string()))?;
    }
    let shared = Arc::new(Shared {
        cfg,
        node_id: Mutex::new(String::new()),
        client: Mutex::new(None),
        procs: Mutex::new(BTreeMap::new()),
        procs_changed: tokio::sync::watch::channel(0).0,
    });
    tokio::spawn(write_state_file(Arc::downgrade(&shared)));
    let mut tasks: HashMap<String, Handle> = HashMap::new();
    let mut finished_rx;
    let finished_tx;
    (finished_tx, finished_rx) = mpsc::unbounded_channel::<String>();
    tokio::pin!(shutdown);
    'session: loop {
        // Connect and register (retrying: the manager may be starting).
        let mut stream = loop {
            let attempt = async {
                let client = connect(&shared.cfg).await?;
                *shared.client.lock().unwrap_or_else(PoisonError::into_inner) = Some(client);
                let body = serde_json::to_vec(&RegisterRequest {
                    hostname: shared.cfg.hostname.clone(),
                })
                .unwrap_or_default();
                let r = shared
                    .request(Method::POST, "/coffer/node/register", body)
                    .await?;
                let r: RegisterResponse =
                    serde_json::from_slice(&r).map_err(|e| coffer_core::api::json_error(&e))?;
                *shared
                    .node_id
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = r.node_id.clone();
                let mut client = shared.client().ok_or("not connected")?;
                client.ready().await.map_err(|e| e.to_string())?;
                let req = Request::builder()
                    .method(Method::GET)
                    .uri(format!(
                        "http://coffer/coffer/node/{}/assignments",
                        r.node_id
                    ))
                    .header(
                        header::AUTHORIZATION,
                        format!("Bearer {}", shared.cfg.token.as_str()),
                    )
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| e.to_string())?;
                let resp = client.send_request(req).await.map_err(|e| e.to_string())?;
                if resp.status() != StatusCode::OK {
                    return Err(format!("assignments: {}", resp.status()));
                }
                Ok::<_, String>(resp.into_body())
            };
            tokio::select! {
                () = &mut shutdown => break 'session,
                r = attempt => match r {
                    Ok(s) => break s,
                    Err(e) => {
                        tracing::debug!(error = %e, "agent cannot reach the manager yet");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
            }
        };
        tracing::info!(node = %shared.node_id(), "agent connected");
        let mut buf = LineBuffer::unbounded();
        loop {
            tokio::select! {
                () = &mut shutdown => break 'session,
                Some(done) = finished_rx.recv() => { tasks.remove(&done); }
                frame = stream.frame() => match frame {
                    Some(Ok(f)) => {
                        let Ok(data) = f.into_data() else { continue };
                        for line in buf.push(&data) {
                            match serde_json::from_slice::<Assignments>(&line) {
                                Ok(a) => reconcile(&shared, &mut tasks, &finished_tx, a).await,
                                // The message carries values: never quote it.
                                Err(e) => tracing::warn!(error = %coffer_core::api::json_error(&e), "unreadable assignments message"),
                            }
                        }
                    }
                    Some(Err(e)) => { tracing::warn!(error = %e, "assignment stream broke; reconnecting"); break; }
                    None => { tracing::info!("assignment stream ended; reconnecting"); break; }
                },
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Stopping: every task ends, its mounts go.
    for h in tasks.values() {
        let _ = h.ctl.send(Control::AgentExit);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !tasks.is_empty() && tokio::time::Instant::now() < deadline {
        if let Ok(Some(done)) =
            tokio::time::timeout(Duration::from_millis(100), finished_rx.recv()).await
        {
            tasks.remove(&done);
        }
    }
    Ok(())
}

async fn reconcile(
    shared: &Arc<Shared>,
    tasks: &mut HashMap<String, Handle>,
    finished: &mpsc::UnboundedSender<String>,
    a: Assignments,
) {
    let listed: std::collections::HashSet<&str> = a.tasks.iter().map(|t| t.id.as_str()).collect();
    for (id, h) in tasks.iter_mut() {
        if !listed.contains(id.as_str()) && !h.stopping {
            h.stopping = true;
            let _ = h.ctl.send(Control::Stop);
        }
    }
    for t in a.tasks {
        let running = t.desired == Some(TaskState::Running);
        if let Some(h) = tasks.get_mut(&t.id) {
            if !running {
                if !h.stopping {
                    h.stopping = true;
                    let _ = h.ctl.send(Control::Stop);
                }
            } else {
                let versions: BTreeMap<String, u32> = t
                    .secrets
                    .iter()
                    .map(|s| (s.secret_id.clone(), s.version))
                    .collect();
                if versions != h.versions {
                    h.versions = versions;
                    let _ = h.ctl.send(Control::Secrets(t.secrets));
                }
            }
            continue;
        }
        let started_before = t.state.is_some_and(|s| s >= TaskState::Starting);
        if !running {
            let s = shared.clone();
            let id = t.id.clone();
            tokio::spawn(
                async move { s.report(&id, status(TaskState::Shutdown, "stopped")).await },
            );
            continue;
        }
        if started_before {
            let s = shared.clone();
            let id = t.id.clone();
            tokio::spawn(async move {
                let mut r = status(TaskState::Failed, "agent restarted");
                r.err = "the node's agent restarted; the task's processes were stopped".into();
                s.report(&id, r).await;
            });
            continue;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let versions = t
            .secrets
            .iter()
            .map(|s| (s.secret_id.clone(), s.version))
            .collect();
        tasks.insert(
            t.id.clone(),
            Handle {
                ctl: tx,
                versions,
                stopping: false,
            },
        );
        let s = shared.clone();
        let fin = finished.clone();
        tokio::spawn(async move {
            let id = t.id.clone();
            supervise(&s, t, rx).await;
            let _ = fin.send(id);
        });
    }
}

/// A task's decoded secrets.
struct Decoded {
    files: Vec<SecretFile>,
    env: Vec<(String, Zeroizing<Vec<u8>>)>,
    grants: Vec<(Grant, u32, String)>,
}

fn decode(secrets: &[AssignedSecret], masker: &mut Masker) -> Result<Decoded, String> {
    let mut d = Decoded {
        files: Vec::new(),
        env: Vec::new(),
        grants: Vec::new(),
    };
    for s in secrets {
        let (grant, value) = (assigned_grant(s)?, assigned_value(s)?);
        masker.add(value.expose());
        match file_of(&grant, value) {
            Ok(file) => d.files.push(file?),
            Err((var, value)) => {
                if value.expose().contains(&0) {
                    return Err(format!("secret {} contains a NUL byte and cannot be an environment variable; grant it as a file", s.secret_name));
                }
                d.env.push((var, Zeroizing::new(value.expose().to_vec())));
            }
        }
        d.grants.push((grant, s.version, s.secret_id.clone()));
    }
    Ok(d)
}

/// An assigned secret's grant.
fn assigned_grant(s: &AssignedSecret) -> Result<Grant, String> {
    Grant::parse(&s.grant, OnRotate::Live).map_err(|e| e.to_string())
}

/// An assigned secret's value, decoded into a zeroizing buffer only.
fn assigned_value(s: &AssignedSecret) -> Result<SecretBytes, String> {
    let mut raw = Zeroizing::new(Vec::with_capacity(s.value.0.len()));
    STANDARD
        .decode_vec(s.value.0.as_bytes(), &mut raw)
        .map_err(|_| format!("secret {} arrived damaged", s.secret_name))?;
    Ok(SecretBytes::from_zeroizing(raw))
}

/// The file a file grant writes (`Ok`), or the variable and value of an env grant (`Err`).
#[allow(
    clippy::type_complexity,
    reason = "two outcomes, one of them fallible; used twice"
)]
fn file_of(
    grant: &Grant,
    value: SecretBytes,
) -> Result<Result<SecretFile, String>, (String, SecretBytes)> {
    match &grant.delivery {
        Delivery::File {
            target,
            uid,
            gid,
            mode,
        } => Ok(TargetName::new(target)
            .map_err(|e| e.to_string())
            .map(|target| SecretFile {
                target,
                uid: *uid,
                gid: *gid,
                mode: *mode,
                value,
            })),
        Delivery::Env { var } => Err((var.clone(), value)),
    }
}

fn parse_env(vars: &[String]) -> Vec<(String, String)> {
    vars.iter()
        .filter_map(|v| v.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

fn signal_of(s: RotateSignal) -> Signal {
    match s {
        RotateSignal::Hup => Signal::SIGHUP,
        RotateSignal::Usr1 => Signal::SIGUSR1,
        RotateSignal::Usr2 => Signal::SIGUSR2,
    }
}

async fn supervise(shared: &Arc<Shared>, t: Assignment, mut ctl: mpsc::UnboundedReceiver<Control>) {
    let id = t.id.clone();
    let cfg = &shared.cfg;
    shared
        .report(&id, status(TaskState::Starting, "preparing secrets"))
        .await;
    let fail = |state: TaskState, msg: &str, err: String| {
        let mut r = status(state, msg);
        r.err = err;
        r
    };
    // Root: the agent mounts the task's ramfs. Otherwise the helper makes it inside a
    // user namespace of its own, from files the agent sends on its standard input.
    let userns = !nix::unistd::geteuid().is_root();
    let mut masker = Masker::default();
    let d = match decode(&t.secrets, &mut masker) {
        Ok(d) => d,
        Err(e) => {
            return shared
                .report(&id, fail(TaskState::Rejected, "rejected", e))
                .await
        }
    };
    let versions: BTreeMap<String, u32> = d
        .grants
        .iter()
        .map(|(_, v, sid)| (sid.clone(), *v))
        .collect();
    let mounter = Arc::clone(&cfg.mounter);
    let (base, tid) = (cfg.base_dir.clone(), id.clone());
    let (files, stdin_files) = if userns {
        (Vec::new(), Some(crate::files::encode_files(&d.files)))
    } else {
        (d.files, None)
    };
    let secrets = if userns {
        Ok(Ok(Files::Namespaced))
    } else {
        tokio::task::spawn_blocking(move || {
            TaskSecrets::create(&*mounter, &base, &tid, &files).map(Files::Mounted)
        })
        .await
    };
    let secrets = match secrets {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return shared
                .report(&id, fail(TaskState::Rejected, "rejected", e.to_string()))
                .await
        }
        Err(e) => {
            return shared
                .report(&id, fail(TaskState::Failed, "failed", e.to_string()))
                .await
        }
    };
    let mut cmd = tokio::process::Command::new(&cfg.helper);
    cmd.arg("task-exec");
    match &secrets {
        Files::Mounted(m) => {
            cmd.arg("--secrets-dir")
                .arg(m.dir())
                .arg("--hide")
                .arg(&cfg.base_dir);
        }
        Files::Namespaced => {
            cmd.arg("--userns");
        }
    }
    if let Some(u) = &t.user {
        cmd.arg("--user").arg(u);
    }
    if let Some(dir) = &t.dir {
        cmd.arg("--workdir").arg(dir);
    }
    cmd.arg("--").args(&t.command);
    cmd.env_clear();
    cmd.envs(parse_env(&t.env));
    for (k, v) in &d.env {
        use std::os::unix::ffi::OsStrExt;
        cmd.env(k, std::ffi::OsStr::from_bytes(v));
    }
    cmd.stdin(if userns {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    })
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let child = cmd.spawn();
    drop(cmd); // the command held env values
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            remove_secrets(cfg, secrets).await;
            return shared
                .report(
                    &id,
                    fail(
                        TaskState::Failed,
                        "failed",
                        format!("cannot start the exec helper {}: {e}", cfg.helper.display()),
                    ),
                )
                .await;
        }
    };
    if let (Some(mut stdin), Some(msg)) = (child.stdin.take(), stdin_files) {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(&msg).await;
        // Dropped: the helper reads to the end, then the workload finds end of file.
    }
    let pid = child.id().unwrap_or(0);
    let proc = tokio::task::spawn_blocking(move || TaskProcess::track(pid))
        .await
        .unwrap_or(TaskProcess { pid, mnt_ns: None });
    shared
        .procs
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(
            id.clone(),
            ProcEntry {
                pid,
                mnt_ns: proc.mnt_ns.clone(),
            },
        );
    shared.save_procs();
    let masker = Arc::new(Mutex::new(masker));
    let last_err = Arc::new(Mutex::new(String::new()));
    let (log_tx, log_rx) = mpsc::unbounded_channel::<LogLine>();
    let shipper = tokio::spawn(ship_logs(Arc::clone(shared), id.clone(), log_rx));
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(read_output(
            out,
            "stdout",
            Arc::clone(&masker),
            log_tx.clone(),
            None,
        )));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(read_output(
            err,
            "stderr",
            Arc::clone(&masker),
            log_tx.clone(),
            Some(Arc::clone(&last_err)),
        )));
    }
    drop(log_tx);
    let mut running = status(TaskState::Running, "started");
    running.pid = Some(pid);
    running.versions = versions;
    shared.report(&id, running).await;

    let grace = Duration::from_millis(t.stop_grace_ms);
    let mut stopped = false;
    let mut agent_exit = false;
    let mut grants = d.grants;
    let exit = loop {
        tokio::select! {
            s = child.wait() => break s.ok(),
            c = ctl.recv() => match c {
                Some(Control::Secrets(new)) => {
                    rotate(shared, &id, &secrets, &proc, &mut grants, &masker, &new).await;
                }
                Some(Control::AgentExit) => {
                    agent_exit = true;
                    break stop_tree(&proc, &mut child, grace).await;
                }
                Some(Control::Stop) | None => {
                    stopped = true;
                    break stop_tree(&proc, &mut child, grace).await;
                }
            }
        }
    };
    // No process of the task outlives it (a daemonized child stays in its namespace).
    if !stopped && !agent_exit {
        let _ = stop_tree(&proc, &mut child, Duration::from_millis(200)).await;
    }
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), shipper).await;
    remove_secrets(cfg, secrets).await;
    shared
        .procs
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&id);
    shared.save_procs();
    let code = exit.and_then(|s| s.code());
    let signal = exit.and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s));
    let mut r = if stopped {
        status(TaskState::Shutdown, "stopped")
    } else if agent_exit {
        fail(
            TaskState::Failed,
            "failed",
            "the node's agent stopped (coffer was stopped); the task was stopped with it".into(),
        )
    } else if code == Some(0) {
        status(TaskState::Complete, "finished")
    } else {
        let last = last_err
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let err = match (code, signal) {
            (Some(127), _) if last.starts_with("coffer task-exec: ") => {
                last.trim_start_matches("coffer task-exec: ").to_owned()
            }
            (Some(c), _) => format!("task: non-zero exit ({c})"),
            (None, Some(s)) => format!("task: killed by signal {s}"),
            _ => "task: ended".to_owned(),
        };
        fail(TaskState::Failed, "failed", err)
    };
    r.exit_code = code;
    shared.report(&id, r).await;
}

/// Where a task's files are.
enum Files {
    /// The agent's own mount (root).
    Mounted(TaskSecrets),
    /// Inside the task's user and mount namespaces; gone with them.
    Namespaced,
}

async fn remove_secrets(cfg: &AgentConfig, secrets: Files) {
    let Files::Mounted(secrets) = secrets else {
        return;
    };
    let mounter = Arc::clone(&cfg.mounter);
    let r = tokio::task::spawn_blocking(move || secrets.remove(&*mounter)).await;
    if let Ok(Err(e)) = r {
        tracing::error!(error = %e, "could not remove a task's secret mount");
    }
}

/// SIGTERM to the task's session, SIGKILL after `grace`, then to anything left in its
/// mount namespace.
async fn stop_tree(
    proc: &TaskProcess,
    child: &mut tokio::process::Child,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    let group = Pid::from_raw(-i32::try_from(proc.pid).unwrap_or(i32::MAX));
    let _ = kill(group, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    // The leader first, without polling; the namespace (a scan of every /proc entry) only
    // once it is gone, for a child that left the session.
    let mut exit = tokio::time::timeout(grace, child.wait())
        .await
        .ok()
        .and_then(Result::ok);
    while exit.is_some() && tokio::time::Instant::now() < deadline {
        if proc.members().is_empty() {
            return exit;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = kill(group, Signal::SIGKILL);
    for _ in 0..50 {
        for pid in proc.members() {
            if let Ok(p) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
        if exit.is_none() {
            exit = child.try_wait().ok().flatten();
        }
        if exit.is_some() && proc.members().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if exit.is_none() {
        exit = child.wait().await.ok();
    }
    exit
}

/// Applies a rotation: files of `live` and `signal:*` grants are replaced in place
/// (atomically), then signals are sent. `restart` grants are left alone: the manager
/// replaces the task.
async fn rotate(
    shared: &Arc<Shared>,
    id: &str,
    secrets: &Files,
    proc: &TaskProcess,
    grants: &mut [(Grant, u32, String)],
    masker: &Arc<Mutex<Masker>>,
    new: &[AssignedSecret],
) {
    let mut signals = Vec::new();
    let mut delivered = BTreeMap::new();
    for s in new {
        let Ok(grant) = assigned_grant(s) else {
            continue;
        };
        let Some(slot) = grants
            .iter_mut()
            .find(|(g, _, sid)| *sid == s.secret_id && g.delivery == grant.delivery)
        else {
            continue;
        };
        if slot.1 == s.version || grant.on_rotate == OnRotate::Restart {
            continue;
        }
        let Ok(value) = assigned_value(s) else {
            continue;
        };
        masker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(value.expose());
        if let Ok(Ok(file)) = file_of(&grant, value) {
            let written = match secrets {
                Files::Mounted(m) => m.update(&file).map_err(|e| e.to_string()),
                Files::Namespaced => {
                    // Through the task's root: its own mount namespace, owned by our user.
                    let dir = PathBuf::from(format!(
                        "/proc/{}/root{}",
                        proc.pid,
                        crate::exec::USERNS_STAGING
                    ));
                    let mut file = file;
                    file.uid = nix::unistd::geteuid().as_raw();
                    file.gid = nix::unistd::getegid().as_raw();
                    crate::files::write_secret(&dir, &file)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            };
            if let Err(e) = written {
                tracing::error!(task = id, error = %e, "rotation could not replace a secret file");
                continue;
            }
        } else {
            // An environment cannot change under a running process (or the target is bad).
            continue;
        }
        slot.1 = s.version;
        delivered.insert(s.secret_id.clone(), s.version);
        if let OnRotate::Signal(sig) = grant.on_rotate {
            signals.push(signal_of(sig));
        }
    }
    for sig in signals {
        if let Ok(p) = i32::try_from(proc.pid) {
            let _ = kill(Pid::from_raw(p), sig);
        }
    }
    if !delivered.is_empty() {
        let mut r = status(TaskState::Running, "secrets rotated");
        r.pid = Some(proc.pid);
        r.versions = delivered;
        shared.report(id, r).await;
    }
}

async fn read_output(
    mut r: impl tokio::io::AsyncRead + Unpin,
    stream: &'static str,
    masker: Arc<Mutex<Masker>>,
    tx: mpsc::UnboundedSender<LogLine>,
    last: Option<Arc<Mutex<String>>>,
) {
    let mut lines = LineBuffer::default();
    let mut chunk = Zeroizing::new(vec![0u8; 16 * 1024]);
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for l in lines.push(&chunk[..n]) {
            emit(&masker, &tx, stream, &l, last.as_ref());
        }
    }
    if let Some(l) = lines.finish() {
        emit(&masker, &tx, stream, &l, last.as_ref());
    }
}

fn emit(
    masker: &Mutex<Masker>,
    tx: &mpsc::UnboundedSender<LogLine>,
    stream: &str,
    line: &[u8],
    last: Option<&Arc<Mutex<String>>>,
) {
    let masked = masker
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .mask(line);
    if let Some(l) = last {
        l.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone_from(&masked);
    }
    let _ = tx.send(LogLine {
        stream: stream.to_owned(),
        time: now(),
        line: masked,
    });
}

/// Sends a task's masked lines to the manager in batches.
async fn ship_logs(shared: Arc<Shared>, task: String, mut rx: mpsc::UnboundedReceiver<LogLine>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(l) => batch.push(l),
                Err(_) => break,
            }
        }
        let path = format!("/coffer/node/{}/tasks/{task}/logs", shared.node_id());
        let body = serde_json::to_vec(&batch).unwrap_or_default();
        if let Err(e) = shared.request(Method::POST, &path, body).await {
            tracing::debug!(task, error = %e, "log lines lost");
        }
    }
}
