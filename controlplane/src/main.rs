//! `sluice-cp`: serves xDS on `--xds-listen` from the resources in `--resources`, re-read
//! on `SIGHUP` (an invalid file is refused with the document and field, and the served
//! set stays as it was).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use sluice_cp::ads::Ads;
use sluice_cp::csds::Csds;
use sluice_cp::fleet::Fleet;
use sluice_cp::resources::ResourceSet;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};
use xds_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use xds_types::pb::envoy::service::status::v3::client_status_discovery_service_server::ClientStatusDiscoveryServiceServer;

#[derive(Debug, Parser)]
#[command(
    name = "sluice-cp",
    version,
    about = "Sluice control plane (xDS server)"
)]
struct Cli {
    /// Address of the xDS gRPC server.
    #[arg(long, default_value = "127.0.0.1:18000")]
    xds_listen: SocketAddr,
    /// YAML/JSON documents, one Envoy resource each (with "@type").
    #[arg(long)]
    resources: PathBuf,
    /// Log filter.
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    log_level: String,
    /// Test hook: serve resources without validating them, so tests can exercise NACKs.
    #[arg(long, hide = true)]
    unsafe_skip_validation: bool,
}

fn load(path: &PathBuf, validate: bool) -> anyhow::Result<ResourceSet> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let parsed = if validate {
        ResourceSet::from_yaml(&text)
    } else {
        ResourceSet::from_yaml_unvalidated(&text)
    };
    parsed.with_context(|| format!("{}", path.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log_level)?)
        .with_writer(std::io::stderr)
        .init();
    let (tx, rx) = watch_channel(load(&cli.resources, !cli.unsafe_skip_validation)?);
    let path = cli.resources.clone();
    let validate = !cli.unsafe_skip_validation;
    tokio::spawn(async move {
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangup.recv().await.is_some() {
            match load(&path, validate) {
                Ok(set) => {
                    info!("resources reloaded");
                    tx.send_replace(Arc::new(set));
                }
                Err(e) => warn!(
                    error = format!("{e:#}"),
                    "reload refused; serving the previous resources"
                ),
            }
        }
    });
    info!(address = %cli.xds_listen, "xds listening");
    let fleet = Arc::new(Fleet::default());
    tonic::transport::Server::builder()
        .add_service(AggregatedDiscoveryServiceServer::new(Ads::new(
            rx,
            fleet.clone(),
        )))
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

fn watch_channel(
    set: ResourceSet,
) -> (
    tokio::sync::watch::Sender<Arc<ResourceSet>>,
    tokio::sync::watch::Receiver<Arc<ResourceSet>>,
) {
    tokio::sync::watch::channel(Arc::new(set))
}
