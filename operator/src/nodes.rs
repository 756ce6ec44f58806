//! Talking to the raftkv nodes: their admin gRPC service (`raftkv.admin.v1`), the one way the
//! operator changes a cluster. Behind a trait, so that reconcile tests can use a fake.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use raftkv_client::auth::Auth;
use raftkv_client::{pb, Admin, Credentials, Tls};

/// How the operator reaches one cluster's nodes: in plain text, or over TLS presenting its
/// client certificate and trusting the cluster's CA; with root's credentials once the spec
/// asks for authentication. Made on every reconcile from the cluster's Secrets.
#[derive(Clone, Default)]
pub struct Access {
    tls: Option<Tls>,
    credentials: Option<Credentials>,
    /// Why the nodes cannot be called yet (TLS wanted, but no client certificate issued).
    unavailable: Option<String>,
    /// A digest of the material above: kept connections are remade when it changes (a renewed
    /// client certificate).
    digest: u64,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("tls", &self.tls.is_some())
            .field("credentials", &self.credentials)
            .field("unavailable", &self.unavailable)
            .finish()
    }
}

impl Access {
    /// Plain text, no credentials.
    pub fn plain() -> Access {
        Access::default()
    }

    /// TLS from PEM text (`ca` to trust, `cert` and `key` to present), if given, and
    /// `credentials` on every call.
    pub fn new(tls: Option<(&[u8], &[u8], &[u8])>, credentials: Option<Credentials>) -> Result<Access, String> {
        let mut h = DefaultHasher::new();
        tls.hash(&mut h);
        if let Some(c) = &credentials {
            c.authorization().hash(&mut h);
        }
        let tls = match tls {
            Some((ca, cert, key)) => {
                Some(Tls::from_pem(Some(ca), Some(cert), Some(key)).map_err(|e| format!("the operator's TLS: {e}"))?)
            }
            None => None,
        };
        Ok(Access {
            tls,
            credentials,
            unavailable: None,
            digest: h.finish(),
        })
    }

    /// The nodes cannot be called, for `why`.
    pub fn unavailable(why: String) -> Access {
        Access {
            unavailable: Some(why),
            ..Access::default()
        }
    }

    /// Why the nodes cannot be called yet, if they cannot.
    pub fn unavailable_reason(&self) -> Option<&str> {
        self.unavailable.as_deref()
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some() || self.unavailable.is_some()
    }

    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// `host:port` as this access dials it: `https://` with TLS.
    pub fn endpoint(&self, addr: &str) -> String {
        if self.tls.is_some() {
            format!("https://{addr}")
        } else {
            addr.to_string()
        }
    }

    /// A client of the `/v1/auth` endpoints of the node at `addr` (`host:port`).
    fn auth_client(&self, addr: &str, timeout: Duration) -> Result<Auth, String> {
        if let Some(why) = &self.unavailable {
            return Err(why.clone());
        }
        let mut auth = Auth::new(&self.endpoint(addr), self.tls.as_ref())
            .map_err(text)?
            .with_timeout(timeout);
        if let Some(c) = &self.credentials {
            auth = auth.with_credentials(c);
        }
        Ok(auth)
    }
}

/// The calls the operator makes to the nodes: membership through the admin service (the peer
/// port), authentication through the HTTP API. `addr` is `host:port`; `access` says how to
/// reach it. Errors are human-readable strings that end up in Events and status conditions.
pub trait Nodes: Send + Sync + 'static {
    fn status(&self, addr: String, access: &Access) -> BoxFuture<'static, Result<pb::StatusResponse, String>>;
    fn members(&self, addr: String, access: &Access) -> BoxFuture<'static, Result<pb::MembersResponse, String>>;
    fn initialize(
        &self,
        addr: String,
        access: &Access,
        members: Vec<pb::Member>,
    ) -> BoxFuture<'static, Result<String, String>>;
    fn add_learner(
        &self,
        addr: String,
        access: &Access,
        req: pb::AddMemberRequest,
    ) -> BoxFuture<'static, Result<String, String>>;
    /// AddVoter for a learner that has caught up (idempotent: it promotes an existing learner).
    fn promote(
        &self,
        addr: String,
        access: &Access,
        req: pb::AddMemberRequest,
    ) -> BoxFuture<'static, Result<String, String>>;
    fn remove(&self, addr: String, access: &Access, id: u64, force: bool)
        -> BoxFuture<'static, Result<String, String>>;
    fn transfer_leadership(&self, addr: String, access: &Access, to: u64)
        -> BoxFuture<'static, Result<String, String>>;
    /// Whether authentication is on, asked through the HTTP API at `addr`.
    fn auth_enabled(&self, addr: String, access: &Access) -> BoxFuture<'static, Result<bool, String>>;
    /// Creates user `root` (with `password`) and role `root` if they are missing, grants the
    /// role, and turns authentication on: what `raftkv user add`, `raftkv user grant-role` and
    /// `raftkv auth enable` do.
    fn enable_auth(
        &self,
        addr: String,
        access: &Access,
        password: String,
    ) -> BoxFuture<'static, Result<String, String>>;
}

