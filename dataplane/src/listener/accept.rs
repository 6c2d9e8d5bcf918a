//! One listener's accept loop and the life of a connection up to its network filter:
//! listener filters → filter chain → connection limit → TLS handshake → HTTP connection
//! manager or TCP proxy.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{debug, warn};
use xds_types::overload::ActionKind;

use super::filter_chain::{select, ConnectionFacts};
use super::inspect::{inspect, InspectError, Inspected, Prefixed};
use super::tls::TlsInfo;
use super::{ChainDrains, Drain};
use crate::config::{ChainRuntime, ChainTls, ListenerRuntime, Network, SnapshotStore};
use crate::conn::ConnState;
use crate::proxy::{ConnContext, FlagCounters};
use crate::tcp::{TcpOutcome, TcpPeer};

/// The bootstrap's cap on downstream connections across listeners (0: none), and how many
/// of the capped listeners' connections are open.
static GLOBAL_CAP: AtomicU64 = AtomicU64::new(0);
static GLOBAL_ACTIVE: AtomicU64 = AtomicU64::new(0);

/// Sets the global downstream connection cap (`overload_manager`'s
/// `global_downstream_max_connections`); the bootstrap sets it once, at start.
pub fn set_global_connection_cap(max: Option<u64>) {
    GLOBAL_CAP.store(max.unwrap_or(0), Ordering::Relaxed);
}

/// One connection counted against the global cap until it is dropped.
struct GlobalSlot;

impl GlobalSlot {
    /// A slot, `Ok(None)` when there is no cap, `Err(())` when the cap is reached.
    fn take() -> Result<Option<GlobalSlot>, ()> {
        let cap = GLOBAL_CAP.load(Ordering::Relaxed);
        if cap == 0 {
            return Ok(None);
        }
        GLOBAL_ACTIVE
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .map(|_| Some(GlobalSlot))
            .map_err(|_| ())
    }
}

