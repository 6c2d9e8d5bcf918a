//! The overload manager. The global connection cap (`global_downstream_max_connections`),
//! as Istio and Envoy Gateway set it: past the cap a connection is closed at accept and
//! counted, a listener with `ignore_global_conn_limit` still answers, and a slot freed by a
//! closing connection is taken by the next one. The fixed-heap monitor's actions, as
//! Envoy's docs configure them: with a maximum far below any real heap both proxies are
//! saturated from the first sample, so stop_accepting_requests answers 503 (in gRPC's form
//! to gRPC), disable_http_keepalive closes HTTP/1 connections and sends HTTP/2 a GOAWAY,
//! stop_accepting_connections leaves new peers in the backlog, reject_incoming_connections
//! closes them, and a listener with `bypass_overload_manager` is left alone. Every config
//! runs through Envoy too, and the two must agree.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use sluice_tests::client::HttpClient;
use sluice_tests::config::{address, answer, http_listener};
use sluice_tests::envoy::Envoy;
use sluice_tests::free_addr;
use sluice_tests::process::Sluice;
use sluice_tests::proxy::{Kind, Proxy};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
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
/// served again after one closed, overflows counted)`. How many depends on how soon the
/// proxy sees the freed slot (the retries may overflow too), so only whether is compared.
async fn under_the_cap(
    capped: SocketAddr,
    exempt: SocketAddr,
    overflow: impl std::future::Future<Output = Option<i64>>,
) -> (bool, bool, bool, bool) {
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
    (third, exempt_served, again, overflow.await >= Some(1))
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
    assert!(from_sluice.3, "overflow counted");
    assert_eq!(from_sluice, from_envoy, "Envoy does the same");
}

/// A heap monitor no process fits under (pressure far above 1) driving `actions` (names
/// of Envoy's overload actions, each with a threshold trigger), on listener `pressed`
/// and on `health`, which bypasses the overload manager.
fn heap_bootstrap(
    admin: SocketAddr,
    pressed: SocketAddr,
    health: SocketAddr,
    actions: &[&str],
) -> String {
    let mut health_listener = http_listener("health", health, answer("healthy"), json!({}));
    health_listener["bypass_overload_manager"] = true.into();
    let actions: Vec<_> = actions
        .iter()
        .map(|name| json!({ "name": name, "triggers": [{ "name": "heap", "threshold": { "value": 0.9 } }] }))
        .collect();
    json!({
        "admin": { "address": address(admin) },
        "overload_manager": {
            "refresh_interval": "0.1s",
            "resource_monitors": [ {
                "name": "heap",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                    "max_heap_size_bytes": 1000 } } ],
            "actions": actions },
        "static_resources": { "listeners": [
            http_listener("pressed", pressed, answer("pressed"), json!({})),
            health_listener,
        ] }
    })
    .to_string()
}

