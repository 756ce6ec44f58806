//! Talking to the raftkv nodes: their admin gRPC service (`raftkv.admin.v1`), the one way the
//! operator changes a cluster. Behind a trait, so that reconcile tests can use a fake.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use raftkv_client::{pb, Admin};

/// The admin calls the operator makes. Errors are human-readable strings that end up in
/// Events and status conditions.
pub trait Nodes: Send + Sync + 'static {
    fn status(&self, addr: String) -> BoxFuture<'static, Result<pb::StatusResponse, String>>;
    fn members(&self, addr: String) -> BoxFuture<'static, Result<pb::MembersResponse, String>>;
    fn initialize(&self, addr: String, members: Vec<pb::Member>) -> BoxFuture<'static, Result<String, String>>;
    fn add_learner(&self, addr: String, req: pb::AddMemberRequest) -> BoxFuture<'static, Result<String, String>>;
    /// AddVoter for a learner that has caught up (idempotent: it promotes an existing learner).
    fn promote(&self, addr: String, req: pb::AddMemberRequest) -> BoxFuture<'static, Result<String, String>>;
    fn remove(&self, addr: String, id: u64, force: bool) -> BoxFuture<'static, Result<String, String>>;
    fn transfer_leadership(&self, addr: String, to: u64) -> BoxFuture<'static, Result<String, String>>;
}

/// How many pod addresses keep a connection. Pod IPs change as pods are recreated, so old
/// addresses pile up in `PodIp` mode; past this many the cache starts afresh.
const MAX_KEPT: usize = 256;

/// The real thing, over gRPC: one kept admin connection per pod address, reused by every
/// reconcile (the channel reconnects by itself when a pod restarts).
pub struct GrpcNodes {
    timeout: Duration,
    admins: Mutex<HashMap<String, Arc<Admin>>>,
}

impl GrpcNodes {
    /// `timeout` bounds each call (an add-voter's catch-up wait comes on top).
    pub fn new(timeout: Duration) -> GrpcNodes {
        GrpcNodes {
            timeout,
            admins: Mutex::new(HashMap::new()),
        }
    }

    /// The kept connection to `addr`, made on first use.
    fn admin(&self, addr: &str) -> Result<Arc<Admin>, String> {
        // The map is a cache: whatever a panicking holder left in it is still valid.
        let mut admins = self.admins.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = admins.get(addr) {
            return Ok(a.clone());
        }
        if admins.len() >= MAX_KEPT {
            admins.clear();
        }
        let admin = Arc::new(Admin::new(addr).map_err(text)?.timeout(self.timeout));
        admins.insert(addr.to_string(), admin.clone());
        Ok(admin)
    }

    /// Runs `call` on the kept connection to `addr`.
    fn on<T, F, Fut>(&self, addr: String, call: F) -> BoxFuture<'static, Result<T, String>>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Admin>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, raftkv_client::Error>> + Send + 'static,
    {
        let admin = self.admin(&addr);
        Box::pin(async move { call(admin?).await.map_err(text) })
    }
}

/// An error as Events show it: the endpoint and the node's own words.
fn text(e: raftkv_client::Error) -> String {
    match e {
        raftkv_client::Error::Rpc { endpoint, message, .. } => format!("{endpoint}: {message}"),
        e => e.to_string(),
    }
}

impl Nodes for GrpcNodes {
    fn status(&self, addr: String) -> BoxFuture<'static, Result<pb::StatusResponse, String>> {
        self.on(addr, |a| async move { a.status().await })
    }

    fn members(&self, addr: String) -> BoxFuture<'static, Result<pb::MembersResponse, String>> {
        self.on(addr, |a| async move { a.members().await })
    }

    fn initialize(&self, addr: String, members: Vec<pb::Member>) -> BoxFuture<'static, Result<String, String>> {
        self.on(addr, |a| async move { a.initialize(members).await.map(|r| r.message) })
    }

    fn add_learner(&self, addr: String, req: pb::AddMemberRequest) -> BoxFuture<'static, Result<String, String>> {
        self.on(addr, |a| async move { a.add_learner(req).await.map(|r| r.message) })
    }

    fn promote(&self, addr: String, req: pb::AddMemberRequest) -> BoxFuture<'static, Result<String, String>> {
        self.on(addr, |a| async move {
            a.add_voter_until_done(req, |_| {}).await.map(|r| r.message)
        })
    }

    fn remove(&self, addr: String, id: u64, force: bool) -> BoxFuture<'static, Result<String, String>> {
        self.on(addr, move |a| async move {
            a.remove_member(id, force).await.map(|r| r.message)
        })
    }

    fn transfer_leadership(&self, addr: String, to: u64) -> BoxFuture<'static, Result<String, String>> {
        let to = (to != 0).then_some(to);
        self.on(addr, move |a| async move {
            a.transfer_leadership(to)
                .await
                .map(|r| format!("leadership moved from {} to {}", r.old_leader, r.new_leader))
        })
    }
}
