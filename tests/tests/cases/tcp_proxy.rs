//! L4 and the edges of the listener model: the TCP proxy carries bytes both ways with
//! half-close and closes idle connections; TLS passes through by SNI (no termination);
//! the PROXY protocol (v1 and v2) sets the downstream address; upstream TLS verifies SANs
//! (a mismatch is a 503 with `UF`); a change to one filter chain drains only that chain's
//! connections, and a route change drains none.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::config::{
    address, answer, bootstrap, cluster, hcm_filter, tcp_proxy, tls_inspector, tls_socket,
    to_cluster,
};
use sluice_tests::pki::{
    handshake, http1_over, server_config, server_config_mtls, Authority, ClientSpec, LeafSpec,
};
use sluice_tests::process::Sluice;
use sluice_tests::upstream::Upstream;
use sluice_tests::{eventually, free_addr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP upstream: reads until the client half-closes, answers the bytes uppercased with
/// a `!`, then closes.
async fn shouting_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut received = Vec::new();
                if stream.read_to_end(&mut received).await.is_ok() {
                    received.make_ascii_uppercase();
                    received.push(b'!');
                    let _ = stream.write_all(&received).await;
                }
            });
        }
    });
    addr
}

fn tcp_listener(name: &str, addr: SocketAddr, cluster_name: &str, extra: Value) -> Value {
    json!({ "name": name, "address": address(addr),
        "filter_chains": [ { "filters": [tcp_proxy(name, cluster_name, extra)] } ] })
}

#[tokio::test]
async fn tcp_proxy_carries_bytes_both_ways_with_half_close_and_idle_timeout() {
    let upstream = shouting_upstream().await;
    let (admin, plain, idle) = (free_addr(), free_addr(), free_addr());
    let config = bootstrap(
        admin,
        vec![
            tcp_listener("plain", plain, "shout", json!({})),
            tcp_listener("idle", idle, "shout", json!({ "idle_timeout": "0.3s" })),
        ],
        vec![cluster("shout", &[(upstream, 1)], json!({}))],
    );
    let sluice = Sluice::start(&config, admin).await.unwrap();

    // 1 MiB up, half-close, the answer comes back after it.
    let mut stream = TcpStream::connect(plain).await.unwrap();
    let payload: Vec<u8> = (0..1 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    stream.write_all(&payload).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.len(), payload.len() + 1);
    assert!(answer[..26].iter().all(u8::is_ascii_uppercase) && answer.ends_with(b"!"));

    // An idle connection is closed by the proxy.
    let mut quiet = TcpStream::connect(idle).await.unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), quiet.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "closed by the idle timeout: {closed:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            sluice.stat("tcp.idle.idle_timeout").await.unwrap_or(0) == 1
        })
        .await
    );
    assert!(
        sluice
            .stat("tcp.plain.downstream_cx_rx_bytes_total")
            .await
            .unwrap()
            >= 1 << 20
    );
}

#[tokio::test]
async fn tls_passes_through_by_sni_without_termination() {
    let ca = Authority::new("passthrough CA").unwrap();
    let backend_cert = ca
        .issue(&LeafSpec {
            common_name: "backend".into(),
            dns: vec!["db.example".into()],
            ..LeafSpec::default()
        })
        .unwrap();
    let edge_cert = ca
        .issue(&LeafSpec {
            common_name: "edge".into(),
            dns: vec!["www.example".into()],
            ..LeafSpec::default()
        })
        .unwrap();
    let backend = Upstream::start_tls("backend", server_config(&backend_cert).unwrap()).await;
    let (admin, listener) = (free_addr(), free_addr());
    let config = bootstrap(
        admin,
        vec![json!({ "name": "edge", "address": address(listener),
            "listener_filters": [tls_inspector()],
            "filter_chains": [
                { "filter_chain_match": { "server_names": ["db.example"] },
                  "filters": [tcp_proxy("pass", "backend", json!({}))] },
                { "filter_chain_match": { "server_names": ["www.example"] },
                  "transport_socket": tls_socket(&[(&edge_cert.cert, &edge_cert.key)], json!({}), json!({})),
                  "filters": [hcm_filter("www", answer("edge"), json!({}))] }
            ] })],
        vec![cluster("backend", &[(backend.addr, 1)], json!({}))],
    );
    let _sluice = Sluice::start(&config, admin).await.unwrap();
    let client = |sni: &str| ClientSpec {
        sni: Some(sni.into()),
        ..ClientSpec::default()
    };
    let mut passed = handshake(listener, &client("db.example")).await.unwrap();
    assert_eq!(
        passed.peer_common_name(),
        "backend",
        "the backend's own certificate"
    );
    let (status, text) = http1_over(&mut passed, "db", "/through", &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        text.contains("\"server\":\"backend\"") && text.contains("/through"),
        "{text}"
    );
    let mut terminated = handshake(listener, &client("www.example")).await.unwrap();
    assert_eq!(terminated.peer_common_name(), "edge");
    let (_, text) = http1_over(&mut terminated, "www", "/", &[]).await.unwrap();
    assert!(text.ends_with("edge"), "{text}");
    // The admin API lists both chains and how they match.
    let listeners: Value =
        serde_json::from_str(&_sluice.admin_get("/listeners?format=json").await.unwrap()).unwrap();
    let chains = &listeners["listener_statuses"][0]["filter_chains"];
    assert_eq!(
        chains[0]["filter_chain_match"]["server_names"],
        json!(["db.example"])
    );
    assert_eq!(
        chains[0]["network_filter"],
        "envoy.filters.network.tcp_proxy"
    );
    assert_eq!(chains[1]["tls"], true);
}

