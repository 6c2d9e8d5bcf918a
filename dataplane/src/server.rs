//! The process: build the first snapshot, start listeners and the admin server, reload on
//! `SIGHUP`, drain on `SIGTERM`/`SIGINT`/`/quitquitquit`. Traffic runs on the worker
//! runtime; everything else (xDS, admin, reloads, snapshot compilation, health checks,
//! DNS) on a control runtime of its own thread.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;
use tracing::{error, info, warn};
use xds_types::pb::envoy::config::core::v3::Node;
use xds_types::Bootstrap;

use crate::access_log::AccessLogs;
use crate::admin::{self, AdminState};
use crate::config::SnapshotStore;
use crate::listener::{bind, ListenerError, ListenerManager};
use crate::proxy::FlagCounters;
use crate::stats::Stats;
use crate::{file_xds, xds};

/// How long Envoy's descriptor pool is kept after the last config decode.
const DESCRIPTOR_IDLE: Duration = Duration::from_secs(30);

/// What `sluice` was started with.
#[derive(Debug, Clone)]
pub struct Options {
    /// The bootstrap file, re-read on `SIGHUP`.
    pub config_path: PathBuf,
    /// How long draining waits for open connections.
    pub drain_time: Duration,
    /// Worker threads, reported by `/server_info`.
    pub concurrency: usize,
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error("admin: cannot bind {address}: {source}")]
    AdminBind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
    #[error("cannot start the control runtime: {0}")]
    Control(std::io::Error),
}

/// Starts the control runtime: one thread of its own for xDS, the admin server, config
/// files, `SIGHUP` reloads, snapshot compilation and what snapshots start (health checks,
/// DNS, exporters), so none of that runs on a worker between requests. It lives as long as
/// the process.
fn control_runtime() -> std::io::Result<tokio::runtime::Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("sluice-control")
        .build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name("sluice-control".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

/// Runs until asked to stop, then drains.
pub async fn run(bootstrap: Bootstrap, options: Options) -> Result<(), ServerError> {
    let stats = Stats::new();
    let control = control_runtime().map_err(ServerError::Control)?;
    crate::listener::set_global_connection_cap(bootstrap.max_downstream_connections);
    for key in bootstrap.runtime.keys() {
        if !xds_types::overload::HONOURED_RUNTIME_KEYS.contains(&key.as_str()) {
            warn!(%key, "runtime key accepted without effect: sluice does not read it");
        }
    }
    let admin_address = bootstrap.admin;
    let admin_access_log = bootstrap.admin_access_log.clone();
    let xds = bootstrap.xds.clone();
    let node = Node {
        id: bootstrap.node_id.clone(),
        cluster: bootstrap.node_cluster.clone(),
        ..Default::default()
    };
    let files = bootstrap.files.clone();
    // Ready at once unless listeners or clusters are still to come (xDS or files), or
    // secrets over ADS.
    let ready = Arc::new(AtomicBool::new(
        xds.ads.is_none() && xds.listeners.is_none() && xds.clusters.is_none() && files.is_none(),
    ));
    // Built in the control runtime, so what the snapshot starts runs there.
    let store = {
        let _control = control.enter();
        crate::overload::start(&bootstrap.overload, &stats);
        SnapshotStore::new(bootstrap, stats.clone())
    };
    let listeners = Arc::new(ListenerManager::new(
        store.clone(),
        FlagCounters::new(&stats),
    ));
    // As Envoy initializes its clusters: listeners open once the static clusters' hosts
    // have had their first health check.
    let initial = store.load();
    futures_util::future::join_all(
        initial
            .clusters
            .values()
            .map(|cluster| cluster.first_health_checks()),
    )
    .await;
    listeners.reconcile(&initial)?;
    let shutdown = Arc::new(Notify::new());
    let admin_state = Arc::new(AdminState {
        store: store.clone(),
        listeners: listeners.clone(),
        draining: Default::default(),
        ready: ready.clone(),
        shutdown: shutdown.clone(),
        started: Instant::now(),
        concurrency: options.concurrency,
        access_logs: AccessLogs::new(&admin_access_log, &store.load().bootstrap, store.stats()),
    });
    // The admin socket and the SIGHUP handler are registered with the control runtime.
    let hangup = {
        let _control = control.enter();
        if let Some(address) = admin_address {
            let socket =
                bind(address).map_err(|source| ServerError::AdminBind { address, source })?;
            info!(%address, "admin listening");
            control.spawn(admin::serve(socket, admin_state.clone()));
        }
        signal(SignalKind::hangup()).map_err(ServerError::Signal)?
    };
    control.spawn(reload_on_hangup(
        hangup,
        options.clone(),
        store.clone(),
        listeners.clone(),
    ));
    // Runs even when nothing is dynamic yet: a listener or cluster from a file may name a
    // server of its own for its routes, endpoints or secrets.
    control.spawn(xds::run(
        xds,
        node,
        store.clone(),
        listeners.clone(),
        ready.clone(),
    ));
    if let Some(files) = files {
        control.spawn(file_xds::run(
            files,
            store.clone(),
            listeners.clone(),
            ready,
        ));
    }
    control.spawn(file_xds::run_resource_files(
        store.clone(),
        listeners.clone(),
    ));
    // Config decoding keeps Envoy's descriptors in memory; free them once config is quiet.
    control.spawn(async {
        let mut tick = tokio::time::interval(DESCRIPTOR_IDLE);
        loop {
            tick.tick().await;
            xds_types::decode::release_idle_pool(DESCRIPTOR_IDLE);
        }
    });
    let mut terminate = signal(SignalKind::terminate()).map_err(ServerError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(ServerError::Signal)?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
        _ = shutdown.notified() => {}
    }
    info!(drain_time = ?options.drain_time, "draining");
    admin_state.draining.store(true, Ordering::Relaxed);
    listeners.shutdown(options.drain_time).await;
    info!("stopped");
    Ok(())
}

/// Reloads the bootstrap at every `SIGHUP`, one reload at a time.
async fn reload_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    options: Options,
    store: SnapshotStore,
    listeners: Arc<ListenerManager>,
) {
    while hangup.recv().await.is_some() {
        reload(&options, &store, &listeners).await;
    }
}

/// Re-reads the bootstrap; a valid one is published as a new snapshot, an invalid one is
/// logged and the current config keeps serving. Reading and validating run on a blocking
/// thread, and the compilation on the control runtime, so a reload never stalls the
/// workers serving traffic (with one worker, parsing on it added tens of milliseconds to
/// every in-flight request's latency).
async fn reload(options: &Options, store: &SnapshotStore, listeners: &ListenerManager) {
    let path = options.config_path.clone();
    let parsed = tokio::task::spawn_blocking(move || {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read bootstrap: {e}"))?;
        Bootstrap::from_yaml(&text)
            .and_then(|b| {
                crate::tls::check_bootstrap_files(&b)?;
                Ok(b)
            })
            .map_err(|e| format!("invalid bootstrap: {e}"))
    })
    .await;
    let bootstrap = match parsed {
        Ok(Ok(b)) => b,
        Ok(Err(error)) => {
            warn!(path = %options.config_path.display(), %error, "reload refused; keeping current config");
            return;
        }
        Err(error) => {
            error!(%error, "reload task failed; keeping current config");
            return;
        }
    };
    let snapshot = store.publish(bootstrap);
    if let Err(e) = listeners.reconcile_latest() {
        error!(error = %e, "reload: listener failed to start");
    }
    info!(version = snapshot.version, "reloaded bootstrap");
}
