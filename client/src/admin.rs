//! [`Admin`]: the admin gRPC service (`raftkv.admin.v1`, served on the Raft port), typed.
//!
//! An `Admin` holds one or more endpoints and one channel per endpoint, made on first use and
//! kept: later calls reuse it (tonic reconnects a kept channel by itself when its connection
//! drops). A call goes to the endpoint that answered last; if that one cannot be reached it
//! tries the others in order. An endpoint that answers with an error ends the search: the
//! error is the cluster's answer, not the endpoint's absence.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use raftkv_proto::admin as pb;
use raftkv_proto::admin::admin_client::AdminClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

use crate::model::NodeId;
use crate::tls::{Credentials, Tls, TlsConnector};
use crate::Error;

/// Adds the caller's credentials (if any) to every call, as the `authorization` metadata.
#[derive(Clone, Default)]
pub struct Authorize(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Authorize {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    }
}

/// The generated client, with credentials added to each call.
pub type AdminRpc = AdminClient<InterceptedService<Channel, Authorize>>;

/// The largest message the admin service may send (status of a big cluster, backup chunks).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

struct Target {
    /// As the caller wrote it: what error texts name.
    name: String,
    endpoint: Endpoint,
    channel: Mutex<Option<AdminRpc>>,
    /// Given `https://`: TLS even without [`Admin::with_tls`] (with the system's roots).
    https: bool,
}

/// The admin service of one node, or of the first of several that can be reached.
pub struct Admin {
    targets: Vec<Target>,
    /// The target that answered last: where the next call goes first.
    current: AtomicUsize,
    timeout: Duration,
    /// Made from a list: when none can be reached, say so for the whole list.
    list: bool,
    tls: Option<Tls>,
    authorize: Authorize,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("endpoints", &self.targets.iter().map(|t| &t.name).collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Default per-call timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long making a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

fn target(name: &str) -> Result<Target, Error> {
    let name = name.trim().to_string();
    // tonic is always given `http://`: TLS, when on, is done by our connector, which reads the
    // host for the certificate's name.
    let https = name.starts_with("https://");
    let uri = match name.split_once("://") {
        Some((_, rest)) => format!("http://{rest}"),
        None => format!("http://{name}"),
    };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| Error::BadEndpoint {
            endpoint: name.clone(),
            reason: e.to_string(),
        })?
        .connect_timeout(CONNECT_TIMEOUT);
    Ok(Target {
        name,
        endpoint,
        channel: Mutex::new(None),
        https,
    })
}

impl Admin {
    /// One endpoint (`host:port` or `http://host:port`); connects on the first call.
    pub fn new(endpoint: &str) -> Result<Admin, Error> {
        Ok(Admin {
            targets: vec![target(endpoint)?],
            current: AtomicUsize::new(0),
            timeout: DEFAULT_TIMEOUT,
            list: false,
            tls: None,
            authorize: Authorize::default(),
        })
    }

    /// Several endpoints of one cluster, tried in order until one can be reached (what
    /// `raftkv admin --endpoint a,b,c` does); connects on the first call.
    pub fn any<S: AsRef<str>>(endpoints: &[S]) -> Result<Admin, Error> {
        if endpoints.is_empty() {
            return Err(Error::NoEndpoint { failures: Vec::new() });
        }
        let targets = endpoints.iter().map(|e| target(e.as_ref())).collect::<Result<_, _>>()?;
        Ok(Admin {
            targets,
            current: AtomicUsize::new(0),
            timeout: DEFAULT_TIMEOUT,
            list: true,
            tls: None,
            authorize: Authorize::default(),
        })
    }

    /// One endpoint, connected now: fails at once if it cannot be reached.
    pub async fn connect(endpoint: &str) -> Result<Admin, Error> {
        let admin = Admin::new(endpoint)?;
        admin.client(0).await?;
        Ok(admin)
    }

    /// The first of `endpoints` that accepts a connection, connected now.
    pub async fn connect_any<S: AsRef<str>>(endpoints: &[S]) -> Result<Admin, Error> {
        let admin = Admin::any(endpoints)?;
        let mut failures = Vec::new();
        for i in 0..admin.targets.len() {
            match admin.client(i).await {
                Ok(_) => {
                    admin.current.store(i, Ordering::Relaxed);
                    return Ok(admin);
                }
                Err(e) => failures.push(e),
            }
        }
        Err(Error::NoEndpoint { failures })
    }

    /// The most one call may take to be answered (default 30 s). For a streaming call it bounds
    /// the wait for the stream to start.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Talks TLS to every endpoint with these settings (`--cacert`, `--cert`, `--key`).
    pub fn with_tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Presents these credentials on every call (when the cluster has authentication on).
    pub fn with_credentials(mut self, credentials: Credentials) -> Result<Self, Error> {
        let value = credentials
            .authorization()
            .parse()
            .map_err(|_| Error::Tls("credentials that cannot be sent as gRPC metadata".into()))?;
        self.authorize = Authorize(Some(value));
        Ok(self)
    }

