//! One task's secrets: a memory-only filesystem under the agent's base directory, holding
//! the task's files; removed when the task stops; swept after an agent restart.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

use std::path::{Path, PathBuf};

use crate::files::{write_secret, SecretFile, WriteError};
use crate::mount::{FsKind, MountError, Mounter};

/// Room on a size-capped tmpfs beyond the values themselves: file metadata, and one
/// rotation to a value of the largest allowed size (written beside the old one, then
/// renamed over it).
pub const TMPFS_SLACK: u64 = 64 * 1024 + coffer_core::limits::MAX_SECRET_SIZE as u64 + 1;

/// Setting up or removing a task's secrets failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskSecretsError {
    /// The task id cannot be a directory name.
    #[error("task id {0:?} is not a valid directory name")]
    BadTaskId(String),
    /// The mount point could not be made or removed.
    #[error("secret mount point {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Mounting failed (neither ramfs nor tmpfs).
    #[error(transparent)]
    Mount(#[from] MountError),
    /// A file could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The same target twice in one task.
    #[error("two grants of task {task} both write {target:?}; give each grant its own target")]
    DuplicateTarget {
        /// Task id.
        task: String,
        /// The target.
        target: String,
    },
}

/// A task's mounted secrets directory.
#[derive(Debug)]
pub struct TaskSecrets {
    /// The mount point, `<base>/<task>` (0700).
    mount_point: PathBuf,
    /// `<base>/<task>/files` (0755): what the workload sees as /run/secrets.
    files_dir: PathBuf,
    fs: FsKind,
}

