//! Reconcile against a fake API server (kube's tower-test pattern) and fake nodes: each test
//! is a scenario, and asserts the requests the operator made, in order.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use http::{Request, Response};
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::Client;
use raftkv_client::pb;
use raftkv_operator::crd::RaftCluster;
use raftkv_operator::metrics::OperatorMetrics;
use raftkv_operator::nodes::{Access, Nodes};
use raftkv_operator::reconcile::{reconcile, AddressMode, Context};
use raftkv_operator::OperatorPods;
use serde_json::{json, Value};

const NS: &str = "ns";

/// One request the operator sent to the API server.
#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    body: Value,
}

/// What the fake API server holds.
#[derive(Clone, Default)]
struct World {
    sts_replicas: Option<u32>,
    /// The node's arguments in the StatefulSet's pod template.
    sts_args: Vec<String>,
    /// Ready, running pods by ordinal.
    pods: Vec<u32>,
    /// Secrets by name, as created or applied.
    secrets: BTreeMap<String, Value>,
}

fn pod_json(ord: u32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("demo-{ord}"), "namespace": NS,
                     "labels": {"app.kubernetes.io/name": "raftkv", "app.kubernetes.io/instance": "demo"}},
        "spec": {"containers": [{"name": "raftkv"}]},
        "status": {"phase": "Running", "podIP": format!("10.0.0.{ord}"),
                   "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

/// The name of the object a request path ends with (before any query).
fn last_segment(path: &str) -> String {
    path.split('?')
        .next()
        .unwrap_or_default()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

fn respond(world: &mut World, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let not_found = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": "not found", "reason": "NotFound", "code": 404});
    if path.contains("/secrets") {
        let name = if method == "POST" {
            body["metadata"]["name"].as_str().unwrap_or_default().to_string()
        } else {
            last_segment(path)
        };
        return match method {
            "GET" => match world.secrets.get(&name) {
                Some(s) => (200, s.clone()),
                None => (404, not_found),
            },
            "POST" if world.secrets.contains_key(&name) => (
                409,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": "exists", "reason": "AlreadyExists", "code": 409}),
            ),
            _ => {
                world.secrets.insert(name, body.clone());
                (if method == "POST" { 201 } else { 200 }, body.clone())
            }
        };
    }
    match method {
        "GET" if path.ends_with("/statefulsets/demo") => match world.sts_replicas {
            None => (404, not_found),
            Some(r) => (
                200,
                json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                                    "metadata": {"name": "demo", "namespace": NS},
                                    "spec": {"replicas": r, "selector": {}, "serviceName": "demo-peers",
                                             "template": {"spec": {"containers": [
                                                 {"name": "raftkv", "args": world.sts_args}]}}}}),
            ),
        },
        "GET" if path.contains("/pods") => (
            200,
            json!({"apiVersion": "v1", "kind": "PodList",
            "metadata": {"resourceVersion": "1"}, "items": world.pods.iter().map(|o| pod_json(*o)).collect::<Vec<_>>()}),
        ),
        "GET" if path.contains("/persistentvolumeclaims") => (
            200,
            json!({"apiVersion": "v1",
            "kind": "PersistentVolumeClaimList", "metadata": {"resourceVersion": "1"}, "items": []}),
        ),
        "PATCH" | "POST" | "PUT" => {
            // Echo the object, as the server would answer with what it stored.
            let mut obj = body.clone();
            if obj.get("metadata").is_none() {
                obj["metadata"] = json!({"name": "demo", "namespace": NS});
            }
            if path.contains("/raftclusters/") && obj.get("spec").is_none() {
                obj["spec"] = json!({"replicas": 3, "image": "raftkv:test"});
            }
            (if method == "POST" { 201 } else { 200 }, obj)
        }
        _ => (404, not_found),
    }
}

/// Starts the fake API server; returns a client for it and the log of calls.
fn fake_api(mut world: World) -> (Client, Arc<Mutex<Vec<Call>>>) {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let log = calls.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            let path = req.uri().to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (status, answer) = respond(&mut world, &method, &path, &body);
            log.lock().unwrap().push(Call { method, path, body });
            let resp = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap();
            send.send_response(resp);
        }
    });
    (Client::new(svc, NS), calls)
}

