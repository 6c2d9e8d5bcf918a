//! One listener's accept loop and the life of a connection up to its network filter:
//! listener filters → filter chain → connection limit → TLS handshake → HTTP connection
//! manager or TCP proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::filter_chain::{select, ConnectionFacts};
use super::inspect::{inspect, InspectError, Prefixed};
use super::tls::TlsInfo;
use super::{ChainDrains, Drain};
use crate::config::{ChainRuntime, ChainTls, ListenerRuntime, Network, SnapshotStore};
use crate::conn::ConnState;
use crate::proxy::{ConnContext, FlagCounters};

/// What an accept loop runs with.
pub(super) struct Acceptor {
    pub socket: TcpListener,
    pub name: Arc<str>,
    pub store: SnapshotStore,
    pub flags: Arc<FlagCounters>,
    pub drain: watch::Receiver<bool>,
    pub chains: ChainDrains,
}

pub(super) async fn accept_loop(mut acceptor: Acceptor) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = acceptor.drain.changed() => return,
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
        listener.stats.downstream_cx_total.inc();
        let connection = Connection {
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

/// A connection on its way to a network filter.
struct Connection {
    listener: Arc<ListenerRuntime>,
    name: Arc<str>,
    store: SnapshotStore,
    flags: Arc<FlagCounters>,
    listener_drain: watch::Receiver<bool>,
    chains: ChainDrains,
}

impl Connection {
    async fn serve(self, mut stream: TcpStream, peer: SocketAddr) {
        let config = &self.listener.config;
        let _ = stream.set_nodelay(true);
        if let Some(k) = config.socket.keepalive {
            super::apply_keepalive(&stream, k);
        }
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(_) => return,
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
                return;
            }
            Err(error) => {
                debug!(listener = %self.name, %peer, %error, "connection closed by a listener filter");
                return;
            }
        };
        let matches: Vec<_> = config.filter_chains.iter().map(|c| &c.matcher).collect();
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
        let chain = match selected {
            Some(i) => self.listener.chains[i].clone(),
            None => match &self.listener.default_chain {
                Some(chain) => chain.clone(),
                None => {
                    self.listener.stats.no_filter_chain_match.inc();
                    debug!(listener = %self.name, %peer, sni = ?facts.server_name, "no filter chain matches; closing");
                    // Reset, as Envoy does (it closes with the inspected bytes unread).
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    return;
                }
            },
        };
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
                    return;
                }
            },
        };
        let drain = Drain {
            listener: self.listener_drain.clone(),
            chain: self.chains.subscribe(chain.identity),
        };
        let stream = Prefixed::new(buffered, stream);
        match &chain.tls {
            ChainTls::Plaintext => {
                self.dispatch(stream, &chain, facts.source, local, None, drain)
                    .await
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
                        self.dispatch(
                            tls,
                            &chain,
                            facts.source,
                            local,
                            Some(Arc::new(info)),
                            drain,
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
    }

    /// Runs the chain's network filter on the (decrypted) stream.
    async fn dispatch<S>(
        &self,
        stream: S,
        chain: &Arc<ChainRuntime>,
        remote: SocketAddr,
        local: SocketAddr,
        tls: Option<Arc<TlsInfo>>,
        drain: Drain,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        match &chain.network {
            Network::Http(http) => {
                let ctx = Arc::new(ConnContext {
                    listener_name: self.name.clone(),
                    chain: chain.clone(),
                    store: self.store.clone(),
                    remote,
                    local,
                    tls,
                    conn: Arc::new(ConnState::default()),
                    flags: self.flags.clone(),
                    limiters: Default::default(),
                });
                crate::http::serve_connection(stream, http, ctx, drain).await;
            }
            Network::Tcp(tcp) => crate::tcp::proxy(stream, tcp, &self.store, drain).await,
        }
    }
}
