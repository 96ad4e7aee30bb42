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
    /// The task's secret directory, shown as /run/secrets (root driver).
    #[arg(long, required_unless_present = "userns")]
    secrets_dir: Option<PathBuf>,
    /// The agent's directory of all tasks' mounts, hidden from the workload (root driver).
    #[arg(long, required_unless_present = "userns")]
    hide: Option<PathBuf>,
    /// Without root: a user namespace; the files arrive as JSON on standard input.
    #[arg(long)]
    userns: bool,
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
    let entered = match (&a.secrets_dir, &a.hide, a.userns) {
        (_, _, true) => {
            let (uid, gid) = user.unwrap_or((0, 0));
            match read_files() {
                Ok(mut files) => coffer_agent::exec::enter_user_namespace(uid, gid, &mut files)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            }
        }
        (Some(dir), Some(hide), false) => {
            coffer_agent::exec::enter_task_namespace(dir, hide).map_err(|e| e.to_string())
        }
        _ => Err("give --secrets-dir and --hide, or --userns".into()),
    };
    if let Err(e) = entered {
        return fail(e);
    }
    if let Some(dir) = &a.workdir {
        if let Err(e) = std::env::set_current_dir(dir) {
            return fail(format!(
                "cannot enter working directory {}: {e}",
                dir.display()
            ));
        }
    }
    if let Some((uid, gid)) = user.filter(|_| !a.userns) {
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

/// Reads the task's files from standard input (until the agent closes it; the workload
/// then finds its standard input at end of file).
fn read_files() -> Result<Vec<coffer_agent::SecretFile>, String> {
    use std::io::Read;
    let mut buf = zeroize::Zeroizing::new(Vec::new());
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read the task's secrets: {e}"))?;
    coffer_agent::files::decode_files(&buf)
}
