//! The client-side subcommands: `admin` (gRPC), `kv` (HTTP) and `restore` (offline).
//!
//! Exit codes: 0 ok, 1 the operation failed, 2 usage error. Errors name the endpoint and the
//! reason.

pub mod admin;
pub mod auth;
pub mod connect;
pub mod kv;
pub mod restore;
mod table;

use clap::ValueEnum;

/// How results are printed.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, Default)]
pub enum Output {
    /// Human-readable tables.
    #[default]
    Table,
    /// JSON, for scripts.
    Json,
}

/// A mistake in how the command was called (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Splits a comma-separated endpoint list, dropping blanks.
pub(crate) fn endpoints(list: &[String]) -> Vec<String> {
    list.iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}
