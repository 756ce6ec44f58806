//! The operator as a certificate authority, for clusters that name no cert-manager issuer: one
//! CA per cluster, whose key only the operator reads (the Secret `<name>-ca`, never mounted),
//! a certificate per pod for both of the node's listeners, and one for the operator itself.
//!
//! Pure: the reconciler reads and writes the Secrets; this decides what they hold. A
//! certificate is kept while it is one this CA signed for exactly the names wanted now, with
//! the lifetime asked for, and is not yet two thirds through its life; otherwise it is issued
//! again, with a new key. Renewal never needs a restart: the nodes reload changed files.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// How long the CA is valid. It is not rotated: replacing it means deleting `<name>-ca`, after
/// which every certificate is issued again (see the README).
pub(crate) const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

/// Who a certificate is for: its common name, the names and addresses it is valid for, and
/// whether it may serve (a node) or only be presented as a client (the operator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Leaf {
    pub(crate) common_name: String,
    pub(crate) dns_names: Vec<String>,
    pub(crate) ips: Vec<IpAddr>,
    pub(crate) server: bool,
}

/// A certificate and its key, as PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issued {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

/// When a certificate is to be renewed and when it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Validity {
    pub(crate) renew_at: Timestamp,
    pub(crate) not_after: Timestamp,
}

impl Validity {
    /// The earlier of two renewal times and expiries.
    pub(crate) fn earliest(self, other: Validity) -> Validity {
        Validity {
            renew_at: self.renew_at.min(other.renew_at),
            not_after: self.not_after.min(other.not_after),
        }
    }
}

/// One cluster's CA: its certificate, and the key that signs with it.
pub(crate) struct Authority {
    cert_pem: String,
    key: KeyPair,
    /// The CA's subject and key usages, what an issuer needs (deterministic from the cluster).
    params: CertificateParams,
}

impl std::fmt::Debug for Authority {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

/// The CA's parameters: its subject names the cluster (`namespace/name`), so that a CA can
/// always be matched with the cluster it belongs to.
fn ca_params(cluster: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "raftkv");
    dn.push(DnType::CommonName, format!("raftkv CA {cluster}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn offset(t: Timestamp) -> Result<time::OffsetDateTime, TlsError> {
    time::OffsetDateTime::from_unix_timestamp(t.as_second()).map_err(|e| TlsError::Invalid(e.to_string()))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, as RFC 5280 wants, and never with a leading zero byte.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// How far back a certificate's validity starts, for clocks a little behind the operator's.
fn backdate(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(60))
}

/// The DER of the first certificate in `pem`.
fn der_of(pem: &[u8]) -> Result<Vec<u8>, TlsError> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| TlsError::Invalid(format!("not a PEM certificate: {e}")))?;
    Ok(pem.contents)
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::Invalid(format!("not a certificate: {e}")))?;
    Ok(cert)
}

/// A certificate's validity: renewal after two thirds of its life.
pub(crate) fn validity_of(cert_pem: &[u8]) -> Result<Validity, TlsError> {
    let der = der_of(cert_pem)?;
    let cert = parse(&der)?;
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    let ts = |s: i64| Timestamp::from_second(s).map_err(|e| TlsError::Invalid(e.to_string()));
    Ok(Validity {
        renew_at: ts(nb + (na - nb) * 2 / 3)?,
        not_after: ts(na)?,
    })
}