    /// The endpoint that answered last (the first one before any call), as given.
    pub fn endpoint(&self) -> &str {
        &self.targets[self.current.load(Ordering::Relaxed)].name
    }

    /// The kept client for target `i`, connecting if there is none yet.
    async fn client(&self, i: usize) -> Result<AdminRpc, Error> {
        let t = &self.targets[i];
        if let Some(c) = lock(&t.channel).clone() {
            return Ok(c);
        }
        let tls = match (&self.tls, t.https) {
            (Some(tls), _) => Some(tls.clone()),
            (None, true) => Some(Tls::from_pem(None, None, None)?),
            (None, false) => None,
        };
        let connected = match tls {
            Some(tls) => t.endpoint.connect_with_connector(TlsConnector::grpc(tls)).await,
            None => t.endpoint.connect().await,
        };
        let channel = connected.map_err(|e| Error::NotSent {
            endpoint: t.name.clone(),
            reason: root_cause(&e),
        })?;
        let client = AdminClient::with_interceptor(channel, self.authorize.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        // Two calls racing to connect both succeed; the later one's channel is kept.
        *lock(&t.channel) = Some(client.clone());
        Ok(client)
    }

    /// Runs `call` on the endpoint that answered last, then on the others while they cannot
    /// be reached.
    async fn call<T, F, Fut>(&self, timeout: Duration, call: F) -> Result<T, Error>
    where
        F: Fn(AdminRpc) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let n = self.targets.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for k in 0..n {
            let i = (first + k) % n;
            let name = &self.targets[i].name;
            let client = match self.client(i).await {
                Ok(c) => c,
                Err(e) => {
                    failures.push(e);
                    continue;
                }
            };
            match tokio::time::timeout(timeout, call(client)).await {
                Err(_) => {
                    return Err(Error::Timeout {
                        endpoint: name.clone(),
                        timeout,
                    })
                }
                Ok(Ok(r)) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(r.into_inner());
                }
                Ok(Err(s)) => {
                    let e = Error::from_rpc(name, s);
                    if !e.unreachable() {
                        self.current.store(i, Ordering::Relaxed);
                        return Err(e);
                    }
                    failures.push(e);
                }
            }
        }
        match failures.pop() {
            Some(e) if !self.list && failures.is_empty() => Err(e),
            last => Err(Error::NoEndpoint {
                failures: failures.into_iter().chain(last).collect(),
            }),
        }
    }

    /// The members as the leader sees them: role, addresses, replication progress.
    pub async fn members(&self) -> Result<pb::MembersResponse, Error> {
        self.call(
            self.timeout,
            |mut c| async move { c.members(pb::MembersRequest {}).await },
        )
        .await
    }

    /// This node's view of itself and its cluster.
    pub async fn status(&self) -> Result<pb::StatusResponse, Error> {
        self.call(
            self.timeout,
            |mut c| async move { c.status(pb::StatusRequest {}).await },
        )
        .await
    }

    /// Bootstraps a new cluster with `members` (the node asked must be one of them).
    pub async fn initialize(&self, members: Vec<pb::Member>) -> Result<pb::MembershipResponse, Error> {
        self.call(self.timeout, |mut c| {
            let members = members.clone();
            async move { c.initialize(pb::InitializeRequest { members }).await }
        })
        .await
    }

    /// Adds a node as a non-voting learner.
    pub async fn add_learner(&self, req: pb::AddMemberRequest) -> Result<pb::MembershipResponse, Error> {
        self.call(self.timeout, |mut c| {
            let req = req.clone();
            async move { c.add_learner(req).await }
        })
        .await
    }

    /// Adds a node as a learner, waits until it has caught up, then promotes it (an existing
    /// learner is just promoted). The stream reports progress; its last message has the result.
    /// The call may take the timeout plus `req.catch_up_timeout_ms` to start.
    pub async fn add_voter(&self, req: pb::AddMemberRequest) -> Result<AddVoter, Error> {
        let timeout = self.timeout + Duration::from_millis(req.catch_up_timeout_ms);
        let stream = self
            .call(timeout, |mut c| {
                let req = req.clone();
                async move { c.add_voter(req).await }
            })
            .await?;
        Ok(AddVoter {
            endpoint: self.endpoint().to_string(),
            stream,
        })
    }

