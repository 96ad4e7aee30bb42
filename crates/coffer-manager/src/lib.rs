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
//! - [`scheduler`]: services -> tasks on nodes (`plan` is pure; `run` applies it).
//! - [`logs`]: masked task output sent by the agents, kept per service in memory.
//! - [`api::node`]: the node listener (HTTP/2): registration, assignments, status, logs.
//!
//! # Current limitations
//! - The API listens on unix sockets only; TCP with mutual TLS comes with remote agents.
//! - One scheduler per cluster: several managers on etcd would each run one (no leader
//!   election yet).
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