/// How many pod addresses keep a connection. Pod IPs change as pods are recreated, so old
/// addresses pile up in `PodIp` mode; past this many the cache starts afresh.
const MAX_KEPT: usize = 256;

/// The real thing: over gRPC, one kept admin connection per pod address, reused by every
/// reconcile (the channel reconnects by itself when a pod restarts) and remade when the
/// access to it changes; the HTTP API for authentication.
pub struct GrpcNodes {
    timeout: Duration,
    admins: Mutex<HashMap<String, (u64, Arc<Admin>)>>,
}

impl GrpcNodes {
    /// `timeout` bounds each call (an add-voter's catch-up wait comes on top).
    pub fn new(timeout: Duration) -> GrpcNodes {
        GrpcNodes {
            timeout,
            admins: Mutex::new(HashMap::new()),
        }
    }

    /// The kept connection to `addr` with `access`, made on first use.
    fn admin(&self, addr: &str, access: &Access) -> Result<Arc<Admin>, String> {
        if let Some(why) = &access.unavailable {
            return Err(why.clone());
        }
        // The map is a cache: whatever a panicking holder left in it is still valid.
        let mut admins = self.admins.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((digest, a)) = admins.get(addr) {
            if *digest == access.digest {
                return Ok(a.clone());
            }
        }
        if admins.len() >= MAX_KEPT {
            admins.clear();
        }
        let mut admin = Admin::new(&access.endpoint(addr)).map_err(text)?.timeout(self.timeout);
        if let Some(tls) = &access.tls {
            admin = admin.with_tls(tls.clone());
        }
        if let Some(c) = &access.credentials {
            admin = admin.with_credentials(c.clone()).map_err(text)?;
        }
        let admin = Arc::new(admin);
        admins.insert(addr.to_string(), (access.digest, admin.clone()));
        Ok(admin)
    }

    /// Runs `call` on the kept connection to `addr`.
    fn on<T, F, Fut>(&self, addr: String, access: &Access, call: F) -> BoxFuture<'static, Result<T, String>>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Admin>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, raftkv_client::Error>> + Send + 'static,
    {
        let admin = self.admin(&addr, access);
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
    fn status(&self, addr: String, access: &Access) -> BoxFuture<'static, Result<pb::StatusResponse, String>> {
        self.on(addr, access, |a| async move { a.status().await })
    }

    fn members(&self, addr: String, access: &Access) -> BoxFuture<'static, Result<pb::MembersResponse, String>> {
        self.on(addr, access, |a| async move { a.members().await })
    }

    fn initialize(
        &self,
        addr: String,
        access: &Access,
        members: Vec<pb::Member>,
    ) -> BoxFuture<'static, Result<String, String>> {
        self.on(addr, access, |a| async move {
            a.initialize(members).await.map(|r| r.message)
        })
    }

    fn add_learner(
        &self,
        addr: String,
        access: &Access,
        req: pb::AddMemberRequest,
    ) -> BoxFuture<'static, Result<String, String>> {
        self.on(
            addr,
            access,
            |a| async move { a.add_learner(req).await.map(|r| r.message) },
        )
    }

    fn promote(
        &self,
        addr: String,
        access: &Access,
        req: pb::AddMemberRequest,
    ) -> BoxFuture<'static, Result<String, String>> {
        self.on(addr, access, |a| async move {
            a.add_voter_until_done(req, |_| {}).await.map(|r| r.message)
        })
    }

    fn remove(
        &self,
        addr: String,
        access: &Access,
        id: u64,
        force: bool,
    ) -> BoxFuture<'static, Result<String, String>> {
        self.on(addr, access, move |a| async move {
            a.remove_member(id, force).await.map(|r| r.message)
        })
    }

    fn transfer_leadership(
        &self,
        addr: String,
        access: &Access,
        to: u64,
    ) -> BoxFuture<'static, Result<String, String>> {
        let to = (to != 0).then_some(to);
        self.on(addr, access, move |a| async move {
            a.transfer_leadership(to)
                .await
                .map(|r| format!("leadership moved from {} to {}", r.old_leader, r.new_leader))
        })
    }

    fn auth_enabled(&self, addr: String, access: &Access) -> BoxFuture<'static, Result<bool, String>> {
        let auth = access.auth_client(&addr, self.timeout);
        Box::pin(async move { crate::auth::enabled(&auth?).await.map_err(text) })
    }

    fn enable_auth(
        &self,
        addr: String,
        access: &Access,
        password: String,
    ) -> BoxFuture<'static, Result<String, String>> {
        let auth = access.auth_client(&addr, self.timeout);
        Box::pin(async move { crate::auth::enable(&auth?, &password).await.map_err(text) })
    }
}
