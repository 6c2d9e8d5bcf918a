//! `sluice-cp`: serves xDS (ADS and CSDS) on `--xds-listen` and the operator API on
//! `--api-listen`, from the revisions in `--store`. `--resources FILE`, when given, is the
//! desired state of the `default` group: applied at start and on `SIGHUP` (an invalid file
//! is refused with the document and field, and the served resources stay as they were).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;
use sluice_cp::ads::Ads;
use sluice_cp::api::pb::admin_server::AdminServer;
use sluice_cp::api::AdminApi;
use sluice_cp::auth::Tokens;
use sluice_cp::csds::Csds;
use sluice_cp::fleet::Fleet;
use sluice_cp::registry::{Registry, Request, DEFAULT_GROUP};
use sluice_cp::resources::ResourceSet;
use sluice_cp::store::FileStore;
use sluice_cp::tls;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};
use xds_types::pb::envoy::service::cluster::v3::cluster_discovery_service_server::ClusterDiscoveryServiceServer;
use xds_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use xds_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::EndpointDiscoveryServiceServer;
use xds_types::pb::envoy::service::listener::v3::listener_discovery_service_server::ListenerDiscoveryServiceServer;
use xds_types::pb::envoy::service::route::v3::route_discovery_service_server::RouteDiscoveryServiceServer;
use xds_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
use xds_types::pb::envoy::service::status::v3::client_status_discovery_service_server::ClientStatusDiscoveryServiceServer;

#[derive(Debug, Parser)]
#[command(
    name = "sluice-cp",
    version,
    about = "Sluice control plane (xDS server and operator API)"
)]
struct Cli {
    /// OTLP/gRPC collector (`http://host:4317`) for spans of API calls and of each change
    /// reaching the nodes; no spans when unset.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Address of the Prometheus metrics endpoint (`GET /metrics`); none when unset.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Address of the xDS gRPC server (ADS and CSDS).
    #[arg(long, default_value = "127.0.0.1:18000")]
    xds_listen: SocketAddr,
    /// Address of the operator API (sluicectl).
    #[arg(long, default_value = "127.0.0.1:18001")]
    api_listen: SocketAddr,
    /// Where revisions are kept: `file:DIR`.
    #[arg(long, default_value = "file:sluice-data")]
    store: String,
    /// Desired state of the `default` group (YAML/JSON documents with "@type"), applied at
    /// start and on SIGHUP.
    #[arg(long)]
    resources: Option<PathBuf>,
    /// Debounce window in milliseconds: a change this soon after the previous push waits
    /// until the group has been unchanged this long (at most ten times this), so bursts
    /// coalesce; an isolated change is pushed at once. 0 pushes every change at once.
    #[arg(long, default_value_t = sluice_cp::ads::DEFAULT_DEBOUNCE.as_millis() as u64)]
    debounce_ms: u64,
    /// Operator API tokens: one `read TOKEN` or `write TOKEN` per line. Without it, a write
    /// token is generated once into the store directory (`admin-token`, mode 0600).
    #[arg(long)]
    api_tokens: Option<PathBuf>,
    /// PEM certificate chain served on both the xDS and the API port (turns TLS on).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificate: clients must present a certificate it signed (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Log filter.
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    log_level: String,
    /// `json`: one JSON object per log line, for log pipelines; `text` otherwise.
    #[arg(long = "log-format", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Test hook: serve `--resources` without validating them, so tests can exercise NACKs.
    #[arg(long, hide = true)]
    unsafe_skip_validation: bool,
}

async fn load(path: &PathBuf, validate: bool) -> anyhow::Result<ResourceSet> {
    let text = tokio::fs::read_to_string(path)
        .await
        .with_context(|| format!("cannot read {}", path.display()))?;
    let parsed = if validate {
        ResourceSet::from_yaml(&text)
    } else {
        ResourceSet::from_yaml_unvalidated(&text)
    };
    parsed.with_context(|| format!("{}", path.display()))
}

