//! Leader election through a `coordination.k8s.io` Lease, so that two operator replicas can run
//! and only one acts. Optimistic concurrency (the Lease's resourceVersion) decides races.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub duration: Duration,
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

/// Tries once to take or renew the lease; `Ok(true)` if we hold it afterwards.
pub async fn try_acquire(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let secs = cfg.duration.as_secs() as i32;
    let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(secs),
        acquire_time: acquired.or_else(|| Some(now())),
        renew_time: Some(now()),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    match api.get_opt(&cfg.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(spec(0, None)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let cur = lease.spec.clone().unwrap_or_default();
            let holder = cur.holder_identity.clone().unwrap_or_default();
            let ours = holder == cfg.identity;
            let expired = match (&cur.renew_time, cur.lease_duration_seconds) {
                (Some(t), Some(d)) => {
                    let age = jiff::Timestamp::now().duration_since(t.0);
                    age.as_secs() > d as i64
                }
                _ => true,
            };
            if !ours && !expired && !holder.is_empty() {
                return Ok(false);
            }
            let transitions = cur.lease_transitions.unwrap_or(0) + if ours { 0 } else { 1 };
            let acquired = if ours { cur.acquire_time.clone() } else { None };
            lease.spec = Some(spec(transitions, acquired));
            // `replace` carries the resourceVersion we read: a concurrent writer makes it fail.
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Blocks until this replica holds the lease.
pub async fn acquire(api: &Api<Lease>, cfg: &LeaseConfig) {
    loop {
        match try_acquire(api, cfg).await {
            Ok(true) => return,
            Ok(false) => tracing::debug!(lease = %cfg.name, "another replica leads; standing by"),
            Err(e) => tracing::warn!(error = %e, "cannot read or take the lease"),
        }
        tokio::time::sleep(cfg.duration / 3).await;
    }
}

/// Renews the lease until it cannot; returns when leadership is lost.
pub async fn hold(api: &Api<Lease>, cfg: &LeaseConfig) {
    let mut failures_since = None::<std::time::Instant>;
    loop {
        tokio::time::sleep(cfg.duration / 3).await;
        match try_acquire(api, cfg).await {
            Ok(true) => failures_since = None,
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the lease");
                let since = *failures_since.get_or_insert_with(std::time::Instant::now);
                // Stop acting before another replica may take over.
                if since.elapsed() >= cfg.duration * 2 / 3 {
                    return;
                }
            }
        }
    }
}
