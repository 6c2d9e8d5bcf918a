//! Bodies stream in both directions with bounded memory: 1 GiB up and 1 GiB down through
//! the proxy while its resident set stays under 64 MiB.

use std::time::Duration;

use serde_json::json;
use sluice_tests::config::single_cluster;
use sluice_tests::free_addr;
use sluice_tests::process::{peak_rss_of, Sluice};
use sluice_tests::upstream::Upstream;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const GIB: u64 = 1 << 30;
const RSS_LIMIT: u64 = 64 << 20;

async fn start() -> (Sluice, std::net::SocketAddr, Upstream) {
    let upstream = Upstream::start("a").await;
    let admin = free_addr();
    let listener = free_addr();
    let routes = json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": [
        { "match": { "prefix": "/" }, "route": { "cluster": "a", "timeout": "120s" } } ] } ] });
    let config = single_cluster(admin, listener, upstream.addr, routes, json!({}));
    (
        Sluice::start(&config, admin).await.expect("start"),
        listener,
        upstream,
    )
}

/// Reads an HTTP/1.1 response head, returning it.
async fn read_head(reader: &mut BufReader<TcpStream>) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            return head;
        }
        head.push_str(&line);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_each_way_with_bounded_memory() {
    let (sluice, listener, upstream) = start().await;

    // Upload 1 GiB with a known length; the upstream counts the bytes.
    let stream = TcpStream::connect(listener).await.unwrap();
    let mut reader = BufReader::new(stream);
    let head = format!("POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: {GIB}\r\n\r\n");
    reader.get_mut().write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'u'; 256 * 1024];
    let mut sent = 0u64;
    while sent < GIB {
        reader.get_mut().write_all(&chunk).await.unwrap();
        sent += chunk.len() as u64;
    }
    let response = read_head(&mut reader).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let seen = upstream.seen();
    assert_eq!(seen.last().unwrap().body_bytes, GIB);

    // Download 1 GiB streamed by the upstream.
    let stream = TcpStream::connect(listener).await.unwrap();
    let mut reader = BufReader::new(stream);
    let head = format!("GET /download HTTP/1.1\r\nHost: h\r\nX-Test-Response-Bytes: {GIB}\r\nConnection: close\r\n\r\n");
    reader.get_mut().write_all(head.as_bytes()).await.unwrap();
    let response = read_head(&mut reader).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let mut received = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(60), reader.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        received += n as u64;
    }
    // Chunked framing bytes are included in `received`; the payload is at least 1 GiB.
    assert!(received >= GIB, "received {received}");

    let peak = peak_rss_of(sluice.pid());
    assert!(peak < RSS_LIMIT, "peak RSS {} MiB", peak >> 20);
    eprintln!(
        "sluice peak RSS after 2 GiB streamed: {:.1} MiB",
        peak as f64 / (1 << 20) as f64
    );
}