/// Makes the file's resources the `default` group's, through the same compare-and-swap as
/// every API change (so a reload racing an apply loses neither).
async fn apply_file(registry: &Registry, path: &PathBuf, validate: bool) -> anyhow::Result<()> {
    let set = load(path, validate).await?;
    let request = Request {
        author: format!("resources file {}", path.display()),
        expect_revision: None,
    };
    let change = registry
        .replace(DEFAULT_GROUP, set, "resources file", &request)
        .await?;
    info!(
        revision = change.revision,
        changed = change.changed,
        "resources file applied"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log_level)?)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    let Some(dir) = cli.store.strip_prefix("file:") else {
        bail!(
            "--store: unsupported store {:?} (expected file:DIR)",
            cli.store
        );
    };
    let registry = Arc::new(Registry::open(Box::new(FileStore::open(dir)?)).await?);
    let validate = !cli.unsafe_skip_validation;
    if let Some(path) = &cli.resources {
        apply_file(&registry, path, validate).await?;
        let (registry, path) = (registry.clone(), path.clone());
        tokio::spawn(async move {
            let Ok(mut hangup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hangup.recv().await.is_some() {
                if let Err(e) = apply_file(&registry, &path, validate).await {
                    warn!(
                        error = format!("{e:#}"),
                        "reload refused; serving the previous resources"
                    );
                }
            }
        });
    }
    let tokens = match &cli.api_tokens {
        Some(path) => Tokens::from_file(path)?,
        None => {
            let (tokens, path) = Tokens::generated(Path::new(dir))?;
            info!(token_file = %path.display(), "operator API write token (sluicectl SLUICE_TOKEN_FILE)");
            tokens
        }
    };
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => {
            Some(tls::server_config(cert, key, cli.tls_client_ca.as_deref())?)
        }
        _ => None,
    };
    let server = || -> anyhow::Result<tonic::transport::Server> {
        let builder = tonic::transport::Server::builder();
        Ok(match &tls {
            Some(config) => builder.tls_config(config.clone())?,
            None => builder,
        })
    };
    let fleet = Arc::new(Fleet::default());
    registry.report_to(fleet.metrics.clone());
    let telemetry = match &cli.otlp_endpoint {
        Some(endpoint) => {
            let telemetry = sluice_cp::telemetry::Telemetry::start(endpoint)
                .map_err(|e| anyhow::anyhow!("--otlp-endpoint {endpoint}: {e}"))?;
            fleet.metrics.trace_to(telemetry.clone());
            Some(telemetry)
        }
        None => None,
    };
    if let Some(addr) = cli.metrics_listen {
        sluice_cp::metrics::serve(addr, fleet.metrics.clone()).await?;
        info!(metrics = %addr, "serving Prometheus metrics");
    }
    let api = server()?
        .layer(sluice_cp::telemetry::ApiSpans(telemetry))
        .add_service(AdminServer::new(AdminApi::new(
            registry.clone(),
            fleet.clone(),
            tokens,
        )))
        .serve(cli.api_listen);
    tokio::spawn(async move {
        if let Err(e) = api.await {
            warn!(error = %e, "operator API stopped");
        }
    });
    info!(xds = %cli.xds_listen, api = %cli.api_listen, store = %cli.store, tls = tls.is_some(), mutual_tls = cli.tls_client_ca.is_some(), "listening");
    let ads = Ads::new(registry.clone(), fleet.clone())
        .with_debounce(std::time::Duration::from_millis(cli.debounce_ms));
    server()?
        .add_service(AggregatedDiscoveryServiceServer::new(ads.clone()))
        .add_service(ListenerDiscoveryServiceServer::new(ads.clone()))
        .add_service(RouteDiscoveryServiceServer::new(ads.clone()))
        .add_service(ClusterDiscoveryServiceServer::new(ads.clone()))
        .add_service(EndpointDiscoveryServiceServer::new(ads.clone()))
        .add_service(SecretDiscoveryServiceServer::new(ads))
        .add_service(ClientStatusDiscoveryServiceServer::new(Csds::new(fleet)))
        .serve_with_shutdown(cli.xds_listen, async {
            let Ok(mut terminate) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    Ok(())
}
