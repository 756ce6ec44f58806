//! The Secrets (and cert-manager Certificates) behind a cluster's TLS, read and written:
//! before observing, the CA and the operator's own client certificate (the nodes cannot be
//! called without it); after planning, the pods' certificates for every pod the StatefulSet
//! is about to have, so that a new pod finds its certificate when it starts.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;

use super::apply::publish;
use super::{Context, Error, FIELD_MANAGER};
use crate::children;
use crate::crd::RaftCluster;
use crate::names::Names;
use crate::nodes::Access;
use crate::tls::authority::{self, Authority, SecretData, Validity};
use crate::tls::{cert_manager, leaves, Mode};

/// The operator's client certificate and the CA it trusts, as PEM.
pub(super) struct Material {
    pub(super) ca: Vec<u8>,
    pub(super) cert: Vec<u8>,
    pub(super) key: Vec<u8>,
}

/// A cluster's TLS as this reconcile found or made it.
pub(super) struct Certificates {
    mode: Mode,
    lifetime: Duration,
    /// What the operator presents to the nodes; `None` while TLS is off or cert-manager has
    /// not issued it yet.
    pub(super) operator: Option<Material>,
    /// The earliest renewal and expiry among the certificates seen.
    pub(super) validity: Option<Validity>,
    /// The operator's CA (operator mode).
    authority: Option<Authority>,
}

impl Certificates {
    /// How the operator reaches the nodes, with `credentials` on every call.
    pub(super) fn access(&self, credentials: Option<raftkv_client::Credentials>) -> Result<Access, Error> {
        match (self.mode, &self.operator) {
            (Mode::Off, _) => Access::new(None, credentials).map_err(Error::Tls),
            (_, Some(m)) => Access::new(Some((&m.ca, &m.cert, &m.key)), credentials).map_err(Error::Tls),
            (_, None) => Ok(Access::unavailable(
                "waiting for cert-manager to issue the operator's client certificate".into(),
            )),
        }
    }

    fn saw(&mut self, v: Validity) {
        self.validity = Some(self.validity.map_or(v, |e| e.earliest(v)));
    }
}

fn secret_data(s: &Secret) -> SecretData {
    s.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect()
}

async fn read(api: &Api<Secret>, name: &str) -> Result<Option<SecretData>, Error> {
    Ok(api.get_opt(name).await?.as_ref().map(secret_data))
}

/// Writes the Secret `name` with exactly `data` (server-side apply: keys no longer given go).
async fn write(
    api: &Api<Secret>,
    rc: &RaftCluster,
    n: &Names,
    name: &str,
    type_: &str,
    data: SecretData,
) -> Result<(), Error> {
    let secret = Secret {
        metadata: children::meta(rc, n, name),
        type_: Some(type_.into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v)))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    };
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&secret))
        .await?;
    Ok(())
}

/// The cluster's CA: the one kept in `<name>-ca`, or a new one. A Secret of that name that
/// does not hold this cluster's CA is never replaced: a person must look at it.
async fn authority(rc: &RaftCluster, api: &Api<Secret>, n: &Names, now: Timestamp) -> Result<Authority, Error> {
    let cluster = format!("{}/{}", n.namespace, n.name);
    let name = n.ca_secret();
    if let Some(data) = read(api, &name).await? {
        return match (data.get("ca.crt"), data.get("ca.key")) {
            (Some(c), Some(k)) => Authority::load(&cluster, c, k),
            _ => Err(authority::TlsError::Invalid("it lacks ca.crt or ca.key".into())),
        }
        .map_err(|e| Error::Tls(format!("Secret {name} does not hold this cluster's CA ({e}); delete it to make a new CA, which issues every certificate again")));
    }
    let ca = Authority::create(&cluster, now).map_err(|e| Error::Tls(e.to_string()))?;
    let secret = Secret {
        metadata: children::meta(rc, n, &name),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            ("ca.crt".to_string(), ByteString(ca.cert_pem().as_bytes().to_vec())),
            ("ca.key".to_string(), ByteString(ca.key_pem().into_bytes())),
        ])),
        ..Default::default()
    };
    // Created, never applied: two writers must not each keep a CA of their own.
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(ca),
        Err(kube::Error::Api(e)) if e.code == 409 => Box::pin(authority(rc, api, n, now)).await,
        Err(e) => Err(e.into()),
    }
}

