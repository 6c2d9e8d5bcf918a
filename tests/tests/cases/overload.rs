//! The overload manager's global connection cap (`global_downstream_max_connections`), as
//! Istio and Envoy Gateway set it: past the cap a connection is closed at accept and
//! counted, a listener with `ignore_global_conn_limit` still answers, and a slot freed by a
//! closing connection is taken by the next one. The same config runs through Envoy.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use sluice_tests::client::HttpClient;
use sluice_tests::config::{address, answer, http_listener};
use sluice_tests::envoy::Envoy;
use sluice_tests::free_addr;
use sluice_tests::process::Sluice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn capped_bootstrap(admin: SocketAddr, capped: SocketAddr, exempt: SocketAddr) -> String {
    let mut exempt_listener = http_listener("exempt", exempt, answer("exempt"), json!({}));
    exempt_listener["ignore_global_conn_limit"] = true.into();
    json!({
        "admin": { "address": address(admin) },
        "overload_manager": { "resource_monitors": [ {
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": 2 } } ] },
        "static_resources": { "listeners": [
            http_listener("capped", capped, answer("capped"), json!({})),
            exempt_listener,
        ] }
    })
    .to_string()
}

/// Opens a connection and has one request answered on it (so the proxy has surely
/// accepted it), keeping it open; `None` when the proxy closes it instead.
async fn held_connection(addr: SocketAddr) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: capped\r\n\r\n")
        .await
        .ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&buf[..n])
        .starts_with("HTTP/1.1 200")
        .then_some(stream)
}

/// What a proxy does under the cap: `(third connection served, exempt listener served,
/// served again after one closed, overflow counter)`.
async fn under_the_cap(
    capped: SocketAddr,
    exempt: SocketAddr,
    overflow: impl std::future::Future<Output = Option<i64>>,
) -> (bool, bool, bool, Option<i64>) {
    let first = held_connection(capped)
        .await
        .expect("first connection served");
    let _second = held_connection(capped)
        .await
        .expect("second connection served");
    let third = held_connection(capped).await.is_some();
    let exempt_served = HttpClient::http1()
        .get(exempt, "exempt", "/", &[])
        .await
        .is_ok_and(|r| r.status == 200);
    drop(first);
    // The proxy sees the close when it reads next: retry briefly.
    let mut again = false;
    for _ in 0..50 {
        if held_connection(capped).await.is_some() {
            again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (third, exempt_served, again, overflow.await)
}

#[tokio::test]
async fn past_the_global_cap_connections_are_closed_and_counted_as_in_envoy() {
    let (admin, capped, exempt) = (free_addr(), free_addr(), free_addr());
    let sluice = Sluice::start(&capped_bootstrap(admin, capped, exempt), admin)
        .await
        .unwrap();
    let from_sluice = under_the_cap(capped, exempt, async {
        sluice
            .stat(&format!("listener.{capped}.downstream_global_cx_overflow"))
            .await
            .ok()
    })
    .await;
    drop(sluice);

    let (admin, capped, exempt) = (free_addr(), free_addr(), free_addr());
    let envoy = Envoy::start(&capped_bootstrap(admin, capped, exempt), admin)
        .await
        .unwrap();
    let envoy_name = format!("{}_{}", capped.ip(), capped.port());
    let from_envoy = under_the_cap(capped, exempt, async {
        envoy
            .stat(&format!(
                "listener.{envoy_name}.downstream_global_cx_overflow"
            ))
            .await
    })
    .await;

    assert!(!from_sluice.0, "the third connection is refused");
    assert!(from_sluice.1, "the exempt listener answers");
    assert!(from_sluice.2, "a freed slot is taken again");
    assert!(
        from_sluice.3 >= Some(1),
        "overflow counted: {:?}",
        from_sluice.3
    );
    assert_eq!(from_sluice, from_envoy, "Envoy does the same");
}
