//! Real mounts (needs root): a task's secrets on ramfs with noexec,nosuid,nodev and mode
//! 0700, files with the grant's owner and mode (the same secret twice with two modes gives
//! two files with their own modes), atomic replacement, unmount on removal, and the sweep
//! after a restart. Without root it says SKIP, unless COFFER_REQUIRE_ROOT=1.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module,
    reason = "integration tests: a panic is the failure report"
)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use coffer_agent::{LinuxMounter, Mounter, SecretFile, TargetName, TaskSecrets};
use coffer_crypto::SecretBytes;

fn root() -> bool {
    coffer_test_support::require_root("real mounts are not tested")
}

fn mount_line(dir: &Path) -> Option<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap()))
        .map(str::to_owned)
}

fn file(target: &str, uid: u32, gid: u32, mode: u32, v: &[u8]) -> SecretFile {
    SecretFile {
        target: TargetName::new(target).unwrap(),
        uid,
        gid,
        mode,
        value: SecretBytes::new(v.to_vec()),
    }
}

#[test]
fn task_secrets_on_ramfs() {
    if !root() {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let m = LinuxMounter;
    let files = [
        file("db_password", 1000, 1000, 0o400, b"pw-1"),
        file("db_password_ro", 0, 2000, 0o440, b"pw-1"),
    ];
    let t = TaskSecrets::create(&m, base.path(), "task-a", &files).unwrap();
    let line = mount_line(t.mount_point()).expect("mounted");
    assert!(line.contains(" - ramfs "), "{line}");
    for opt in ["noexec", "nosuid", "nodev"] {
        assert!(
            line.split(' ').nth(5).unwrap().contains(opt),
            "{opt} missing: {line}"
        );
    }
    assert!(line.contains("mode=700"), "{line}");
    assert_eq!(
        fs::metadata(t.mount_point()).unwrap().permissions().mode() & 0o7777,
        0o700
    );
    assert_eq!(
        fs::metadata(t.dir()).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    let a = fs::metadata(t.dir().join("db_password")).unwrap();

    assert_eq!((a.uid(), a.gid(), a.mode() & 0o7777), (1000, 1000, 0o400));
    let b = fs::metadata(t.dir().join("db_password_ro")).unwrap();
    assert_eq!(
        (b.uid(), b.gid(), b.mode() & 0o7777),
        (0, 2000, 0o440),
        "each grant keeps its own mode"
    );
    assert_eq!(fs::read(t.dir().join("db_password")).unwrap(), b"pw-1");

    // Live rotation: a reader in a tight loop never sees a partial, empty or missing file.
    let path = t.dir().join("db_password");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let v = fs::read(&path).expect("the file is always there");
                assert!(v == b"pw-1" || v == b"pw-2-longer", "partial read: {v:?}");
                reads += 1;
            }
            reads
        })
    };
    for i in 0..200 {
        let v: &[u8] = if i % 2 == 0 { b"pw-2-longer" } else { b"pw-1" };
        t.update(&file("db_password", 1000, 1000, 0o400, v))
            .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    assert_eq!(
        fs::read_dir(t.dir()).unwrap().count(),
        2,
        "no temporary files left"
    );

    let dir = t.mount_point().to_owned();
    t.remove(&m).unwrap();
    assert!(mount_line(&dir).is_none(), "unmounted");
    assert!(!dir.exists());
}

#[test]
fn sweep_after_restart_removes_stale_mounts() {
    if !root() {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let m = LinuxMounter;
    // A previous agent died without cleaning up: its mounts are still there.
    for t in ["gone-1", "still-running", "gone-2"] {
        std::mem::forget(
            TaskSecrets::create(&m, base.path(), t, &[file("s", 0, 0, 0o444, b"x")]).unwrap(),
        );
    }
    let mut swept = TaskSecrets::sweep(&m, base.path(), &["still-running"]).unwrap();
    swept.sort();
    assert_eq!(swept, ["gone-1", "gone-2"]);
    assert!(mount_line(&base.path().join("gone-1")).is_none());
    assert!(mount_line(&base.path().join("still-running")).is_some());
    assert_eq!(
        m.mounts_under(base.path()).unwrap(),
        vec![base.path().join("still-running")]
    );
    TaskSecrets::sweep(&m, base.path(), &[]).unwrap();
    assert!(m.mounts_under(base.path()).unwrap().is_empty());
}
