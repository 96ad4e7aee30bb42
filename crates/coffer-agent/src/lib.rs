//! The coffer node agent's delivery layer: each task's secrets live on their own
//! memory-only filesystem, written by the agent with the grant's owner and mode, and are
//! gone when the task stops.
//!
//! # Layout
//! - [`mount`]: the [`Mounter`] seam. [`LinuxMounter`] mounts ramfs (memory that is never
//!   swapped, as systemd does for credentials) and falls back to a size-capped tmpfs;
//!   [`RecordingMounter`] records calls so tests need no root.
//! - [`files`]: [`TargetName`] (a safe file name) and the atomic secret-file writer.
//! - [`task`]: [`TaskSecrets`], one task's mount with its files; `sweep` removes mounts
//!   left by tasks that no longer run.
//! - [`exec`]: a workload's private mount namespace with `/run/secrets`, and stopping its
//!   whole process tree.

//! - [`mask`]: hiding granted values in task output.
//! - [`agent`]: the node agent: assignment stream, exec driver supervision, rotation,
//!   status and log shipping, crash recovery.
//!
//! # Current limitations
//! - There is no container (image) driver yet: tasks run as host processes.
#![warn(missing_docs)]

pub mod agent;
pub mod exec;
pub mod files;
pub mod mask;

pub mod mount;
pub mod task;

pub use files::{SecretFile, TargetName};
pub use mount::{FsKind, LinuxMounter, MountError, Mounter, RecordingMounter};
pub use task::{TaskSecrets, TaskSecretsError};
