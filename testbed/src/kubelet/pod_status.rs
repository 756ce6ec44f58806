//! The pod's status as the API shows it: phase, addresses, the Ready conditions (which put
//! the pod in its Services' EndpointSlices) and the container's state and restart count.

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use k8s_openapi::api::core::v1::Pod;

use super::{now, State};
use crate::network::GATEWAY;

impl State {
    /// Patches the pod's status when it changed.
    pub(super) async fn report(&self, uid: &str) -> anyhow::Result<()> {
        let (ns, name, status) = {
            let rts = self.pods();
            let Some(rt) = rts.get(uid) else { return Ok(()) };
            let running = rt.proc.is_some() && rt.terminating.is_none();
            let ready = running && rt.ready;
            let r = if ready { "True" } else { "False" };
            let state = if running {
                json!({"running": {"startedAt": rt.started_at}})
            } else {
                json!({"waiting": {"reason": if rt.restarts > 0 || rt.last_exit.is_some() { "CrashLoopBackOff" } else { "ContainerCreating" }}})
            };
            let last_state = match rt.last_exit {
                Some(code) => json!({"terminated": {"exitCode": code, "finishedAt": rt.started_at}}),
                None => json!({}),
            };
            let status = json!({"status": {
                "phase": "Running", "hostIP": GATEWAY, "podIP": rt.net.ip, "podIPs": [{"ip": rt.net.ip}],
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Initialized", "status": "True"},
                    {"type": "ContainersReady", "status": r},
                    {"type": "Ready", "status": r}],
                "containerStatuses": [{"name": rt.container, "image": rt.image, "imageID": "", "ready": ready,
                    "started": running, "restartCount": rt.restarts, "state": state, "lastState": last_state}]
            }});
            if status == rt.last_status {
                return Ok(());
            }
            (rt.ns.clone(), rt.name.clone(), status)
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        // startTime is left out of the comparison above: it changes every second.
        let mut with_start = status.clone();
        with_start["status"]["startTime"] = json!(now());
        // A merge patch replaces podIPs instead of appending (a strategic merge would append).
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&with_start))
            .await?;
        if let Some(rt) = self.pods().get_mut(uid) {
            rt.last_status = status;
        }
        Ok(())
    }
}
