//! # flotilla (the binary's library half)
//!
//! Everything the `flotilla` binary does, as a library so integration tests can drive it:
//! config loading, running a node (`flotilla server`), a local dev cluster (`flotilla dev`),
//! the admin HTTP endpoints, logging, and the client CLI subcommands. No business logic lives
//! here: consensus is in `flotilla-engine`, the KV and its etcd API in `flotilla-kv`.
//!
//! # Layout
//! - [`cli`]: client subcommands (`kv`, `lease`, `lock`, `config`, `cluster`) over the etcd v3
//!   API with endpoint failover.
//! - [`config`]: [`config::Config`], defaults < YAML < `FLOTILLA_…` env < flags, validation
//!   with one-line errors.
//! - [`server`]: `flotilla server` arguments and entry point (exit code 2 on a bad config).
//! - [`node`]: [`node::Node`] — WAL, transport, node host, KV server, listeners, graceful
//!   shutdown with leadership hand-off.
//! - [`dev`]: `flotilla dev`, N nodes in one process.
//! - [`admin`]: `/health`, `/ready`, `/metrics`, `/status` (axum).
//! - [`metrics`]: the Prometheus registry, gathered at scrape time.
//! - [`logging`]: text or JSON logs to stderr or a rotated file.
//! - [`kv_api`]: the KV server API this crate builds on.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod dev;
pub mod kv_api;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod server;
