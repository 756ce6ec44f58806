//! Authentication and roles, as etcd users know them: with auth on, every request says who
//! it is, a role reaches only the keys its permissions cover, tokens work on every node until
//! they expire or their user changes, the admin service wants root, and the users and roles
//! survive restarts and reach a node that catches up from a snapshot.

mod common;

use std::time::{Duration, Instant};

use common::{cli, cluster, http, CliRun};
use raftkv_client::auth::Auth;
use raftkv_client::{Admin, Client, Condition, Consistency, Credentials};
use raftkv_harness::Cluster;
use serde_json::Value;

/// bcrypt at its lowest cost: the debug build would take seconds a hash at etcd's 10.
const FAST_BCRYPT: &[&str] = &["--bcrypt-cost", "4"];
const ROOT_PW: &str = "root-secret";
const APP_PW: &str = "app-secret";

fn basic(user: &str, password: &str) -> Credentials {
    Credentials::Basic {
        user: user.into(),
        password: password.into(),
    }
}

fn token(t: &str) -> Credentials {
    Credentials::Token(t.into())
}

/// Node `i`'s HTTP API with `credentials`.
fn client(c: &Cluster, i: usize, credentials: Credentials) -> Client {
    Client::builder(&c.node(i).http_addr().to_string())
        .credentials(credentials)
        .build()
        .expect("a client")
}

/// Node `i`'s `/v1/auth` endpoints, as `credentials` (or as nobody).
fn auth(c: &Cluster, i: usize, credentials: Option<Credentials>) -> Auth {
    let a = Auth::new(&c.node(i).http_addr().to_string(), None).expect("an auth client");
    match credentials {
        Some(cr) => a.with_credentials(&cr),
        None => a,
    }
}

/// Asserts that `result` is the API's refusal with `status` and `code`; returns its message.
fn refused<T: std::fmt::Debug>(result: Result<T, raftkv_client::Error>, status: u16, code: &str) -> String {
    match result {
        Err(e) if e.status() == Some(status) && e.code() == Some(code) => e.message(),
        other => panic!("expected {status} {code}, got {other:?}"),
    }
}

/// `raftkv GROUP --endpoint ENDPOINT [--user USER] REST...` (`raftkv user ... add root`).
fn command<'a>(group: &'a str, endpoint: &'a str, user: Option<&'a str>, rest: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec![group, "--endpoint", endpoint];
    if let Some(u) = user {
        all.extend(["--user", u]);
    }
    all.extend(rest);
    all
}

/// Runs a command that must succeed; returns what it printed.
async fn ok(group: &str, endpoint: &str, user: Option<&str>, rest: &[&str], stdin: Option<&[u8]>) -> String {
    let all = command(group, endpoint, user, rest);
    let run: CliRun = cli(&all, stdin).await;
    assert_eq!(run.code, 0, "raftkv {all:?}: {}{}", run.stdout, run.stderr);
    run.stdout
}

