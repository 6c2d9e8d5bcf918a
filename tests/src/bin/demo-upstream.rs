//! The demo upstream: the test echo server on a fixed address, for the README's demo.

use std::net::SocketAddr;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18080".to_string())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let _upstream = sluice_tests::upstream::Upstream::serve(listener, "demo-upstream");
    eprintln!("demo upstream listening on {addr}");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
