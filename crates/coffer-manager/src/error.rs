//! Errors of the control layer, and their one mapping to HTTP statuses.

use coffer_store::StoreError;
use http::StatusCode;

/// Why a request was refused or failed. Messages name the thing and the fix, and never
/// contain a secret value.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// An id prefix matches several objects.
    #[error("{kind} id prefix {prefix:?} matches {count} {kind}s; give more characters of the ID, or the name")]
    Ambiguous {
        /// `secret`, `service`.
        kind: &'static str,
        /// The prefix given.
        prefix: String,
        /// How many matched.
        count: usize,
    },
    /// Tasks that still run hold the secret (their services no longer grant it).
    #[error("secret '{secret}' is in use by the following task{plural}, still running: {tasks}; wait until they stop")]
    HeldByTasks {
        /// The secret's name.
        secret: String,
        /// `s` when several.
        plural: &'static str,
        /// Their names.
        tasks: String,
    },
    /// A secret is granted to services, so it cannot be removed.
    #[error("secret '{secret}' is in use by the following service{plural}: {services}")]
    InUse {
        /// The secret's name.
        secret: String,
        /// `s` when several.
        plural: &'static str,
        /// Their names, comma-separated.
        services: String,
    },
    /// Request body is not what the endpoint takes.
    #[error("{0}")]
    Invalid(String),
    /// A stored value failed its integrity check.
    #[error("secret {name:?} version {version} failed its integrity check: the stored data was altered or damaged; restore it from a backup or rotate the secret")]
    Integrity {
        /// Secret name.
        name: String,
        /// Version.
        version: u32,
    },
    /// The keyring file could not be written.
    #[error("keyring: {0}")]
    Keyring(#[from] coffer_crypto::KeyringError),
    /// The manager is locked (autolock) and needs `coffer unlock`.
    #[error("manager is locked; run `coffer unlock` with the unlock key")]
    Locked,
    /// The name is taken.
    #[error(
        "{kind} {name:?} already exists; choose another name or remove the existing {kind} first"
    )]
    NameConflict {
        /// `secret`, `service`.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// No such object.
    #[error("{kind} {key:?} not found; `coffer {kind} ls` lists them")]
    NotFound {
        /// `secret`, `service`.
        kind: &'static str,
        /// What was asked for.
        key: String,
    },
    /// Autolock is off, so there is no unlock key.
    #[error("autolock is off, so there is no unlock key; start the server with --autolock to turn it on")]
    NotAutolocked,
    /// Not found on a path the API does not have.
    #[error("page not found: {0}")]
    NoRoute(String),
    /// The system random source failed.
    #[error(transparent)]
    Random(#[from] coffer_crypto::RandomError),
    /// The object changed since the version the client read.
    #[error("{kind} {name:?} changed since version {given} (it is at {current}); inspect it again and retry with version={current}")]
    StaleVersion {
        /// `secret`, `service`.
        kind: &'static str,
        /// The name.
        name: String,
        /// Version the client sent.
        given: u64,
        /// Version now.
        current: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Request body over the limit.
    #[error("request body is over {limit} bytes; a secret value is at most 511999 bytes (about 683 KB in base64)")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The unlock key does not open the keyring.
    #[error("{0}")]
    Unlock(#[from] coffer_crypto::keyring::UnlockError),
}

impl ControlError {
    /// The HTTP status for this error. Exhaustive on purpose: a new variant must decide.
    pub fn status(&self) -> StatusCode {
        match self {
            // === 400: the request is wrong ===
            Self::Ambiguous { .. }
            | Self::InUse { .. }
            | Self::HeldByTasks { .. }
            | Self::Invalid(_)
            | Self::NotAutolocked
            | Self::Unlock(_) => StatusCode::BAD_REQUEST,
            // === 404 ===
            Self::NotFound { .. } | Self::NoRoute(_) => StatusCode::NOT_FOUND,
            // === 409: the state does not allow it ===
            Self::NameConflict { .. } | Self::StaleVersion { .. } => StatusCode::CONFLICT,
            // === 413 ===
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            // === 500: our side ===
            Self::Integrity { .. } | Self::Keyring(_) | Self::Random(_) | Self::Store(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            // === 503: not now ===
            Self::Locked => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The short outcome recorded in the audit trail.
    pub fn outcome(&self) -> String {
        let kind = match self {
            Self::Ambiguous { .. } => "ambiguous",
            Self::InUse { .. } | Self::HeldByTasks { .. } => "in-use",
            Self::Invalid(_) => "invalid",
            Self::Integrity { .. } => "integrity-error",
            Self::Keyring(_) => "keyring-error",
            Self::Locked => "locked",
            Self::NameConflict { .. } => "name-conflict",
            Self::NotFound { .. } | Self::NoRoute(_) => "not-found",
            Self::NotAutolocked => "not-autolocked",
            Self::Random(_) => "random-error",
            Self::StaleVersion { .. } => "stale-version",
            Self::Store(_) => "store-error",
            Self::TooLarge { .. } => "too-large",
            Self::Unlock(_) => "wrong-key",
        };
        format!("refused: {kind}")
    }
}
