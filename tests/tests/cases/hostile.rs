//! Hostile clients: each malformed input gets its status, the connection is closed, and
//! the upstream never sees the request.

use std::time::{Duration, Instant};

use serde_json::json;
use sluice_tests::client::{raw_exchange, raw_status, HttpClient};
use sluice_tests::config::{bootstrap, cluster, http_listener};
use sluice_tests::process::Sluice;
use sluice_tests::upstream::Upstream;
use sluice_tests::{eventually, free_addr};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

struct Fixture {
    sluice: Sluice,
    listener: std::net::SocketAddr,
    upstream: Upstream,
}

async fn start(hcm: serde_json::Value, limit: Option<u64>) -> Fixture {
    let upstream = Upstream::start("a").await;
    let admin = free_addr();
    let listener = free_addr();
    let routes = json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": [ { "match": { "prefix": "/" }, "route": { "cluster": "a" } } ] } ] });
    let mut l = http_listener("ingress", listener, routes, hcm);
    if let Some(max) = limit {
        let filters = l["filter_chains"][0]["filters"].as_array_mut().unwrap();
        filters.insert(0, json!({ "name": "envoy.filters.network.connection_limit", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
            "stat_prefix": "limit", "max_connections": max } }));
    }
    let config = bootstrap(
        admin,
        vec![l],
        vec![cluster("a", &[(upstream.addr, 1)], json!({}))],
    );
    let sluice = Sluice::start(&config, admin).await.expect("start");
    Fixture {
        sluice,
        listener,
        upstream,
    }
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn oversized_headers_get_431() {
    let f = start(json!({ "max_request_headers_kb": 16 }), None).await;
    let raw = format!(
        "GET /big HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let answer = raw_exchange(f.listener, raw.as_bytes(), WAIT)
        .await
        .unwrap();
    assert_eq!(raw_status(&answer), Some(431), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"));
    // Under the limit is fine.
    let raw = format!(
        "GET /ok HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(8 * 1024)
    );
    assert_eq!(
        raw_status(
            &raw_exchange(f.listener, raw.as_bytes(), WAIT)
                .await
                .unwrap()
        ),
        Some(200)
    );
    assert!(f.upstream.seen().iter().all(|s| s.path != "/big"));
}

#[tokio::test]
async fn slowloris_gets_408_and_close() {
    let f = start(json!({ "request_headers_timeout": "0.5s" }), None).await;
    let mut stream = TcpStream::connect(f.listener).await.unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: h\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    // Keep trickling header bytes: the timeout covers the whole head, not each read.
    let mut buf = [0u8; 1024];
    loop {
        use tokio::io::AsyncReadExt;
        tokio::select! {
            n = stream.read(&mut buf) => {
                let n = n.unwrap_or(0);
                if n == 0 { break; }
                out.extend_from_slice(&buf[..n]);
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                let _ = stream.write_all(b"X-Slow: 1\r\n").await;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no 408 within 5s"
        );
    }
    let answer = String::from_utf8_lossy(&out);
    assert_eq!(raw_status(&answer), Some(408), "{answer}");
    assert!(f.upstream.seen().is_empty());
    assert_eq!(
        f.sluice
            .stat("http.ingress.downstream_rq_timeout")
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn request_smuggling_attempts_get_400() {
    let f = start(json!({}), None).await;
    let cases: [&[u8]; 5] = [
        b"POST /clte HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /tecl HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
        b"POST /badchunk HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"POST /twocl HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /te-gzip HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    ];
    for raw in cases {
        let answer = raw_exchange(f.listener, raw, WAIT).await.unwrap();
        assert_eq!(
            raw_status(&answer),
            Some(400),
            "{}: {answer}",
            String::from_utf8_lossy(raw)
        );
        assert_eq!(
            answer.matches("HTTP/1.1").count(),
            1,
            "one response, then close: {answer}"
        );
    }
    assert!(
        f.upstream.seen().is_empty(),
        "upstream saw {:?}",
        f.upstream.seen()
    );
}

#[tokio::test]
async fn invalid_header_bytes_get_400() {
    let f = start(json!({}), None).await;
    let cases: [&[u8]; 3] = [
        b"GET /ctl HTTP/1.1\r\nHost: h\r\nX-A\x01b: c\r\n\r\n",
        b"GET /space HTTP/1.1\r\nHost: h\r\nX-A b: c\r\n\r\n",
        b"GET /nul HTTP/1.1\r\nHost: h\r\nX-A: b\x00c\r\n\r\n",
    ];
    for raw in cases {
        let answer = raw_exchange(f.listener, raw, WAIT).await.unwrap();
        assert_eq!(
            raw_status(&answer),
            Some(400),
            "{}: {answer}",
            String::from_utf8_lossy(raw)
        );
    }
    assert!(f.upstream.seen().is_empty());
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let f = start(
        json!({ "common_http_protocol_options": { "idle_timeout": "0.3s" } }),
        None,
    )
    .await;
    let answer = raw_exchange(f.listener, b"GET /idle HTTP/1.1\r\nHost: h\r\n\r\n", WAIT)
        .await
        .unwrap();
    // The keep-alive connection was closed by the proxy well before WAIT.
    assert_eq!(raw_status(&answer), Some(200));
    assert_eq!(f.upstream.seen().len(), 1);
    let started = Instant::now();
    let mut stream = TcpStream::connect(f.listener).await.unwrap();
    let mut buf = [0u8; 16];
    use tokio::io::AsyncReadExt;
    let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("closed by idle timeout")
        .unwrap();
    assert_eq!(n, 0);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn connection_limit_refuses_extra_connections() {
    let f = start(json!({}), Some(2)).await;
    let _c1 = TcpStream::connect(f.listener).await.unwrap();
    let _c2 = TcpStream::connect(f.listener).await.unwrap();
    assert!(
        eventually(WAIT, || async {
            f.sluice
                .stat("http.ingress.downstream_cx_active")
                .await
                .unwrap()
                == 2
        })
        .await
    );
    let answer = raw_exchange(f.listener, b"GET /third HTTP/1.1\r\nHost: h\r\n\r\n", WAIT)
        .await
        .unwrap_or_default();
    assert_eq!(answer, "", "over the limit: closed without a response");
    assert_eq!(
        f.sluice
            .stat("http.ingress.downstream_cx_overflow")
            .await
            .unwrap(),
        1
    );
    drop((_c1, _c2));
    assert!(
        eventually(WAIT, || async {
            f.sluice
                .stat("http.ingress.downstream_cx_active")
                .await
                .unwrap()
                == 0
        })
        .await
    );
    let r = HttpClient::http1()
        .get(f.listener, "h", "/after", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(f.upstream.seen().iter().all(|s| s.path != "/third"));
}
