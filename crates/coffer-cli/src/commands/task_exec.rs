//! `coffer task-exec` (hidden): the exec driver's helper. Enters the task's private mount
//! namespace, drops to the task's user, and replaces itself with the workload. Runs before
//! any async runtime exists: namespace changes apply to the calling thread, which must be
//! the one that execs.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::Args;

/// Docker's default PATH for a workload that sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Args)]
pub(crate) struct TaskExecArgs {
    /// The task's secret directory, shown as /run/secrets.
    #[arg(long)]
    secrets_dir: PathBuf,
    /// The agent's directory of all tasks' mounts, hidden from the workload.
    #[arg(long)]
    hide: PathBuf,
    /// UID[:GID] to run as.
    #[arg(long)]
    user: Option<String>,
    /// Working directory.
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn parse_user(u: &str) -> Result<(u32, u32), String> {
    let (uid, gid) = u.split_once(':').unwrap_or((u, u));
    let n = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("--user {u:?}: use numeric UID[:GID]"))
    };
    Ok((n(uid)?, n(gid)?))
}

pub(crate) fn run(a: TaskExecArgs) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("coffer task-exec: {msg}");
        ExitCode::from(127)
    };
    let user = match a.user.as_deref().map(parse_user).transpose() {
        Ok(u) => u,
        Err(e) => return fail(e),
    };
    if let Err(e) = coffer_agent::exec::enter_task_namespace(&a.secrets_dir, &a.hide) {
        return fail(e.to_string());
    }
    if let Some(dir) = &a.workdir {
        if let Err(e) = std::env::set_current_dir(dir) {
            return fail(format!(
                "cannot enter working directory {}: {e}",
                dir.display()
            ));
        }
    }
    if let Some((uid, gid)) = user {
        if let Err(e) = coffer_agent::exec::become_user(uid, gid) {
            return fail(e.to_string());
        }
    }
    let Some((program, args)) = a.command.split_first() else {
        return fail("no command given".into());
    };

    // The workload's environment is this helper's: the agent starts the helper with
    // exactly the task's environment (env_clear, then the spec's variables), never through
    // the command line: /proc/<pid>/cmdline is readable by every user, environ only by the
    // same uid, and env grants carry secret values.
    let mut cmd = Command::new(program);
    cmd.args(args);
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", DEFAULT_PATH);
    }
    let err = cmd.exec();
    fail(format!("cannot run {program:?}: {err}"))
}
