//! Pod DNS without a DNS server: every pod's /etc/hosts lists every pod here under the names
//! its headless Service gives it, `<hostname>.<subdomain>.<ns>.svc.cluster.local` and the
//! shorter forms a resolver's search path would accept.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::State;

impl State {
    /// Rewrites the name table from `pods` (the API's list) and the addresses of those running.
    pub(super) fn write_hosts(&self, pods: &[Pod]) {
        let rts = self.pods();
        let mut entries = Vec::new();
        for pod in pods {
            let Some(rt) = rts.get(&pod.uid().unwrap_or_default()) else {
                continue;
            };
            entries.push((rt.net.ip.clone(), names_of(pod)));
        }
        drop(rts);
        self.net.write_hosts(&entries);
    }
}

/// The names a pod answers to: its hostname (the pod's name unless the spec sets one), and
/// with a subdomain the Service-qualified forms.
fn names_of(pod: &Pod) -> Vec<String> {
    let ns = pod.namespace().unwrap_or_default();
    let mut names = vec![];
    if let Some(spec) = &pod.spec {
        let host = spec.hostname.clone().unwrap_or_else(|| pod.name_any());
        if let Some(sub) = &spec.subdomain {
            names.push(format!("{host}.{sub}.{ns}.svc.cluster.local"));
            names.push(format!("{host}.{sub}.{ns}.svc"));
            names.push(format!("{host}.{sub}"));
        }
        names.push(host);
    }
    names
}
