//! WebSocket upgrades and gRPC (unary, server streaming, trailers) proxied end to end.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use sluice_tests::client::{raw_exchange, raw_status};
use sluice_tests::config::{bootstrap, cluster, http2_options, http_listener};
use sluice_tests::free_addr;
use sluice_tests::process::Sluice;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A WebSocket server that echoes every message.
async fn websocket_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() || ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn all_to(cluster: &str) -> serde_json::Value {
    json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": [ { "match": { "prefix": "/" }, "route": { "cluster": cluster } } ] } ] })
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let upstream = websocket_echo().await;
    let admin = free_addr();
    let with_upgrades = free_addr();
    let without_upgrades = free_addr();
    let config = bootstrap(
        admin,
        vec![
            http_listener(
                "ws",
                with_upgrades,
                all_to("ws"),
                json!({ "upgrade_configs": [ { "upgrade_type": "websocket" } ] }),
            ),
            http_listener("plain", without_upgrades, all_to("ws"), json!({})),
        ],
        vec![cluster("ws", &[(upstream, 1)], json!({}))],
    );
    let _sluice = Sluice::start(&config, admin).await.unwrap();

    let stream = TcpStream::connect(with_upgrades).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async("ws://echo.test/chat", stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    let big = vec![42u8; 1 << 20];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_data().len(), big.len());
    ws.close(None).await.unwrap();

    // Without upgrade_configs the upgrade is refused, as in Envoy.
    let answer = raw_exchange(
        without_upgrades,
        b"GET /chat HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert_eq!(raw_status(&answer), Some(403), "{answer}");
}

#[tokio::test]
async fn grpc_unary_and_server_streaming() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = listener.local_addr().unwrap();
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("demo", tonic_health::ServingStatus::Serving)
        .await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let admin = free_addr();
    let proxy = free_addr();
    let config = bootstrap(
        admin,
        vec![http_listener("grpc", proxy, all_to("grpc"), json!({}))],
        vec![cluster("grpc", &[(grpc_addr, 1)], http2_options())],
    );
    let sluice = Sluice::start(&config, admin).await.unwrap();

    let channel = tonic::transport::Channel::from_shared(format!("http://{proxy}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let reply = client
        .check(HealthCheckRequest {
            service: "demo".into(),
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().status, ServingStatus::Serving as i32);

    // A gRPC error travels in trailers (grpc-status 5 = NOT_FOUND).
    let err = client
        .check(HealthCheckRequest {
            service: "missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let mut stream = client
        .watch(HealthCheckRequest {
            service: "demo".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    reporter
        .set_service_status("demo", tonic_health::ServingStatus::NotServing)
        .await;
    let second = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.status, ServingStatus::NotServing as i32);
    assert!(sluice.stat("cluster.grpc.upstream_rq_2xx").await.unwrap() >= 3);
}

/// What a WebSocket through `listener` sees: every echo while it keeps talking for longer
/// than the idle timeout, then whether the proxy closes it after a silence.
async fn idle_websocket(listener: SocketAddr) -> (usize, bool) {
    let stream = TcpStream::connect(listener).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("ws://echo.test/chat", stream)
        .await
        .unwrap();
    let mut echoes = 0;
    for i in 0..8 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        if let Ok(Some(Ok(Message::Text(_)))) =
            tokio::time::timeout(Duration::from_secs(2), ws.next()).await
        {
            echoes += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Silent now: an idle timeout of 1 s closes it well within 5 s.
    let closed = match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => true,
        Ok(Some(Ok(_))) | Err(_) => false,
    };
    (echoes, closed)
}

#[tokio::test]
async fn an_idle_websocket_is_closed_after_the_stream_idle_timeout_as_envoy() {
    let upstream = websocket_echo().await;
    let listener = free_addr();
    let config = |admin| {
        bootstrap(
            admin,
            vec![http_listener(
                "ws",
                listener,
                all_to("ws"),
                json!({ "upgrade_configs": [ { "upgrade_type": "websocket" } ],
                        "stream_idle_timeout": "1s" }),
            )],
            vec![cluster("ws", &[(upstream, 1)], json!({}))],
        )
    };
    let admin = free_addr();
    let envoy = sluice_tests::envoy::Envoy::start(&config(admin), admin)
        .await
        .expect("start envoy (installed by tests/run.sh)");
    let from_envoy = idle_websocket(listener).await;
    drop(envoy);
    let admin = free_addr();
    let sluice = Sluice::start(&config(admin), admin).await.unwrap();
    let from_sluice = idle_websocket(listener).await;
    drop(sluice);
    assert_eq!(
        from_envoy,
        (8, true),
        "talking for 1.6 s keeps it open; silence closes it"
    );
    assert_eq!(from_sluice, from_envoy);
}

/// `use_downstream_protocol_config`: each request goes upstream in its own protocol, as
/// through Envoy with the same bootstrap.
#[tokio::test]
async fn the_upstream_protocol_follows_the_downstream_as_in_envoy() {
    use sluice_tests::client::HttpClient;
    let upstream = sluice_tests::upstream::Upstream::start("follows").await;
    let config = |admin, listener| {
        let routes = json!({ "name": "r", "virtual_hosts": [ { "name": "all", "domains": ["*"],
            "routes": [ { "match": { "prefix": "/" }, "route": { "cluster": "a" } } ] } ] });
        let options = json!({ "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "use_downstream_protocol_config": { "http_protocol_options": {}, "http2_protocol_options": {} }
            } } });
        bootstrap(
            admin,
            vec![http_listener("ingress", listener, routes, json!({}))],
            vec![cluster("a", &[(upstream.addr, 1)], options)],
        )
    };
    let mut seen = Vec::new();
    for proxy in ["envoy", "sluice"] {
        let (admin, listener) = (free_addr(), free_addr());
        let process: Box<dyn std::any::Any> = match proxy {
            "envoy" => Box::new(
                sluice_tests::envoy::Envoy::start(&config(admin, listener), admin)
                    .await
                    .expect("start envoy"),
            ),
            _ => Box::new(
                Sluice::start(&config(admin, listener), admin)
                    .await
                    .unwrap(),
            ),
        };
        let mut versions = Vec::new();
        for client in [
            HttpClient::http1(),
            HttpClient::http2(),
            HttpClient::http1(),
        ] {
            let reply = client.get(listener, "follow.test", "/", &[]).await.unwrap();
            assert_eq!(reply.status, 200, "{proxy}");
            versions.push(reply.json()["version"].clone());
        }
        seen.push(versions);
        drop(process);
    }
    assert_eq!(seen[0], seen[1], "envoy, then sluice");
    assert_eq!(
        seen[1],
        vec![json!("HTTP/1.1"), json!("HTTP/2.0"), json!("HTTP/1.1")]
    );
}

/// Local replies to gRPC requests take gRPC's trailers-only form (status 200,
/// `grpc-status`, `grpc-message`), and a route's `max_stream_duration` takes the
/// request's `grpc-timeout`: the same answers from Envoy and sluice.
#[tokio::test]
async fn grpc_requests_get_local_replies_in_grpc_form_as_from_envoy() {
    use sluice_tests::client::HttpClient;
    let upstream = sluice_tests::upstream::Upstream::start("grpc-ish").await;
    let config = |admin, listener| {
        let routes = json!({ "name": "r", "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": [
            { "match": { "prefix": "/nohost" }, "route": { "cluster": "empty" } },
            { "match": { "prefix": "/direct" }, "direct_response": { "status": 403, "body": { "inline_string": "not 100% allowed" } } },
            { "match": { "prefix": "/deadline" }, "route": { "cluster": "a", "timeout": "0s",
                "max_stream_duration": { "grpc_timeout_header_max": "30s" } } },
            { "match": { "prefix": "/capped" }, "route": { "cluster": "a", "timeout": "0s",
                "max_stream_duration": { "grpc_timeout_header_max": "0.2s" } } },
            { "match": { "prefix": "/timeout" }, "route": { "cluster": "a", "timeout": "0.2s" } },
            { "match": { "prefix": "/ok" }, "route": { "cluster": "a" } } ] } ] });
        bootstrap(
            admin,
            vec![http_listener("ingress", listener, routes, json!({}))],
            vec![
                cluster("a", &[(upstream.addr, 1)], json!({})),
                cluster("empty", &[], json!({})),
            ],
        )
    };
    let probes: [(&str, &[(&str, &str)]); 8] = [
        ("/nohost", &[]),
        ("/direct", &[]),
        (
            "/deadline",
            &[("grpc-timeout", "200m"), ("x-test-delay-ms", "3000")],
        ),
        ("/deadline", &[("grpc-timeout", "5S")]),
        (
            "/capped",
            &[("grpc-timeout", "10S"), ("x-test-delay-ms", "3000")],
        ),
        ("/timeout", &[("x-test-delay-ms", "3000")]),
        ("/missing", &[]),
        ("/ok", &[]),
    ];
    let mut seen = Vec::new();
    for proxy in ["envoy", "sluice"] {
        let (admin, listener) = (free_addr(), free_addr());
        let process: Box<dyn std::any::Any> = match proxy {
            "envoy" => Box::new(
                sluice_tests::envoy::Envoy::start(&config(admin, listener), admin)
                    .await
                    .expect("start envoy"),
            ),
            _ => Box::new(
                Sluice::start(&config(admin, listener), admin)
                    .await
                    .unwrap(),
            ),
        };
        let mut answers = Vec::new();
        for (path, extra) in probes {
            let mut headers = vec![("content-type", "application/grpc")];
            headers.extend_from_slice(extra);
            let r = HttpClient::http2()
                .send(
                    listener,
                    http::Method::POST,
                    "grpc.test",
                    path,
                    &headers,
                    "",
                )
                .await
                .unwrap();
            answers.push((
                path,
                r.status.as_u16(),
                r.header("content-type"),
                r.header("grpc-status"),
                r.header("grpc-message"),
            ));
        }
        // A request that is not gRPC keeps the HTTP form.
        let plain = HttpClient::http1()
            .get(listener, "grpc.test", "/direct", &[])
            .await
            .unwrap();
        answers.push((
            "/direct (not gRPC)",
            plain.status.as_u16(),
            plain.header("content-type"),
            None,
            None,
        ));
        seen.push(answers);
        drop(process);
    }
    assert_eq!(seen[0], seen[1], "envoy, then sluice");
    let status_of = |path: &str| seen[1].iter().find(|a| a.0 == path).unwrap().3.clone();
    assert_eq!(status_of("/nohost").as_deref(), Some("14"));
    assert_eq!(status_of("/deadline").as_deref(), Some("4"));
    assert_eq!(seen[1][1].4.as_deref(), Some("not 100%25 allowed"));
}

/// One gRPC message frame: uncompressed, 32-bit length, the bytes.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

#[tokio::test]
async fn grpc_web_requests_reach_a_grpc_upstream_and_come_back_as_grpc_web_as_through_envoy() {
    use base64::Engine as _;
    use sluice_tests::client::HttpClient;
    let b64 = base64::engine::general_purpose::STANDARD;
    let upstream = sluice_tests::upstream::Upstream::start("grpc").await;
    let config = |admin, listener| {
        let routes = json!({ "name": "r", "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": [
            { "match": { "prefix": "/test.Echo/" }, "route": { "cluster": "grpc" } },
            { "match": { "prefix": "/down/" }, "route": { "cluster": "empty" } } ] } ] });
        let mut listener = http_listener("web", listener, routes, json!({}));
        let hcm = &mut listener["filter_chains"][0]["filters"][0]["typed_config"];
        let router = hcm["http_filters"][0].clone();
        hcm["http_filters"] = json!([
            { "name": "envoy.filters.http.grpc_web", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb" } },
            router,
        ]);
        bootstrap(
            admin,
            vec![listener],
            vec![
                cluster("grpc", &[(upstream.addr, 1)], http2_options()),
                cluster("empty", &[], json!({})),
            ],
        )
    };
    let two_messages = [grpc_frame(b"hello"), grpc_frame(b"again")].concat();
    let binary = ("application/grpc-web+proto", None, two_messages.clone());
    // One base64 segment: Envoy refuses padding inside the body (two messages encoded on
    // their own), which sluice decodes (docs/differences.md).
    let text_body = b64.encode(&two_messages);
    let probes: Vec<(&str, &str, Option<&str>, Vec<u8>)> = vec![
        ("/test.Echo/Say", binary.0, binary.1, binary.2),
        (
            "/test.Echo/Say",
            "application/grpc-web-text",
            Some("application/grpc-web-text"),
            text_body.into_bytes(),
        ),
        (
            "/test.Echo/Say",
            "application/grpc-web-text",
            None,
            b"not base64!".to_vec(),
        ),
        ("/down/Say", "application/grpc-web", None, grpc_frame(b"x")),
    ];
    let mut seen = Vec::new();
    for proxy in ["envoy", "sluice"] {
        let (admin, listener) = (free_addr(), free_addr());
        let process: Box<dyn std::any::Any> = match proxy {
            "envoy" => Box::new(
                sluice_tests::envoy::Envoy::start(&config(admin, listener), admin)
                    .await
                    .expect("start envoy"),
            ),
            _ => Box::new(
                Sluice::start(&config(admin, listener), admin)
                    .await
                    .unwrap(),
            ),
        };
        let mut answers = Vec::new();
        for (path, content_type, accept, body) in &probes {
            let mut headers = vec![("content-type", *content_type), ("x-grpc-web", "1")];
            if let Some(accept) = accept {
                headers.push(("accept", accept));
            }
            let r = HttpClient::http1()
                .send(
                    listener,
                    http::Method::POST,
                    "web.test",
                    path,
                    &headers,
                    body.clone(),
                )
                .await
                .unwrap();
            answers.push(json!({
                "path": path,
                "request": content_type,
                "status": r.status.as_u16(),
                "content_type": r.header("content-type"),
                "grpc_status": r.header("grpc-status"),
                "grpc_message": r.header("grpc-message"),
                "upstream_saw": [r.header("x-seen-content-type"), r.header("x-seen-te"),
                    r.header("x-seen-grpc-accept-encoding"), r.header("x-seen-content-length")],
                "body": String::from_utf8_lossy(&r.body),
            }));
        }
        drop(process);
        seen.push(answers);
    }
    let sluice = &seen[1];
    // The binary answer: both messages, then the trailers frame.
    let mut expected = two_messages.clone();
    let trailers = b"grpc-status:0\r\ngrpc-message:echoed\r\n";
    expected.push(0x80);
    expected.extend_from_slice(&(trailers.len() as u32).to_be_bytes());
    expected.extend_from_slice(trailers);
    assert_eq!(
        sluice[0]["body"],
        String::from_utf8_lossy(&expected).as_ref(),
        "{sluice:?}"
    );
    assert_eq!(sluice[0]["upstream_saw"][0], "application/grpc");
    assert_eq!(sluice[0]["upstream_saw"][1], "trailers");
    assert_eq!(sluice[1]["content_type"], "application/grpc-web-text+proto");
    assert_eq!(sluice[2]["status"], 400, "{sluice:?}");
    assert_eq!(sluice[3]["grpc_status"], "14", "{sluice:?}");
    assert_eq!(seen[0], seen[1], "sluice answers as Envoy");
}
