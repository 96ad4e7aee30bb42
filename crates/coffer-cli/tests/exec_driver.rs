//! The exec driver's helper, for real (needs root): `coffer task-exec` runs a workload in a
//! private mount namespace where /run/secrets is its task's ramfs, read-only, the agent's
//! directory of all tasks is hidden, the user is the grant's, nothing secret is in the
//! environment, and stopping kills the whole tree, including a child that started its own
//! session. Without root it says SKIP, unless COFFER_REQUIRE_ROOT=1.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module,
    reason = "integration tests: a panic is the failure report"
)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use coffer_agent::exec::TaskProcess;
use coffer_agent::{LinuxMounter, SecretFile, TargetName, TaskSecrets};
use coffer_crypto::SecretBytes;

fn root() -> bool {
    coffer_test_support::require_root("the exec driver is not tested")
}

/// Stops the task's whole tree when the test ends, passed or failed.
struct Running(TaskProcess, std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let child = &mut self.1;
        self.0.stop(Duration::from_millis(200), || {
            child.try_wait().map(|s| s.is_some()).unwrap_or(true)
        });
    }
}

fn file(t: &str, uid: u32, mode: u32, v: &[u8]) -> SecretFile {
    SecretFile {
        target: TargetName::new(t).unwrap(),
        uid,
        gid: uid,
        mode,
        value: SecretBytes::new(v.to_vec()),
    }
}

#[test]
fn workload_sees_only_its_secrets_and_dies_whole() {
    if !root() {
        return;
    }
    let canary = format!("CANARY-exec-{}", std::process::id());
    let base = tempfile::tempdir().unwrap();
    let m = LinuxMounter;
    let secrets = TaskSecrets::create(
        &m,
        base.path(),
        "task1",
        &[file("db_password", 1000, 0o400, canary.as_bytes())],
    )
    .unwrap();
    let other = TaskSecrets::create(
        &m,
        base.path(),
        "task2",
        &[file("other", 0, 0o444, b"not yours")],
    )
    .unwrap();
    let script = format!(
        "cat /run/secrets/db_password; echo; id -u; \
         if echo x > /run/secrets/new 2>/dev/null; then echo WRITABLE; else echo readonly; fi; \
         ls -A {base} 2>/dev/null | wc -l; \
         grep -q '{canary}' /proc/self/environ && echo ENV-LEAK || echo env-clean; \
         echo \"$GREETING\"; [ -z \"$HOME$RUST_BACKTRACE\" ] && echo nothing-inherited; \
         setsid sleep 1000 & sleep 1000 & echo ready; wait",
        base = base.path().display()
    );
    let mut child = Command::new(common::BIN)
        .env_clear()
        .env("GREETING", "hi")
        .args(["task-exec", "--secrets-dir"])
        .arg(secrets.dir())
        .arg("--hide")
        .arg(base.path())
        .args(["--user", "1000:1000", "--", "/bin/sh", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut running = Running(TaskProcess::track(child.id()), child);
    let tracked = running.0.clone();
    assert!(
        tracked.mnt_ns.is_some(),
        "the workload left the agent's mount namespace"
    );
    let mut out = BufReader::new(stdout);
    let mut lines = Vec::new();
    loop {
        let mut l = String::new();
        assert!(
            out.read_line(&mut l).unwrap() > 0,
            "workload ended early: {lines:?}"
        );
        if l.trim() == "ready" {
            break;
        }
        lines.push(l.trim().to_owned());
    }
    assert_eq!(
        lines,
        [
            canary.as_str(),
            "1000",
            "readonly",
            "0",
            "env-clean",
            "hi",
            "nothing-inherited"
        ],
        "as seen by the workload"
    );
    // The host sees no /run/secrets mount of the task, and no file of it.
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host_mounts
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/run/secrets")),
        "bind is private"
    );
    assert!(!std::path::Path::new("/run/secrets/db_password").exists());
    let members = tracked.members();
    assert!(members.len() >= 3, "sh and two sleeps: {members:?}");

    let started = std::time::Instant::now();
    let child = &mut running.1;
    tracked.stop(Duration::from_millis(500), || {
        child.try_wait().unwrap().is_some()
    });
    assert!(
        tracked.members().is_empty(),
        "no process of the task survives, not even the setsid one"
    );
    assert!(child.try_wait().unwrap().is_some());
    drop(running);
    assert!(started.elapsed() < Duration::from_secs(5));
    secrets.remove(&m).unwrap();
    other.remove(&m).unwrap();
}

#[test]
fn root_workload_cannot_reach_other_tasks_mounts() {
    if !root() {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let m = LinuxMounter;
    let mine =
        TaskSecrets::create(&m, base.path(), "mine", &[file("a", 0, 0o400, b"mine")]).unwrap();
    let theirs =
        TaskSecrets::create(&m, base.path(), "theirs", &[file("b", 0, 0o400, b"THEIRS")]).unwrap();
    let script = format!(
        "cat /run/secrets/a; echo; echo \"LS:$(ls -A {})\"; cat {}/b 2>/dev/null || echo unreachable",
        base.path().display(),
        theirs.dir().display()
    );
    let out = Command::new(common::BIN)
        .args(["task-exec", "--secrets-dir"])
        .arg(mine.dir())
        .arg("--hide")
        .arg(base.path())
        .args(["--", "/bin/sh", "-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text, "mine\nLS:\nunreachable\n",
        "another task's secrets are hidden even from root"
    );
    mine.remove(&m).unwrap();
    theirs.remove(&m).unwrap();
}

#[test]
fn missing_command_fails_clearly() {
    if !root() {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let m = LinuxMounter;
    let t = TaskSecrets::create(&m, base.path(), "t", &[]).unwrap();
    let out = Command::new(common::BIN)
        .args(["task-exec", "--secrets-dir"])
        .arg(t.dir())
        .arg("--hide")
        .arg(base.path())
        .args(["--", "/no/such/program"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot run \"/no/such/program\"") && err.lines().count() == 1,
        "{err}"
    );
    t.remove(&m).unwrap();
}
