//! The HTTP connection manager's connection loop: hyper serving one downstream
//! connection (plaintext or TLS) with the chain's codec and limits, and the timers hyper
//! does not have — the request-headers timeout (408), the idle timeout and draining — all
//! working above the stream, so they behave the same under TLS.
//!
//! Below it: [`ctx`] (what one request's filters share), [`filter`] (the chain of HTTP
//! filters in front of the router), [`filters`] (each filter) and [`path`] (the path
//! normalisation applied before both).

pub mod ctx;
pub mod filter;
pub mod filters;
pub mod path;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;
use xds_types::hcm::Codec;

use crate::config::HttpRuntime;
use crate::conn::TrackedIo;
use crate::listener::Drain;
use crate::proxy::{self, ConnContext};

/// Why a connection's serving loop ended.
enum Ending {
    Closed,
    HeaderTimeout,
    DrainTimeout,
}

/// Longest a 408 may take to go out before the connection is dropped anyway.
const TIMEOUT_REPLY_LIMIT: Duration = Duration::from_secs(1);

/// Serves HTTP on `stream` until it closes, times out or has drained. `http` is the chain's
/// connection manager as the connection was accepted (its connection-level settings);
/// each request reads routes from the snapshot current when it arrives.
pub async fn serve_connection<S>(
    stream: S,
    http: &HttpRuntime,
    ctx: Arc<ConnContext>,
    mut drain: Drain,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let hcm = &http.config;
    let stats = http.stats.clone();
    stats.downstream_cx_total.inc();
    stats.downstream_cx_active.inc();
    let state = ctx.conn.clone();
    let io = TokioIo::new(TrackedIo::new(stream, state.clone()));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let header_bytes = (hcm.max_request_headers_kb as usize) * 1024;
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(header_bytes.max(8192))
        .max_headers(hcm.max_headers_count as usize);
    let mut h2 = builder.http2();
    h2.timer(TokioTimer::new())
        .max_header_list_size(header_bytes as u32);
    if let Some(n) = hcm.http2.max_concurrent_streams {
        h2.max_concurrent_streams(n);
    }
    if let Some(n) = hcm.http2.initial_stream_window_size {
        h2.initial_stream_window_size(n);
    }
    if let Some(n) = hcm.http2.initial_connection_window_size {
        h2.initial_connection_window_size(n);
    }
    if let Some(k) = hcm.http2.keepalive {
        h2.keep_alive_interval(k.interval)
            .keep_alive_timeout(k.timeout);
    }
    let alpn_h2 = ctx
        .tls
        .as_ref()
        .and_then(|t| t.alpn.as_deref())
        .map(|p| p == b"h2");
    let builder = match (hcm.codec, alpn_h2) {
        (Codec::Http1, _) | (Codec::Auto, Some(false)) => builder.http1_only(),
        (Codec::Http2, _) | (Codec::Auto, Some(true)) => builder.http2_only(),
        (Codec::Auto, None) => builder,
    };
    let service_ctx = ctx.clone();
    let service =
        hyper::service::service_fn(move |request| proxy::serve(service_ctx.clone(), request));
    let mut conn = Box::pin(builder.serve_connection_with_upgrades(io, service));

    let header_timeout = hcm.request_headers_timeout;
    let idle_timeout = hcm.idle_timeout;
    let tick = [header_timeout.map(|t| t / 4), idle_timeout.map(|t| t / 8)]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(Duration::from_secs(60))
        .clamp(Duration::from_millis(20), Duration::from_secs(60));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut reply_deadline: Option<tokio::time::Instant> = None;
    let mut head_since: Option<(u64, Instant)> = None;
    let mut idle_since: Option<(u64, Instant)> = None;
    let mut idle_closing = false;

    let ending = loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    debug!(remote = %ctx.remote, %error, "connection ended with error");
                }
                break if reply_deadline.is_some() { Ending::HeaderTimeout } else { Ending::Closed };
            }
            () = drain.signaled(), if drain_deadline.is_none() => {
                conn.as_mut().graceful_shutdown();
                drain_deadline = Some(tokio::time::Instant::now() + hcm.drain_timeout);
            }
            () = state.drain.notified(), if drain_deadline.is_none() => {
                conn.as_mut().graceful_shutdown();
                drain_deadline = Some(tokio::time::Instant::now() + hcm.drain_timeout);
            }
            _ = sleep_until_opt(drain_deadline) => break Ending::DrainTimeout,
            _ = sleep_until_opt(reply_deadline) => break Ending::HeaderTimeout,
            _ = ticker.tick(), if reply_deadline.is_none() => {
                let now = Instant::now();
                let active = state.active.load(Ordering::Relaxed);
                let started = state.started.load(Ordering::Relaxed);
                if let Some(limit) = header_timeout.filter(|_| !state.http2.load(Ordering::Relaxed)) {
                    if active == 0 && state.head_pending.load(Ordering::Relaxed) {
                        let since = match head_since {
                            Some((s, t)) if s == started => t,
                            _ => { head_since = Some((started, now)); now }
                        };
                        if now.duration_since(since) >= limit {
                            // The stream writes the 408 on hyper's next read (this loop
                            // polls the connection again right away).
                            state.header_timed_out.store(true, Ordering::Relaxed);
                            reply_deadline = Some(tokio::time::Instant::now() + TIMEOUT_REPLY_LIMIT);
                            continue;
                        }
                    } else {
                        head_since = None;
                    }
                }
                if let (Some(limit), false) = (idle_timeout, idle_closing) {
                    let events = state.io_events.load(Ordering::Relaxed);
                    if active == 0 {
                        let since = match idle_since {
                            Some((e, t)) if e == events => t,
                            _ => { idle_since = Some((events, now)); now }
                        };
                        if now.duration_since(since) >= limit {
                            debug!(remote = %ctx.remote, "idle timeout");
                            idle_closing = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    } else {
                        idle_since = None;
                    }
                }
            }
        }
    };
    if let Ending::HeaderTimeout = ending {
        stats.downstream_rq_timeout.inc();
        stats.downstream_rq_xx[3].inc();
    }
    stats.downstream_cx_active.dec();
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
