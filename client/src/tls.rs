//! The client side of TLS and the credentials a caller presents: for the CLI, the tests, the
//! operator, and the node itself when it calls its peers.
//!
//! A [`Tls`] is a live handle on one rustls client configuration: clones share it, and
//! [`Tls::replace`] swaps it for all of them at once, so a node that re-reads its peer
//! certificate from disk hands the new one to every connection it makes from then on. A
//! connection already open keeps the configuration it was made with (as etcd re-reads its
//! certificates per new connection), which is what lets a rotation go by without a failed
//! request.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;

use crate::Error;

/// Client TLS settings: whom to trust (a CA bundle, or the system's roots) and, for mutual
/// TLS, the certificate and key to present.
#[derive(Clone)]
pub struct Tls {
    config: Arc<RwLock<Arc<ClientConfig>>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

/// PEM text that holds no usable item, or an unreadable file, named as the caller gave it.
fn tls_error(what: impl std::fmt::Display, reason: impl std::fmt::Display) -> Error {
    Error::Tls(format!("{what}: {reason}"))
}

/// The certificates of a PEM bundle (at least one).
pub fn certificates_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(what, format!("not PEM certificates ({e})")))?;
    if certs.is_empty() {
        return Err(tls_error(what, "no certificate in it"));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key_from_pem(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| tls_error(what, format!("no usable private key ({e})")))
}

/// A root store of the CA certificates in `pem`.
pub fn roots_from_pem(pem: &[u8], what: &str) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in certificates_from_pem(pem, what)? {
        roots
            .add(cert)
            .map_err(|e| tls_error(what, format!("not a usable CA certificate ({e})")))?;
    }
    Ok(roots)
}

/// Reads a file for TLS, naming it in the error.
pub fn read_pem_file(path: &Path, flag: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| tls_error(format!("{flag} {}", path.display()), e))
}

/// The crypto provider every configuration here uses (ring), whatever else the process links.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// From PEM text: `ca` the CA bundle to trust (None: the system's roots), `cert` and `key`
    /// the client certificate (chain) and key for mutual TLS (both or neither).
    pub fn from_pem(ca: Option<&[u8]>, cert: Option<&[u8]>, key: Option<&[u8]>) -> Result<Tls, Error> {
        Ok(Tls::new(client_config(ca, cert, key, &["h2", "http/1.1"])?))
    }

    /// From files, as `--cacert`, `--cert` and `--key` name them.
    pub fn from_files(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Result<Tls, Error> {
        let ca = ca.map(|p| read_pem_file(p, "--cacert")).transpose()?;
        let cert = cert.map(|p| read_pem_file(p, "--cert")).transpose()?;
        let key = key.map(|p| read_pem_file(p, "--key")).transpose()?;
        Tls::from_pem(ca.as_deref(), cert.as_deref(), key.as_deref())
    }

    fn new(config: ClientConfig) -> Tls {
        Tls {
            config: Arc::new(RwLock::new(Arc::new(config))),
        }
    }

    /// Makes every clone use `other`'s configuration for the connections they make from now on.
    pub fn replace(&self, other: &Tls) {
        let new = other.config();
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = new;
    }

    /// The configuration new connections use.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The same settings offering only `protocols` in ALPN (gRPC wants `h2`, the HTTP client
    /// here speaks HTTP/1.1). A snapshot: later [`Tls::replace`] calls do not reach it.
    pub(crate) fn with_alpn(&self, protocols: &[&str]) -> ClientConfig {
        let mut config = (*self.config()).clone();
        config.alpn_protocols = protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
        config
    }
}

fn client_config(
    ca: Option<&[u8]>,
    cert: Option<&[u8]>,
    key: Option<&[u8]>,
    alpn: &[&str],
) -> Result<ClientConfig, Error> {
    let roots = match ca {
        Some(pem) => roots_from_pem(pem, "CA bundle")?,
        None => {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // Unusable system certificates are skipped, as every TLS client does.
                let _ = roots.add(cert);
            }
            roots
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("TLS", e))?
        .with_root_certificates(roots);
    let mut config = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = certificates_from_pem(cert, "client certificate")?;
            let key = private_key_from_pem(key, "client key")?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_error("client certificate and key", e))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(Error::Tls(
                "a client certificate needs its key, and a key its certificate".into(),
            ))
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(config)
}

/// What a caller presents to prove who it is, when the cluster has authentication on.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A user name and password (HTTP Basic; checked against the stored hash on each request).
    Basic { user: String, password: String },
    /// A token from `POST /v1/auth/authenticate` (HTTP Bearer).
    Token(String),
}

impl std::fmt::Debug for Credentials {
    // Never print a password or a token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { user, .. } => write!(f, "Basic({user})"),
            Credentials::Token(_) => write!(f, "Token"),
        }
    }
}

impl Credentials {
    /// From `--user name[:password]` (etcdctl's form) and an optional `--password`.
    pub fn from_user_flag(user: &str, password: Option<&str>) -> Credentials {
        match (user.split_once(':'), password) {
            (_, Some(password)) => Credentials::Basic {
                user: user.to_string(),
                password: password.to_string(),
            },
            (Some((name, password)), None) => Credentials::Basic {
                user: name.to_string(),
                password: password.to_string(),
            },
            (None, None) => Credentials::Basic {
                user: user.to_string(),
                password: String::new(),
            },
        }
    }

    /// The `Authorization` header value.
    pub fn authorization(&self) -> String {
        use base64::Engine as _;
        match self {
            Credentials::Basic { user, password } => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ),
            Credentials::Token(token) => format!("Bearer {token}"),
        }
    }
}

/// Dials TCP and then TLS for tonic, with the configuration current at the time of each
/// connection. The host of the URI is the name the server's certificate must carry.
#[derive(Clone)]
pub struct TlsConnector {
    tls: Tls,
    alpn: Vec<Vec<u8>>,
}

impl TlsConnector {
    /// A connector for gRPC (ALPN `h2`).
    pub fn grpc(tls: Tls) -> TlsConnector {
        TlsConnector {
            tls,
            alpn: vec![b"h2".to_vec()],
        }
    }
}

type Connecting =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>> + Send>>;

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let mut config = (*self.tls.config()).clone();
        config.alpn_protocols = self.alpn.clone();
        Box::pin(async move {
            let invalid = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: {why}"));
            let host = uri.host().ok_or_else(|| invalid("no host"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone()).map_err(|_| invalid("not a DNS name or IP address"))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            // Small gRPC messages would otherwise wait for delayed ACKs.
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}