/// Nodes that answer from a script: node `100 + ordinal` in pod `ordinal`.
#[derive(Default)]
struct FakeNodes {
    /// Members (ordinal, voter); empty: nobody is initialized.
    members: Vec<(u32, bool)>,
    leader: u32,
    calls: Mutex<Vec<String>>,
    /// Whether authentication is on.
    auth: Mutex<bool>,
    /// How each call reached the nodes: "tls" or "plain", and the user, if any.
    accesses: Mutex<Vec<String>>,
}

fn addr(ord: u32, port: u16) -> String {
    format!("demo-{ord}.demo-peers.ns.svc.cluster.local:{port}")
}

fn ord_of(a: &str) -> u32 {
    a.trim_start_matches("demo-")
        .split('.')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

impl FakeNodes {
    fn pb_members(&self) -> Vec<pb::Member> {
        self.members
            .iter()
            .map(|(o, v)| pb::Member {
                id: 100 + *o as u64,
                raft_addr: addr(*o, 7000),
                http_addr: addr(*o, 8080),
                voter: *v,
            })
            .collect()
    }
    fn record(&self, s: String) {
        self.calls.lock().unwrap().push(s);
    }
    /// Notes how a call came; an error if the access says the nodes cannot be called.
    fn reached(&self, a: &str, access: &Access) -> Result<(), String> {
        if let Some(why) = access.unavailable_reason() {
            return Err(why.to_string());
        }
        let user = match access.credentials() {
            Some(raftkv_client::Credentials::Basic { user, .. }) => user.clone(),
            _ => "-".into(),
        };
        self.accesses
            .lock()
            .unwrap()
            .push(format!("{} {user}", access.endpoint(a)));
        Ok(())
    }
}

impl Nodes for FakeNodes {
    fn status(&self, a: String, access: &Access) -> BoxFuture<'static, Result<pb::StatusResponse, String>> {
        if let Err(e) = self.reached(&a, access) {
            return Box::pin(async move { Err(e) });
        }
        let o = ord_of(&a);
        let members = if self.members.iter().any(|(m, _)| *m == o) {
            self.pb_members()
        } else {
            vec![]
        };
        let leader = if members.is_empty() {
            0
        } else {
            100 + self.leader as u64
        };
        Box::pin(async move {
            Ok(pb::StatusResponse {
                id: 100 + o as u64,
                members,
                leader_id: leader,
                cluster_id: "u1".into(),
                ..Default::default()
            })
        })
    }
    fn members(&self, a: String, access: &Access) -> BoxFuture<'static, Result<pb::MembersResponse, String>> {
        if let Err(e) = self.reached(&a, access) {
            return Box::pin(async move { Err(e) });
        }
        let leader = 100 + self.leader as u64;
        let members = self
            .pb_members()
            .into_iter()
            .map(|m| pb::MemberStatus {
                leader: m.id == leader,
                id: m.id,
                raft_addr: m.raft_addr,
                http_addr: m.http_addr,
                voter: m.voter,
                matched_index: Some(10),
                lag: Some(0),
                last_contact_ms: Some(10),
            })
            .collect();
        Box::pin(async move {
            Ok(pb::MembersResponse {
                leader_id: leader,
                members,
                membership_log_index: 5,
                joint: false,
            })
        })
    }
    fn initialize(&self, a: String, _: &Access, m: Vec<pb::Member>) -> BoxFuture<'static, Result<String, String>> {
        self.record(format!(
            "initialize {a} {:?}",
            m.iter().map(|m| m.id).collect::<Vec<_>>()
        ));
        Box::pin(async { Ok("initialized".into()) })
    }
    fn add_learner(
        &self,
        _a: String,
        _: &Access,
        r: pb::AddMemberRequest,
    ) -> BoxFuture<'static, Result<String, String>> {
        self.record(format!("add_learner {} {}", r.id, r.raft_addr));
        Box::pin(async { Ok("added".into()) })
    }
    fn promote(&self, _a: String, _: &Access, r: pb::AddMemberRequest) -> BoxFuture<'static, Result<String, String>> {
        self.record(format!("promote {}", r.id));
        Box::pin(async { Ok("promoted".into()) })
    }
    fn remove(&self, _a: String, _: &Access, id: u64, force: bool) -> BoxFuture<'static, Result<String, String>> {
        self.record(format!("remove {id} force={force}"));
        Box::pin(async move { Ok(format!("removed node {id}")) })
    }
    fn transfer_leadership(&self, _a: String, _: &Access, to: u64) -> BoxFuture<'static, Result<String, String>> {
        self.record(format!("transfer {to}"));
        Box::pin(async { Ok("moved".into()) })
    }
    fn auth_enabled(&self, a: String, access: &Access) -> BoxFuture<'static, Result<bool, String>> {
        let r = self.reached(&a, access).map(|()| *self.auth.lock().unwrap());
        Box::pin(async move { r })
    }
    fn enable_auth(&self, a: String, access: &Access, password: String) -> BoxFuture<'static, Result<String, String>> {
        self.record(format!("enable_auth {a} password={password}"));
        let r = self.reached(&a, access).map(|()| {
            *self.auth.lock().unwrap() = true;
            "authentication enabled".to_string()
        });
        Box::pin(async move { r })
    }
}