impl Authority {
    /// A new CA for the cluster `namespace/name`.
    pub(crate) fn create(cluster: &str, now: Timestamp) -> Result<Authority, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = ca_params(cluster);
        params.not_before = offset(now - jiff::SignedDuration::from_secs(60))?;
        params.not_after = offset(now + jiff::SignedDuration::try_from(CA_LIFETIME).unwrap_or_default())?;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            cert_pem: cert.pem(),
            key,
            params: ca_params(cluster),
        })
    }

    /// The CA kept in `<name>-ca`; refused if it does not belong to the cluster or is not a
    /// CA certificate and key that belong together.
    pub(crate) fn load(cluster: &str, cert_pem: &[u8], key_pem: &[u8]) -> Result<Authority, TlsError> {
        let text = std::str::from_utf8(key_pem).map_err(|_| TlsError::Invalid("the CA key is not PEM text".into()))?;
        let key = KeyPair::from_pem(text)?;
        let der = der_of(cert_pem)?;
        let cert = parse(&der)?;
        let expected = format!("raftkv CA {cluster}");
        let cn = cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok());
        if cn != Some(expected.as_str()) {
            return Err(TlsError::Invalid(format!(
                "the CA certificate is for {cn:?}, not {expected:?}"
            )));
        }
        if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(TlsError::Invalid(
                "the CA key does not belong to the CA certificate".into(),
            ));
        }
        Ok(Authority {
            cert_pem: String::from_utf8_lossy(cert_pem).into_owned(),
            key,
            params: ca_params(cluster),
        })
    }

    pub(crate) fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub(crate) fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A new certificate and key for `leaf`, valid for `lifetime` from `now`.
    pub(crate) fn issue(&self, leaf: &Leaf, lifetime: Duration, now: Timestamp) -> Result<Issued, TlsError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "raftkv");
        dn.push(DnType::CommonName, leaf.common_name.clone());
        p.distinguished_name = dn;
        p.subject_alt_names = leaf
            .dns_names
            .iter()
            .map(|d| {
                d.clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|_| TlsError::Invalid(format!("{d:?} is not a DNS name")))
            })
            .chain(leaf.ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
            .collect::<Result<_, _>>()?;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = if leaf.server {
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        p.use_authority_key_identifier_extension = true;
        let back = jiff::SignedDuration::try_from(backdate(lifetime)).unwrap_or_default();
        let life = jiff::SignedDuration::try_from(lifetime).map_err(|e| TlsError::Invalid(e.to_string()))?;
        p.not_before = offset(now - back)?;
        p.not_after = offset(now + life)?;
        p.serial_number = Some(random_serial());
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = p.signed_by(&key, &issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The validity of `cert_pem` if it is still good: signed by this CA, for exactly `leaf`'s
    /// names, with `lifetime`, and not yet due for renewal at `now`. `None`: issue it again.
    pub(crate) fn still_good(
        &self,
        cert_pem: &[u8],
        leaf: &Leaf,
        lifetime: Duration,
        now: Timestamp,
    ) -> Option<Validity> {
        let ca_der = der_of(self.cert_pem.as_bytes()).ok()?;
        let ca = parse(&ca_der).ok()?;
        let der = der_of(cert_pem).ok()?;
        let cert = parse(&der).ok()?;
        cert.verify_signature(Some(ca.public_key())).ok()?;
        let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
        if cn != leaf.common_name {
            return None;
        }
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns.push(d.to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?)),
                        16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?)),
                        _ => return None,
                    },
                    _ => return None,
                }
            }
        }
        let (mut want_dns, mut want_ips) = (leaf.dns_names.clone(), leaf.ips.clone());
        for v in [&mut dns, &mut want_dns] {
            v.sort();
        }
        for v in [&mut ips, &mut want_ips] {
            v.sort();
        }
        if dns != want_dns || ips != want_ips {
            return None;
        }
        let nb = cert.validity().not_before.timestamp();
        let na = cert.validity().not_after.timestamp();
        let wanted = (lifetime + backdate(lifetime)).as_secs() as i64;
        if (na - nb - wanted).abs() > 1 {
            return None;
        }
        let v = validity_of(cert_pem).ok()?;
        (now < v.renew_at).then_some(v)
    }
}

/// Secret data: key name -> bytes.
pub(crate) type SecretData = BTreeMap<String, Vec<u8>>;

/// What one set of certificates in a Secret became: its data, which certificates were issued
/// now, and the earliest renewal among them.
#[derive(Debug)]
pub(crate) struct Renewal {
    pub(crate) data: SecretData,
    pub(crate) issued: Vec<String>,
    pub(crate) validity: Option<Validity>,
}

