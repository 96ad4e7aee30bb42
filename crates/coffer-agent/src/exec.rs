//! The exec driver's process side: a workload runs in a private mount namespace in which
//! `/run/secrets` is its task's secret directory, read-only, and the agent's directory of
//! all tasks' mounts is hidden.
//!
//! The `coffer task-exec` helper calls [`enter_task_namespace`] and [`become_user`], then
//! replaces itself with the workload; the agent keeps a [`TaskProcess`] and stops the whole
//! tree with [`TaskProcess::stop`]: SIGTERM to the session, SIGKILL after the grace period,
//! then SIGKILL to every process still in the task's mount namespace (which catches a
//! child that started its own session).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};

use crate::files::SecretFile;
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{setgid, setgroups, setsid, setuid, Gid, Pid, Uid};

/// Where a workload finds its secrets.
pub const SECRETS_MOUNT: &str = "/run/secrets";

/// Setting up a task's namespace failed. Nothing runs when it does: the helper exits.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// The error.
        source: nix::Error,
    },
    /// The task cannot run as asked; the message says why.
    #[error("{0}")]
    Refused(String),
    /// A directory could not be made.
    #[error("cannot create {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> ExecError {
    let what = what.into();
    move |source| ExecError::Sys { what, source }
}

/// In the calling process: a private mount namespace where `secrets_dir` appears read-only
/// at `/run/secrets` and `hide` (the agent's base directory) is covered by an empty
/// read-only tmpfs; then a new session, so the task's processes form one group.
pub fn enter_task_namespace(secrets_dir: &Path, hide: &Path) -> Result<(), ExecError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(sys(
        "cannot create a private mount namespace (needs CAP_SYS_ADMIN)",
    ))?;
    make_mounts_private()?;
    let target = Path::new(SECRETS_MOUNT);
    std::fs::create_dir_all(target).map_err(|source| ExecError::Dir {
        path: target.to_owned(),
        source,
    })?;
    bind_read_only(secrets_dir, target)?;
    if !target.starts_with(hide) {
        mount(
            Some("coffer-hidden"),
            hide,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | ro_data_flags(),
            Some("size=4k,mode=0500"),
        )
        .map_err(sys(format!("cannot hide {}", hide.display())))?;
    }
    setsid().map_err(sys("cannot start a session"))?;
    Ok(())
}

/// Stops mount events from propagating between the new mount namespace and the host's.
fn make_mounts_private() -> Result<(), ExecError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("cannot make mounts private"))
}

/// Binds `source` at `target`, then makes the bind read-only, nosuid, nodev, noexec.
fn bind_read_only(source: &Path, target: &Path) -> Result<(), ExecError> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys(format!(
        "cannot bind {} at {}",
        source.display(),
        target.display()
    )))?;
    let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | ro_data_flags();
    mount(None::<&str>, target, None::<&str>, ro, None::<&str>)
        .map_err(sys(format!("cannot make {} read-only", target.display())))
}

fn ro_data_flags() -> MsFlags {
    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
}

/// Drops to `uid:gid` with no supplementary groups (root keeps its identity if asked for 0).
pub fn become_user(uid: u32, gid: u32) -> Result<(), ExecError> {
    setgroups(&[]).map_err(sys("cannot clear supplementary groups"))?;
    setgid(Gid::from_raw(gid)).map_err(sys(format!("cannot switch to gid {gid}")))?;
    setuid(Uid::from_raw(uid)).map_err(sys(format!("cannot switch to uid {uid}")))?;
    Ok(())
}

/// A running task's process tree, as the agent tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskProcess {
    /// The session leader (the workload itself once the helper has exec'd).
    pub pid: u32,
    /// The task's mount namespace (`/proc/<pid>/ns/mnt` link text), once known.
    pub mnt_ns: Option<String>,
}

fn ns_of(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|p| p.display().to_string())
}