fn cluster(replicas: i32) -> Arc<RaftCluster> {
    cluster_with(replicas, json!({}))
}

/// A cluster whose spec has `extra` merged in (e.g. `{"tls": {"enabled": true}}`).
fn cluster_with(replicas: i32, extra: Value) -> Arc<RaftCluster> {
    let mut spec = json!({"replicas": replicas, "image": "raftkv:test"});
    for (k, v) in extra.as_object().into_iter().flatten() {
        spec[k] = v.clone();
    }
    let mut rc: RaftCluster = serde_json::from_value(json!({
        "apiVersion": "raftkv.dev/v1alpha1", "kind": "RaftCluster",
        "metadata": {"name": "demo", "namespace": NS, "uid": "u1", "generation": 1},
        "spec": spec
    }))
    .unwrap();
    rc.status = None;
    Arc::new(rc)
}

fn context(client: Client, nodes: Arc<FakeNodes>) -> Arc<Context> {
    context_with(client, nodes, None)
}

fn context_with(client: Client, nodes: Arc<FakeNodes>, operator_pods: Option<OperatorPods>) -> Arc<Context> {
    Arc::new(Context {
        client: client.clone(),
        nodes,
        cluster_domain: "cluster.local".into(),
        address_mode: AddressMode::Dns,
        metrics: Arc::new(OperatorMetrics::new().unwrap()),
        recorder: Recorder::new(
            client,
            Reporter {
                controller: "raftkv-operator".into(),
                instance: None,
            },
        ),
        operator_pods,
    })
}

fn find<'a>(calls: &'a [Call], method: &str, path_end: &str) -> &'a Call {
    calls
        .iter()
        .find(|c| c.method == method && c.path.split('?').next().unwrap().ends_with(path_end))
        .unwrap_or_else(|| {
            panic!(
                "no {method} ...{path_end} in {:#?}",
                calls.iter().map(|c| (&c.method, &c.path)).collect::<Vec<_>>()
            )
        })
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
}

/// One successful reconcile of a cluster that wants `replicas`, against `world` and nodes whose
/// members are `members`: the API calls it made, and the membership calls.
async fn reconcile_once(replicas: i32, world: World, members: &[(u32, bool)]) -> (Vec<Call>, Vec<String>) {
    let (client, calls) = fake_api(world);
    let nodes = Arc::new(FakeNodes {
        members: members.to_vec(),
        ..Default::default()
    });
    reconcile(cluster(replicas), context(client, nodes.clone()))
        .await
        .expect("reconcile");
    let api_calls = calls.lock().unwrap().clone();
    let node_calls = nodes.calls.lock().unwrap().clone();
    (api_calls, node_calls)
}

