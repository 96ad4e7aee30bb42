//! `coffer`: one binary, in the manner of `vault` or `etcd`. `coffer server` runs a manager,
//! `coffer dev` runs one with conveniences for trying it out, and every other subcommand is
//! a client of a manager (`COFFER_HOST`, like `DOCKER_HOST`).
//!
//! # Layout
//! - `commands/`: one module per command group.
//! - `client`: HTTP over the unix socket. `paths`: default locations. `output`: tables.
//!
//! # Current limitations
//! - Clients reach a manager over its unix socket only.

mod client;
mod commands;
mod output;
mod paths;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// coffer keeps the secrets of containerized services and hands each only to the workloads
/// granted it.
#[derive(Debug, Parser)]
#[command(name = "coffer", version, about, propagate_version = true)]
struct Cli {
    /// The manager to talk to: unix:///path/to/coffer.sock (default: the local manager).
    #[arg(long, global = true, env = "COFFER_HOST")]
    host: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a manager in the foreground with dev conveniences (the way to start).
    Dev(commands::server::ServerArgs),
    /// Run a manager in the foreground.
    Server(commands::server::ServerArgs),
    /// Manage secrets.
    #[command(subcommand)]
    Secret(commands::secret::SecretCommand),
    /// Unlock a manager started with --autolock (key from a prompt or standard input).
    Unlock,
    /// Show or rotate the unlock key of an autolocked manager.
    UnlockKey(commands::keys::UnlockKeyArgs),
    /// Manage the key-encryption key.
    #[command(subcommand)]
    Key(commands::keys::KeyCommand),
    /// Manage services: tasks that receive their granted secrets under /run/secrets.
    #[command(subcommand)]
    Service(commands::service::ServiceCommand),
    /// Run one command with secrets under /run/secrets (no cluster needed), passing its
    /// output (masked) and exit code through.
    Run(commands::run::RunArgs),
    /// Read and verify the audit trail.
    #[command(subcommand)]
    Audit(commands::audit::AuditCommand),
    /// Internal: the exec driver's helper (enters a task's namespace, then runs it).
    #[command(hide = true)]
    TaskExec(commands::task_exec::TaskExecArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            // 64 (EX_USAGE) for a usage error; --help and --version succeed.
            return if usage {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // The manager serves many connections; a client command makes one request, and a
    // single-threaded runtime starts faster.
    if let Command::TaskExec(a) = cli.command {
        return commands::task_exec::run(a);
    }
    let mut builder = match cli.command {
        Command::Dev(_) | Command::Server(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coffer: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text the message before
/// it already includes (thiserror's `{0}` messages repeat their source).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out.replace('\n', " ")
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let host = cli.host.as_deref();
    match cli.command {
        Command::Dev(a) => commands::server::run(a, true).await,
        Command::Server(a) => commands::server::run(a, false).await,
        Command::Secret(c) => commands::secret::run(host, c).await,
        Command::Unlock => commands::keys::unlock(host).await,
        Command::UnlockKey(a) => commands::keys::unlock_key(host, a).await,
        Command::Key(c) => commands::keys::key(host, c).await,
        Command::Audit(c) => commands::audit::run(host, c).await,
        Command::Service(c) => commands::service::run(host, c).await,
        Command::Run(a) => commands::run::run(host, a).await,
        Command::TaskExec(_) => unreachable!("task-exec runs before the runtime starts"),
    }
}
