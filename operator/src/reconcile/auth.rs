//! `spec.auth`: the root user's password in the Secret `<name>-root`, and authentication
//! turned on through the HTTP API once the cluster has a leader.
//!
//! The Secret is created once and never rewritten, and it carries no owner reference: the
//! users live in the cluster's data, which outlives the RaftCluster (its volumes are kept), so
//! the password must outlive it too. A person may create the Secret first to choose the
//! password.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::runtime::events::EventType;
use raftkv_client::Credentials;
use rand::distr::{Alphanumeric, SampleString};

use super::apply::publish;
use super::observe::Observation;
use super::{Context, Error};
use crate::children;
use crate::crd::RaftCluster;
use crate::names::{Names, HTTP_PORT};
use crate::nodes::Access;

/// The user the operator acts as.
pub(super) const ROOT: &str = "root";

/// Root's credentials from `<name>-root`, which is created with a random password if it
/// does not exist; `None` when the spec does not ask for authentication.
pub(super) async fn root_credentials(rc: &RaftCluster, ctx: &Context, n: &Names) -> Result<Option<Credentials>, Error> {
    if !rc.spec.auth.enabled {
        return Ok(None);
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &n.namespace);
    let name = n.root_secret();
    let secret = match api.get_opt(&name).await? {
        Some(s) => s,
        None => {
            let mut meta = children::meta(rc, n, &name);
            meta.owner_references = None;
            let password = Alphanumeric.sample_string(&mut rand::rng(), 32);
            let s = Secret {
                metadata: meta,
                type_: Some("kubernetes.io/basic-auth".into()),
                data: Some(BTreeMap::from([
                    ("username".to_string(), ByteString(ROOT.as_bytes().to_vec())),
                    ("password".to_string(), ByteString(password.into_bytes())),
                ])),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &s).await {
                Ok(s) => s,
                Err(kube::Error::Api(e)) if e.code == 409 => api.get(&name).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    let data = secret.data.unwrap_or_default();
    let field = |k: &str| data.get(k).map(|v| String::from_utf8_lossy(&v.0).into_owned());
    match (field("username"), field("password")) {
        (Some(user), Some(password)) if user == ROOT && !password.is_empty() => {
            Ok(Some(Credentials::Basic { user, password }))
        }
        _ => Err(Error::Auth(format!(
            "Secret {name} must hold username \"root\" and a non-empty password"
        ))),
    }
}

/// Turns authentication on if it is off, through a member's HTTP API. Whether it is on
/// afterwards, and the error if that could not be found out or done.
pub(super) async fn ensure(
    rc: &RaftCluster,
    ctx: &Context,
    n: &Names,
    obs: &Observation,
    access: &Access,
) -> (Option<bool>, Option<String>) {
    let Some(Credentials::Basic { password, .. }) = access.credentials().cloned() else {
        return (None, None);
    };
    // A member that answered this round: authentication is replicated, any member will do.
    let Some(addr) = obs
        .observed
        .pods
        .iter()
        .filter(|(_, p)| p.ready && p.node.as_ref().is_some_and(|node| node.member_of_own_view))
        .find_map(|(ord, _)| obs.addrs.get(ord))
        .and_then(|admin| admin.rsplit_once(':'))
        .map(|(host, _)| format!("{host}:{HTTP_PORT}"))
    else {
        return (None, None);
    };
    match ctx.nodes.auth_enabled(addr.clone(), access).await {
        Ok(true) => (Some(true), None),
        Ok(false) => match ctx.nodes.enable_auth(addr, access, password).await {
            Ok(msg) => {
                tracing::info!(namespace = %n.namespace, name = %n.name, "{msg}");
                publish(ctx, rc, EventType::Normal, "AuthEnabled", &msg).await;
                (Some(true), None)
            }
            Err(e) => {
                publish(ctx, rc, EventType::Warning, "AuthEnableFailed", &e).await;
                (Some(false), Some(format!("cannot turn authentication on: {e}")))
            }
        },
        Err(e) => (None, Some(format!("cannot read whether authentication is on: {e}"))),
    }
}