#[tokio::test]
async fn a_new_cluster_gets_its_objects_and_a_one_pod_statefulset() {
    let (calls, node_calls) = reconcile_once(3, World::default(), &[]).await;
    let paths: Vec<String> = calls
        .iter()
        .map(|c| format!("{} {}", c.method, c.path.split('?').next().unwrap()))
        .collect();
    assert_eq!(
        paths,
        [
            "GET /apis/apps/v1/namespaces/ns/statefulsets/demo",
            "GET /api/v1/namespaces/ns/pods",
            "GET /api/v1/namespaces/ns/persistentvolumeclaims",
            "PATCH /api/v1/namespaces/ns/services/demo-peers",
            "PATCH /api/v1/namespaces/ns/services/demo",
            "PATCH /apis/apps/v1/namespaces/ns/statefulsets/demo",
            "PATCH /apis/policy/v1/namespaces/ns/poddisruptionbudgets/demo",
            "PATCH /apis/raftkv.dev/v1alpha1/namespaces/ns/raftclusters/demo/status",
        ]
    );
    let sts = find(&calls, "PATCH", "/statefulsets/demo");
    assert_eq!(sts.body["spec"]["replicas"], 1, "bootstrap starts with pod 0 only");
    assert!(
        sts.path.contains("fieldManager=raftkv-operator"),
        "server-side apply with our field manager"
    );
    let status = &find(&calls, "PATCH", "/raftclusters/demo/status").body["status"];
    assert_eq!(status["phase"], "Pending");
    assert_eq!(condition(status, "Available")["reason"], "NotInitialized");
    assert!(node_calls.is_empty(), "no membership call before pod 0 runs");
}

#[tokio::test]
async fn pod_zero_running_is_bootstrapped_with_itself_as_the_only_member() {
    let world = World {
        sts_replicas: Some(1),
        pods: vec![0],
        ..Default::default()
    };
    let (calls, node_calls) = reconcile_once(3, world, &[]).await;
    assert_eq!(node_calls, [format!("initialize {} [100]", addr(0, 7000))]);
    let ev = find(&calls, "POST", "/events");
    assert_eq!(ev.body["reason"], "Initialize");
    let status = &find(&calls, "PATCH", "/raftclusters/demo/status").body["status"];
    assert_eq!(status["lastAction"]["action"], "Initialize");
    assert_eq!(status["lastAction"]["pod"], "demo-0");
}

#[tokio::test]
async fn scaling_up_adds_one_pod_then_its_node_as_learner() {
    // Three voters, five wanted: the StatefulSet grows to four, nothing else yet.
    let voters = [(0, true), (1, true), (2, true)];
    let world = World {
        sts_replicas: Some(3),
        pods: vec![0, 1, 2],
        ..Default::default()
    };
    let (calls_now, node_calls) = reconcile_once(5, world, &voters).await;
    assert_eq!(
        find(&calls_now, "PATCH", "/statefulsets/demo").body["spec"]["replicas"],
        4
    );
    let status = &find(&calls_now, "PATCH", "/raftclusters/demo/status").body["status"];
    assert_eq!(status["phase"], "Scaling");
    assert_eq!(condition(status, "Progressing")["reason"], "ScalingUp");
    assert_eq!(status["leader"], "demo-0");
    assert_eq!(status["replicas"], 3);
    assert!(node_calls.is_empty());

    // Pod 3 runs: its node becomes a learner.
    let world = World {
        sts_replicas: Some(4),
        pods: vec![0, 1, 2, 3],
        ..Default::default()
    };
    let (_, node_calls) = reconcile_once(5, world, &voters).await;
    assert_eq!(node_calls, [format!("add_learner 103 {}", addr(3, 7000))]);
}

#[tokio::test]
async fn scaling_down_removes_the_highest_member_before_shrinking_the_statefulset() {
    let world = World {
        sts_replicas: Some(4),
        pods: vec![0, 1, 2, 3],
        ..Default::default()
    };
    let (calls, node_calls) = reconcile_once(3, world, &[(0, true), (1, true), (2, true), (3, true)]).await;
    assert_eq!(node_calls, ["remove 103 force=true"]);
    assert_eq!(
        find(&calls, "PATCH", "/statefulsets/demo").body["spec"]["replicas"],
        4,
        "the pod stays until its member is gone"
    );
    let status = &find(&calls, "PATCH", "/raftclusters/demo/status").body["status"];
    assert_eq!(status["lastAction"]["action"], "RemoveMember");
    assert_eq!(status["lastAction"]["member"], 103);
}

