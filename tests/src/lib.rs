//! Shared harness for the end-to-end suites: real `sluice` processes, real upstream
//! servers, and small HTTP helpers. Everything listens on 127.0.0.1.

pub mod client;
pub mod compat;
pub mod config;
pub mod csds;
pub mod envoy;
pub mod grpc;
pub mod load;
pub mod otlp;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod unix;
pub mod upstream;

use std::net::SocketAddr;
use std::time::Duration;

/// Asserts that Envoy's and sluice's replies to the same corpus agree, pair by pair,
/// listing every pair that differs.
pub fn assert_same_replies(envoy: &[serde_json::Value], sluice: &[serde_json::Value]) {
    assert_eq!(envoy.len(), sluice.len(), "both answered the whole corpus");
    let differences: Vec<String> = envoy
        .iter()
        .zip(sluice)
        .filter(|(e, s)| e != s)
        .map(|(e, s)| format!("envoy:  {e}\nsluice: {s}"))
        .collect();
    assert!(
        differences.is_empty(),
        "{} of {} differ:\n{}",
        differences.len(),
        envoy.len(),
        differences.join("\n")
    );
}

/// A port that was free a moment ago on 127.0.0.1, chosen below the kernel's ephemeral
/// range: a port the kernel hands out (`bind` to port 0) can be taken as the local port of
/// any outgoing connection before the test's server binds it, and tests run in parallel.
pub fn free_port() -> u16 {
    use rand::Rng;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000, ephemeral_low.max(10_100));
    let mut rng = rand::rng();
    for _ in 0..200 {
        let port = rng.random_range(low..high);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a port")
}

/// A loopback address with a free port.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Polls `check` until it returns true or `timeout` passes (no fixed sleeps in tests).
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
