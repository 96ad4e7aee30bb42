//! Domain types shared by every part of coffer: validated names and ids, the limits that
//! Docker Swarm enforces, and the JSON shapes of the HTTP API (Docker Engine API shapes, so
//! the real `docker` client can talk to a coffer manager).
//!
//! Nothing here does I/O, async or cryptography. Types parse their input on construction
//! ("parse, don't validate"): a [`SecretName`] is safe to use as a file name under
//! `/run/secrets` by construction.
//!
//! # Layout
//! - [`name`]: [`SecretName`] and label validation.
//! - [`grant`]: [`grant::Grant`], Docker's `--secret` SPEC plus coffer's extensions.
//! - [`service`]: service specs in Docker shapes (what the docker client sends).

//! - [`id`]: [`ObjectId`], Docker's 25-character base36 ids.
//! - [`api`]: request and response bodies of the HTTP API.
//! - [`record`]: what the manager stores (metadata only; values are sealed elsewhere).
//! - [`limits`]: size limits shared by the API, the CLI and the store.
//!
//! # Current limitations
//! - Only secrets are modelled; services, nodes and tasks arrive with the agent.
#![warn(missing_docs)]

pub mod api;
pub mod grant;

pub mod id;
pub mod limits;
pub mod name;
pub mod node;
pub mod record;
pub mod service;

pub use id::ObjectId;
pub use name::{validate_labels, LabelError, NameError, SecretName};