#[tokio::test]
async fn an_invalid_spec_is_reported_and_not_acted_on() {
    let (client, calls) = fake_api(World::default());
    let nodes = Arc::new(FakeNodes::default());
    let mut rc = (*cluster(3)).clone();
    rc.spec.raft.election_timeout_ms = 100;
    let err = reconcile(Arc::new(rc), context(client, nodes))
        .await
        .expect_err("invalid");
    assert!(err.to_string().contains("electionTimeoutMs"), "{err}");
    let calls = calls.lock().unwrap().clone();
    assert!(
        calls
            .iter()
            .all(|c| c.method == "GET" || !c.path.contains("/statefulsets")),
        "nothing applied"
    );
    let status = &find(&calls, "PATCH", "/raftclusters/demo/status").body["status"];
    assert_eq!(condition(status, "Degraded")["reason"], "InvalidSpec");
}

fn paths(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .map(|c| format!("{} {}", c.method, c.path.split('?').next().unwrap()))
        .collect()
}

fn secret_keys(call: &Call) -> Vec<String> {
    call.body["data"]
        .as_object()
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default()
}

fn running(replicas: u32) -> World {
    World {
        sts_replicas: Some(replicas),
        pods: (0..replicas).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn tls_gives_the_cluster_a_ca_a_certificate_per_pod_and_one_for_the_operator_who_talks_tls() {
    let world = World {
        sts_args: vec!["--peer-cert-file=/etc/raftkv/tls/$(POD_NAME).crt".into()],
        ..running(3)
    };
    let (client, calls) = fake_api(world);
    let nodes = Arc::new(FakeNodes {
        members: vec![(0, true), (1, true), (2, true)],
        ..Default::default()
    });
    let rc = cluster_with(3, json!({"tls": {"enabled": true, "certificateLifetime": "90m"}}));
    reconcile(rc.clone(), context(client, nodes.clone()))
        .await
        .expect("reconcile");
    let calls = calls.lock().unwrap().clone();
    let ca = find(&calls, "POST", "/secrets");
    assert_eq!(
        ca.body["metadata"]["name"], "demo-ca",
        "the CA is created, never applied over"
    );
    assert_eq!(secret_keys(ca), ["ca.crt", "ca.key"]);
    assert_eq!(
        secret_keys(find(&calls, "PATCH", "/secrets/demo-operator-tls")),
        ["ca.crt", "tls.crt", "tls.key"]
    );
    let pods = find(&calls, "PATCH", "/secrets/demo-tls");
    assert_eq!(
        secret_keys(pods),
        [
            "ca.crt",
            "demo-0.crt",
            "demo-0.key",
            "demo-1.crt",
            "demo-1.key",
            "demo-2.crt",
            "demo-2.key"
        ]
    );
    let order = paths(&calls);
    let at = |p: &str| order.iter().position(|x| x == p).expect(p);
    assert!(
        at("PATCH /api/v1/namespaces/ns/secrets/demo-tls") < at("PATCH /apis/apps/v1/namespaces/ns/statefulsets/demo"),
        "the pods' certificates exist before their pods: {order:#?}"
    );
    let sts = &find(&calls, "PATCH", "/statefulsets/demo").body["spec"]["template"]["spec"];
    let args: Vec<&str> = sts["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for flag in [
        "--cert-file=/etc/raftkv/tls/$(POD_NAME).crt",
        "--key-file=/etc/raftkv/tls/$(POD_NAME).key",
        "--trusted-ca-file=/etc/raftkv/tls/ca.crt",
        "--peer-cert-file=/etc/raftkv/tls/$(POD_NAME).crt",
        "--peer-trusted-ca-file=/etc/raftkv/tls/ca.crt",
        "--peer-client-cert-auth",
    ] {
        assert!(args.contains(&flag), "{flag} missing from {args:?}");
    }
    assert_eq!(
        sts["containers"][0]["readinessProbe"]["httpGet"]["scheme"], "HTTPS",
        "probes speak HTTPS"
    );
    let tls_volume = sts["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "tls")
        .expect("a tls volume");
    assert_eq!(tls_volume["secret"]["secretName"], "demo-tls");
    let accesses = nodes.accesses.lock().unwrap().clone();
    assert!(!accesses.is_empty());
    assert!(
        accesses.iter().all(|a| a.starts_with("https://demo-")),
        "every call to a node is TLS by DNS name: {accesses:?}"
    );
    let status = &find(&calls, "PATCH", "/raftclusters/demo/status").body["status"];
    assert!(status["certificatesNotAfter"].is_string(), "{status:#}");
}

#[tokio::test]
async fn a_second_reconcile_keeps_every_certificate_and_writes_no_secret() {
    let world = World {
        sts_args: vec!["--peer-cert-file=/etc/raftkv/tls/$(POD_NAME).crt".into()],
        ..running(3)
    };
    let (client, calls) = fake_api(world);
    let nodes = Arc::new(FakeNodes {
        members: vec![(0, true), (1, true), (2, true)],
        ..Default::default()
    });
    let ctx = context(client, nodes);
    let rc = cluster_with(3, json!({"tls": {"enabled": true}}));
    reconcile(rc.clone(), ctx.clone()).await.expect("first reconcile");
    let first = calls.lock().unwrap().len();
    reconcile(rc, ctx).await.expect("second reconcile");
    let again = calls.lock().unwrap()[first..].to_vec();
    let writes: Vec<String> = paths(&again)
        .into_iter()
        .filter(|p| p.contains("/secrets") && !p.starts_with("GET"))
        .collect();
    assert!(writes.is_empty(), "nothing to renew, nothing written: {writes:?}");
}

#[tokio::test]
async fn scaling_up_issues_the_new_pods_certificate_before_the_pod_exists() {
    let world = World {
        sts_args: vec!["--peer-cert-file=/etc/raftkv/tls/$(POD_NAME).crt".into()],
        ..running(3)
    };
    let (client, calls) = fake_api(world);
    let nodes = Arc::new(FakeNodes {
        members: vec![(0, true), (1, true), (2, true)],
        ..Default::default()
    });
    let rc = cluster_with(5, json!({"tls": {"enabled": true}}));
    reconcile(rc, context(client, nodes)).await.expect("reconcile");
    let calls = calls.lock().unwrap().clone();
    assert_eq!(find(&calls, "PATCH", "/statefulsets/demo").body["spec"]["replicas"], 4);
    let keys = secret_keys(find(&calls, "PATCH", "/secrets/demo-tls"));
    assert!(keys.contains(&"demo-3.crt".to_string()), "{keys:?}");
    assert!(!keys.contains(&"demo-4.crt".to_string()), "one pod at a time: {keys:?}");
}

#[tokio::test]
async fn tls_cannot_be_turned_on_for_a_running_cluster() {
    let (client, calls) = fake_api(running(3));
    let nodes = Arc::new(FakeNodes::default());
    let rc = cluster_with(3, json!({"tls": {"enabled": true}}));
    let err = reconcile(rc, context(client, nodes.clone()))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("cannot change on a running cluster"), "{err}");
    let calls = calls.lock().unwrap().clone();
    assert!(
        calls
            .iter()
            .all(|c| c.method == "GET" || c.path.contains("/status") || c.path.contains("/events")),
        "nothing applied or created: {:#?}",
        paths(&calls)
    );
    let status = &find(&calls, "PATCH", "/raftclusters/demo/status").body["status"];
    assert_eq!(condition(status, "Degraded")["reason"], "InvalidSpec");
}

#[tokio::test]
async fn a_named_issuer_gets_cert_manager_certificates_and_the_operator_waits_for_its_own() {
    let (client, calls) = fake_api(World::default());
    let nodes = Arc::new(FakeNodes::default());
    let rc = cluster_with(
        3,
        json!({"tls": {"enabled": true, "issuerRef": {"name": "corp", "kind": "ClusterIssuer"}}}),
    );
    reconcile(rc, context(client, nodes.clone())).await.expect("reconcile");
    let calls = calls.lock().unwrap().clone();
    let nodes_cert = find(
        &calls,
        "PATCH",
        "/apis/cert-manager.io/v1/namespaces/ns/certificates/demo-tls",
    );
    assert_eq!(nodes_cert.body["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    assert_eq!(nodes_cert.body["spec"]["secretName"], "demo-tls");
    find(
        &calls,
        "PATCH",
        "/apis/cert-manager.io/v1/namespaces/ns/certificates/demo-operator-tls",
    );
    assert!(
        !calls.iter().any(|c| c.method != "GET" && c.path.contains("/secrets")),
        "cert-manager writes the Secrets, not the operator"
    );
    let sts = &find(&calls, "PATCH", "/statefulsets/demo").body["spec"]["template"]["spec"];
    let args = sts["containers"][0]["args"].to_string();
    assert!(args.contains("--peer-cert-file=/etc/raftkv/tls/tls.crt"), "{args}");
    assert!(
        nodes.accesses.lock().unwrap().is_empty(),
        "no node is called without a certificate"
    );
}

#[tokio::test]
async fn auth_gets_a_root_password_in_a_kept_secret_and_is_turned_on_as_root() {
    let (client, calls) = fake_api(running(3));
    let nodes = Arc::new(FakeNodes {
        members: vec![(0, true), (1, true), (2, true)],
        ..Default::default()
    });
    let ctx = context(client, nodes.clone());
    let rc = cluster_with(3, json!({"auth": {"enabled": true}}));
    reconcile(rc.clone(), ctx.clone()).await.expect("reconcile");
    let first = calls.lock().unwrap().clone();
    let secret = find(&first, "POST", "/secrets");
    assert_eq!(secret.body["metadata"]["name"], "demo-root");
    assert!(
        secret.body["metadata"]["ownerReferences"].is_null(),
        "the password outlives the RaftCluster, as the data does"
    );
    assert_eq!(secret.body["type"], "kubernetes.io/basic-auth");
    let password: k8s_openapi::ByteString =
        serde_json::from_value(secret.body["data"]["password"].clone()).expect("base64");
    let password = String::from_utf8(password.0).expect("text");
    assert_eq!(password.len(), 32);
    let enabled: Vec<String> = nodes
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.starts_with("enable_auth"))
        .cloned()
        .collect();
    assert_eq!(enabled.len(), 1, "{enabled:?}");
    assert!(enabled[0].ends_with(&format!("password={password}")), "{enabled:?}");
    assert!(enabled[0].contains(":8080"), "through the HTTP API: {enabled:?}");
    assert!(
        nodes.accesses.lock().unwrap().iter().all(|a| a.ends_with(" root")),
        "every call presents root's credentials"
    );
    let status = &find(&first, "PATCH", "/raftclusters/demo/status").body["status"];
    assert_eq!(status["authEnabled"], true);

    reconcile(rc, ctx).await.expect("second reconcile");
    let again = calls.lock().unwrap()[first.len()..].to_vec();
    assert!(
        !again.iter().any(|c| c.method == "POST" && c.path.contains("/secrets")),
        "the password is made once"
    );
    assert_eq!(
        nodes
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.starts_with("enable_auth"))
            .count(),
        1,
        "authentication already on is left alone"
    );
}

#[tokio::test]
async fn the_network_policy_opens_the_peer_port_to_the_clusters_pods_and_the_operator_only() {
    let (client, calls) = fake_api(running(3));
    let nodes = Arc::new(FakeNodes {
        members: vec![(0, true), (1, true), (2, true)],
        ..Default::default()
    });
    let operator = OperatorPods {
        namespace: "raftkv-system".into(),
        labels: BTreeMap::from([("app.kubernetes.io/name".to_string(), "raftkv-operator".to_string())]),
    };
    let rc = cluster_with(
        3,
        json!({"networkPolicy": {"clientFrom": [{"namespaceSelector": {"matchLabels": {"team": "shop"}}}]}}),
    );
    reconcile(rc, context_with(client, nodes, Some(operator)))
        .await
        .expect("reconcile");
    let calls = calls.lock().unwrap().clone();
    let np = &find(
        &calls,
        "PATCH",
        "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/demo",
    )
    .body;
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        "demo"
    );
    let rules = np["spec"]["ingress"].as_array().unwrap();
    let peer = rules
        .iter()
        .find(|r| r["ports"][0]["port"] == 7000)
        .expect("a peer rule");
    assert_eq!(
        peer["from"],
        json!([
            {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "demo", "app.kubernetes.io/name": "raftkv"}}},
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "raftkv-system"}},
             "podSelector": {"matchLabels": {"app.kubernetes.io/name": "raftkv-operator"}}}
        ])
    );
    let client_rule = rules
        .iter()
        .find(|r| r["ports"][0]["port"] == 8080)
        .expect("a client rule");
    let from = client_rule["from"].as_array().unwrap();
    assert_eq!(
        from.len(),
        3,
        "clientFrom, the cluster's pods and the operator: {from:?}"
    );
    assert_eq!(from[0]["namespaceSelector"]["matchLabels"]["team"], "shop");
}
