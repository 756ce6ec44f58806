//! TLS on every listener, with certificates made in the test (a CA, node, client, expired and
//! wrong-CA ones): what is refused, what is accepted, and a rotation of every certificate
//! under a running writer.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Kv, BIN};
use raftkv_client::{Admin, Client, Consistency, Tls};
use raftkv_harness::pki::{write_atomic, Authority, ClusterPki, Subject};
use raftkv_harness::{Cluster, Options};

/// A cluster of `n` nodes with TLS on both listeners and client certificates required on
/// both (`--client-cert-auth`, `--peer-client-cert-auth`), plus `extra` flags.
async fn tls_cluster(dir: &Path, n: usize, client_cert_auth: bool, extra: &[&str]) -> (Authority, ClusterPki, Cluster) {
    let (ca, pki) = ClusterPki::create(dir, "client").expect("certificates");
    let mut args = pki.node_args(client_cert_auth);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let options = Options::new(BIN)
        .node_args(&args)
        .client_tls(pki.client_tls().expect("client TLS"));
    let c = Cluster::start(options, n).await.expect("a TLS cluster forms");
    (ca, pki, c)
}

fn tls_from(ca: &str, client: Option<(&str, &str)>) -> Tls {
    Tls::from_pem(
        Some(ca.as_bytes()),
        client.map(|c| c.0.as_bytes()),
        client.map(|c| c.1.as_bytes()),
    )
    .expect("TLS settings")
}

