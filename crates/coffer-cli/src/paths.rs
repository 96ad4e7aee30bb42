//! Default locations, shared by the server (where to listen) and clients (where to connect).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `/var/lib/coffer` for root, else `$XDG_DATA_HOME/coffer` (`~/.local/share/coffer`).
pub(crate) fn default_data_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/coffer");
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".local/share"))
        .join("coffer")
}

/// `/run/coffer/coffer.sock` for root, else `$XDG_RUNTIME_DIR/coffer/coffer.sock` (or under
/// the data directory when there is no runtime directory).
pub(crate) fn default_socket() -> PathBuf {
    if is_root() {
        return PathBuf::from("/run/coffer/coffer.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("coffer/coffer.sock"),
        None => default_data_dir().join("coffer.sock"),
    }
}

/// `/run/coffer/tasks` for root, else `$XDG_RUNTIME_DIR/coffer/tasks` (or under the data
/// directory): where the local agent mounts task secrets (each mount memory-only).
pub(crate) fn default_agent_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/run/coffer/tasks");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("coffer/tasks"),
        None => default_data_dir().join("tasks"),
    }
}