#[tokio::test]
async fn listener_filters_time_out_or_continue_and_http_inspector_tells_h2c_from_http1() {
    let upstream = shouting_upstream().await;
    let (admin, strict, lenient, sniffing) = (free_addr(), free_addr(), free_addr(), free_addr());
    let raw = |name: &str| json!({ "filters": [tcp_proxy(name, "shout", json!({}))] });
    let config = bootstrap(
        admin,
        vec![
            json!({ "name": "strict", "address": address(strict), "listener_filters": [tls_inspector()],
                "listener_filters_timeout": "0.2s",
                "filter_chains": [ { "filter_chain_match": { "transport_protocol": "tls" }, "filters": [tcp_proxy("s", "shout", json!({}))] } ],
                "default_filter_chain": raw("strict_default") }),
            json!({ "name": "lenient", "address": address(lenient), "listener_filters": [tls_inspector()],
                "listener_filters_timeout": "0.2s", "continue_on_listener_filters_timeout": true,
                "filter_chains": [ { "filter_chain_match": { "transport_protocol": "tls" }, "filters": [tcp_proxy("l", "shout", json!({}))] } ],
                "default_filter_chain": raw("lenient_default") }),
            json!({ "name": "sniffing", "address": address(sniffing),
                "filter_chains": [
                    { "filter_chain_match": { "transport_protocol": "raw_buffer", "application_protocols": ["h2c"] },
                      "filters": [hcm_filter("h2c", answer("via-h2c"), json!({}))] },
                    { "filter_chain_match": { "transport_protocol": "raw_buffer", "application_protocols": ["http/1.1"] },
                      "filters": [hcm_filter("h1", answer("via-http1"), json!({}))] } ] }),
        ],
        vec![cluster("shout", &[(upstream, 1)], json!({}))],
    );
    let sluice = Sluice::start(&config, admin).await.unwrap();

    // A client that waits for the server to speak first: closed after the timeout...
    let mut silent = TcpStream::connect(strict).await.unwrap();
    let mut buf = [0u8; 8];
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            sluice
                .stat(&format!("listener.{strict}.downstream_pre_cx_timeout"))
                .await
                .unwrap_or(0)
                == 1
        })
        .await
    );
    // ...or, with continue_on_listener_filters_timeout, served by the default chain.
    let mut patient = TcpStream::connect(lenient).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    patient.write_all(b"late").await.unwrap();
    patient.shutdown().await.unwrap();
    let mut answer_bytes = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        patient.read_to_end(&mut answer_bytes),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(answer_bytes, b"LATE!");

    // The HTTP inspector is added because a chain matches on plaintext HTTP versions.
    let h1 = sluice_tests::client::HttpClient::http1()
        .get(sniffing, "a", "/", &[])
        .await
        .unwrap();
    assert_eq!(h1.body, "via-http1");
    let h2 = sluice_tests::client::HttpClient::http2()
        .get(sniffing, "a", "/", &[])
        .await
        .unwrap();
    assert_eq!(h2.body, "via-h2c");
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_set_the_downstream_address() {
    let upstream = Upstream::start("up").await;
    let (admin, listener) = (free_addr(), free_addr());
    let config = bootstrap(
        admin,
        vec![json!({ "name": "pp", "address": address(listener),
            "listener_filters": [ { "name": "envoy.filters.listener.proxy_protocol", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol" } } ],
            "filter_chains": [ { "filters": [hcm_filter("pp", to_cluster("up"), json!({ "use_remote_address": true }))] } ] })],
        vec![cluster("up", &[(upstream.addr, 1)], json!({}))],
    );
    let _sluice = Sluice::start(&config, admin).await.unwrap();
    let request = b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[
        0x21, 0x11, 0, 12, 203, 0, 113, 9, 127, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb,
    ]);
    for (header, source) in [
        (
            b"PROXY TCP4 198.51.100.7 127.0.0.1 5000 443\r\n".to_vec(),
            "198.51.100.7",
        ),
        (v2, "203.0.113.9"),
    ] {
        let mut stream = TcpStream::connect(listener).await.unwrap();
        stream.write_all(&header).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
            .await
            .unwrap()
            .unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(
            response.contains(&format!("\"x-forwarded-for\":\"{source}\"")),
            "the PROXY source is the downstream address: {response}"
        );
    }
    // Without a header (and without allow_requests_without_proxy_protocol): closed.
    let mut stream = TcpStream::connect(listener).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = String::new();
    let _ =
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response)).await;
    assert!(response.is_empty(), "{response}");
}

