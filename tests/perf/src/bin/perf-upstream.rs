//! The benchmark upstream: fixed responses as fast as hyper serves them, so the proxy, not
//! the upstream, is what a run measures. `/16k` and `/1m` return those sizes; anything
//! else returns 12 bytes.

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
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (small, k16, m1) = (small.clone(), k16.clone(), m1.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |r: Request<Incoming>| {
                let body = match r.uri().path() {
                    "/16k" => k16.clone(),
                    "/1m" => m1.clone(),
                    _ => small.clone(),
                };
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
