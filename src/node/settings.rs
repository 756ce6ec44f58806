//! What `raftkv serve`'s flags turn into: the addresses peers are told, and openraft's
//! configuration.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use openraft::{Config, SnapshotPolicy};

use crate::config::{ServeArgs, TlsArgs};
use crate::tls::{ClientAuth, PeerTls, ServerTls, TlsFiles};

/// The address peers use for a listener: the advertised one if given, else the listen address
/// (with the hostname in place of an all-interfaces IP, which no peer can dial).
pub(super) fn advertised(listen: SocketAddr, advertise: &Option<String>) -> anyhow::Result<String> {
    if let Some(a) = advertise {
        if !a.contains(':') {
            bail!("advertised address {a:?} must be host:port");
        }
        return Ok(a.clone());
    }
    if listen.ip().is_unspecified() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .context("listening on all interfaces and cannot read the hostname; set --advertise-*-addr")?;
        return Ok(format!("{host}:{}", listen.port()));
    }
    Ok(listen.to_string())
}

pub(super) fn raft_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let config = Config {
        cluster_name: "raftkv".into(),
        heartbeat_interval: args.heartbeat_ms,
        election_timeout_min: args.election_timeout_ms,
        election_timeout_max: args.election_timeout_ms * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(args.snapshot_threshold),
        // Keep some log behind a snapshot so that a follower that is slightly behind is
        // caught up with entries, not a whole snapshot.
        max_in_snapshot_log_to_keep: args.snapshot_threshold.min(1000),
        replication_lag_threshold: args.snapshot_threshold.max(1000) * 2,
        install_snapshot_timeout: 120_000,
        max_payload_entries: 512,
        enable_pre_vote: Some(true),
        // A leader that restarts must win an election before it leads again: neither the
        // committed id nor the state machine is fsynced on every change, so a leader restored
        // at once (openraft's default) reads at a stale commit index until replication catches
        // it up, and serves stale reads (found by the nemesis test).
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    config.validate().context("invalid Raft timing configuration")
}

/// The client listener's TLS (`--cert-file` and the rest), if asked for.
pub(super) fn client_tls(args: &TlsArgs) -> anyhow::Result<Option<ServerTls>> {
    let (Some(cert), Some(key)) = (&args.cert_file, &args.key_file) else {
        return Ok(None);
    };
    let files = TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        ca: args.trusted_ca_file.clone(),
        client_auth: if args.client_cert_auth {
            ClientAuth::Required
        } else {
            ClientAuth::None
        },
        flags: "",
    };
    ServerTls::start(files, &[b"h2", b"http/1.1"]).map(Some)
}

/// The peer listener's mutual TLS (`--peer-cert-file` and the rest), if asked for. Without
/// `--peer-client-cert-auth` a peer's certificate is still verified when presented, and the
/// admin service requires one.
pub(super) fn peer_tls(args: &TlsArgs) -> anyhow::Result<Option<PeerTls>> {
    let (Some(cert), Some(key)) = (&args.peer_cert_file, &args.peer_key_file) else {
        return Ok(None);
    };
    let files = TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        ca: args.peer_trusted_ca_file.clone(),
        client_auth: if args.peer_client_cert_auth {
            ClientAuth::Required
        } else {
            ClientAuth::Optional
        },
        flags: "peer-",
    };
    PeerTls::start(files).map(Some)
}
