//! Real gRPC processes from the `grpcio` wheel the test command installs into `.venv-grpc`:
//! a health-service server, and a proxyless client whose channel is configured over xDS.
//! Both are stopped by PID when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
}

/// The venv's Python, or an error saying how to get it.
fn python() -> anyhow::Result<PathBuf> {
    let python = root().join(".venv-grpc/bin/python");
    if !python.is_file() {
        bail!(
            "{} missing: run tests/run.sh, which installs grpcio",
            python.display()
        );
    }
    Ok(python)
}

fn script(name: &str) -> PathBuf {
    root().join("tests/grpc").join(name)
}

/// A process whose stdout lines arrive on a channel.
pub struct Lines {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Lines {
    fn spawn(mut command: Command) -> anyhow::Result<Self> {
        let mut child = command
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .context("spawn python")?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self { child, lines })
    }

    /// Waits up to `timeout` for the line `expected`.
    pub fn wait_for(&self, expected: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == expected => return Ok(()),
                Ok(_) => continue,
                Err(_) => bail!("no {expected:?} within {timeout:?}"),
            }
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a gRPC server on `addr` whose health service answers `status` (e.g. `SERVING`).
pub fn health_server(addr: SocketAddr, status: &str) -> anyhow::Result<Lines> {
    let mut command = Command::new(python()?);
    command
        .arg(script("health_server.py"))
        .args([&addr.port().to_string(), status, "120"]);
    let server = Lines::spawn(command)?;
    server.wait_for("ready", Duration::from_secs(20))?;
    Ok(server)
}

/// Starts a proxyless client of `xds:///target`, bootstrapped from `bootstrap` (gRPC's
/// xDS bootstrap JSON), that prints `seen STATUS` for each of `statuses` in order.
pub fn proxyless_client(
    bootstrap: &Path,
    target: &str,
    statuses: &[&str],
    timeout: Duration,
) -> anyhow::Result<Lines> {
    let mut command = Command::new(python()?);
    command
        .arg(script("proxyless_client.py"))
        .args([target, &statuses.join(","), &timeout.as_secs().to_string()])
        .env("GRPC_XDS_BOOTSTRAP", bootstrap);
    Lines::spawn(command)
}
