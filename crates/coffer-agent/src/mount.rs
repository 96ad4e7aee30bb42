//! Mounting memory-only filesystems, behind a seam.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Which filesystem holds a task's secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// ramfs: pages are never swapped out. Preferred.
    Ramfs,
    /// tmpfs with a size cap: pages can reach swap. Used only where ramfs cannot be had.
    Tmpfs,
}

impl FsKind {
    /// The filesystem type name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ramfs => "ramfs",
            Self::Tmpfs => "tmpfs",
        }
    }
}

/// A mount or unmount failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// `mount(2)` failed.
    #[error(
        "cannot mount {fs} on {target}: {source}; the agent needs CAP_SYS_ADMIN (run it as root)"
    )]
    Mount {
        /// Filesystem type.
        fs: &'static str,
        /// Mount point.
        target: PathBuf,
        /// The error.
        source: nix::Error,
    },
    /// `umount2(2)` failed.
    #[error("cannot unmount {target}: {source}")]
    Unmount {
        /// Mount point.
        target: PathBuf,
        /// The error.
        source: nix::Error,
    },
    /// `/proc/self/mountinfo` could not be read.
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountInfo(std::io::Error),
}

/// The mount operations the agent needs. Implemented by [`LinuxMounter`] for real and by
/// [`RecordingMounter`] for tests.
pub trait Mounter: Send + Sync + std::fmt::Debug {
    /// Mounts a filesystem of `kind` on `target`: `noexec,nosuid,nodev`, mode 0700, and for
    /// tmpfs `size=size_bytes`.
    fn mount_memory_fs(
        &self,
        kind: FsKind,
        target: &Path,
        size_bytes: u64,
    ) -> Result<(), MountError>;

    /// Unmounts `target` (detaching it if busy, so a stopped task never keeps it).
    fn unmount(&self, target: &Path) -> Result<(), MountError>;

    /// Mount points strictly under `base`.
    fn mounts_under(&self, base: &Path) -> Result<Vec<PathBuf>, MountError>;
}

/// Flags every secret mount carries.
pub fn secret_mount_flags() -> MsFlags {
    MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID | MsFlags::MS_NODEV
}

/// The `data` string of a secret mount.
pub fn secret_mount_data(kind: FsKind, size_bytes: u64) -> String {
    match kind {
        FsKind::Ramfs => "mode=0700".to_owned(),
        FsKind::Tmpfs => format!("mode=0700,size={size_bytes}"),
    }
}

/// Real mounts.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxMounter;

impl Mounter for LinuxMounter {
    fn mount_memory_fs(
        &self,
        kind: FsKind,
        target: &Path,
        size_bytes: u64,
    ) -> Result<(), MountError> {
        let data = secret_mount_data(kind, size_bytes);
        mount(
            Some("coffer"),
            target,
            Some(kind.name()),
            secret_mount_flags(),
            Some(data.as_str()),
        )
        .map_err(|source| MountError::Mount {
            fs: kind.name(),
            target: target.to_owned(),
            source,
        })
    }

    fn unmount(&self, target: &Path) -> Result<(), MountError> {
        umount2(target, MntFlags::MNT_DETACH).map_err(|source| MountError::Unmount {
            target: target.to_owned(),
            source,
        })
    }

    fn mounts_under(&self, base: &Path) -> Result<Vec<PathBuf>, MountError> {
        let text =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(MountError::MountInfo)?;
        Ok(parse_mountinfo_under(&text, base))
    }
}

/// Mount points under `base` in mountinfo text (field 5; octal escapes decoded).
pub fn parse_mountinfo_under(mountinfo: &str, base: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(base) && p != base)
        .collect()
}

/// Decodes mountinfo's `\ooo` octal escapes, working on bytes (a path may hold UTF-8
/// right after a backslash).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if let Some(&[d0, d1, d2]) = b.get(i + 1..i + 4) {
                let digits = [d0, d1, d2];
                if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                    let v = digits
                        .iter()
                        .fold(0u16, |acc, d| acc * 8 + u16::from(d - b'0'));
                    if let Ok(byte) = u8::try_from(v) {
                        out.push(byte);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountCall {
    /// A mount: filesystem, target, flags and data as they would be passed.
    Mount {
        /// Filesystem type.
        fs: &'static str,
        /// Mount point.
        target: PathBuf,
        /// `noexec,nosuid,nodev` as text.
        flags: String,
        /// The data string.
        data: String,
    },
    /// An unmount.
    Unmount(PathBuf),
}

/// Records calls instead of mounting; can be told to refuse ramfs.
#[derive(Debug, Default)]
pub struct RecordingMounter {
    /// Calls so far.
    pub calls: Mutex<Vec<MountCall>>,
    /// Refuse ramfs, as a kernel without it would.
    pub refuse_ramfs: bool,
}

impl Mounter for RecordingMounter {
    fn mount_memory_fs(
        &self,
        kind: FsKind,
        target: &Path,
        size_bytes: u64,
    ) -> Result<(), MountError> {
        if self.refuse_ramfs && kind == FsKind::Ramfs {
            return Err(MountError::Mount {
                fs: "ramfs",
                target: target.to_owned(),
                source: nix::Error::ENODEV,
            });
        }
        let f = secret_mount_flags();
        let flags = [
            (MsFlags::MS_NODEV, "nodev"),
            (MsFlags::MS_NOEXEC, "noexec"),
            (MsFlags::MS_NOSUID, "nosuid"),
        ]
        .iter()
        .filter(|(m, _)| f.contains(*m))
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(",");
        let call = MountCall::Mount {
            fs: kind.name(),
            target: target.to_owned(),
            flags,
            data: secret_mount_data(kind, size_bytes),
        };
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(call);
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<(), MountError> {
        // What a real unmount does to the files: they disappear with the filesystem.
        if let Ok(entries) = std::fs::read_dir(target) {
            for e in entries.flatten() {
                let _ =
                    std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
            }
        }
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(MountCall::Unmount(target.to_owned()));
        Ok(())
    }

    fn mounts_under(&self, base: &Path) -> Result<Vec<PathBuf>, MountError> {
        let calls = self
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut live: Vec<PathBuf> = Vec::new();
        for c in calls.iter() {
            match c {
                MountCall::Mount { target, .. } if target.starts_with(base) => {
                    live.push(target.clone())
                }
                MountCall::Unmount(t) => live.retain(|x| x != t),
                MountCall::Mount { .. } => {}
            }
        }
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_parsing() {
        let text = "42 27 0:39 / /run/coffer/tasks/abc rw,relatime - ramfs coffer rw,mode=700\n\
                    43 27 0:40 / /run/coffer/tasks rw - tmpfs tmpfs rw\n\
                    44 27 0:41 / /run/coffer/tasks/a\\040b rw - ramfs coffer rw\n\
                    45 27 0:42 / /other rw - tmpfs tmpfs rw\n";
        let got = parse_mountinfo_under(text, Path::new("/run/coffer/tasks"));
        // A backslash before multi-byte UTF-8 used to slice a str mid-character and panic.
        assert_eq!(unescape("/a\\éé/b\\1"), "/a\\éé/b\\1");
        assert_eq!(unescape("/a\\134b\\777"), "/a\\b\\777");
        assert_eq!(
            got,
            vec![
                PathBuf::from("/run/coffer/tasks/abc"),
                PathBuf::from("/run/coffer/tasks/a b")
            ]
        );
    }
}
