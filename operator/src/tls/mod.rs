//! TLS for a cluster's nodes, decided without the API server: where the certificates come
//! from ([`Mode`]), what each must name ([`leaves`]), the operator's own CA ([`authority`]),
//! and the cert-manager Certificates used instead when the spec names an issuer
//! ([`cert_manager`]). `reconcile::certificates` reads and writes the Secrets.
//!
//! The Secrets of a cluster `<name>`:
//! - `<name>-tls`, mounted by every pod at [`crate::names::TLS_DIR`]: `ca.crt`, and per pod
//!   `<pod>.crt` and `<pod>.key` (the operator's CA), or `tls.crt` and `tls.key` shared by all
//!   pods (cert-manager's). One Secret for all pods, so that a renewal changes files, never the
//!   pod template: nothing restarts.
//! - `<name>-operator-tls`: the operator's client certificate (`ca.crt`, `tls.crt`, `tls.key`).
//! - `<name>-ca`: the operator's CA (`ca.crt`, `ca.key`); read only by the operator.

pub(crate) mod authority;
pub(crate) mod cert_manager;
pub(crate) mod leaves;

use std::time::Duration;

use crate::crd::TlsSpec;
use crate::names::TLS_DIR;

/// How long certificates are valid when the spec does not say: 90 days, as cert-manager's
/// default.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// The shortest lifetime the operator issues (tests use short ones to see renewals).
pub const MIN_LIFETIME: Duration = Duration::from_secs(60);
/// cert-manager refuses Certificates valid for less than an hour.
pub const MIN_CERT_MANAGER_LIFETIME: Duration = Duration::from_secs(3600);

/// Where a cluster's certificates come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plain text on every port.
    Off,
    /// The operator's own CA, a certificate per pod.
    Operator,
    /// cert-manager, one certificate shared by the pods.
    CertManager,
}

impl Mode {
    pub fn of(spec: &TlsSpec) -> Mode {
        match (spec.enabled, &spec.issuer_ref) {
            (false, _) => Mode::Off,
            (true, None) => Mode::Operator,
            (true, Some(_)) => Mode::CertManager,
        }
    }

    /// The mode a StatefulSet's pods were made with, from the node's arguments.
    pub fn of_args(args: &[String]) -> Mode {
        let cert = args.iter().find_map(|a| a.strip_prefix("--peer-cert-file="));
        match cert {
            None => Mode::Off,
            Some(path) if path.ends_with("/tls.crt") => Mode::CertManager,
            Some(_) => Mode::Operator,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Mode::Off => "no TLS",
            Mode::Operator => "TLS from the operator's CA",
            Mode::CertManager => "TLS from cert-manager",
        }
    }

    /// The node's certificate and key files, as the pod sees them (`$(POD_NAME)` is expanded
    /// by the kubelet).
    pub fn files(self) -> Option<(String, String)> {
        match self {
            Mode::Off => None,
            Mode::Operator => Some((
                format!("{TLS_DIR}/$(POD_NAME).crt"),
                format!("{TLS_DIR}/$(POD_NAME).key"),
            )),
            Mode::CertManager => Some((format!("{TLS_DIR}/tls.crt"), format!("{TLS_DIR}/tls.key"))),
        }
    }
}

/// The certificates' lifetime from the spec (`"2160h"`, `"90m"`, ISO 8601 also accepted).
pub fn lifetime(spec: &TlsSpec) -> Result<Duration, String> {
    let Some(text) = spec.certificate_lifetime.as_deref() else {
        return Ok(DEFAULT_LIFETIME);
    };
    let d: jiff::SignedDuration = text
        .trim()
        .parse()
        .map_err(|e| format!("tls.certificateLifetime {text:?} is not a duration like \"2160h\" or \"90m\": {e}"))?;
    let d = Duration::try_from(d).map_err(|_| format!("tls.certificateLifetime {text:?} is negative"))?;
    let min = if spec.issuer_ref.is_some() {
        MIN_CERT_MANAGER_LIFETIME
    } else {
        MIN_LIFETIME
    };
    if d < min {
        return Err(format!(
            "tls.certificateLifetime {text:?} is shorter than {}s{}",
            min.as_secs(),
            if spec.issuer_ref.is_some() {
                " (cert-manager's minimum)"
            } else {
                ""
            }
        ));
    }
    if d > authority::CA_LIFETIME / 2 {
        return Err(format!("tls.certificateLifetime {text:?} is longer than five years"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::IssuerRef;

    fn spec(lifetime: Option<&str>, issuer: bool) -> TlsSpec {
        TlsSpec {
            enabled: true,
            issuer_ref: issuer.then(|| IssuerRef {
                name: "ca".into(),
                kind: None,
                group: None,
            }),
            certificate_lifetime: lifetime.map(str::to_string),
        }
    }

    #[test]
    fn lifetimes_parse_and_are_bounded() {
        assert_eq!(lifetime(&spec(None, false)), Ok(DEFAULT_LIFETIME));
        assert_eq!(lifetime(&spec(Some("90m"), false)), Ok(Duration::from_secs(5400)));
        assert_eq!(lifetime(&spec(Some("2160h"), true)), Ok(DEFAULT_LIFETIME));
        assert_eq!(lifetime(&spec(Some("90s"), false)), Ok(Duration::from_secs(90)));
        assert!(lifetime(&spec(Some("30s"), false)).unwrap_err().contains("shorter"));
        assert!(lifetime(&spec(Some("30m"), true)).unwrap_err().contains("cert-manager"));
        assert!(lifetime(&spec(Some("soon"), false))
            .unwrap_err()
            .contains("not a duration"));
        assert!(lifetime(&spec(Some("100000h"), false))
            .unwrap_err()
            .contains("five years"));
    }

    #[test]
    fn the_mode_is_read_back_from_the_node_arguments() {
        for mode in [Mode::Off, Mode::Operator, Mode::CertManager] {
            let args: Vec<String> = mode
                .files()
                .map(|(c, _)| vec![format!("--peer-cert-file={c}")])
                .unwrap_or_default();
            assert_eq!(Mode::of_args(&args), mode);
        }
    }
}
