//! HTTP/1.1 details: pipelined requests answered in order, chunked request bodies streamed
//! to the upstream, keep-alive reuse of the upstream pool.

use std::time::Duration;

use serde_json::json;
use sluice_tests::client::{raw_exchange, HttpClient};
use sluice_tests::config::single_cluster;
use sluice_tests::free_addr;
use sluice_tests::process::Sluice;
use sluice_tests::upstream::Upstream;

async fn start() -> (Sluice, std::net::SocketAddr, Upstream) {
    let upstream = Upstream::start("a").await;
    let admin = free_addr();
    let listener = free_addr();
    let routes = json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": [
        { "match": { "prefix": "/direct" }, "direct_response": { "status": 200, "body": { "inline_string": "direct" } } },
        { "match": { "prefix": "/" }, "route": { "cluster": "a" } } ] } ] });
    let config = single_cluster(admin, listener, upstream.addr, routes, json!({}));
    (
        Sluice::start(&config, admin).await.expect("start"),
        listener,
        upstream,
    )
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (_sluice, listener, _upstream) = start().await;
    // The first request is slow upstream; the answers must still come back in order.
    let raw = b"GET /one HTTP/1.1\r\nHost: h\r\nX-Test-Delay-Ms: 200\r\n\r\n\
GET /direct HTTP/1.1\r\nHost: h\r\n\r\n\
GET /three HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(listener, raw, Duration::from_secs(5))
        .await
        .unwrap();
    let one = answer.find("\"path\":\"/one\"").expect("first answer");
    let two = answer.find("direct").expect("second answer");
    let three = answer.find("\"path\":\"/three\"").expect("third answer");
    assert!(one < two && two < three, "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 3);
}

#[tokio::test]
async fn chunked_request_bodies_stream_to_the_upstream() {
    let (_sluice, listener, upstream) = start().await;
    let raw = b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let answer = raw_exchange(listener, raw, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"body_bytes\":11"), "{answer}");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_bytes, 11);
}

#[tokio::test]
async fn quitquitquit_drains_and_exits() {
    let (mut sluice, listener, _upstream) = start().await;
    let client = HttpClient::http1();
    assert_eq!(
        client.get(listener, "h", "/x", &[]).await.unwrap().status,
        200
    );
    let r = client
        .send(
            sluice.admin,
            http::Method::GET,
            "admin",
            "/quitquitquit",
            &[],
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        r.status, 405,
        "mutating admin endpoints need POST, as in Envoy"
    );
    let r = client
        .send(
            sluice.admin,
            http::Method::POST,
            "admin",
            "/quitquitquit",
            &[],
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(sluice
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap()
        .success());
}