impl Drop for GlobalSlot {
    fn drop(&mut self) {
        GLOBAL_ACTIVE.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A listening socket.
pub(super) enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A connection just accepted.
enum Accepted {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// What filters, access logs and `x-forwarded-for` see as both ends of a Unix socket
/// connection, which has no IP address: loopback, as the peer is on this host.
const UNIX_ADDRESS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

impl Socket {
    async fn accept(&self) -> std::io::Result<(Accepted, SocketAddr)> {
        match self {
            Self::Tcp(l) => l.accept().await.map(|(s, peer)| (Accepted::Tcp(s), peer)),
            Self::Unix(l) => l
                .accept()
                .await
                .map(|(s, _)| (Accepted::Unix(s), UNIX_ADDRESS)),
        }
    }
}

/// What an accept loop runs with.
pub(super) struct Acceptor {
    pub socket: Socket,
    pub name: Arc<str>,
    pub store: SnapshotStore,
    pub flags: Arc<FlagCounters>,
    pub drain: watch::Receiver<bool>,
    pub chains: ChainDrains,
}

pub(super) async fn accept_loop(mut acceptor: Acceptor) {
    let mut paused = crate::overload::accept_paused();
    loop {
        let exempt = acceptor
            .store
            .load()
            .listeners
            .get(&*acceptor.name)
            .is_some_and(|l| l.config.bypass_overload_manager);
        if !exempt && *paused.borrow_and_update() {
            // As Envoy: the listener stops accepting; new peers wait in the backlog.
            tokio::select! {
                _ = acceptor.drain.changed() => return,
                _ = paused.wait_for(|p| !*p) => continue,
            }
        }
        let (stream, peer) = tokio::select! {
            _ = acceptor.drain.changed() => return,
            _ = paused.changed(), if !exempt => continue,
            accepted = acceptor.socket.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    warn!(listener = %acceptor.name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let snapshot = acceptor.store.load();
        let Some(listener) = snapshot.listeners.get(&*acceptor.name).cloned() else {
            return;
        };
        drop(snapshot);
        let global_slot = match listener.config.ignore_global_conn_limit {
            true => None,
            false => match GlobalSlot::take() {
                Ok(slot) => slot,
                Err(()) => {
                    // As Envoy: closed at once, counted, never handed to a filter chain.
                    listener.stats.downstream_global_cx_overflow.inc();
                    debug!(listener = %acceptor.name, %peer, "global connection cap reached");
                    drop(stream);
                    continue;
                }
            },
        };
        if !listener.config.bypass_overload_manager
            && crate::overload::applies(ActionKind::RejectIncomingConnections)
        {
            listener.stats.downstream_cx_overload_reject.inc();
            debug!(listener = %acceptor.name, %peer, "connection rejected by the overload manager");
            drop(stream);
            continue;
        }
        listener.stats.downstream_cx_total.inc();
        let connection = Connection {
            _global_slot: global_slot,
            listener,
            name: acceptor.name.clone(),
            store: acceptor.store.clone(),
            flags: acceptor.flags.clone(),
            listener_drain: acceptor.drain.clone(),
            chains: acceptor.chains.clone(),
        };
        tokio::spawn(connection.serve(stream, peer));
    }
}

/// What a connection's listener access log needs from its handling.
#[derive(Default)]
struct Ended {
    /// The downstream address after the PROXY protocol.
    remote: Option<SocketAddr>,
    server_name: Option<String>,
    tcp: Option<TcpOutcome>,
}

/// A connection on its way to a network filter.
struct Connection {
    listener: Arc<ListenerRuntime>,
    name: Arc<str>,
    store: SnapshotStore,
    flags: Arc<FlagCounters>,
    listener_drain: watch::Receiver<bool>,
    chains: ChainDrains,
    /// Held while the connection lives, when the listener counts against the global cap.
    _global_slot: Option<GlobalSlot>,
}

impl Connection {
    /// Serves the connection, then writes the listener's access logs.
    async fn serve(self, stream: Accepted, peer: SocketAddr) {
        let start = std::time::SystemTime::now();
        let started = std::time::Instant::now();
        let connection_id = crate::access_log::next_connection_id();
        let listener = self.listener.clone();
        let store = self.store.clone();
        let (local, ended) = match stream {
            Accepted::Tcp(stream) => {
                let local = stream.local_addr().ok();
                (local, self.handle(stream, peer, connection_id).await)
            }
            Accepted::Unix(stream) => (
                Some(UNIX_ADDRESS),
                self.handle_unix(stream, connection_id).await,
            ),
        };
        if let (Some(logs), Some(local)) = (&listener.access_logs, local) {
            let tcp = ended.tcp.unwrap_or_default();
            logs.write(
                &crate::access_log::Entry {
                    duration: started.elapsed(),
                    bytes_received: tcp.received,
                    bytes_sent: tcp.sent,
                    flags: &tcp.flags,
                    upstream_host: tcp.upstream.as_deref(),
                    upstream_cluster: tcp.cluster.as_deref(),
                    server_name: ended.server_name.as_deref(),
                    ..crate::access_log::Entry::connection(
                        ended.remote.unwrap_or(peer),
                        peer,
                        local,
                        connection_id,
                        start,
                    )
                },
                &store,
            );
        }
    }

    async fn handle(self, mut stream: TcpStream, peer: SocketAddr, connection_id: u64) -> Ended {
        let mut ended = Ended::default();
        let config = &self.listener.config;
        let _ = stream.set_nodelay(true);
        if let Some(k) = config.socket.keepalive {
            super::apply_keepalive(&stream, k);
        }
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(_) => return ended,
        };
        let inspected = inspect(
            &mut stream,
            &config.listener_filters,
            peer,
            local,
            config.listener_filters_timeout,
            config.continue_on_listener_filters_timeout,
        )
        .await;
        let (facts, buffered) = match inspected {
            Ok(pair) => pair,
            Err(InspectError::Timeout) => {
                self.listener.stats.downstream_pre_cx_timeout.inc();
                return ended;
            }
            Err(error) => {
                debug!(listener = %self.name, %peer, %error, "connection closed by a listener filter");
                return ended;
            }
        };
        ended.remote = Some(facts.source);
        ended.server_name = facts.server_name.clone();
        let Some(chain) = self.choose_chain(&facts, peer) else {
            // Reset, as Envoy does (it closes with the inspected bytes unread).
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            return ended;
        };
        self.run_chain(
            Prefixed::new(buffered, stream),
            chain,
            &facts,
            local,
            connection_id,
            peer,
            ended,
        )
        .await
    }

    /// A Unix socket connection: no listener filters (validation refuses them) and no
    /// facts to match a chain on beyond the defaults.
    async fn handle_unix(self, stream: UnixStream, connection_id: u64) -> Ended {
        let facts = Inspected {
            source: UNIX_ADDRESS,
            destination: UNIX_ADDRESS,
            server_name: None,
            transport: "raw_buffer",
            application_protocols: Vec::new(),
        };
        let ended = Ended {
            remote: Some(UNIX_ADDRESS),
            ..Ended::default()
        };
        let Some(chain) = self.choose_chain(&facts, UNIX_ADDRESS) else {
            return ended;
        };
        let stream = Prefixed::new(BytesMut::new(), stream);
        self.run_chain(
            stream,
            chain,
            &facts,
            UNIX_ADDRESS,
            connection_id,
            UNIX_ADDRESS,
            ended,
        )
        .await
    }

    /// The filter chain the connection's facts select, else the default chain; `None`
    /// (counted) when neither takes it.
    fn choose_chain(&self, facts: &Inspected, peer: SocketAddr) -> Option<Arc<ChainRuntime>> {
        let matches: Vec<_> = self
            .listener
            .config
            .filter_chains
            .iter()
            .map(|c| &c.matcher)
            .collect();
        let selected = select(
            &matches,
            &ConnectionFacts {
                destination: facts.destination,
                source: facts.source,
                direct_source: peer,
                server_name: facts.server_name.as_deref(),
                transport: facts.transport,
                application_protocols: &facts.application_protocols,
            },
        );
        match selected {
            Some(i) => Some(self.listener.chains[i].clone()),
            None => {
                if self.listener.default_chain.is_none() {
                    self.listener.stats.no_filter_chain_match.inc();
                    debug!(listener = %self.name, %peer, sni = ?facts.server_name, "no filter chain matches; closing");
                }
                self.listener.default_chain.clone()
            }
        }
    }

    /// The chosen chain's connection limit, TLS handshake and network filter.
    #[allow(clippy::too_many_arguments)]
    async fn run_chain<S>(
        self,
        stream: S,
        chain: Arc<ChainRuntime>,
        facts: &Inspected,
        local: SocketAddr,
        connection_id: u64,
        peer: SocketAddr,
        mut ended: Ended,
    ) -> Ended
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let _permit = match &chain.connection_limit {
            None => None,
            Some((semaphore, delay)) => match semaphore.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    if let Network::Http(http) = &chain.network {
                        http.stats.downstream_cx_overflow.inc();
                    }
                    if let Some(d) = delay {
                        tokio::time::sleep(*d).await;
                    }
                    return ended;
                }
            },
        };
        let drain = Drain {
            listener: self.listener_drain.clone(),
            chain: self.chains.subscribe(chain.identity),
        };
        match &chain.tls {
            ChainTls::Plaintext => {
                ended.tcp = self
                    .dispatch(
                        stream,
                        &chain,
                        facts.source,
                        local,
                        None,
                        drain,
                        connection_id,
                        peer,
                    )
                    .await;
            }
            ChainTls::Unavailable(reason) => {
                self.listener.stats.ssl_connection_error.inc();
                debug!(listener = %self.name, chain = %chain.name, %reason, "TLS unavailable; closing");
            }
            ChainTls::Terminate { server, .. } => {
                let accept = tokio_rustls::TlsAcceptor::from(server.config.clone()).accept(stream);
                let handshake = match chain.handshake_timeout {
                    Some(t) => match tokio::time::timeout(t, accept).await {
                        Ok(r) => r,
                        Err(_) => Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "handshake timeout",
                        )),
                    },
                    None => accept.await,
                };
                match handshake {
                    Ok(tls) => {
                        self.listener.stats.ssl_handshake.inc();
                        let info = TlsInfo::of(tls.get_ref().1, server);
                        ended.tcp = self
                            .dispatch(
                                tls,
                                &chain,
                                facts.source,
                                local,
                                Some(Arc::new(info)),
                                drain,
                                connection_id,
                                peer,
                            )
                            .await;
                    }
                    Err(error) => {
                        self.listener.stats.ssl_connection_error.inc();
                        debug!(listener = %self.name, %peer, %error, "TLS handshake failed");
                    }
                }
            }
        }
        ended
    }

    /// Runs the chain's network filter on the (decrypted) stream; a TCP proxy says what
    /// it moved.
    #[allow(clippy::too_many_arguments)]
    async fn dispatch<S>(
        &self,
        stream: S,
        chain: &Arc<ChainRuntime>,
        remote: SocketAddr,
        local: SocketAddr,
        tls: Option<Arc<TlsInfo>>,
        drain: Drain,
        connection_id: u64,
        direct_remote: SocketAddr,
    ) -> Option<TcpOutcome>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        match &chain.network {
            Network::Http(http) => {
                let ctx = Arc::new(ConnContext {
                    listener_name: self.name.clone(),
                    chain: chain.clone(),
                    store: self.store.clone(),
                    remote,
                    direct_remote,
                    connection_id,
                    local,
                    tls,
                    conn: Arc::new(ConnState::default()),
                    flags: self.flags.clone(),
                    limiters: Default::default(),
                    overload_exempt: self.listener.config.bypass_overload_manager,
                });
                crate::http::serve_connection(stream, http, ctx, drain).await;
                None
            }
            Network::Tcp(tcp) => {
                let peer = TcpPeer {
                    remote,
                    direct_remote,
                    local,
                    server_name: tls.and_then(|t| t.sni.clone()),
                    connection_id,
                };
                Some(crate::tcp::proxy(stream, tcp, &self.store, drain, &peer).await)
            }
        }
    }
}
