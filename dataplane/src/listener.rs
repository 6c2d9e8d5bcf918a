//! Listeners: bind (with `SO_REUSEPORT`), accept, and serve each connection with hyper,
//! enforcing the connection limit, the request-headers timeout (408), the idle timeout and
//! draining.
//!
//! A connection takes its listener's connection-level settings when it is accepted; every
//! request on it reads routes and clusters from the snapshot current at that request. So
//! a config swap never cuts a connection: only a listener that is removed or moves to
//! another address drains its connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};
use xds_types::hcm::Codec;

use crate::config::{ListenerRuntime, Snapshot, SnapshotStore};
use crate::conn::{ConnState, TrackedIo};
use crate::proxy::{self, ConnContext, FlagCounters};

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("listener {name:?}: cannot bind {address}: {source}")]
    Bind {
        name: String,
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// The listeners currently accepting, reconciled against each new snapshot.
pub struct ListenerManager {
    store: SnapshotStore,
    flags: Arc<FlagCounters>,
    running: Mutex<HashMap<String, Running>>,
}

struct Running {
    address: SocketAddr,
    drain: watch::Sender<bool>,
}

impl ListenerManager {
    /// A manager with no listeners yet.
    pub fn new(store: SnapshotStore, flags: Arc<FlagCounters>) -> Self {
        Self {
            store,
            flags,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Starts listeners new in `snapshot` and drains those it removed or moved.
    pub fn reconcile(&self, snapshot: &Snapshot) -> Result<(), ListenerError> {
        let mut running = self.running.lock().expect("listener lock");
        let stale: Vec<String> = running
            .iter()
            .filter(|(name, r)| {
                snapshot
                    .listeners
                    .get(*name)
                    .is_none_or(|l| l.config.address != r.address)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(r) = running.remove(&name) {
                info!(listener = %name, address = %r.address, "draining listener");
                let _ = r.drain.send(true);
            }
        }
        let mut first_error = None;
        for (name, listener) in &snapshot.listeners {
            if running.contains_key(name) {
                continue;
            }
            match self.start(listener) {
                Ok(r) => {
                    running.insert(name.clone(), r);
                }
                Err(e) => {
                    warn!(error = %e, "listener failed to start");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn start(&self, listener: &ListenerRuntime) -> Result<Running, ListenerError> {
        let address = listener.config.address;
        let name = listener.config.name.clone();
        let socket = bind(address).map_err(|source| ListenerError::Bind {
            name: name.clone(),
            address,
            source,
        })?;
        let (drain, drain_rx) = watch::channel(false);
        let limit = listener.config.connection_limit.map(|l| {
            (
                Arc::new(Semaphore::new(
                    l.max_connections.min(Semaphore::MAX_PERMITS as u64) as usize,
                )),
                l.delay,
            )
        });
        info!(listener = %name, %address, "listening");
        tokio::spawn(accept_loop(
            socket,
            Arc::from(name.as_str()),
            self.store.clone(),
            self.flags.clone(),
            drain_rx,
            limit,
        ));
        Ok(Running { address, drain })
    }

    /// Stops accepting everywhere, lets in-flight requests finish, and returns when every
    /// connection closed or `timeout` passed.
    pub async fn shutdown(&self, timeout: Duration) {
        let senders: Vec<watch::Sender<bool>> = self
            .running
            .lock()
            .expect("listener lock")
            .drain()
            .map(|(_, r)| r.drain)
            .collect();
        for s in &senders {
            let _ = s.send(true);
        }
        let all_closed = futures_util::future::join_all(senders.iter().map(|s| s.closed()));
        if tokio::time::timeout(timeout, all_closed).await.is_err() {
            warn!(?timeout, "drain timeout passed with connections still open");
        }
    }

    /// `(name, address)` of the accepting listeners, for `/listeners`.
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        let mut v: Vec<_> = self
            .running
            .lock()
            .expect("listener lock")
            .iter()
            .map(|(n, r)| (n.clone(), r.address))
            .collect();
        v.sort();
        v
    }
}

/// Binds with `SO_REUSEADDR` and `SO_REUSEPORT`, so a restarted or second process can
/// share the port.
pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(
    socket: TcpListener,
    name: Arc<str>,
    store: SnapshotStore,
    flags: Arc<FlagCounters>,
    mut drain: watch::Receiver<bool>,
    limit: Option<(Arc<Semaphore>, Option<Duration>)>,
) {
    loop {
        let (stream, remote) = tokio::select! {
            _ = drain.changed() => return,
            accepted = socket.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    warn!(listener = %name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let snapshot = store.load();
        let Some(listener) = snapshot.listeners.get(&*name).cloned() else {
            return;
        };
        let permit = match &limit {
            None => None,
            Some((semaphore, delay)) => match semaphore.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    listener.stats.downstream_cx_overflow.inc();
                    let delay = *delay;
                    tokio::spawn(async move {
                        if let Some(d) = delay {
                            tokio::time::sleep(d).await;
                        }
                        drop(stream);
                    });
                    continue;
                }
            },
        };
        let ctx = Arc::new(ConnContext {
            listener_name: name.clone(),
            store: store.clone(),
            remote,
            conn: Arc::new(ConnState::default()),
            flags: flags.clone(),
        });
        let drain = drain.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(stream, listener, ctx, drain).await;
        });
    }
}

/// Why a connection's serving loop ended.
enum Ending {
    Closed,
    HeaderTimeout,
    DrainTimeout,
}

async fn serve_connection(
    stream: TcpStream,
    listener: Arc<ListenerRuntime>,
    ctx: Arc<ConnContext>,
    mut drain: watch::Receiver<bool>,
) {
    let hcm = &listener.config.http;
    let stats = listener.stats.clone();
    stats.downstream_cx_total.inc();
    stats.downstream_cx_active.inc();
    let _ = stream.set_nodelay(true);
    // A second handle on the socket, to answer 408 after hyper gave the connection up.
    let (stream, spare) = match hcm.request_headers_timeout {
        Some(_) => match duplicate(stream) {
            Ok(pair) => pair,
            Err(error) => {
                warn!(%error, "cannot duplicate socket");
                stats.downstream_cx_active.dec();
                return;
            }
        },
        None => (stream, None),
    };
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
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(header_bytes as u32);
    let builder = match hcm.codec {
        Codec::Auto => builder,
        Codec::Http1 => builder.http1_only(),
        Codec::Http2 => builder.http2_only(),
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
    let mut head_since: Option<(u64, Instant)> = None;
    let mut idle_since: Option<(u64, Instant)> = None;
    let mut idle_closing = false;

    let ending = loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    debug!(remote = %ctx.remote, %error, "connection ended with error");
                }
                break Ending::Closed;
            }
            _ = drain.changed(), if drain_deadline.is_none() => {
                conn.as_mut().graceful_shutdown();
                drain_deadline = Some(tokio::time::Instant::now() + hcm.drain_timeout);
            }
            _ = sleep_until_opt(drain_deadline) => break Ending::DrainTimeout,
            _ = ticker.tick() => {
                let now = Instant::now();
                let active = state.active.load(Ordering::Relaxed);
                let started = state.started.load(Ordering::Relaxed);
                if let Some(limit) = header_timeout {
                    if active == 0 && state.head_pending.load(Ordering::Relaxed) {
                        let since = match head_since {
                            Some((s, t)) if s == started => t,
                            _ => { head_since = Some((started, now)); now }
                        };
                        if now.duration_since(since) >= limit {
                            break Ending::HeaderTimeout;
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
    drop(conn);
    if let (Ending::HeaderTimeout, Some(mut spare)) = (ending, spare) {
        stats.downstream_rq_timeout.inc();
        stats.downstream_rq_xx[3].inc();
        let reply = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 15\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nrequest timeout";
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = spare.write_all(reply).await;
            let _ = spare.shutdown().await;
        })
        .await;
    }
    stats.downstream_cx_active.dec();
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Two handles on one socket (`dup`): hyper owns the first; the second can still write a
/// 408 after hyper dropped the connection.
fn duplicate(stream: TcpStream) -> std::io::Result<(TcpStream, Option<TcpStream>)> {
    let std_stream = stream.into_std()?;
    let spare = std_stream.try_clone()?;
    Ok((
        TcpStream::from_std(std_stream)?,
        Some(TcpStream::from_std(spare)?),
    ))
}
