//! Listeners: bind (with `SO_REUSEPORT`), accept, and hand each connection to the filter
//! chain it matches, as Envoy's listener → listener filters → filter chain → network filter.
//!
//! A connection takes its chain's settings when it is accepted; every request on it reads
//! routes and clusters from the snapshot current at that request. So a route change
//! drains nothing; a change to one filter chain drains only that chain's connections; a
//! listener that is removed or moves to another address drains all of its connections.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tracing::{info, warn};
use xds_types::listener::ListenAddress;

use crate::config::{ListenerRuntime, Snapshot, SnapshotStore};
use crate::proxy::FlagCounters;

mod accept;
pub use accept::set_global_connection_cap;
pub mod filter_chain;
pub mod inspect;
pub mod tls;

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("listener {name:?}: cannot bind {address}: {source}")]
    Bind {
        name: String,
        address: ListenAddress,
        source: std::io::Error,
    },
}

/// The listeners currently accepting, reconciled against each new snapshot.
pub struct ListenerManager {
    store: SnapshotStore,
    flags: Arc<FlagCounters>,
    running: Mutex<HashMap<String, Running>>,
    /// The workers' runtime: accept loops (and the connections they spawn) run there,
    /// whichever runtime reconciles (the control runtime, for xDS and reloads).
    workers: tokio::runtime::Handle,
}

struct Running {
    address: ListenAddress,
    drain: watch::Sender<bool>,
    chains: ChainDrains,
}

/// The drain signal of every live filter chain of one listener, by chain identity.
#[derive(Clone, Default)]
pub(crate) struct ChainDrains(Arc<Mutex<HashMap<u64, watch::Sender<bool>>>>);

impl ChainDrains {
    /// The signal of chain `identity`, created if new.
    fn subscribe(&self, identity: u64) -> watch::Receiver<bool> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(identity)
            .or_insert_with(|| watch::channel(false).0)
            .subscribe()
    }

    /// Drains every chain not in `live`; returns how many.
    fn retain(&self, live: &HashSet<u64>) -> usize {
        let mut chains = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<u64> = chains
            .keys()
            .filter(|k| !live.contains(k))
            .copied()
            .collect();
        for identity in &gone {
            if let Some(sender) = chains.remove(identity) {
                let _ = sender.send(true);
            }
        }
        gone.len()
    }
}

/// A connection's drain signal: its listener's or its filter chain's, whichever comes.
pub struct Drain {
    listener: watch::Receiver<bool>,
    chain: watch::Receiver<bool>,
}

impl Drain {
    /// Resolves once the connection should drain (immediately if it already should).
    pub async fn signaled(&mut self) {
        loop {
            if *self.listener.borrow_and_update() || *self.chain.borrow_and_update() {
                return;
            }
            tokio::select! {
                changed = self.listener.changed() => if changed.is_err() { return },
                changed = self.chain.changed() => if changed.is_err() { return },
            }
        }
    }
}

impl ListenerManager {
    /// A manager with no listeners yet, whose listeners will accept on the runtime it is
    /// created on.
    pub fn new(store: SnapshotStore, flags: Arc<FlagCounters>) -> Self {
        Self {
            store,
            flags,
            running: Mutex::new(HashMap::new()),
            workers: tokio::runtime::Handle::current(),
        }
    }

    /// Starts listeners new in `snapshot`, drains those it removed or moved, and drains the
    /// filter chains the update removed from listeners that stay.
    pub fn reconcile(&self, snapshot: &Snapshot) -> Result<(), ListenerError> {
        let mut running = self.running.lock().expect("listener lock");
        self.reconcile_locked(&mut running, snapshot)
    }

    /// Reconciles with the store's latest snapshot, read under the lock: publishers that
    /// race (several xDS streams, files) never put back an older listener set.
    pub fn reconcile_latest(&self) -> Result<(), ListenerError> {
        let mut running = self.running.lock().expect("listener lock");
        let snapshot = self.store.load();
        self.reconcile_locked(&mut running, &snapshot)
    }

    fn reconcile_locked(
        &self,
        running: &mut HashMap<String, Running>,
        snapshot: &Snapshot,
    ) -> Result<(), ListenerError> {
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
            if let Some(r) = running.get(name) {
                let drained = r.chains.retain(&listener.identities());
                if drained > 0 {
                    info!(listener = %name, chains = drained, "draining changed filter chains");
                }
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
        let address = listener.config.address.clone();
        let name = listener.config.name.clone();
        let bound = match &address {
            ListenAddress::Socket(a) => {
                bind_with(*a, listener.config.socket.backlog).map(accept::Socket::Tcp)
            }
            ListenAddress::Pipe { path, mode } => bind_unix(path, *mode).map(accept::Socket::Unix),
        };
        let socket = bound.map_err(|source| ListenerError::Bind {
            name: name.clone(),
            address: address.clone(),
            source,
        })?;
        let (drain, drain_rx) = watch::channel(false);
        let chains = ChainDrains::default();
        for identity in listener.identities() {
            chains.subscribe(identity);
        }
        info!(listener = %name, %address, chains = listener.chains.len(), "listening");
        self.workers.spawn(accept::accept_loop(accept::Acceptor {
            socket,
            name: Arc::from(name.as_str()),
            store: self.store.clone(),
            flags: self.flags.clone(),
            drain: drain_rx,
            chains: chains.clone(),
        }));
        Ok(Running {
            address,
            drain,
            chains,
        })
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
    pub fn addresses(&self) -> Vec<(String, ListenAddress)> {
        let mut v: Vec<_> = self
            .running
            .lock()
            .expect("listener lock")
            .iter()
            .map(|(n, r)| (n.clone(), r.address.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// Turns on TCP keepalive with `k`'s timings (kernel defaults for the unset ones).
pub fn apply_keepalive(stream: &tokio::net::TcpStream, k: xds_types::listener::Keepalive) {
    let mut settings = socket2::TcpKeepalive::new();
    if let Some(t) = k.time {
        settings = settings.with_time(t);
    }
    if let Some(i) = k.interval {
        settings = settings.with_interval(i);
    }
    if let Some(p) = k.probes {
        settings = settings.with_retries(p);
    }
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&settings) {
        tracing::debug!(%error, "cannot set TCP keepalive");
    }
}

/// Binds with `SO_REUSEADDR` and `SO_REUSEPORT` (so a restarted or second process can
/// share the port) and the default backlog.
pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    bind_with(address, xds_types::listener::DEFAULT_BACKLOG)
}

/// Binds a Unix socket: `@name` in the abstract namespace, else a path, replacing a stale
/// socket file left there (as Envoy does) and set to `mode` when it is not 0.
fn bind_unix(path: &str, mode: u32) -> std::io::Result<UnixListener> {
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        let listener = std::os::unix::net::UnixListener::bind_addr(&address)?;
        listener.set_nonblocking(true)?;
        return UnixListener::from_std(listener);
    }
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    if mode != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(listener)
}

fn bind_with(address: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    TcpListener::from_std(socket.into())
}