/// Sends GETs until `overloaded` says the action has taken effect (the first sample comes
/// one refresh interval after start), bounded to 100 tries.
async fn first_overloaded(
    addr: SocketAddr,
    overloaded: impl Fn(&sluice_tests::client::Reply) -> bool,
) -> sluice_tests::client::Reply {
    for _ in 0..100 {
        if let Ok(reply) = HttpClient::http1().get(addr, "pressed", "/", &[]).await {
            if overloaded(&reply) {
                return reply;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the overload action never took effect on {addr}");
}

/// What stop_accepting_requests does: the HTTP/1 reply (status, body, content-type,
/// connection), the gRPC reply (status, grpc-status, grpc-message), the bypassing
/// listener's status, and whether the refusal is counted and the action reported active.
async fn refused_requests(envoy: bool) -> serde_json::Value {
    let (admin, pressed, health) = (free_addr(), free_addr(), free_addr());
    let bootstrap = heap_bootstrap(
        admin,
        pressed,
        health,
        &["envoy.overload_actions.stop_accepting_requests"],
    );
    let kind = if envoy { Kind::Envoy } else { Kind::Sluice };
    let proxy = Proxy::start(kind, &bootstrap, admin).await.unwrap();
    let reply = first_overloaded(pressed, |r| r.status == 503).await;
    let grpc = HttpClient::http2()
        .send(
            pressed,
            http::Method::POST,
            "pressed",
            "/pkg.Service/Method",
            &[("content-type", "application/grpc"), ("te", "trailers")],
            Bytes::from_static(&[0, 0, 0, 0, 0]),
        )
        .await
        .unwrap();
    let health_reply = HttpClient::http1()
        .get(health, "health", "/", &[])
        .await
        .unwrap();
    json!({
        "status": reply.status.as_u16(),
        "body": String::from_utf8_lossy(&reply.body),
        "content_type": reply.header("content-type"),
        "connection": reply.header("connection"),
        "grpc": [grpc.status.as_u16(), grpc.header("grpc-status"), grpc.header("grpc-message")],
        "health": [health_reply.status.as_u16(), String::from_utf8_lossy(&health_reply.body)],
        "counted": proxy.stat("http.pressed.downstream_rq_overload_close").await >= Some(2),
        "active": proxy.stat("overload.envoy.overload_actions.stop_accepting_requests.active").await,
        "scale_percent": proxy.stat("overload.envoy.overload_actions.stop_accepting_requests.scale_percent").await,
        "pressure_above_100": proxy.stat("overload.heap.pressure").await > Some(100),
    })
}

#[tokio::test]
async fn stop_accepting_requests_answers_503_except_on_a_bypassing_listener_as_envoy() {
    let from_sluice = refused_requests(false).await;
    assert_eq!(from_sluice["status"], 503, "{from_sluice}");
    assert_eq!(from_sluice["body"], "envoy overloaded", "{from_sluice}");
    assert_eq!(from_sluice["health"][0], 200, "{from_sluice}");
    assert_eq!(from_sluice["counted"], true, "{from_sluice}");
    assert_eq!(from_sluice["active"], 1, "{from_sluice}");
    let from_envoy = refused_requests(true).await;
    assert_eq!(from_sluice, from_envoy, "Envoy does the same");
}

/// Reads a server's HTTP/2 frames as they pass, noting a GOAWAY (frame type 7).
struct GoawayWatch {
    inner: TcpStream,
    pending: Vec<u8>,
    seen: Arc<AtomicBool>,
}

impl AsyncRead for GoawayWatch {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let arrived = buf.filled()[before..].to_vec();
        let this = &mut *self;
        this.pending.extend_from_slice(&arrived);
        // Frames: a 9-byte header (24-bit length, type, flags, stream id), then the payload.
        while this.pending.len() >= 9 {
            let length =
                u32::from_be_bytes([0, this.pending[0], this.pending[1], this.pending[2]]) as usize;
            if this.pending.len() < 9 + length {
                break;
            }
            if this.pending[3] == 7 {
                this.seen.store(true, Ordering::Relaxed);
            }
            this.pending.drain(..9 + length);
        }
        polled
    }
}

impl AsyncWrite for GoawayWatch {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Whether an HTTP/2 connection to `addr` is sent a GOAWAY within 3 s of one answered
/// request (bounded: the connection task is stopped either way).
async fn http2_goaway(addr: SocketAddr, host: &str) -> bool {
    let seen = Arc::new(AtomicBool::new(false));
    let io = GoawayWatch {
        inner: TcpStream::connect(addr).await.unwrap(),
        pending: Vec::new(),
        seen: seen.clone(),
    };
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    let task = tokio::spawn(conn);
    let request = http::Request::builder()
        .uri(format!("http://{host}/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
    for _ in 0..60 {
        if seen.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    seen.load(Ordering::Relaxed)
}

/// Whether the server closes an HTTP/1.1 connection within 2 s of answering one request,
/// with the answer's status and whether it says `connection: close`.
async fn http1_closed(addr: SocketAddr, host: &str) -> (Option<u16>, bool, bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET / HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut out))
        .await
        .is_ok();
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    (
        sluice_tests::client::raw_status(&text),
        text.contains("\r\nconnection: close\r\n"),
        closed,
    )
}

/// What disable_http_keepalive does: HTTP/1 (status, says close, closed), HTTP/2 GOAWAY,
/// the same on the bypassing listener, and whether it is counted.
async fn keepalive_disabled(envoy: bool) -> serde_json::Value {
    let (admin, pressed, health) = (free_addr(), free_addr(), free_addr());
    let bootstrap = heap_bootstrap(
        admin,
        pressed,
        health,
        &["envoy.overload_actions.disable_http_keepalive"],
    );
    let kind = if envoy { Kind::Envoy } else { Kind::Sluice };
    let proxy = Proxy::start(kind, &bootstrap, admin).await.unwrap();
    first_overloaded(pressed, |r| {
        r.header("connection").as_deref() == Some("close")
    })
    .await;
    json!({
        "http1": http1_closed(pressed, "pressed").await,
        "http2_goaway": http2_goaway(pressed, "pressed").await,
        "health_http1": http1_closed(health, "health").await,
        "health_http2_goaway": http2_goaway(health, "health").await,
        "counted": proxy.stat("http.pressed.downstream_cx_overload_disable_keepalive").await >= Some(3),
        "active": proxy.stat("overload.envoy.overload_actions.disable_http_keepalive.active").await,
    })
}

#[tokio::test]
async fn disable_http_keepalive_closes_http1_and_drains_http2_as_envoy() {
    let from_sluice = keepalive_disabled(false).await;
    assert_eq!(
        from_sluice["http1"],
        json!([200, true, true]),
        "{from_sluice}"
    );
    assert_eq!(from_sluice["http2_goaway"], true, "{from_sluice}");
    assert_eq!(
        from_sluice["health_http1"],
        json!([200, false, false]),
        "{from_sluice}"
    );
    assert_eq!(from_sluice["health_http2_goaway"], false, "{from_sluice}");
    assert_eq!(from_sluice["counted"], true, "{from_sluice}");
    let mut from_envoy = keepalive_disabled(true).await;
    // Envoy keeps an HTTP/1 connection it said `close` on open for its drain timeout
    // (5 s) unless the client closes; sluice closes once the answer is written, which
    // frees the memory at once (docs/differences.md).
    from_envoy["http1"][2] = true.into();
    assert_eq!(from_sluice, from_envoy, "Envoy does the same");
}

/// What a connection-level action does: whether a request on a new connection is answered
/// within 1 s (connections sit in the backlog or are closed unanswered), the bypassing
/// listener's answer, and the listener's reject counter.
async fn connections_refused(envoy: bool, action: &str) -> serde_json::Value {
    let (admin, pressed, health) = (free_addr(), free_addr(), free_addr());
    let bootstrap = heap_bootstrap(admin, pressed, health, &[action]);
    let kind = if envoy { Kind::Envoy } else { Kind::Sluice };
    let proxy = Proxy::start(kind, &bootstrap, admin).await.unwrap();
    // The first sample lands one refresh interval after start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answer = sluice_tests::client::raw_exchange(
        pressed,
        b"GET / HTTP/1.1\r\nhost: pressed\r\nconnection: close\r\n\r\n",
        Duration::from_secs(1),
    )
    .await
    .unwrap_or_default();
    let health_reply = HttpClient::http1()
        .get(health, "health", "/", &[])
        .await
        .unwrap();
    let listener = match envoy {
        true => format!("{}_{}", pressed.ip(), pressed.port()),
        false => pressed.to_string(),
    };
    json!({
        "answered": !answer.is_empty(),
        "health": health_reply.status.as_u16(),
        "rejects": proxy.stat(&format!("listener.{listener}.downstream_cx_overload_reject")).await,
    })
}

#[tokio::test]
async fn connection_actions_hold_or_reject_new_connections_as_envoy() {
    for (action, rejects) in [
        ("envoy.overload_actions.stop_accepting_connections", 0),
        ("envoy.overload_actions.reject_incoming_connections", 1),
    ] {
        let from_sluice = connections_refused(false, action).await;
        assert_eq!(
            from_sluice,
            json!({ "answered": false, "health": 200, "rejects": rejects }),
            "{action}"
        );
        let from_envoy = connections_refused(true, action).await;
        assert_eq!(from_sluice, from_envoy, "{action}: Envoy does the same");
    }
}
