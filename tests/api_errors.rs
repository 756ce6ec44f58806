//! Bad input gets a 4xx with a JSON body naming the problem, and nothing is written.

mod common;

use common::{cluster, http, Kv};
use serde_json::Value;

async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> Value {
    let got = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string());
    let body: Value = resp.json().await.expect("error body is JSON");
    assert_eq!(got, status, "body: {body}");
    assert_eq!(ctype.as_deref(), Some("application/json"));
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_and_write_nothing() {
    let c = cluster(1, &["--max-value-bytes", "1024"]).await;
    let n = c.node(0);
    let h = &http();

    let long = format!("/v1/kv/{}", "k".repeat(4097));
    let join = n.url("/v1/cluster/join");
    // Each request written by hand, with the status and error code it must get.
    let cases = [
        (h.put(n.url("/v1/kv/")).body("x"), 400, "invalid_key"),
        (h.put(n.url(&long)).body("x"), 400, "invalid_key"),
        (h.put(n.url("/v1/kv/bad%zzescape")).body("x"), 400, "invalid_key"),
        (
            h.put(n.url("/v1/kv/big")).body(vec![b'x'; 1025]),
            413,
            "value_too_large",
        ),
        (
            h.put(n.url("/v1/kv/k")).header("if-match", "7").body("x"),
            400,
            "invalid_header",
        ),
        (
            h.put(n.url("/v1/kv/k")).header("if-none-match", "\"3\"").body("x"),
            400,
            "invalid_header",
        ),
        (
            h.put(n.url("/v1/kv/k?consistency=stale")).body("x"),
            400,
            "invalid_query",
        ),
        (h.get(n.url("/v1/kv/k?consistency=strong")), 400, "invalid_query"),
        (h.get(n.url("/v1/kv/k?bogus=1")), 400, "invalid_query"),
        (h.get(n.url("/v1/kv?limit=0")), 400, "invalid_query"),
        (h.get(n.url("/v1/kv/k")).body("a body"), 400, "unexpected_body"),
        (h.delete(n.url("/v1/kv/k")).body("a body"), 400, "unexpected_body"),
        (h.get(n.url("/v1/kv/missing")), 404, "key_not_found"),
        (h.get(n.url("/nope")), 404, "not_found"),
        (h.post(n.url("/v1/kv/k")).body("x"), 405, "method_not_allowed"),
        // Membership changes are not on the public client port (only the admin service on
        // the peer port takes them).
        (
            h.post(&join).body(r#"{"id":999,"raft_addr":"x:1","http_addr":"x:2"}"#),
            404,
            "not_found",
        ),
    ];
    for (request, status, code) in cases {
        let body = expect_error(request.send().await.unwrap(), status, code).await;
        if code == "value_too_large" {
            assert!(body["error"]["message"].as_str().unwrap().contains("1024"));
        }
    }

    // Nothing above was written.
    let list: Value = h.get(n.url("/v1/kv")).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");
    // The node is still healthy.
    assert_eq!(h.get(n.url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(h.get(n.url("/readyz")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_keys_and_values_survive_put_get_and_list() {
    let c = cluster(1, &[]).await;
    let n = c.node(0);
    let h = &http();
    let value: Vec<u8> = (0..=255u8).collect();
    let r = h
        .put(n.url("/v1/kv/bin%ff%00key"))
        .body(value.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = h.get(n.url("/v1/kv/bin%FF%00key")).send().await.unwrap();
    assert_eq!(got.headers()["content-type"], "application/octet-stream");
    assert_eq!(got.bytes().await.unwrap().as_ref(), value.as_slice());
    c.put_ok(0, "text", "plain").await;

    let list: Value = h.get(n.url("/v1/kv")).send().await.unwrap().json().await.unwrap();
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    assert_eq!(
        b64.decode(items[0]["key_base64"].as_str().unwrap()).unwrap(),
        b"bin\xff\x00key"
    );
    assert_eq!(b64.decode(items[0]["value_base64"].as_str().unwrap()).unwrap(), value);
    assert_eq!(items[1]["key"], "text");
    assert_eq!(items[1]["value"], "plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_through_a_prefix_in_key_order() {
    let c = cluster(1, &[]).await;
    let h = http();
    for k in ["a/1", "a/2", "a/3", "a/4", "a/5", "b/1"] {
        c.put_ok(0, k, k).await;
    }
    let mut keys = Vec::new();
    let mut url = c.node(0).url("/v1/kv?prefix=a%2F&limit=2");
    loop {
        let page: Value = h.get(&url).send().await.unwrap().json().await.unwrap();
        for item in page["items"].as_array().unwrap() {
            keys.push(item["key"].as_str().unwrap().to_string());
        }
        match page["next_start"].as_str() {
            Some(next) => url = c.node(0).url(&format!("/v1/kv?prefix=a%2F&limit=2&start={next}")),
            None => break,
        }
    }
    assert_eq!(keys, ["a/1", "a/2", "a/3", "a/4", "a/5"]);
}
