//! The filter chain's response-body and end-of-stream phases, through Envoy and `sluice`
//! with the same config, on the fault filter's `max_active_faults` and
//! `response_rate_limit`: a delayed request gives its slot back when the delay ends, but
//! a fault with a response rate limit holds it until the stream ends, and a rate-limited
//! response arrives whole, no faster than the rate.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_tests::client::HttpClient;
use sluice_tests::config::{bootstrap, cluster, http_listener};
use sluice_tests::envoy::Envoy;
use sluice_tests::free_addr;
use sluice_tests::process::Sluice;
use sluice_tests::upstream::Upstream;

const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

fn listener(name: &str, addr: SocketAddr, fault: Value) -> Value {
    let mut fault = fault;
    fault["@type"] = json!(FAULT);
    fault["delay"] = json!({ "fixed_delay": "0.3s", "percentage": { "numerator": 100 } });
    fault["max_active_faults"] = json!(1);
    let filters = json!([
        { "name": "envoy.filters.http.fault", "typed_config": fault },
        { "name": "envoy.filters.http.router",
          "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }
    ]);
    let routes = json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"],
        "routes": [ { "match": { "prefix": "/" }, "route": { "cluster": "a" } } ] } ] });
    http_listener(name, addr, routes, json!({ "http_filters": filters }))
}

fn config(admin: SocketAddr, listeners: [SocketAddr; 2], upstream: &Upstream) -> String {
    bootstrap(
        admin,
        vec![
            listener("faults", listeners[0], json!({})),
            listener(
                "throttled",
                listeners[1],
                json!({ "response_rate_limit": { "header_limit": {}, "percentage": { "numerator": 100 } } }),
            ),
        ],
        vec![cluster("a", &[(upstream.addr, 1)], json!({}))],
    )
}

const RESPONSE_BYTES: usize = 32 * 1024;

/// A is delayed 0.3 s, then 1.2 s upstream (on `throttled`, its 32 KiB answer is sent at
/// 16 KiB/s); B arrives at 0.7 s, after A's delay, while A's stream is open; C after A
/// has ended.
/// Returns the statuses and body lengths, and how long A took.
async fn run(listener: SocketAddr) -> (Vec<(u16, usize)>, Duration) {
    let client = HttpClient::http1();
    let started = Instant::now();
    let slow = {
        let client = HttpClient::http1();
        tokio::spawn(async move {
            let bytes = RESPONSE_BYTES.to_string();
            let reply = client
                .get(
                    listener,
                    "h",
                    "/a",
                    &[
                        ("x-test-delay-ms", "1200"),
                        ("x-test-response-bytes", &bytes),
                        ("x-envoy-fault-throughput-response", "16"),
                    ],
                )
                .await;
            (reply, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let during = client.get(listener, "h", "/b", &[]).await.expect("B");
    let (first, took) = slow.await.expect("A's task");
    let first = first.expect("A");
    let after = client.get(listener, "h", "/c", &[]).await.expect("C");
    let summary = [first, during, after]
        .iter()
        .map(|r| (r.status.as_u16(), r.body.len()))
        .collect();
    (summary, took)
}

const STATS: [&str; 6] = [
    "http.faults.fault.delays_injected",
    "http.faults.fault.faults_overflow",
    "http.faults.fault.response_rl_injected",
    "http.throttled.fault.delays_injected",
    "http.throttled.fault.faults_overflow",
    "http.throttled.fault.response_rl_injected",
];

#[tokio::test]
async fn fault_slots_and_response_rate_limits_match_envoy() {
    let upstream = Upstream::start("a").await;
    let listeners = [free_addr(), free_addr()];

    let admin = free_addr();
    let envoy = Envoy::start(&config(admin, listeners, &upstream), admin)
        .await
        .expect("start envoy (installed by tests/run.sh)");
    let envoy_runs = [run(listeners[0]).await, run(listeners[1]).await];
    let mut envoy_stats = Vec::new();
    for name in STATS {
        envoy_stats.push(envoy.stat(name).await.unwrap_or(0));
    }
    drop(envoy);

    let admin = free_addr();
    let sluice = Sluice::start(&config(admin, listeners, &upstream), admin)
        .await
        .expect("start sluice");
    let sluice_runs = [run(listeners[0]).await, run(listeners[1]).await];
    let mut sluice_stats = Vec::new();
    for name in STATS {
        sluice_stats.push(sluice.stat(name).await.unwrap_or(0));
    }
    drop(sluice);

    let replies = |runs: &[(Vec<(u16, usize)>, Duration); 2]| {
        runs.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>()
    };
    assert_eq!(replies(&sluice_runs), replies(&envoy_runs));
    assert_eq!(envoy_runs[1].0[0], (200, RESPONSE_BYTES));
    // Without a response rate limit the slot is free once A's delay is over: all three
    // are delayed. With one, A holds it to the end of its stream: B overflows.
    assert_eq!(envoy_stats, vec![3, 0, 0, 2, 1, 1]);
    assert_eq!(sluice_stats, envoy_stats);
    // 1.5 s before the answer starts; a bucket of one second's bytes (16 KiB) goes at
    // once, the other 16 KiB take a second more.
    for (name, runs) in [("envoy", &envoy_runs), ("sluice", &sluice_runs)] {
        let took = runs[1].1;
        assert!(
            took >= Duration::from_millis(2400),
            "{name}: throttled A took {took:?}"
        );
    }
}