impl TaskProcess {
    /// Tracks `pid`, waiting (up to 2 s) until it has left the agent's mount namespace.
    pub fn track(pid: u32) -> Self {
        let own = ns_of(std::process::id());
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let ns = ns_of(pid);
            if ns.is_some() && ns != own {
                return Self { pid, mnt_ns: ns };
            }
            if ns.is_none() || Instant::now() > deadline {
                return Self { pid, mnt_ns: None };
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Every process in the task's mount namespace.
    pub fn members(&self) -> Vec<u32> {
        let Some(ns) = &self.mnt_ns else {
            return Vec::new();
        };
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| ns_of(*pid).as_ref() == Some(ns))
            .collect()
    }

    /// Stops the whole tree: SIGTERM to the session, SIGKILL to what is left after `grace`,
    /// including processes that left the session but not the namespace. `reap` is asked
    /// whether the leader has exited (the caller owns its `Child`).
    pub fn stop(&self, grace: Duration, mut reap: impl FnMut() -> bool) {
        let group = Pid::from_raw(-i32::try_from(self.pid).unwrap_or(i32::MAX));
        let _ = kill(group, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            let leader_gone = reap();
            if leader_gone && self.members().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = kill(group, Signal::SIGKILL);
        for _ in 0..3 {
            for pid in self.members() {
                if let Ok(p) = i32::try_from(pid) {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
            }
            reap();
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Where the secrets filesystem is mounted inside a user-namespace task (bound read-only at
/// `/run/secrets`); the agent rotates files here through `/proc/<pid>/root`.
pub const USERNS_STAGING: &str = "/run/.coffer-secrets";

/// The exec driver without root: in the calling process, a new user namespace (the task's
/// `uid:gid` inside mapped to the caller's ids outside, nothing else mapped) and mount
/// namespace; a private tmpfs on `/run`; the task's files on a size-capped tmpfs bound
/// read-only at `/run/secrets`; a new session.
///
/// Only the task's own ids exist in the namespace: a file grant with another owner is
/// refused (0, Docker's default, means the task's user).
pub fn enter_user_namespace(uid: u32, gid: u32, files: &mut [SecretFile]) -> Result<(), ExecError> {
    use nix::unistd::{getegid, geteuid};
    for f in files.iter_mut() {
        if f.uid == 0 {
            f.uid = uid;
        }
        if f.gid == 0 {
            f.gid = gid;
        }
        if f.uid != uid || f.gid != gid {
            return Err(ExecError::Refused(format!(
                "grant {} asks for owner {}:{}, but without root a task has only its own user ({uid}:{gid}); run coffer as root, or make --user match",
                f.target.as_str(),
                f.uid,
                f.gid
            )));
        }
    }
    let (outer_uid, outer_gid) = (geteuid().as_raw(), getegid().as_raw());
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS).map_err(sys(
        "cannot create a user namespace (needed without root; unprivileged user namespaces may be disabled: see sysctl user.max_user_namespaces), and cannot use the root driver either; run coffer as root",
    ))?;
    let write = |path: &str, text: String| {
        // A /proc control file, written in place (never a secret).
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
            .map_err(|source| ExecError::Dir {
                path: PathBuf::from(path),
                source,
            })
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("{uid} {outer_uid} 1"))?;
    write("/proc/self/gid_map", format!("{gid} {outer_gid} 1"))?;
    make_mounts_private()?;
    mount(
        Some("coffer-run"),
        "/run",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("size=1m,mode=0755"),
    )
    .map_err(sys("cannot mount a private /run"))?;
    let staging = Path::new(USERNS_STAGING);
    let target = Path::new(SECRETS_MOUNT);
    for d in [staging, target] {
        std::fs::create_dir(d).map_err(|source| ExecError::Dir {
            path: d.to_owned(),
            source,
        })?;
    }
    // Always a size-capped tmpfs here, never ramfs: the workload owns this filesystem (its
    // uid is the only one), and an unbounded ramfs would let it pin the host's memory.
    let size: u64 =
        files.iter().map(|f| f.value.len() as u64).sum::<u64>() + crate::task::TMPFS_SLACK;
    mount(
        Some("coffer-secrets"),
        staging,
        Some("tmpfs"),
        ro_data_flags(),
        Some(format!("mode=0755,size={size}").as_str()),
    )
    .map_err(sys("cannot mount memory-only storage for /run/secrets"))?;
    for f in files.iter() {
        crate::files::write_secret(staging, f).map_err(|e| ExecError::Refused(e.to_string()))?;
    }
    bind_read_only(staging, target)?;
    setsid().map_err(sys("cannot start a session"))?;
    Ok(())
}
