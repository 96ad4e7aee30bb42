//! One module per command group.

pub(crate) mod audit;
pub(crate) mod keys;
pub(crate) mod secret;
pub(crate) mod server;
pub(crate) mod task_exec;