/// Reports certificates issued now as an Event.
async fn announce(ctx: &Context, rc: &RaftCluster, secret: &str, issued: &[String], v: Option<Validity>) {
    if issued.is_empty() {
        return;
    }
    let until = v
        .map(|v| format!("; next renewal at {}", v.renew_at))
        .unwrap_or_default();
    let note = format!("issued certificates in {secret} for {}{until}", issued.join(", "));
    tracing::info!(secret, issued = ?issued, "certificates issued");
    publish(ctx, rc, EventType::Normal, "CertificatesIssued", &note).await;
}

/// Everything the operator needs before it can call the nodes: the CA and its own client
/// certificate (operator mode), or the cert-manager Certificates applied and the operator's
/// Secret read (cert-manager mode).
pub(super) async fn prepare(rc: &RaftCluster, ctx: &Context, n: &Names) -> Result<Certificates, Error> {
    let mode = Mode::of(&rc.spec.tls);
    let lifetime = crate::tls::lifetime(&rc.spec.tls).map_err(Error::InvalidSpec)?;
    let mut certs = Certificates {
        mode,
        lifetime,
        operator: None,
        validity: None,
        authority: None,
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &n.namespace);
    match mode {
        Mode::Off => {}
        Mode::Operator => {
            let now = Timestamp::now();
            let ca = authority(rc, &api, n, now).await?;
            let name = n.operator_tls_secret();
            let existing = read(&api, &name).await?.unwrap_or_default();
            let wanted = [("tls".to_string(), leaves::operator())];
            let r = authority::certificates(&ca, &existing, &wanted, lifetime, now)
                .map_err(|e| Error::Tls(e.to_string()))?;
            if r.data != existing {
                write(&api, rc, n, &name, "kubernetes.io/tls", r.data.clone()).await?;
                announce(ctx, rc, &name, &r.issued, r.validity).await;
            }
            if let Some(v) = r.validity {
                certs.saw(v);
            }
            certs.operator = Some(Material {
                ca: r.data.get("ca.crt").cloned().unwrap_or_default(),
                cert: r.data.get("tls.crt").cloned().unwrap_or_default(),
                key: r.data.get("tls.key").cloned().unwrap_or_default(),
            });
            certs.authority = Some(ca);
        }
        Mode::CertManager => {
            let Some(issuer) = &rc.spec.tls.issuer_ref else {
                return Ok(certs);
            };
            let api_certs: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), &n.namespace, &cert_manager::certificate_resource());
            for c in [
                cert_manager::nodes_certificate(rc, n, issuer, lifetime),
                cert_manager::operator_certificate(rc, n, issuer, lifetime),
            ] {
                let name = c["metadata"]["name"].as_str().unwrap_or_default().to_string();
                api_certs
                    .patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&c))
                    .await?;
            }
            // cert-manager renews; the operator only reads what it issued.
            if let Some(data) = read(&api, &n.tls_secret()).await? {
                if let Some(v) = data.get("tls.crt").and_then(|c| authority::validity_of(c).ok()) {
                    certs.saw(v);
                }
            }
            if let Some(data) = read(&api, &n.operator_tls_secret()).await? {
                if let (Some(ca), Some(cert), Some(key)) =
                    (data.get("ca.crt"), data.get("tls.crt"), data.get("tls.key"))
                {
                    if let Ok(v) = authority::validity_of(cert) {
                        certs.saw(v);
                    }
                    certs.operator = Some(Material {
                        ca: ca.clone(),
                        cert: cert.clone(),
                        key: key.clone(),
                    });
                }
            }
        }
    }
    Ok(certs)
}

/// Operator mode: the pods' Secret holds a good certificate for each of pods `0..pods` (and
/// for no other pod), naming the pod's IP where it has one (`ips`), issued now where one is
/// missing, due, or names other addresses.
pub(super) async fn issue_pods(
    certs: &mut Certificates,
    rc: &RaftCluster,
    ctx: &Context,
    n: &Names,
    pods: u32,
    ips: &BTreeMap<u32, IpAddr>,
) -> Result<(), Error> {
    let Some(ca) = &certs.authority else {
        return Ok(());
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &n.namespace);
    let name = n.tls_secret();
    let existing = read(&api, &name).await?.unwrap_or_default();
    let wanted: Vec<_> = (0..pods)
        .map(|o| (n.pod(o), leaves::pod(n, o, ips.get(&o).copied())))
        .collect();
    let r = authority::certificates(ca, &existing, &wanted, certs.lifetime, Timestamp::now())
        .map_err(|e| Error::Tls(e.to_string()))?;
    if r.data != existing {
        write(&api, rc, n, &name, "Opaque", r.data).await?;
        announce(ctx, rc, &name, &r.issued, r.validity).await;
    }
    if let Some(v) = r.validity {
        certs.saw(v);
    }
    Ok(())
}