fn https(c: &Cluster, i: usize, tls: Tls) -> Client {
    Client::builder(&c.node(i).http_addr().to_string())
        .tls(tls)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

fn admin(c: &Cluster, i: usize, tls: Option<Tls>) -> Admin {
    let a = Admin::new(&c.node(i).raft_addr().to_string())
        .expect("admin endpoint")
        .timeout(Duration::from_secs(5));
    match tls {
        Some(tls) => a.with_tls(tls),
        None => a,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_right_certificates_get_through_either_listener() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, pki, c) = tls_cluster(dir.path(), 1, true, &[]).await;
    let good = pki.client_tls().expect("client TLS");
    let other_ca = Authority::new("another CA").expect("CA");
    let from_other_ca = other_ca.issue(&Subject::client("client")).expect("cert");
    let expired = ca.issue(&Subject::client("client").expired()).expect("cert");

    // The client listener.
    let ok = https(&c, 0, good.clone())
        .ready()
        .await
        .expect("the right certificate is accepted");
    assert!(ok.is_ok(), "{ok:?}");
    let plain = Client::builder(&c.node(0).http_addr().to_string())
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    assert!(
        plain.ready().await.is_err(),
        "plain text to the TLS port must be refused"
    );
    let refused = [
        ("no client certificate", tls_from(ca.cert_pem(), None)),
        (
            "a certificate from another CA",
            tls_from(ca.cert_pem(), Some((&from_other_ca.cert_pem, &from_other_ca.key_pem))),
        ),
        (
            "an expired certificate",
            tls_from(ca.cert_pem(), Some((&expired.cert_pem, &expired.key_pem))),
        ),
    ];
    for (what, tls) in &refused {
        let r = https(&c, 0, tls.clone()).ready().await;
        assert!(r.is_err(), "{what} must be refused on the client port, got {r:?}");
    }
    // The client checks the server too: a node certificate from a CA it does not trust is refused.
    let r = https(&c, 0, tls_from(other_ca.cert_pem(), None)).ready().await;
    assert!(
        r.is_err(),
        "a client that trusts another CA must refuse the node, got {r:?}"
    );

    // The peer listener: Raft and the admin service.
    let members = admin(&c, 0, Some(good.clone()))
        .members()
        .await
        .expect("the admin service takes the peer CA's certificate");
    assert_eq!(members.members.len(), 1);
    assert!(
        admin(&c, 0, None).members().await.is_err(),
        "plain text to the peer port must be refused"
    );
    for (what, tls) in &refused {
        let r = admin(&c, 0, Some(tls.clone())).members().await;
        assert!(r.is_err(), "{what} must be refused on the peer port, got {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_service_needs_a_certificate_even_when_raft_does_not() {
    // Peer TLS without --peer-client-cert-auth: any TLS client may connect, but the admin
    // service (membership, backups) still takes only holders of a peer CA certificate.
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, pki) = ClusterPki::create(dir.path(), "client").expect("certificates");
    let p = |p: &Path| p.display().to_string();
    let args = [
        "--peer-cert-file".to_string(),
        p(&pki.node.cert),
        "--peer-key-file".into(),
        p(&pki.node.key),
        "--peer-trusted-ca-file".into(),
        p(&pki.ca),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = Cluster::start(Options::new(BIN).node_args(&args), 1)
        .await
        .expect("forms");
    let err = admin(&c, 0, Some(tls_from(ca.cert_pem(), None)))
        .remove_member(1, true)
        .await
        .expect_err("no certificate: refused");
    assert_eq!(err.rpc_code(), Some(tonic::Code::Unauthenticated), "{err}");
    assert!(err.to_string().contains("client certificate"), "{err}");
    let members = admin(&c, 0, Some(pki.client_tls().expect("tls")))
        .members()
        .await
        .expect("with one: served");
    assert_eq!(members.members.len(), 1, "nothing was removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_certificate_is_rotated_under_a_running_writer_with_no_failed_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (old_ca, pki) = ClusterPki::create(dir.path(), "client").expect("certificates");
    let new_ca = Authority::new("raftkv test CA 2").expect("CA");
    let both = format!("{}{}", old_ca.cert_pem(), new_ca.cert_pem());
    // Clients learn the new CA before the rotation starts (as a rotation is rolled out).
    let writer_tls = tls_from(&both, None);
    let mut args = pki.node_args(false);
    args.push("--snapshot-threshold".into());
    args.push("200".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let options = Options::new(BIN).node_args(&args).client_tls(writer_tls.clone());
    let mut c = Cluster::start(options, 3).await.expect("a 3-node mTLS cluster forms");

    let clients: Vec<Client> = (0..3).map(|i| https(&c, i, writer_tls.clone())).collect();
    let writer = raftkv_harness::Writer::start(clients, "w/");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 1. Every node trusts both CAs.
    write_atomic(&pki.ca, both.as_bytes()).expect("CA bundle");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // 2. New node certificates from the new CA, certificate and key written one after the other.
    let issued = new_ca.issue(&Subject::node("raftkv-node")).expect("cert");
    write_atomic(&pki.node.cert, issued.cert_pem.as_bytes()).expect("cert");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    write_atomic(&pki.node.key, issued.key_pem.as_bytes()).expect("key");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // 3. The old CA is dropped.
    write_atomic(&pki.ca, new_ca.cert_pem().as_bytes()).expect("CA");
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (acked, failed) = writer.stop().await;
    assert!(acked.len() > 50, "the writer made progress: {} writes", acked.len());
    assert_eq!(
        failed,
        0,
        "no write failed during the rotation ({} acknowledged)",
        acked.len()
    );

    // New connections see the new certificates: a client that trusts only the new CA gets
    // through, one with an old-CA certificate no longer reaches the peer port.
    let new_only = tls_from(new_ca.cert_pem(), None);
    for i in 0..3 {
        https(&c, i, new_only.clone())
            .ready()
            .await
            .expect("the node presents the new certificate");
    }
    let old_client = tls_from(
        new_ca.cert_pem(),
        Some((
            &std::fs::read_to_string(&pki.client.cert).expect("old cert"),
            &std::fs::read_to_string(&pki.client.key).expect("old key"),
        )),
    );
    assert!(
        admin(&c, 0, Some(old_client)).members().await.is_err(),
        "a certificate of the dropped CA must be refused"
    );
    // A restarted node reconnects to its peers with only the new certificates and catches up.
    c.node_mut(2).kill();
    c.restart(2).expect("restart");
    c.wait_ready(2)
        .await
        .expect("the restarted node is ready over the new certificates");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (last_key, last_value) = acked.last().expect("writes").clone();
    loop {
        let got = c.get(2, &last_key, Consistency::Linearizable).await;
        if got.as_deref() == Some(last_value.as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "node 2 never served {last_key}: {got:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (key, value) in acked.iter().step_by(17) {
        assert_eq!(
            c.get(0, key, Consistency::Linearizable).await.as_deref(),
            Some(value.as_str())
        );
    }
}
