//! HTTP/1.1 details: pipelined requests answered in order, chunked request bodies streamed
//! to the upstream, keep-alive reuse of the upstream pool; HTTP/1.0 refused (426) or
//! served with `http_protocol_options`, as Envoy.

use std::time::Duration;

use serde_json::json;
use sluice_tests::client::{raw_exchange, HttpClient};
use sluice_tests::config::{bootstrap, http_listener, single_cluster};
use sluice_tests::envoy::Envoy;
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

/// Listeners: the default (HTTP/1.0 refused); HTTP/1.0 accepted with a default host;
/// accepted without one.
fn http10_config(admin: std::net::SocketAddr, listeners: [std::net::SocketAddr; 3]) -> String {
    let answer = |text: &str| {
        json!([{ "match": { "prefix": "/" },
                 "direct_response": { "status": 200, "body": { "inline_string": text } } }])
    };
    let routes = json!({ "virtual_hosts": [
        { "name": "legacy", "domains": ["legacy.local"], "routes": answer("legacy") },
        { "name": "other", "domains": ["*"], "routes": answer("other") } ] });
    bootstrap(
        admin,
        vec![
            http_listener("strict", listeners[0], routes.clone(), json!({})),
            http_listener(
                "legacy",
                listeners[1],
                routes.clone(),
                json!({ "http_protocol_options": { "accept_http_10": true, "default_host_for_http_10": "legacy.local" } }),
            ),
            http_listener(
                "legacy_no_default",
                listeners[2],
                routes,
                json!({ "http_protocol_options": { "accept_http_10": true } }),
            ),
        ],
        vec![],
    )
}

/// `(status, body, whether the connection was closed with the answer)` of each request.
async fn http10_answers(listeners: [std::net::SocketAddr; 3]) -> Vec<(Option<u16>, String, bool)> {
    let requests: [(usize, &str); 7] = [
        (0, "GET / HTTP/1.0\r\n\r\n"),
        (
            0,
            "GET / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
        ),
        (0, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        (1, "GET / HTTP/1.0\r\n\r\n"),
        (1, "GET / HTTP/1.0\r\nHost: x\r\n\r\n"),
        (2, "GET / HTTP/1.0\r\n\r\n"),
        (2, "GET / HTTP/1.0\r\nHost: x\r\n\r\n"),
    ];
    let mut out = Vec::new();
    for (listener, raw) in requests {
        let answer = raw_exchange(listeners[listener], raw.as_bytes(), Duration::from_secs(3))
            .await
            .expect("exchange");
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let closes = head.to_ascii_lowercase().contains("connection: close");
        out.push((
            sluice_tests::client::raw_status(&answer),
            body.to_string(),
            closes,
        ));
    }
    out
}

#[tokio::test]
async fn http_1_0_is_refused_or_served_as_envoy() {
    let listeners = [free_addr(), free_addr(), free_addr()];
    let admin = free_addr();
    let envoy = Envoy::start(&http10_config(admin, listeners), admin)
        .await
        .expect("start envoy (installed by tests/run.sh)");
    let from_envoy = http10_answers(listeners).await;
    drop(envoy);
    let admin = free_addr();
    let sluice = Sluice::start(&http10_config(admin, listeners), admin)
        .await
        .expect("start sluice");
    let from_sluice = http10_answers(listeners).await;
    drop(sluice);
    assert_eq!(from_sluice, from_envoy);
    assert_eq!(from_envoy[0], (Some(426), "Upgrade Required".into(), true));
    assert_eq!(from_envoy[3].1, "legacy");
    assert_eq!(from_envoy[5].0, Some(400));
}
