//! One module per command group.

pub(crate) mod audit;
pub(crate) mod keys;
pub(crate) mod run;
pub(crate) mod secret;
pub(crate) mod server;
pub(crate) mod service;
pub(crate) mod task_exec;
