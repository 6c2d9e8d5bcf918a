//! The benchmark upstream: fixed responses as fast as hyper serves them, so the proxy, not
//! the upstream, is what a run measures. `/16k` and `/1m` return those sizes, `/16k.html`
//! 16 KiB of table-like HTML that compresses about as real pages do (for the compression
//! runs), `/cached` 1 KiB that any cache may keep for an hour (for the cache-hit runs);
//! anything else returns 12 bytes.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18081")]
    listen: SocketAddr,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?
        .block_on(serve(args.listen))
}

async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let small = Bytes::from_static(b"hello world\n");
    let k16 = Bytes::from(vec![b'k'; 16 * 1024]);
    let m1 = Bytes::from(vec![b'm'; 1024 * 1024]);
    let html = Bytes::from(html_16k());
    let cached = Bytes::from(vec![b'c'; 1024]);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (small, k16, m1, html, cached) = (
            small.clone(),
            k16.clone(),
            m1.clone(),
            html.clone(),
            cached.clone(),
        );
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |r: Request<Incoming>| {
                let path = r.uri().path();
                let body = match path {
                    "/16k" => k16.clone(),
                    "/1m" => m1.clone(),
                    "/16k.html" => html.clone(),
                    "/cached" => cached.clone(),
                    _ => small.clone(),
                };
                let mut response = Response::new(Full::new(body));
                let headers = response.headers_mut();
                if path == "/16k.html" {
                    headers.insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/html"),
                    );
                }
                if path == "/cached" {
                    headers.insert(
                        http::header::CACHE_CONTROL,
                        http::HeaderValue::from_static("public, max-age=3600"),
                    );
                }
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// 16 KiB of rows with pseudo-random ids and prices (a fixed sequence), which gzip shrinks
/// to about a quarter, as it does real pages.
fn html_16k() -> Vec<u8> {
    let mut out = b"<html><body><table>\n".to_vec();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut row = 0;
    while out.len() < 16 * 1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        row += 1;
        out.extend_from_slice(
            format!(
                "<tr class=\"r{}\"><td>{row}</td><td>item-{:08x}</td><td>{}.{:02}</td></tr>\n",
                row % 2,
                x as u32,
                (x >> 32) % 1000,
                (x >> 48) % 100
            )
            .as_bytes(),
        );
    }
    out.truncate(16 * 1024);
    out
}