#[tokio::test]
async fn upstream_tls_verifies_the_san_and_a_mismatch_is_a_503_uf() {
    let ca = Authority::new("upstream CA").unwrap();
    let cert = ca
        .issue(&LeafSpec {
            common_name: "api".into(),
            dns: vec!["api.internal".into()],
            ..LeafSpec::default()
        })
        .unwrap();
    let https = Upstream::start_tls("https-up", server_config(&cert).unwrap()).await;
    // An upstream that requires a client certificate from the same CA.
    let client_cert = ca
        .issue(&LeafSpec {
            common_name: "sluice".into(),
            client: true,
            ..LeafSpec::default()
        })
        .unwrap();
    let mutual = Upstream::start_tls("mtls-up", server_config_mtls(&cert, &ca.pem).unwrap()).await;
    let upstream_tls = |san: &str| {
        json!({ "transport_socket": { "name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "api.internal",
            "common_tls_context": { "validation_context": {
                "trusted_ca": { "inline_string": ca.pem },
                "match_typed_subject_alt_names": [ { "san_type": "DNS", "matcher": { "exact": san } } ] } } } } })
    };
    let mut with_client_cert = upstream_tls("api.internal");
    with_client_cert["transport_socket"]["typed_config"]["common_tls_context"]
        ["tls_certificates"] = json!([ { "certificate_chain": { "inline_string": client_cert.cert },
                  "private_key": { "inline_string": client_cert.key } } ]);
    // SNI and the name checked come from the request's host; HTTP/2 when ALPN agrees.
    let auto = json!({
        "transport_socket": { "name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": { "validation_context": { "trusted_ca": { "inline_string": ca.pem } } } } },
        "typed_extension_protocol_options": { "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "upstream_http_protocol_options": { "auto_sni": true, "auto_san_validation": true },
            "auto_config": { "http_protocol_options": {}, "http2_protocol_options": {} } } }
    });
    let (admin, right, wrong) = (free_addr(), free_addr(), free_addr());
    let (mtls_ok, mtls_missing, auto_listener) = (free_addr(), free_addr(), free_addr());
    let listener = |name: &str, addr: SocketAddr, cluster_name: &str| {
        json!({ "name": name, "address": address(addr),
            "filter_chains": [ { "filters": [hcm_filter(name, to_cluster(cluster_name), json!({}))] } ] })
    };
    let config = bootstrap(
        admin,
        vec![
            listener("right", right, "api"),
            listener("wrong", wrong, "impostor"),
            listener("mtls_ok", mtls_ok, "mutual"),
            listener("mtls_missing", mtls_missing, "mutual_without"),
            listener("auto", auto_listener, "auto"),
        ],
        vec![
            cluster("api", &[(https.addr, 1)], upstream_tls("api.internal")),
            cluster(
                "impostor",
                &[(https.addr, 1)],
                upstream_tls("other.internal"),
            ),
            cluster("mutual", &[(mutual.addr, 1)], with_client_cert),
            cluster(
                "mutual_without",
                &[(mutual.addr, 1)],
                upstream_tls("api.internal"),
            ),
            cluster("auto", &[(https.addr, 1)], auto),
        ],
    );
    let sluice = Sluice::start(&config, admin).await.unwrap();
    let client = sluice_tests::client::HttpClient::http1();
    let ok = client.get(right, "app", "/", &[]).await.unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["server"], "https-up");
    let refused = client.get(wrong, "app", "/", &[]).await.unwrap();
    assert_eq!(refused.status, 503);
    assert_eq!(sluice.stat("http.response_flag.UF").await.unwrap(), 1);
    assert!(
        sluice
            .stat("cluster.impostor.upstream_cx_connect_fail")
            .await
            .unwrap()
            >= 1
    );
    // Mutual TLS to the upstream: with the client certificate served, without refused.
    let served = client.get(mtls_ok, "app", "/", &[]).await.unwrap();
    assert_eq!(served.status, 200);
    assert_eq!(served.json()["server"], "mtls-up");
    assert_eq!(
        client
            .get(mtls_missing, "app", "/", &[])
            .await
            .unwrap()
            .status,
        503
    );
    // Auto SNI with SAN validation: the certificate covers api.internal, not other.host.
    let by_host = client
        .get(auto_listener, "api.internal", "/", &[])
        .await
        .unwrap();
    assert_eq!(by_host.status, 200);
    assert_eq!(by_host.json()["version"], "HTTP/2.0", "ALPN chose h2");
    assert_eq!(
        client
            .get(auto_listener, "other.host", "/", &[])
            .await
            .unwrap()
            .status,
        503
    );
    // /certs shows the cluster's CA, never a key.
    let certs = sluice.admin_get("/certs").await.unwrap();
    assert!(
        certs.contains("\"cluster\": \"api\"") && certs.contains("upstream CA"),
        "{certs}"
    );
    assert!(!certs.contains("PRIVATE KEY"));
}

