//! synchro: keeps a local SQLite copy of records from remote APIs, for many
//! tenants, from one config file.
//!
//! Where a page of records enters: [`sources`]. Where it becomes durable:
//! [`engine`] → [`store`]. What decides when it runs: [`scheduler`]. How an
//! operator sees it: [`server`] and [`commands`].

pub mod commands;
pub mod config;
pub mod engine;
pub mod escape;
pub mod http;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod redact;
pub mod reporter;
pub mod scheduler;
pub mod server;
pub mod shutdown;
pub mod sources;
pub mod store;
pub mod telemetry;
pub mod time;
