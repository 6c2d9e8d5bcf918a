//! Control-plane propagation: `sluice-cp` with 3 `sluice` nodes (two state of the world,
//! one delta), each round a `sluicectl apply` of a changed route table, timed from just
//! before the apply starts to the fleet-view event (the `WatchNodes` stream, no polling) in
//! which the last of the 3 nodes has ACKed it. Also the control plane's RSS with the 3
//! nodes attached. Bounded by rounds and by a per-round timeout; every process it starts
//! is stopped by PID. Prints one JSON object.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::json;
use sluice_cp::api::pb::admin_client::AdminClient;
use sluice_cp::api::pb::{ListNodesRequest, ListNodesResponse};
use sluice_tests::config::{ads_bootstrap, xds_resources};
use sluice_tests::free_addr;
use sluice_tests::process::rss_of;
use xds_types::type_urls;

#[derive(Parser)]
struct Args {
    /// Where sluice, sluice-cp and sluicectl are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Pause between rounds, so each apply is a change of its own rather than part of a
    /// burst (which the control plane's debounce would hold back on purpose).
    #[arg(long, default_value_t = 100)]
    pause_ms: u64,
    /// Passed to sluice-cp (its default is 10).
    #[arg(long, default_value_t = 10)]
    debounce_ms: u64,
}

/// Children killed by PID when dropped, the last started first.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in self.0.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The listener version every one of `nodes` has ACKed, if they agree.
fn common_listener_ack(view: &ListNodesResponse, nodes: &[&str]) -> Option<String> {
    let mut versions = nodes.iter().map(|id| {
        let node = view.nodes.iter().find(|n| n.id == *id && n.connected)?;
        let listener = node
            .types
            .iter()
            .find(|t| t.type_url == type_urls::LISTENER)?;
        Some(listener.acked_version.clone()).filter(|v| !v.is_empty())
    });
    let first = versions.next()??;
    versions
        .all(|v| v.as_ref() == Some(&first))
        .then_some(first)
}

fn apply(bin_dir: &Path, api: SocketAddr, token_file: &Path, file: &Path) -> anyhow::Result<()> {
    let out = Command::new(bin_dir.join("sluicectl"))
        .args(["--server", &format!("http://{api}"), "apply", "-f"])
        .env("SLUICE_TOKEN_FILE", token_file)
        .arg(file)
        .output()
        .context("run sluicectl")?;
    if !out.status.success() {
        bail!("apply: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("sluice-cp-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (xds, api, listener, upstream) = (free_addr(), free_addr(), free_addr(), free_addr());
    let mut processes = Processes(Vec::new());
    processes.0.push(
        Command::new(args.bin_dir.join("sluice-cp"))
            .args([
                "--xds-listen",
                &xds.to_string(),
                "--api-listen",
                &api.to_string(),
            ])
            .arg("--store")
            .arg(format!("file:{}", dir.join("store").display()))
            .args(["--log-level", "warn"])
            .args(["--debounce-ms", &args.debounce_ms.to_string()])
            .stdin(Stdio::null())
            .spawn()
            .context("start sluice-cp")?,
    );
    let cp_pid = processes.0[0].id();
    let token_file = dir.join("store").join("admin-token");
    let mut channel = None;
    for _ in 0..200 {
        if let (Ok(c), true) = (
            tonic::transport::Endpoint::from_shared(format!("http://{api}"))?
                .connect()
                .await,
            token_file.exists(),
        ) {
            channel = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let channel = channel.context("sluice-cp API never came up")?;
    let bearer: tonic::metadata::MetadataValue<_> =
        format!("Bearer {}", std::fs::read_to_string(&token_file)?.trim()).parse()?;
    let mut api_client =
        AdminClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
            Ok(request)
        });
    let nodes = ["node-1", "node-2", "node-3"];
    for (i, node) in nodes.iter().enumerate() {
        let api_type = if i == 2 { "DELTA_GRPC" } else { "GRPC" };
        let path = dir.join(format!("{node}.json"));
        std::fs::write(&path, ads_bootstrap(free_addr(), xds, api_type, node))?;
        processes.0.push(
            Command::new(args.bin_dir.join("sluice"))
                .arg("-c")
                .arg(&path)
                .args(["--log-level", "warn"])
                .stdin(Stdio::null())
                .spawn()
                .context("start sluice")?,
        );
    }
    let mut watch = api_client
        .watch_nodes(ListNodesRequest {})
        .await?
        .into_inner();
    let file = dir.join("resources.json");
    let mut previous: Option<String> = None;
    let mut samples = Vec::new();
    // Round 0 attaches the nodes and warms everything up; it is not counted.
    for round in 0..=args.rounds {
        tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
        // Round 0 adds the listener; later rounds change its route table only.
        std::fs::write(&file, xds_resources(listener, upstream, &round.to_string()))?;
        let started = Instant::now();
        apply(&args.bin_dir, api, &token_file, &file)?;
        let deadline = started + Duration::from_secs(10);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let view = tokio::time::timeout(remaining, watch.message())
                .await
                .context("round timed out")??
                .context("watch ended")?;
            if let Some(version) = common_listener_ack(&view, &nodes) {
                if previous.as_ref() != Some(&version) {
                    if round > 0 {
                        samples.push(started.elapsed());
                    }
                    previous = Some(version);
                    break;
                }
            }
        }
    }
    let rss = rss_of(cp_pid) as f64 / (1024.0 * 1024.0);
    drop(processes);
    let _ = std::fs::remove_dir_all(&dir);
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pick = |q: f64| ms(samples[((samples.len() - 1) as f64 * q).round() as usize]);
    // The JSON line on stdout is this tool's whole output.
    use std::io::Write;
    writeln!(
        std::io::stdout(),
        "{}",
        json!({
            "rounds": samples.len(),
            "apply_to_last_ack_ms": { "min": pick(0.0), "median": pick(0.5), "p90": pick(0.9), "max": pick(1.0) },
            "cp_rss_mb": rss,
            "nodes": 3,
            "debounce_ms": args.debounce_ms,
        })
    )?;
    Ok(())
}
