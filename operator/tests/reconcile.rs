//! Reconcile against a fake API server (kube's tower-test pattern) and fake nodes: each test
//! is a scenario, and asserts the requests the operator made, in order.

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use http::{Request, Response};
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::Client;
use raftkv_client::pb;
use raftkv_operator::crd::RaftCluster;
use raftkv_operator::metrics::OperatorMetrics;
use raftkv_operator::nodes::Nodes;
use raftkv_operator::reconcile::{reconcile, AddressMode, Context};
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
    /// Ready, running pods by ordinal.
    pods: Vec<u32>,
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

fn respond(world: &World, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let not_found = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": "not found", "reason": "NotFound", "code": 404});
    match method {
        "GET" if path.ends_with("/statefulsets/demo") => match world.sts_replicas {
            None => (404, not_found),
            Some(r) => (
                200,
                json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                                    "metadata": {"name": "demo", "namespace": NS},
                                    "spec": {"replicas": r, "selector": {}, "serviceName": "demo-peers",
                                             "template": {}}}),
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
fn fake_api(world: World) -> (Client, Arc<Mutex<Vec<Call>>>) {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let log = calls.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            let path = req.uri().to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (status, answer) = respond(&world, &method, &path, &body);
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
}

impl Nodes for FakeNodes {
    fn status(&self, a: String) -> BoxFuture<'static, Result<pb::StatusResponse, String>> {
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
    fn members(&self, _a: String) -> BoxFuture<'static, Result<pb::MembersResponse, String>> {
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
    fn initialize(&self, a: String, m: Vec<pb::Member>) -> BoxFuture<'static, Result<String, String>> {
        self.record(format!(
            "initialize {a} {:?}",
            m.iter().map(|m| m.id).collect::<Vec<_>>()
        ));
        Box::pin(async { Ok("initialized".into()) })
    }
    fn add_learner(&self, _a: String, r: pb::AddMemberRequest) -> BoxFuture<'static, Result<String, String>> {
        self.record(format!("add_learner {} {}", r.id, r.raft_addr));
        Box::pin(async { Ok("added".into()) })
    }
    fn promote(&self, _a: String, r: pb::AddMemberRequest) -> BoxFuture<'static, Result<String, String>> {
        self.record(format!("promote {}", r.id));
        Box::pin(async { Ok("promoted".into()) })
    }
    fn remove(&self, _a: String, id: u64, force: bool) -> BoxFuture<'static, Result<String, String>> {
        self.record(format!("remove {id} force={force}"));
        Box::pin(async move { Ok(format!("removed node {id}")) })
    }
    fn transfer_leadership(&self, _a: String, to: u64) -> BoxFuture<'static, Result<String, String>> {
        self.record(format!("transfer {to}"));
        Box::pin(async { Ok("moved".into()) })
    }
}

fn cluster(replicas: i32) -> Arc<RaftCluster> {
    let mut rc: RaftCluster = serde_json::from_value(json!({
        "apiVersion": "raftkv.dev/v1alpha1", "kind": "RaftCluster",
        "metadata": {"name": "demo", "namespace": NS, "uid": "u1", "generation": 1},
        "spec": {"replicas": replicas, "image": "raftkv:test"}
    }))
    .unwrap();
    rc.status = None;
    Arc::new(rc)
}

fn context(client: Client, nodes: Arc<FakeNodes>) -> Arc<Context> {
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
    };
    let (_, node_calls) = reconcile_once(5, world, &voters).await;
    assert_eq!(node_calls, [format!("add_learner 103 {}", addr(3, 7000))]);
}

#[tokio::test]
async fn scaling_down_removes_the_highest_member_before_shrinking_the_statefulset() {
    let world = World {
        sts_replicas: Some(4),
        pods: vec![0, 1, 2, 3],
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
        calls.iter().all(|c| !c.path.contains("/statefulsets")),
        "nothing applied"
    );
    let status = &find(&calls, "PATCH", "/raftclusters/demo/status").body["status"];
    assert_eq!(condition(status, "Degraded")["reason"], "InvalidSpec");
}
