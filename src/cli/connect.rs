//! How a command-line tool reaches a cluster securely: TLS and credentials, with etcdctl's
//! flag names (`--cacert`, `--cert`, `--key`, `--user`, `--password`).

use std::path::PathBuf;

use clap::Args;
use raftkv_client::{Credentials, Tls};

use super::UsageError;

#[derive(Debug, Clone, Default, Args)]
pub struct ConnectArgs {
    /// CA bundle (PEM) to verify the servers' certificates with; turns TLS on (as do
    /// https:// endpoints, which otherwise trust the system's roots).
    #[arg(long, env = "RAFTKV_CACERT")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS: required by the admin service on a cluster
    /// with peer TLS, and by the client port with --client-cert-auth.
    #[arg(long, env = "RAFTKV_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, env = "RAFTKV_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// User for a cluster with authentication on: NAME:PASSWORD, or NAME with --password.
    #[arg(long, env = "RAFTKV_USER")]
    pub user: Option<String>,
    /// Password of --user (better given by RAFTKV_PASSWORD than on the command line).
    #[arg(long, env = "RAFTKV_PASSWORD", requires = "user", hide_env_values = true)]
    pub password: Option<String>,
}

impl ConnectArgs {
    /// The TLS settings, if any flag asks for TLS.
    pub fn tls(&self) -> anyhow::Result<Option<Tls>> {
        if self.cacert.is_none() && self.cert.is_none() {
            return Ok(None);
        }
        Ok(Some(Tls::from_files(
            self.cacert.as_deref(),
            self.cert.as_deref(),
            self.key.as_deref(),
        )?))
    }

    /// The credentials, if a user was given.
    pub fn credentials(&self) -> anyhow::Result<Option<Credentials>> {
        let Some(user) = &self.user else {
            return Ok(None);
        };
        if !user.contains(':') && self.password.is_none() {
            return Err(UsageError(format!(
                "--user {user} needs a password: --user {user}:PASSWORD, --password, or RAFTKV_PASSWORD"
            ))
            .into());
        }
        Ok(Some(Credentials::from_user_flag(user, self.password.as_deref())))
    }
}
