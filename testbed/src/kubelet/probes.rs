//! Readiness and liveness probes (HTTP GET, over HTTPS when the probe's scheme says so, without
//! verifying the certificate, as the kubelet does; the kind raftkv's pods use): readiness sets
//! the pod's Ready condition, and so its place in EndpointSlices; liveness kills the process
//! after `failureThreshold` failures in a row, and the restart logic starts it again.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe as ProbeSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::State;

/// One probe of a container, with its schedule and its run of failures.
pub(super) struct Probe {
    /// `http` or `https`.
    scheme: &'static str,
    path: String,
    port: u16,
    period: Duration,
    failure_threshold: u32,
    next: Instant,
    pub(super) failures: u32,
}

impl Probe {
    /// The probe `spec` describes, with its defaults; `None` if there is none or it is not an
    /// HTTP GET on a port the container declares.
    pub(super) fn of(spec: &Option<ProbeSpec>, c: &Container) -> Option<Probe> {
        let p = spec.as_ref()?;
        let g = p.http_get.as_ref()?;
        Some(Probe {
            scheme: if g.scheme.as_deref() == Some("HTTPS") {
                "https"
            } else {
                "http"
            },
            path: g.path.clone().unwrap_or_else(|| "/".into()),
            port: port_of(&g.port, c)?,
            period: Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64),
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
            next: Instant::now() + Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64),
            failures: 0,
        })
    }
}

/// A probe's port: a number, or the name of one of the container's ports.
fn port_of(port: &IntOrString, c: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(i) => u16::try_from(*i).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name))
            .and_then(|cp| u16::try_from(cp.container_port).ok()),
    }
}

impl State {
    /// Runs the pod's probes that are due. A container without a readiness probe is ready
    /// as soon as it runs.
    pub(super) async fn probe(&self, uid: &str) {
        let targets: Vec<(bool, String)> = {
            let mut rts = self.pods();
            let Some(rt) = rts.get_mut(uid) else { return };
            if rt.proc.is_none() || rt.terminating.is_some() {
                return;
            }
            let ip = rt.net.ip.clone();
            let mut t = Vec::new();
            for (live, p) in [(false, &mut rt.readiness), (true, &mut rt.liveness)] {
                if let Some(p) = p {
                    if Instant::now() >= p.next {
                        p.next = Instant::now() + p.period;
                        t.push((live, format!("{}://{ip}:{}{}", p.scheme, p.port, p.path)));
                    }
                }
            }
            if rt.readiness.is_none() {
                rt.ready = true;
            }
            t
        };
        for (live, url) in targets {
            let ok = self
                .http
                .get(&url)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            let mut rts = self.pods();
            let Some(rt) = rts.get_mut(uid) else { return };
            if live {
                let Some(p) = rt.liveness.as_mut() else { continue };
                p.failures = if ok { 0 } else { p.failures + 1 };
                if p.failures >= p.failure_threshold {
                    tracing::info!(pod = %rt.name, "liveness probe failed: restarting");
                    rt.kill();
                }
            } else {
                rt.ready = ok;
            }
        }
    }
}
