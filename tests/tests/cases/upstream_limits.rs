//! The cluster's own connection pool and circuit breakers: over `max_requests` a request
//! gets 503 with `UO` at once; at `max_connections` requests wait as pending, and over
//! `max_pending_requests` they get `UO`; the upstream never sees more than the limit.

use std::net::SocketAddr;

use serde_json::{json, Value};
use sluice_tests::client::HttpClient;
use sluice_tests::config::{address, bootstrap, cluster, hcm_filter, to_cluster};
use sluice_tests::free_addr;
use sluice_tests::process::Sluice;
use sluice_tests::upstream::Upstream;

fn limited(listener: SocketAddr, upstream: SocketAddr, thresholds: Value) -> (String, SocketAddr) {
    let admin = free_addr();
    let config = bootstrap(
        admin,
        vec![json!({ "name": "in", "address": address(listener),
            "filter_chains": [ { "filters": [hcm_filter("in", to_cluster("slow"), json!({}))] } ] })],
        vec![cluster(
            "slow",
            &[(upstream, 1)],
            json!({ "circuit_breakers": { "thresholds": [thresholds] } }),
        )],
    );
    (config, admin)
}

/// Sends `n` slow requests at once; returns the statuses.
async fn burst(listener: SocketAddr, n: usize) -> Vec<u16> {
    let client = HttpClient::http1();
    let requests = (0..n).map(|_| {
        let client = client.clone();
        async move {
            client
                .get(listener, "a", "/", &[("x-test-delay-ms", "600")])
                .await
                .map_or(0, |r| r.status.as_u16())
        }
    });
    futures_util::future::join_all(requests).await
}

#[tokio::test]
async fn over_max_requests_a_request_gets_503_uo_and_the_upstream_never_sees_more() {
    let upstream = Upstream::start("slow").await;
    let listener = free_addr();
    let (config, admin) = limited(
        listener,
        upstream.addr,
        json!({ "max_requests": 5, "max_pending_requests": 5 }),
    );
    let sluice = Sluice::start(&config, admin).await.unwrap();
    let statuses = burst(listener, 50).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!((ok, refused), (5, 45), "{statuses:?}");
    assert!(
        upstream.peak_concurrency() <= 5,
        "peak {}",
        upstream.peak_concurrency()
    );
    assert_eq!(sluice.stat("http.response_flag.UO").await.unwrap(), 45);
    assert_eq!(
        sluice
            .stat("cluster.slow.upstream_rq_pending_overflow")
            .await
            .unwrap(),
        45
    );
}

#[tokio::test]
async fn at_max_connections_requests_wait_as_pending_within_max_pending_requests() {
    let upstream = Upstream::start("slow").await;
    let listener = free_addr();
    let (config, admin) = limited(
        listener,
        upstream.addr,
        json!({ "max_connections": 2, "max_pending_requests": 3 }),
    );
    let sluice = Sluice::start(&config, admin).await.unwrap();
    let statuses = burst(listener, 10).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        ok, 5,
        "2 on the connections and 3 pending get through: {statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 5);
    assert!(
        upstream.peak_concurrency() <= 2,
        "peak {}",
        upstream.peak_concurrency()
    );
    assert!(
        sluice
            .stat("cluster.slow.upstream_cx_active")
            .await
            .unwrap()
            <= 2
    );
    assert!(
        sluice.stat("cluster.slow.upstream_cx_total").await.unwrap() <= 2,
        "connections are reused"
    );
}
