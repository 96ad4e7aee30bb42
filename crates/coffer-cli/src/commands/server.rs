//! `coffer server` and `coffer dev`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use coffer_manager::{Config, Manager, StoreSpec};
use tokio::signal::unix::{signal, SignalKind};

use crate::paths;

#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// Data directory: keyring, SQLite store, lock (default /var/lib/coffer for root,
    /// else ~/.local/share/coffer).
    #[arg(long, env = "COFFER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// API socket (default /run/coffer/coffer.sock for root, else under $XDG_RUNTIME_DIR).
    #[arg(long, env = "COFFER_SOCKET")]
    socket: Option<PathBuf>,
    /// Seal the keyring under an unlock key, printed once; `coffer unlock` after each restart.
    #[arg(long)]
    autolock: bool,
    /// Store: sqlite:PATH (default <data-dir>/state.db) or etcd://HOST:PORT[,HOST:PORT...][/namespace].
    #[arg(long, value_parser = StoreSpec::parse)]
    store: Option<StoreSpec>,
    /// Value versions kept per secret; older ones are deleted on rotation.
    #[arg(long, default_value_t = coffer_core::limits::DEFAULT_KEEP_VERSIONS, value_parser = clap::value_parser!(u32).range(1..=1000))]
    keep_versions: u32,
    /// Where the local agent mounts each task's memory-only secrets directory (default
    /// /run/coffer/tasks for root, else under $XDG_RUNTIME_DIR). Give each manager its own.
    #[arg(long, env = "COFFER_AGENT_DIR")]
    agent_dir: Option<PathBuf>,
    /// Run no local agent: this manager runs no tasks itself.
    #[arg(long)]
    no_agent: bool,
}

pub(crate) async fn run(args: ServerArgs, dev: bool) -> Result<ExitCode> {
    let default_level = "info";
    let filter = tracing_subscriber::EnvFilter::try_from_env("COFFER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();

    let data_dir = args.data_dir.unwrap_or_else(paths::default_data_dir);
    let socket = args.socket.unwrap_or_else(paths::default_socket);
    let config = Config {
        data_dir: data_dir.clone(),
        store: args.store,
        autolock: args.autolock,
        keep_versions: args.keep_versions,
    };
    let startup = Manager::open(&config).await?;
    let listener = coffer_manager::api::bind(&socket).await?;
    let m = startup.manager;
    tracing::info!(data_dir = %data_dir.display(), store = %m.store_description, socket = %socket.display(), secrets = m.secret_count(), "manager started");
    if let Some(key) = &startup.new_unlock_key {
        println!("Autolock is on. The unlock key, shown this once (coffer unlock-key shows it again while unlocked):\n\n    {}\n\nKeep it somewhere safe: after a restart, coffer serves no secret until `coffer unlock` is given this key.", key.to_text().as_str());
    }
    if startup.locked {
        println!("The manager is locked (autolock). Run `coffer unlock` with the unlock key.");
    }
    if dev {
        let sock = socket.display();
        println!(
            "coffer dev: manager running\n  data dir: {}\n  store:    {}\n  socket:   {sock}\n\n\
             Clients find this socket by themselves; elsewhere point them at it:\n  \
             export COFFER_HOST=unix://{sock}\n  \
             export DOCKER_HOST=unix://{sock}   # `docker secret ...` works too\n\n\
             Try:  printf 's3cret' | coffer secret create db_password -\n      \
             coffer run --secret db_password -- cat /run/secrets/db_password\n\
             Ctrl-C stops it (and the tasks it runs).",
            data_dir.display(),
            m.store_description
        );
    }
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // The node listener (agents) and the scheduler.
    let node_socket = data_dir.join("node.sock");
    let node_listener = coffer_manager::api::bind(&node_socket).await?;
    let node_server = tokio::spawn(coffer_manager::api::node::serve(
        Arc::clone(&m),
        node_listener,
        stopped(stop_rx.clone()),
    ));
    tokio::spawn(coffer_manager::scheduler::run(Arc::clone(&m)));
    let (agent_stop_tx, agent_stop_rx) = tokio::sync::watch::channel(false);
    let agent = if args.no_agent {
        None
    } else {
        let cfg = coffer_agent::agent::AgentConfig {
            node_socket: node_socket.clone(),
            token: coffer_manager::api::node::node_token(&m),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "localhost".into()),
            base_dir: args.agent_dir.unwrap_or_else(paths::default_agent_dir),
            state_file: data_dir.join("agent-tasks.json"),
            helper: std::env::current_exe()
                .context("cannot find the coffer binary for the exec driver")?,
            mounter: Arc::new(coffer_agent::LinuxMounter),
        };
        Some(tokio::spawn(coffer_agent::agent::run(
            cfg,
            stopped(agent_stop_rx),
        )))
    };
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping");
        // Tasks stop first (their reports still reach the manager), then the listeners.
        let _ = agent_stop_tx.send(true);
        if let Some(a) = agent {
            let _ = a.await;
        }
        let _ = stop_tx.send(true);
    };
    coffer_manager::api::serve(Arc::clone(&m), listener, shutdown).await;
    let _ = node_server.await;
    let _ = std::fs::remove_file(&node_socket);
    m.flush_audit().await;
    let _ = std::fs::remove_file(&socket);
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