impl TaskSecrets {
    /// Mounts `<base>/<task_id>` (ramfs, else tmpfs capped at the files' size) and writes
    /// `files` into it. On any failure, whatever was set up is removed again.
    pub fn create(
        mounter: &dyn Mounter,
        base: &Path,
        task_id: &str,
        files: &[SecretFile],
    ) -> Result<Self, TaskSecretsError> {
        if task_id.is_empty()
            || !task_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(TaskSecretsError::BadTaskId(
                task_id.chars().take(40).collect(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in files {
            if !seen.insert(f.target.as_str()) {
                return Err(TaskSecretsError::DuplicateTarget {
                    task: task_id.to_owned(),
                    target: f.target.as_str().to_owned(),
                });
            }
        }
        let dir = base.join(task_id);
        let dir_err = |path: &Path| {
            let path = path.to_owned();
            move |source| TaskSecretsError::Dir { path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(base)
            .map_err(dir_err(base))?;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(dir_err(&dir))?;
        let size: u64 = files.iter().map(|f| f.value.len() as u64).sum::<u64>() + TMPFS_SLACK;
        let fs_kind = match mounter.mount_memory_fs(FsKind::Ramfs, &dir, size) {
            Ok(()) => FsKind::Ramfs,
            Err(e) => {
                tracing::warn!(error = %e, "ramfs unavailable; using a size-capped tmpfs, whose pages can reach swap");
                if let Err(e) = mounter.mount_memory_fs(FsKind::Tmpfs, &dir, size) {
                    let _ = fs::remove_dir(&dir);
                    return Err(e.into());
                }
                FsKind::Tmpfs
            }
        };
        // The mount's root stays 0700 (no other host user reaches it); the files live in a
        // 0755 directory inside, which the driver shows as /run/secrets, so a workload
        // running as the grant's uid can reach its files, each guarded by its own mode.
        let files_dir = dir.join("files");
        let me = Self {
            mount_point: dir,
            files_dir,
            fs: fs_kind,
        };
        let made = fs::DirBuilder::new()
            .mode(0o755)
            .create(&me.files_dir)
            .and_then(|()| fs::set_permissions(&me.files_dir, fs::Permissions::from_mode(0o755)));
        if let Err(source) = made {
            let path = me.files_dir.clone();
            let _ = me.remove(mounter);
            return Err(TaskSecretsError::Dir { path, source });
        }
        for f in files {
            if let Err(e) = write_secret(&me.files_dir, f) {
                let _ = me.remove(mounter);
                return Err(e.into());
            }
        }
        Ok(me)
    }

    /// The directory the workload sees as `/run/secrets`.
    pub fn dir(&self) -> &Path {
        &self.files_dir
    }

    /// The mount point.
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// Which filesystem holds the files.
    pub fn fs(&self) -> FsKind {
        self.fs
    }

    /// Replaces or adds one file atomically (live rotation).
    pub fn update(&self, file: &SecretFile) -> Result<(), TaskSecretsError> {
        write_secret(&self.files_dir, file)?;
        Ok(())
    }

    /// Unmounts and removes the directory. The filesystem's pages are freed by the kernel
    /// with the mount; nothing of the values remains on any disk.
    pub fn remove(self, mounter: &dyn Mounter) -> Result<(), TaskSecretsError> {
        mounter.unmount(&self.mount_point)?;
        fs::remove_dir(&self.mount_point).map_err(|source| TaskSecretsError::Dir {
            path: self.mount_point.clone(),
            source,
        })
    }

    /// Removes every secret mount under `base` whose task is not in `running` (after an
    /// agent restart, before it reconciles). Returns the task ids swept.
    pub fn sweep(
        mounter: &dyn Mounter,
        base: &Path,
        running: &[&str],
    ) -> Result<Vec<String>, TaskSecretsError> {
        let mut swept = Vec::new();
        for m in mounter.mounts_under(base)? {
            let Some(task) = m
                .strip_prefix(base)
                .ok()
                .and_then(|r| r.to_str())
                .map(str::to_owned)
            else {
                continue;
            };
            if task.contains('/') || running.contains(&task.as_str()) {
                continue;
            }
            mounter.unmount(&m)?;
            let _ = fs::remove_dir(&m);
            swept.push(task);
        }
        Ok(swept)
    }
}

#[cfg(test)]
mod tests {
    use coffer_crypto::SecretBytes;

    use super::*;
    use crate::files::TargetName;
    use crate::mount::{MountCall, RecordingMounter};

    fn file(t: &str, mode: u32) -> SecretFile {
        let me = std::os::unix::fs::MetadataExt::uid(&fs::metadata("/proc/self").unwrap());
        let gid = std::os::unix::fs::MetadataExt::gid(&fs::metadata("/proc/self").unwrap());
        SecretFile {
            target: TargetName::new(t).unwrap(),
            uid: me,
            gid,
            mode,
            value: SecretBytes::new(b"v".to_vec()),
        }
    }

    #[test]
    fn ramfs_first_with_safe_flags() {
        let base = tempfile::tempdir().unwrap();
        let m = RecordingMounter::default();
        let t = TaskSecrets::create(
            &m,
            base.path(),
            "task1",
            &[file("a", 0o400), file("b", 0o440)],
        )
        .unwrap();
        assert_eq!(t.fs(), FsKind::Ramfs);
        let calls = m.calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            vec![MountCall::Mount {
                fs: "ramfs",
                target: base.path().join("task1"),
                flags: "nodev,noexec,nosuid".into(),
                data: "mode=0700".into()
            }]
        );
        t.remove(&m).unwrap();
        assert!(!base.path().join("task1").exists());
    }

    #[test]
    fn tmpfs_fallback_is_size_capped() {
        let base = tempfile::tempdir().unwrap();
        let m = RecordingMounter {
            refuse_ramfs: true,
            ..RecordingMounter::default()
        };
        let t = TaskSecrets::create(&m, base.path(), "t2", &[file("a", 0o400)]).unwrap();
        assert_eq!(t.fs(), FsKind::Tmpfs);
        let calls = m.calls.lock().unwrap().clone();
        let MountCall::Mount {
            fs, data, flags, ..
        } = &calls[0]
        else {
            panic!("{calls:?}")
        };
        assert_eq!((*fs, flags.as_str()), ("tmpfs", "nodev,noexec,nosuid"));
        assert_eq!(data, &format!("mode=0700,size={}", 1 + TMPFS_SLACK));
    }

    #[test]
    fn refusals_leave_nothing() {
        let base = tempfile::tempdir().unwrap();
        let m = RecordingMounter::default();
        let err = TaskSecrets::create(&m, base.path(), "t3", &[file("a", 0o400), file("a", 0o444)])
            .unwrap_err();
        assert!(err.to_string().contains("both write \"a\""), "{err}");
        TaskSecrets::create(&m, base.path(), "../x", &[]).unwrap_err();
        assert!(m.calls.lock().unwrap().is_empty());
        assert_eq!(fs::read_dir(base.path()).unwrap().count(), 0);
    }

    #[test]
    fn sweep_keeps_running_tasks() {
        let base = tempfile::tempdir().unwrap();
        let m = RecordingMounter::default();
        for t in ["old1", "live", "old2"] {
            std::mem::forget(TaskSecrets::create(&m, base.path(), t, &[file("a", 0o400)]).unwrap());
        }
        let mut swept = TaskSecrets::sweep(&m, base.path(), &["live"]).unwrap();
        swept.sort();
        assert_eq!(swept, ["old1", "old2"]);
        assert_eq!(
            m.mounts_under(base.path()).unwrap(),
            vec![base.path().join("live")]
        );
    }
}
