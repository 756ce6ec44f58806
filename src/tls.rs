//! The server side of TLS, for the client listener and the peer listener, and the client side
//! a node uses to call its peers: configurations built from the certificate files that the
//! `--cert-file` / `--peer-cert-file` family of flags names, and re-read when those files change.
//!
//! Reloading: a task looks at the files' contents every [`RELOAD_INTERVAL`]. When they change
//! and still make a valid configuration (a certificate whose key is written a moment later
//! does not, until the key is there), the new configuration is swapped in; every connection
//! accepted or made from then on uses it, and connections already open keep theirs. A
//! rotation therefore never fails a request, and never needs a restart. Files that are
//! unreadable or invalid leave the last good configuration in place, with a warning.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use anyhow::{bail, Context};
use raftkv_client::tls as client_tls;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;

/// How often certificate files are looked at for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Whether a listener asks connecting clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAuth {
    /// No client certificates (`--client-cert-auth` off on the client listener).
    None,
    /// A certificate is verified if presented: the peer listener without
    /// `--peer-client-cert-auth`, where the admin service still requires one.
    Optional,
    /// Every client must present a certificate signed by the trusted CA.
    Required,
}

/// The files of one listener's TLS, as the flags name them (kept for error texts).
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    /// CA bundle that client certificates (and, for peers, the other nodes' server
    /// certificates) must chain to.
    pub(crate) ca: Option<PathBuf>,
    pub(crate) client_auth: ClientAuth,
    /// The flag prefix, `""` or `"peer-"`, for messages.
    pub(crate) flags: &'static str,
}

/// The contents of a listener's files at one moment.
#[derive(PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
}

impl TlsFiles {
    fn read(&self) -> anyhow::Result<Contents> {
        let read = |path: &Path, flag: &str| {
            std::fs::read(path).with_context(|| format!("cannot read --{}{flag} {}", self.flags, path.display()))
        };
        Ok(Contents {
            cert: read(&self.cert, "cert-file")?,
            key: read(&self.key, "key-file")?,
            ca: self.ca.as_deref().map(|p| read(p, "trusted-ca-file")).transpose()?,
        })
    }

    fn server_config(&self, c: &Contents, alpn: &[&[u8]]) -> anyhow::Result<ServerConfig> {
        let flags = self.flags;
        let chain = client_tls::certificates_from_pem(&c.cert, &format!("--{flags}cert-file"))?;
        let key = client_tls::private_key_from_pem(&c.key, &format!("--{flags}key-file"))?;
        let builder = ServerConfig::builder_with_provider(client_tls::provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match (self.client_auth, &c.ca) {
            (ClientAuth::None, _) => builder.with_no_client_auth(),
            (auth, Some(ca)) => {
                let roots = client_tls::roots_from_pem(ca, &format!("--{flags}trusted-ca-file"))?;
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), client_tls::provider());
                let verifier = if auth == ClientAuth::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                builder.with_client_cert_verifier(verifier.build().context("client certificate verifier")?)
            }
            (_, None) => bail!("--{flags}client-cert-auth needs --{flags}trusted-ca-file: the CA that client certificates must chain to"),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .with_context(|| format!("--{flags}cert-file and --{flags}key-file do not make a usable pair"))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    /// What a node presents when it calls a peer: its peer certificate, trusting the peer CA.
    fn peer_client(&self, c: &Contents) -> anyhow::Result<raftkv_client::Tls> {
        Ok(raftkv_client::Tls::from_pem(
            c.ca.as_deref(),
            Some(&c.cert),
            Some(&c.key),
        )?)
    }
}

/// One listener's TLS: the configuration in use, swapped when the files change.
#[derive(Clone)]
pub(crate) struct ServerTls {
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl ServerTls {
    /// Builds the configuration from `files` (failing, at start, on files that do not make
    /// one) and starts watching them. `alpn`: the protocols the listener speaks.
    pub(crate) fn start(files: TlsFiles, alpn: &'static [&'static [u8]]) -> anyhow::Result<ServerTls> {
        let contents = files.read()?;
        let tls = ServerTls {
            current: Arc::new(RwLock::new(Arc::new(files.server_config(&contents, alpn)?))),
        };
        let current = Arc::downgrade(&tls.current);
        watch(files, contents, move |files, contents| {
            let Some(current) = current.upgrade() else {
                return Ok(false);
            };
            let config = files.server_config(contents, alpn)?;
            *current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
            Ok(true)
        });
        Ok(tls)
    }

    /// An acceptor with the configuration current now.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// The peer listener's TLS and the matching client side for calls to peers, both from the
/// `--peer-*` files and reloaded together.
pub(crate) struct PeerTls {
    pub(crate) server: ServerTls,
    pub(crate) client: raftkv_client::Tls,
}

impl PeerTls {
    pub(crate) fn start(files: TlsFiles) -> anyhow::Result<PeerTls> {
        if files.ca.is_none() {
            bail!("peer TLS needs --peer-trusted-ca-file: peers verify each other's certificates against it");
        }
        let server = ServerTls::start(files.clone(), &[b"h2"])?;
        let contents = files.read()?;
        let client = files.peer_client(&contents)?;
        let weak = Arc::downgrade(&server.current);
        let live = client.clone();
        watch(files, contents, move |files, contents| {
            if Weak::strong_count(&weak) == 0 {
                return Ok(false);
            }
            live.replace(&files.peer_client(contents)?);
            Ok(true)
        });
        Ok(PeerTls { server, client })
    }
}

/// Looks at `files` every [`RELOAD_INTERVAL`] and calls `apply` with their contents when they
/// change; stops when `apply` answers `Ok(false)` (the configuration it fed is gone). Contents
/// that `apply` refuses are retried at the next change (or the next look, for a rotation whose
/// files are written one after another).
fn watch<F>(files: TlsFiles, mut applied: Contents, apply: F)
where
    F: Fn(&TlsFiles, &Contents) -> anyhow::Result<bool> + Send + 'static,
{
    tokio::spawn(async move {
        let mut refused: Option<String> = None;
        loop {
            tokio::time::sleep(RELOAD_INTERVAL).await;
            let contents = match files.read() {
                Ok(c) => c,
                Err(e) => {
                    warn_once(&mut refused, format!("{e:#}"));
                    continue;
                }
            };
            if contents == applied {
                continue;
            }
            match apply(&files, &contents) {
                Ok(true) => {
                    tracing::info!(cert = %files.cert.display(), "TLS certificates reloaded");
                    applied = contents;
                    refused = None;
                }
                Ok(false) => return,
                Err(e) => warn_once(
                    &mut refused,
                    format!("changed TLS files not loaded, the previous ones stay in use: {e:#}"),
                ),
            }
        }
    });
}

/// Logs a reload problem once, not on every look.
fn warn_once(last: &mut Option<String>, message: String) {
    if last.as_deref() != Some(message.as_str()) {
        tracing::warn!("{message}");
        *last = Some(message);
    }
}

/// The common name of a verified client certificate, as a request extension: with
/// `--client-cert-auth`, the user a request is made as when it carries no other credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientCertName(pub(crate) String);

/// The common name of the certificate a client presented on `conn` (verified by the
/// handshake), if any.
pub(crate) fn client_common_name(conn: &rustls::ServerConnection) -> Option<String> {
    conn.peer_certificates()?.first().and_then(common_name)
}

/// The subject's common name of a certificate.
pub(crate) fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let name = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(name)
}