/// Runs a command that must fail with `reason` in its error.
async fn fails(group: &str, endpoint: &str, user: Option<&str>, rest: &[&str], reason: &str) {
    let all = command(group, endpoint, user, rest);
    let run = cli(&all, None).await;
    assert_eq!(run.code, 1, "raftkv {all:?} should fail: {}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains(reason), "raftkv {all:?}: {}", run.stderr);
}

/// A GET of `path` on node `i` with an `Authorization` header (or none): status and body.
async fn get(c: &Cluster, i: usize, path: &str, authorization: Option<&Credentials>) -> (u16, Value) {
    let mut req = http().get(c.node(i).url(path));
    if let Some(cr) = authorization {
        req = req.header("authorization", cr.authorization());
    }
    let r = req.send().await.expect("an answer");
    let status = r.status().as_u16();
    let body = r.bytes().await.expect("a body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Retries `check` until it holds (a change reaches the other nodes as they apply it).
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: still not so after 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Root (with the root role) and auth on, through the API.
async fn enable_with_root(c: &Cluster) {
    let a = auth(c, 0, None);
    a.user_add("root", Some(ROOT_PW)).await.expect("root added");
    a.user_grant_role("root", "root").await.expect("root role granted");
    a.enable().await.expect("auth enabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_every_request_is_checked_against_users_roles_and_tokens() {
    let c = cluster(3, FAST_BCRYPT).await;
    let ep0 = c.node(0).http_addr().to_string();
    let ep1 = c.node(1).http_addr().to_string();
    let root_flag = format!("root:{ROOT_PW}");

    // Set up through the binary, as an etcdctl user would.
    let root_user = Some(root_flag.as_str());
    fails("auth", &ep0, None, &["enable"], "etcdserver: root user does not exist").await;
    ok(
        "user",
        &ep0,
        None,
        &["add", "root"],
        Some(format!("{ROOT_PW}\n").as_bytes()),
    )
    .await;
    fails(
        "auth",
        &ep0,
        None,
        &["enable"],
        "etcdserver: root user does not have root role",
    )
    .await;
    ok("user", &ep0, None, &["grant-role", "root", "root"], None).await;
    ok("role", &ep1, None, &["add", "app"], None).await;
    let out = ok(
        "role",
        &ep1,
        None,
        &["grant-permission", "app", "readwrite", "app/", "--prefix"],
        None,
    )
    .await;
    assert_eq!(out.trim(), "Role app updated");
    ok("user", &ep0, None, &["add", &format!("app:{APP_PW}")], None).await;
    ok("user", &ep0, None, &["grant-role", "app", "app"], None).await;
    fails(
        "user",
        &ep0,
        None,
        &["add", "app:again"],
        "etcdserver: user name already exists",
    )
    .await;
    let out = ok("auth", &ep0, None, &["enable"], None).await;
    assert_eq!(out.trim(), "Authentication Enabled");
    for i in 0..3 {
        eventually(&format!("node {i} has auth on"), async || {
            get(&c, i, "/v1/kv/x", None).await.0 == 401
        })
        .await;
    }
    fails("auth", &ep0, None, &["status"], "etcdserver: user name is empty").await;
    let out = ok("auth", &ep0, root_user, &["status"], None).await;
    assert!(out.contains("Authentication Status: true"), "{out}");
    let out = ok("role", &ep1, root_user, &["get", "app"], None).await;
    assert!(out.contains("[app/, app0) (prefix app/)"), "{out}");

    // No credentials: refused, but for the probes, metrics and a status without details.
    let nobody = c.node(0).client();
    let msg = refused(
        nobody.get(b"app/a", Consistency::Linearizable).await,
        401,
        "unauthenticated",
    );
    assert_eq!(msg, "etcdserver: user name is empty");
    refused(nobody.put(b"app/a", "v", Condition::None).await, 401, "unauthenticated");
    assert_eq!(get(&c, 0, "/v1/kv?prefix=app%2F", None).await.0, 401);
    assert_eq!(get(&c, 0, "/v1/auth/users", None).await.0, 401);
    for open in ["/healthz", "/readyz", "/metrics"] {
        let r = http().get(c.node(0).url(open)).send().await.expect("an answer");
        assert_eq!(r.status(), 200, "{open} stays open");
    }
    let (code, status) = get(&c, 0, "/v1/status", None).await;
    assert_eq!(code, 200);
    assert!(status["members"].as_array().is_some_and(|m| m.len() == 3), "{status}");
    assert_eq!(status["members"][0]["raft_addr"], "", "{status}");
    let (_, full) = get(&c, 0, "/v1/status", Some(&basic("root", ROOT_PW))).await;
    assert_ne!(full["members"][0]["raft_addr"], "", "root sees the details: {full}");
    let msg = refused(
        client(&c, 0, basic("app", "wrong"))
            .get(b"app/a", Consistency::Linearizable)
            .await,
        401,
        "unauthenticated",
    );
    assert_eq!(msg, "etcdserver: authentication failed, invalid user ID or password");
    let msg = refused(
        client(&c, 0, token("forged.token"))
            .get(b"app/a", Consistency::Linearizable)
            .await,
        401,
        "unauthenticated",
    );
    assert_eq!(msg, "etcdserver: invalid auth token");

    // A role limited to a prefix reads and writes there only, listings included (Basic).
    let app = client(&c, 1, basic("app", APP_PW));
    let w = app
        .put(b"app/a", "1", Condition::None)
        .await
        .expect("app writes under app/");
    app.put(b"app/a", "2", Condition::IfMatch(w.revision))
        .await
        .expect("a conditional write under app/");
    let v = app.get(b"app/a", Consistency::Linearizable).await.expect("app reads");
    assert_eq!(v.map(|v| v.value.to_vec()), Some(b"2".to_vec()));
    let msg = refused(app.put(b"other", "x", Condition::None).await, 403, "permission_denied");
    assert_eq!(msg, "etcdserver: permission denied");
    refused(app.get(b"other", Consistency::Stale).await, 403, "permission_denied");
    let app_basic = basic("app", APP_PW);
    let (code, page) = get(&c, 1, "/v1/kv?prefix=app%2F", Some(&app_basic)).await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(
        get(&c, 1, "/v1/kv", Some(&app_basic)).await.0,
        403,
        "the whole key space"
    );
    assert_eq!(
        get(&c, 1, "/v1/kv?prefix=ap", Some(&app_basic)).await.0,
        403,
        "a wider prefix"
    );
    assert_eq!(get(&c, 1, "/v1/auth/users", Some(&app_basic)).await.0, 403);
    let (_, reduced) = get(&c, 1, "/v1/status", Some(&app_basic)).await;
    assert_eq!(reduced["members"][0]["http_addr"], "", "{reduced}");

    // Root does everything.
    let root = client(&c, 2, basic("root", ROOT_PW));
    root.put(b"other", "x", Condition::None)
        .await
        .expect("root writes anywhere");
    let (code, all) = get(&c, 2, "/v1/kv", Some(&basic("root", ROOT_PW))).await;
    assert_eq!((code, all["items"].as_array().map(Vec::len)), (200, Some(2)), "{all}");
    let users = auth(&c, 2, Some(basic("root", ROOT_PW)))
        .user_list()
        .await
        .expect("users");
    assert_eq!(users.users, ["app", "root"]);

    // A token from one node works on every node, with the user's rights.
    let t = auth(&c, 0, None).authenticate("app", APP_PW).await.expect("a token");
    for i in 0..3 {
        let by_token = client(&c, i, token(&t.token));
        by_token
            .get(b"app/a", Consistency::Linearizable)
            .await
            .unwrap_or_else(|e| panic!("the token on node {i}: {e}"));
        refused(
            by_token.put(b"other", "y", Condition::None).await,
            403,
            "permission_denied",
        );
    }
    refused(
        auth(&c, 0, None).authenticate("app", "wrong").await,
        401,
        "unauthenticated",
    );

    // The admin service wants root, through any node, --force included.
    let admin_as = |i: usize, cr: Credentials| {
        Admin::new(&c.node(i).raft_addr().to_string())
            .expect("an admin client")
            .with_credentials(cr)
            .expect("credentials")
    };
    let e = Admin::new(&c.node(1).raft_addr().to_string())
        .expect("an admin client")
        .status()
        .await
        .expect_err("no credentials");
    assert_eq!(e.rpc_code(), Some(tonic::Code::Unauthenticated), "{e}");
    let e = admin_as(1, basic("app", APP_PW)).members().await.expect_err("not root");
    assert_eq!(e.rpc_code(), Some(tonic::Code::PermissionDenied), "{e}");
    let e = admin_as(2, basic("app", APP_PW))
        .remove_member(999, true)
        .await
        .expect_err("not root");
    assert_eq!(e.rpc_code(), Some(tonic::Code::PermissionDenied), "{e}");
    let e = admin_as(2, basic("app", APP_PW))
        .backup()
        .await
        .err()
        .expect("not root");
    assert_eq!(e.rpc_code(), Some(tonic::Code::PermissionDenied), "{e}");
    for i in 0..3 {
        let members = admin_as(i, basic("root", ROOT_PW))
            .members()
            .await
            .unwrap_or_else(|e| panic!("root's members through node {i}: {e}"));
        assert_eq!(members.members.len(), 3);
        let mut backup = admin_as(
            i,
            token(
                &auth(&c, i, None)
                    .authenticate("root", ROOT_PW)
                    .await
                    .expect("root's token")
                    .token,
            ),
        )
        .backup()
        .await
        .unwrap_or_else(|e| panic!("root's backup through node {i}: {e}"));
        assert!(backup.next_chunk().await.expect("a chunk").is_some());
    }
    let run = cli(
        &[
            "admin",
            "--endpoint",
            &c.node(1).raft_addr().to_string(),
            "--user",
            &root_flag,
            "status",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);

    // A password change revokes the user's tokens and its old password: at once on the node
    // that made it, and on the others as they apply it.
    let old = t.token.clone();
    ok("user", &ep1, root_user, &["passwd", "app"], Some(b"new-secret\n")).await;
    let msg = refused(
        client(&c, 1, token(&old)).get(b"app/a", Consistency::Stale).await,
        401,
        "unauthenticated",
    );
    assert_eq!(msg, "etcdserver: invalid auth token");
    refused(
        client(&c, 1, basic("app", APP_PW))
            .get(b"app/a", Consistency::Stale)
            .await,
        401,
        "unauthenticated",
    );
    for i in [0, 2] {
        eventually(&format!("the old token refused on node {i}"), async || {
            let r = client(&c, i, token(&old)).get(b"app/a", Consistency::Stale).await;
            r.err().and_then(|e| e.status()) == Some(401)
        })
        .await;
    }
    let fresh = auth(&c, 2, None)
        .authenticate("app", "new-secret")
        .await
        .expect("the new password");
    client(&c, 2, token(&fresh.token))
        .get(b"app/a", Consistency::Linearizable)
        .await
        .expect("the new token");

    // So does an explicit revoke, and deleting the user.
    ok("user", &ep0, root_user, &["revoke-tokens", "app"], None).await;
    refused(
        client(&c, 0, token(&fresh.token))
            .get(b"app/a", Consistency::Stale)
            .await,
        401,
        "unauthenticated",
    );
    let last = auth(&c, 0, None)
        .authenticate("app", "new-secret")
        .await
        .expect("a token");
    ok("user", &ep0, root_user, &["delete", "app"], None).await;
    refused(
        client(&c, 0, token(&last.token))
            .get(b"app/a", Consistency::Stale)
            .await,
        401,
        "unauthenticated",
    );
    fails(
        "user",
        &ep0,
        root_user,
        &["delete", "root"],
        "etcdserver: invalid auth management",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused() {
    let mut args = FAST_BCRYPT.to_vec();
    args.extend(["--auth-token-ttl", "3"]);
    let c = cluster(1, &args).await;
    enable_with_root(&c).await;
    let t = auth(&c, 0, None).authenticate("root", ROOT_PW).await.expect("a token");
    assert_eq!(t.ttl_seconds, 3);
    let by_token = auth(&c, 0, Some(token(&t.token)));
    by_token.status().await.expect("a fresh token works");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let msg = refused(by_token.status().await, 401, "unauthenticated");
    assert_eq!(msg, "etcdserver: invalid auth token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_roles_survive_a_restart_and_reach_a_node_through_a_snapshot() {
    let mut args = FAST_BCRYPT.to_vec();
    args.extend(["--snapshot-threshold", "20"]);
    let mut c = cluster(3, &args).await;
    enable_with_root(&c).await;

    // Node 2 is down while a user is made and the log moves far past it.
    c.node_mut(2).kill();
    let root = auth(&c, 0, Some(basic("root", ROOT_PW)));
    root.role_add("late").await.expect("role");
    root.role_grant_permission(
        "late",
        &raftkv_client::auth::Permission {
            perm_type: raftkv_client::auth::PermissionType::Read,
            key: "late/".into(),
            range_end: "late0".into(),
        },
    )
    .await
    .expect("permission");
    root.user_add("late", Some("late-pw")).await.expect("user");
    root.user_grant_role("late", "late").await.expect("grant");
    let writer = client(&c, 0, basic("root", ROOT_PW));
    writer.put(b"late/x", "x", Condition::None).await.expect("put");
    for i in 0..120 {
        writer
            .put(format!("fill/{i}").as_bytes(), "v", Condition::None)
            .await
            .expect("fill");
    }
    let mut leader = None;
    eventually("the leader purges the log node 2 needs", async || {
        let Some(l) = c.leader().await else { return false };
        leader = c.status(l).await.filter(|s| s.purged.is_some_and(|p| p.index > 30));
        leader.is_some()
    })
    .await;
    let leader = leader.expect("the leader's status");
    let installs = |c: &Cluster| c.node(2).log_text().matches("snapshot installed").count();
    let before = installs(&c);
    c.restart(2).expect("node 2 starts again");
    c.wait_ready(2).await.expect("node 2 is ready");
    eventually("node 2 catches up", async || {
        c.status(2)
            .await
            .is_some_and(|s| s.applied_index() >= leader.applied_index())
    })
    .await;
    assert!(
        installs(&c) > before,
        "node 2 caught up from a snapshot: {}",
        c.node(2).log_tail(30)
    );

    // It enforces the users and roles it got in the snapshot.
    let late = client(&c, 2, basic("late", "late-pw"));
    let v = late.get(b"late/x", Consistency::Stale).await.expect("late reads late/");
    assert!(v.is_some());
    refused(late.get(b"fill/1", Consistency::Stale).await, 403, "permission_denied");
    refused(
        late.put(b"late/y", "y", Condition::None).await,
        403,
        "permission_denied",
    );
    refused(
        c.node(2).client().get(b"late/x", Consistency::Stale).await,
        401,
        "unauthenticated",
    );

    // And a node killed and started again still knows them.
    c.restart(0).expect("node 0 starts again");
    c.wait_ready(0).await.expect("node 0 ready");
    let t = auth(&c, 0, None)
        .authenticate("late", "late-pw")
        .await
        .expect("a token after a restart");
    client(&c, 0, token(&t.token))
        .get(b"late/x", Consistency::Linearizable)
        .await
        .expect("the token works");
    refused(
        c.node(0).client().get(b"late/x", Consistency::Stale).await,
        401,
        "unauthenticated",
    );
}
