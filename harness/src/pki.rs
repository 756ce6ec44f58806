//! Certificates made for a test: a CA, and certificates it (or another CA) signs, written as
//! PEM files the nodes are pointed at with `--cert-file` and the rest. Real X.509 (rcgen),
//! verified by the nodes' real TLS stack: nothing here is a mock.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

use crate::{Error, Result};

fn pki_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Usage(format!("making {what}: {e}"))
}

/// A certificate authority: its certificate's PEM and the key that signs.
pub struct Authority {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

/// A certificate and its private key, as PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a certificate is for.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The subject's common name: with `--client-cert-auth`, the user it authenticates as.
    pub common_name: String,
    /// DNS names and IP addresses it is valid for (servers).
    pub names: Vec<String>,
    /// Valid from this long ago...
    pub since: Duration,
    /// ...until this long from now; `None`: already expired (ended a minute ago).
    pub lasts: Option<Duration>,
}

impl Subject {
    /// A node: valid for 127.0.0.1 and localhost, as server and as client, for a day.
    pub fn node(common_name: &str) -> Subject {
        Subject {
            common_name: common_name.to_string(),
            names: vec!["127.0.0.1".into(), "localhost".into()],
            since: Duration::from_secs(3600),
            lasts: Some(Duration::from_secs(86_400)),
        }
    }

    /// A client (a user, the operator, an administrator): no names, valid for a day.
    pub fn client(common_name: &str) -> Subject {
        Subject {
            names: Vec::new(),
            ..Subject::node(common_name)
        }
    }

    /// The same, but expired.
    pub fn expired(mut self) -> Subject {
        self.since = Duration::from_secs(7200);
        self.lasts = None;
        self
    }
}

impl Authority {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Result<Authority> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| pki_err("a CA", e))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(30);
        let key = KeyPair::generate().map_err(|e| pki_err("a CA key", e))?;
        let pem = params.self_signed(&key).map_err(|e| pki_err("a CA", e))?.pem();
        Ok(Authority { params, key, pem })
    }

    /// The CA certificate (what `--trusted-ca-file` and `--cacert` point at).
    pub fn cert_pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for `subject`, signed by this CA, usable for TLS servers and clients.
    pub fn issue(&self, subject: &Subject) -> Result<Issued> {
        let what = format!("a certificate for {}", subject.common_name);
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| pki_err(&what, e))?;
        for name in &subject.names {
            params.subject_alt_names.push(match name.parse::<IpAddr>() {
                Ok(ip) => rcgen::SanType::IpAddress(ip),
                Err(_) => rcgen::SanType::DnsName(name.clone().try_into().map_err(|e| pki_err(&what, e))?),
            });
        }
        params
            .distinguished_name
            .push(DnType::CommonName, subject.common_name.clone());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::try_from(subject.since).map_err(|e| pki_err(&what, e))?;
        params.not_after = match subject.lasts {
            Some(d) => now + time::Duration::try_from(d).map_err(|e| pki_err(&what, e))?,
            None => now - time::Duration::minutes(1),
        };
        let key = KeyPair::generate().map_err(|e| pki_err(&what, e))?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(|e| pki_err(&what, e))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Where one certificate and its key were written.
#[derive(Debug, Clone)]
pub struct PemFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Issued {
    /// Writes `<dir>/<name>.pem` and `<dir>/<name>-key.pem`. Each is written to a temporary
    /// file and renamed over the old one, as Kubernetes updates a mounted Secret, so a reader
    /// never sees half a file.
    pub fn write(&self, dir: &Path, name: &str) -> Result<PemFiles> {
        let files = PemFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        };
        write_atomic(&files.cert, self.cert_pem.as_bytes())?;
        write_atomic(&files.key, self.key_pem.as_bytes())?;
        Ok(files)
    }
}

/// Writes `contents` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(format!("renaming to {}", path.display()), e))
}

/// The files of a TLS-everywhere cluster: one CA for clients and peers, one node certificate
/// (valid for 127.0.0.1, where every test node listens) and a client certificate.
#[derive(Debug, Clone)]
pub struct ClusterPki {
    pub ca: PathBuf,
    pub node: PemFiles,
    pub client: PemFiles,
}

impl ClusterPki {
    /// Makes a CA, a node certificate and a client certificate (common name `client_name`)
    /// under `dir`.
    pub fn create(dir: &Path, client_name: &str) -> Result<(Authority, ClusterPki)> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let ca = Authority::new("raftkv test CA")?;
        let ca_path = dir.join("ca.pem");
        write_atomic(&ca_path, ca.cert_pem().as_bytes())?;
        let node = ca.issue(&Subject::node("raftkv-node"))?.write(dir, "node")?;
        let client = ca.issue(&Subject::client(client_name))?.write(dir, "client")?;
        Ok((
            ca,
            ClusterPki {
                ca: ca_path,
                node,
                client,
            },
        ))
    }

    /// The `serve` flags that turn TLS on for both listeners, with client certificates
    /// required on the peer listener (and on the client listener if `client_cert_auth`).
    pub fn node_args(&self, client_cert_auth: bool) -> Vec<String> {
        let p = |p: &Path| p.display().to_string();
        let mut args = vec![
            "--cert-file".into(),
            p(&self.node.cert),
            "--key-file".into(),
            p(&self.node.key),
            "--trusted-ca-file".into(),
            p(&self.ca),
            "--peer-cert-file".into(),
            p(&self.node.cert),
            "--peer-key-file".into(),
            p(&self.node.key),
            "--peer-trusted-ca-file".into(),
            p(&self.ca),
            "--peer-client-cert-auth".into(),
        ];
        if client_cert_auth {
            args.push("--client-cert-auth".into());
        }
        args
    }

    /// Client TLS that trusts the CA and presents the client certificate.
    pub fn client_tls(&self) -> Result<raftkv_client::Tls> {
        raftkv_client::Tls::from_files(Some(&self.ca), Some(&self.client.cert), Some(&self.client.key))
            .map_err(|e| Error::Usage(format!("client TLS: {e}")))
    }
}