    /// [`Admin::add_voter`] to its end: every progress message goes to `progress`, and the
    /// result is returned.
    pub async fn add_voter_until_done(
        &self,
        req: pb::AddMemberRequest,
        mut progress: impl FnMut(&pb::AddVoterProgress),
    ) -> Result<pb::MembershipResponse, Error> {
        let mut stream = self.add_voter(req).await?;
        while let Some(p) = stream.next().await? {
            if let Some(result) = p.result {
                return Ok(result);
            }
            progress(&p);
        }
        Err(Error::Decode {
            endpoint: stream.endpoint,
            reason: "the server ended add-voter without a result".into(),
        })
    }

    /// Removes a voter or learner. `force` skips the safety rails (removing the last voter,
    /// leaving voters that tolerate no failure).
    pub async fn remove_member(&self, id: NodeId, force: bool) -> Result<pb::MembershipResponse, Error> {
        self.call(self.timeout, |mut c| async move {
            c.remove_member(pb::RemoveMemberRequest { id, force }).await
        })
        .await
    }

    /// Replaces the voter set; every id must already be a member.
    pub async fn change_membership(&self, voters: Vec<NodeId>) -> Result<pb::MembershipResponse, Error> {
        self.call(self.timeout, |mut c| {
            let voters = voters.clone();
            async move { c.change_membership(pb::ChangeMembershipRequest { voters }).await }
        })
        .await
    }

    /// Hands leadership to `to`, or (`None`) to the most caught-up voter.
    pub async fn transfer_leadership(&self, to: Option<NodeId>) -> Result<pb::TransferLeadershipResponse, Error> {
        let to = to.unwrap_or(0);
        self.call(self.timeout, |mut c| async move {
            c.transfer_leadership(pb::TransferLeadershipRequest { to }).await
        })
        .await
    }

    /// Takes a snapshot on the node now (and purges the log behind it).
    pub async fn snapshot(&self) -> Result<pb::SnapshotResponse, Error> {
        self.call(
            self.timeout,
            |mut c| async move { c.snapshot(pb::SnapshotRequest {}).await },
        )
        .await
    }

    /// A consistent point-in-time copy of the key space, in the snapshot file format, as a
    /// stream of chunks.
    pub async fn backup(&self) -> Result<Backup, Error> {
        let stream = self
            .call(
                self.timeout,
                |mut c| async move { c.backup(pb::BackupRequest {}).await },
            )
            .await?;
        Ok(Backup {
            endpoint: self.endpoint().to_string(),
            stream,
        })
    }
}

/// The progress of an add-voter call.
pub struct AddVoter {
    endpoint: String,
    stream: Streaming<pb::AddVoterProgress>,
}

impl AddVoter {
    /// The next progress message; `None` once the server has ended the stream.
    pub async fn next(&mut self) -> Result<Option<pb::AddVoterProgress>, Error> {
        self.stream
            .message()
            .await
            .map_err(|s| Error::from_rpc(&self.endpoint, s))
    }
}

/// A backup arriving.
pub struct Backup {
    endpoint: String,
    stream: Streaming<pb::BackupChunk>,
}

impl Backup {
    /// The endpoint that serves the backup.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The next chunk of the backup file; `None` once it is complete.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        match self.stream.message().await {
            Ok(c) => Ok(c.map(|c| c.data)),
            Err(s) => Err(Error::from_rpc(&self.endpoint, s)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded value is a cache slot, valid whatever a panicking holder was doing.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed_port() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        drop(l);
        addr
    }

    #[tokio::test]
    async fn a_list_that_cannot_be_reached_says_so_for_every_endpoint() {
        let (a, b) = (closed_port(), closed_port());
        let admin = Admin::any(&[a.clone(), b.clone()]).unwrap();
        let e = admin.status().await.unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("no endpoint answered: "), "{text}");
        assert!(text.contains(&format!("{a}: cannot connect")) && text.contains(&format!("{b}: cannot connect")));
        assert!(e.not_sent());
        let one = Admin::any(std::slice::from_ref(&a))
            .unwrap()
            .status()
            .await
            .unwrap_err();
        assert!(one.to_string().starts_with("no endpoint answered: "), "{one}");
    }

    #[tokio::test]
    async fn a_single_endpoint_reports_its_own_failure() {
        let a = closed_port();
        let e = Admin::new(&a).unwrap().members().await.unwrap_err();
        assert!(e.to_string().starts_with(&format!("{a}: cannot connect")), "{e}");
        assert!(Admin::connect(&a).await.is_err());
    }

    #[test]
    fn endpoints_take_a_scheme_or_not() {
        assert_eq!(Admin::new("n1:9090").unwrap().endpoint(), "n1:9090");
        assert_eq!(Admin::new("http://n1:9090").unwrap().endpoint(), "http://n1:9090");
        assert!(Admin::any::<&str>(&[]).is_err());
    }
}
