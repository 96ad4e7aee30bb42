//! The coffer manager: the HTTP API (Docker Engine API shapes) over a unix socket, the
//! control layer for secrets, the keyring with autolock, and the audit trail.
//!
//! Start-up order: data directory (0700, locked) -> store -> keyring -> view (follows the
//! store's watch) -> audit chainer -> API socket.
//!
//! # Layout
//! - [`api`]: socket, routing, error-to-status mapping.
//! - [`control`]: [`Manager`], every operation; validates fully, writes once.
//! - [`view`]: secret metadata in memory, kept current from the store's watch stream.
//! - [`audit`]: the hash-chained audit trail.
//! - [`keys`]: keyring file, lock state, unlock key.
//! - [`error`]: [`ControlError`] and its HTTP mapping.
//!
//! # Current limitations
//! - The API listens on a unix socket only; TCP with mutual TLS comes with remote agents.
//! - Services, tasks and nodes are not implemented yet.
#![warn(missing_docs)]

pub mod api;
pub mod audit;
pub mod control;
pub mod error;
pub mod keys;
pub mod logs;
pub mod scheduler;

pub mod view;

pub use control::{Config, Manager, OpenError, Startup, StoreSpec};
pub use error::ControlError;
