//! TLS settings of `serve`, named as etcd names them: the client listener's (`--cert-file` ...)
//! and the peer listener's (`--peer-cert-file` ...). Plain text when none is given.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// Certificate (PEM, with its chain) of the client HTTP listener: turns HTTPS on. Re-read
    /// when the file changes.
    #[arg(long, env = "RAFTKV_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert-file.
    #[arg(long, env = "RAFTKV_KEY_FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// CA bundle (PEM) that client certificates must chain to (with --client-cert-auth).
    #[arg(long, env = "RAFTKV_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by --trusted-ca-file on the client listener; its
    /// common name is the user when authentication is on.
    #[arg(long, env = "RAFTKV_CLIENT_CERT_AUTH", requires = "trusted_ca_file")]
    pub client_cert_auth: bool,
    /// Certificate (PEM) of the peer listener (Raft and admin), also presented when this node
    /// calls its peers: turns mutual TLS between peers on. Its names must include the host of
    /// --advertise-raft-addr. Re-read when the file changes.
    #[arg(long, env = "RAFTKV_PEER_CERT_FILE", requires_all = ["peer_key_file", "peer_trusted_ca_file"])]
    pub peer_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --peer-cert-file.
    #[arg(long, env = "RAFTKV_PEER_KEY_FILE", requires = "peer_cert_file")]
    pub peer_key_file: Option<PathBuf>,
    /// CA bundle (PEM) that peers' certificates (and admin clients') must chain to.
    #[arg(long, env = "RAFTKV_PEER_TRUSTED_CA_FILE", requires = "peer_cert_file")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Require a certificate from every caller of the peer listener (Raft and admin), not only
    /// of the admin service.
    #[arg(long, env = "RAFTKV_PEER_CLIENT_CERT_AUTH", requires = "peer_cert_file")]
    pub peer_client_cert_auth: bool,
}
