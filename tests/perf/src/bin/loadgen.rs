//! Open-loop HTTP/1.1 load at a fixed rate, for latency comparisons that saturation tools
//! (wrk) cannot make: every request has a scheduled send time, and its latency counts from
//! that time (no coordinated omission). Bounded by duration and by request count; prints
//! one JSON object.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Clone)]
struct Args {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long, default_value = "/")]
    path: String,
    #[arg(long, default_value = "bench")]
    host: String,
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Total requests per second across all connections.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Upper bound on requests, whatever the duration.
    #[arg(long, default_value_t = 2_000_000)]
    max_requests: u64,
}

struct Outcome {
    latencies: Histogram<u64>,
    errors: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(run(args.clone()))?;
    let h = &outcome.latencies;
    let us = |q: f64| h.value_at_quantile(q) as f64;
    // The JSON line on stdout is this tool's whole output.
    use std::io::Write;
    writeln!(
        std::io::stdout(),
        "{}",
        serde_json::json!({
            "requests": h.len(), "errors": outcome.errors, "rate": args.rate, "connections": args.connections,
            "p50_us": us(0.5), "p90_us": us(0.9), "p99_us": us(0.99), "p999_us": us(0.999), "max_us": h.max(),
        })
    )?;
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<Outcome> {
    let per_connection = Duration::from_secs_f64(args.connections as f64 / args.rate as f64);
    let per_connection_max = args.max_requests / args.connections as u64;
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + Duration::from_secs(args.duration_s);
    let mut tasks = Vec::new();
    for i in 0..args.connections {
        let args = args.clone();
        // Spread connections evenly over one interval.
        let offset = per_connection.mul_f64(i as f64 / args.connections as f64);
        tasks.push(tokio::spawn(async move {
            connection(
                args,
                start + offset,
                end,
                per_connection,
                per_connection_max,
            )
            .await
        }));
    }
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for t in tasks {
        let o = t.await??;
        latencies.add(&o.latencies)?;
        errors += o.errors;
    }
    Ok(Outcome { latencies, errors })
}

async fn connection(
    args: Args,
    first: Instant,
    end: Instant,
    interval: Duration,
    max: u64,
) -> anyhow::Result<Outcome> {
    let request = format!("GET {} HTTP/1.1\r\nHost: {}\r\n\r\n", args.path, args.host).into_bytes();
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    let mut stream = TcpStream::connect(args.addr).await?;
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut scheduled = first;
    for _ in 0..max {
        if scheduled >= end {
            break;
        }
        tokio::time::sleep_until(scheduled.into()).await;
        let ok = exchange(&mut stream, &request, &mut buf)
            .await
            .unwrap_or(false);
        if ok {
            latencies.record(scheduled.elapsed().as_micros().max(1) as u64)?;
        } else {
            errors += 1;
            stream = TcpStream::connect(args.addr).await?;
            stream.set_nodelay(true)?;
        }
        scheduled += interval;
    }
    Ok(Outcome { latencies, errors })
}

/// Sends one request and reads one response with a Content-Length body.
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> anyhow::Result<bool> {
    stream.write_all(request).await?;
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(false);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = response.parse(buf)? {
            let length: usize = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("response without content-length"))?;
            let ok = response.code == Some(200);
            while buf.len() < head + length {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(false);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(ok);
        }
    }
}