/// The Secret that holds `leaves` (by the file stem each is stored under: `<stem>.crt`,
/// `<stem>.key`) and the CA bundle `ca.crt`, from what it holds now: good certificates are
/// kept, missing or due ones issued, others dropped.
pub(crate) fn certificates(
    ca: &Authority,
    existing: &SecretData,
    leaves: &[(String, Leaf)],
    lifetime: Duration,
    now: Timestamp,
) -> Result<Renewal, TlsError> {
    let mut data = SecretData::new();
    data.insert("ca.crt".into(), ca.cert_pem().as_bytes().to_vec());
    let mut issued = Vec::new();
    let mut validity: Option<Validity> = None;
    for (stem, leaf) in leaves {
        let (crt, key) = (format!("{stem}.crt"), format!("{stem}.key"));
        let kept = match (existing.get(&crt), existing.get(&key)) {
            (Some(c), Some(k)) => ca.still_good(c, leaf, lifetime, now).map(|v| (c.clone(), k.clone(), v)),
            _ => None,
        };
        let (c, k, v) = match kept {
            Some(kept) => kept,
            None => {
                let new = ca.issue(leaf, lifetime, now)?;
                issued.push(stem.clone());
                let v = validity_of(new.cert_pem.as_bytes())?;
                (new.cert_pem.into_bytes(), new.key_pem.into_bytes(), v)
            }
        };
        validity = Some(validity.map_or(v, |e| e.earliest(v)));
        data.insert(crt, c);
        data.insert(key, k);
    }
    Ok(Renewal { data, issued, validity })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).expect("a time")
    }

    fn leaf(cn: &str) -> Leaf {
        Leaf {
            common_name: cn.into(),
            dns_names: vec![format!("{cn}.demo-peers.ns.svc.cluster.local"), "localhost".into()],
            ips: vec!["127.0.0.1".parse().expect("an ip")],
            server: true,
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_certificate_is_kept_until_two_thirds_of_its_life_then_renewed_with_a_new_key() {
        let ca = Authority::create("ns/demo", now()).expect("a CA");
        let leaves = vec![("demo-0".to_string(), leaf("demo-0"))];
        let first = certificates(&ca, &SecretData::new(), &leaves, 3 * HOUR, now()).expect("issued");
        assert_eq!(first.issued, ["demo-0"]);
        assert_eq!(
            first.data.keys().collect::<Vec<_>>(),
            ["ca.crt", "demo-0.crt", "demo-0.key"]
        );
        let v = first.validity.expect("a validity");
        assert_eq!(v.not_after, now() + jiff::SignedDuration::from_hours(3));
        // Two thirds of (3 h + the 60 s backdate), counted from the backdated start.
        assert_eq!(
            v.renew_at,
            now() - jiff::SignedDuration::from_secs(60) + jiff::SignedDuration::from_secs(7240)
        );

        let later = v.renew_at - jiff::SignedDuration::from_secs(1);
        let kept = certificates(&ca, &first.data, &leaves, 3 * HOUR, later).expect("kept");
        assert!(kept.issued.is_empty());
        assert_eq!(kept.data, first.data);

        let due = certificates(&ca, &first.data, &leaves, 3 * HOUR, v.renew_at).expect("renewed");
        assert_eq!(due.issued, ["demo-0"]);
        assert_ne!(due.data["demo-0.crt"], first.data["demo-0.crt"]);
        assert_ne!(due.data["demo-0.key"], first.data["demo-0.key"], "a new key");
        assert_eq!(due.data["ca.crt"], first.data["ca.crt"], "the same CA");
    }

    #[test]
    fn changed_names_a_changed_lifetime_or_another_ca_mean_a_new_certificate() {
        let ca = Authority::create("ns/demo", now()).expect("a CA");
        let leaves = vec![("demo-0".to_string(), leaf("demo-0"))];
        let first = certificates(&ca, &SecretData::new(), &leaves, HOUR, now()).expect("issued");
        let mut renamed = leaves.clone();
        renamed[0].1.dns_names.push("demo.ns.svc".into());
        assert_eq!(
            certificates(&ca, &first.data, &renamed, HOUR, now())
                .expect("ok")
                .issued,
            ["demo-0"]
        );
        assert_eq!(
            certificates(&ca, &first.data, &leaves, 2 * HOUR, now())
                .expect("ok")
                .issued,
            ["demo-0"]
        );
        let other = Authority::create("ns/demo", now()).expect("another CA");
        assert_eq!(
            certificates(&other, &first.data, &leaves, HOUR, now())
                .expect("ok")
                .issued,
            ["demo-0"]
        );
    }

    #[test]
    fn pods_no_longer_wanted_lose_their_certificates() {
        let ca = Authority::create("ns/demo", now()).expect("a CA");
        let two: Vec<_> = ["demo-0", "demo-1"].iter().map(|p| (p.to_string(), leaf(p))).collect();
        let first = certificates(&ca, &SecretData::new(), &two, HOUR, now()).expect("issued");
        let one = certificates(&ca, &first.data, &two[..1], HOUR, now()).expect("ok");
        assert!(one.issued.is_empty());
        assert!(!one.data.contains_key("demo-1.crt") && !one.data.contains_key("demo-1.key"));
    }

    #[test]
    fn a_kept_ca_loads_and_signs_certificates_that_chain_to_it() {
        let ca = Authority::create("ns/demo", now()).expect("a CA");
        let loaded = Authority::load("ns/demo", ca.cert_pem().as_bytes(), ca.key_pem().as_bytes()).expect("loads");
        let issued = loaded.issue(&leaf("demo-1"), HOUR, now()).expect("issued");
        // Verified against the CA as it was first made: the same key and subject.
        assert!(ca
            .still_good(issued.cert_pem.as_bytes(), &leaf("demo-1"), HOUR, now())
            .is_some());
        let err = Authority::load("ns/other", ca.cert_pem().as_bytes(), ca.key_pem().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("ns/other"), "{err}");
        let stranger = Authority::create("ns/demo", now()).expect("a CA");
        let err = Authority::load("ns/demo", ca.cert_pem().as_bytes(), stranger.key_pem().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[test]
    fn the_operator_certificate_is_for_clients_only() {
        let ca = Authority::create("ns/demo", now()).expect("a CA");
        let op = Leaf {
            common_name: "root".into(),
            dns_names: vec![],
            ips: vec![],
            server: false,
        };
        let issued = ca.issue(&op, HOUR, now()).expect("issued");
        let (_, pem) = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes()).expect("pem");
        let cert = pem.parse_x509().expect("x509");
        let eku = cert.extended_key_usage().expect("eku").expect("an eku").value;
        assert!(eku.client_auth && !eku.server_auth);
    }
}