#[tokio::test]
async fn a_chain_change_drains_only_that_chain_and_a_route_change_drains_nothing() {
    let (admin, listener) = (free_addr(), free_addr());
    // Two plaintext chains told apart by the client's source address.
    let chain = |source: &str, body: &str, idle: &str| {
        json!({ "filter_chain_match": { "source_prefix_ranges": [ { "address_prefix": source, "prefix_len": 32 } ] },
            "filters": [hcm_filter(source, answer(body), json!({ "common_http_protocol_options": { "idle_timeout": idle } }))] })
    };
    let config = |a_body: &str, b_idle: &str| {
        bootstrap(
            admin,
            vec![json!({ "name": "l", "address": address(listener),
                "filter_chains": [ chain("127.0.0.1", a_body, "300s"), chain("127.0.0.2", "b", b_idle) ] })],
            vec![],
        )
    };
    let sluice = Sluice::start(&config("a1", "300s"), admin).await.unwrap();
    let connect = |source: &str| {
        let source: std::net::IpAddr = source.parse().unwrap();
        async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(source, 0)).unwrap();
            socket.connect(listener).await.unwrap()
        }
    };
    async fn get(stream: &mut TcpStream) -> Option<String> {
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .ok()?;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
    }
    let mut on_a = connect("127.0.0.1").await;
    let mut on_b = connect("127.0.0.2").await;
    assert!(get(&mut on_a).await.unwrap().ends_with("a1"));
    assert!(get(&mut on_b).await.unwrap().ends_with("b"));

    // Route change on chain a: both connections keep serving, a sees the new route.
    sluice.reload(&config("a2", "300s")).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            sluice
                .admin_get("/config_dump")
                .await
                .unwrap_or_default()
                .contains("a2")
        })
        .await
    );
    let answer_a = get(&mut on_a)
        .await
        .expect("a's connection survives a route change");
    assert!(
        answer_a.ends_with("a2") && !answer_a.contains("connection: close"),
        "{answer_a}"
    );
    let answer_b = get(&mut on_b)
        .await
        .expect("b's connection survives a route change on a");
    assert!(!answer_b.contains("connection: close"), "{answer_b}");

    // Chain b changes (its idle timeout): b's connection drains, a's does not.
    sluice.reload(&config("a2", "200s")).unwrap();
    let mut drained = false;
    for _ in 0..50 {
        match get(&mut on_b).await {
            None => drained = true,
            Some(text) => drained = text.contains("connection: close"),
        }
        if drained {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(drained, "b's connection is drained");
    let answer_a = get(&mut on_a).await.expect("a's connection is not drained");
    assert!(!answer_a.contains("connection: close"), "{answer_a}");
}
