//! Limits, exactly as Docker Swarm enforces them where Swarm has one.

/// Largest secret value accepted, in bytes: Swarm accepts values strictly under 500 KiB.
pub const MAX_SECRET_SIZE: usize = 500 * 1024 - 1;

/// Longest secret name, in characters (Swarm's limit).
pub const MAX_NAME_LEN: usize = 64;

/// Largest HTTP request body the manager reads. A maximal value in base64 is 682,668
/// bytes; the rest leaves room for names and labels.
pub const MAX_BODY_SIZE: usize = 768 * 1024;

/// Versions of a secret value kept by default; older ones are deleted on rotation.
pub const DEFAULT_KEEP_VERSIONS: u32 = 10;

/// Total size of a secret's labels (keys and values), as swarmkit's annotation limit.
pub const MAX_LABELS_SIZE: usize = 64 * 1024;
