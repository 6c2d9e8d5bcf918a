//! A real `sluice` process started from a bootstrap text, stopped (by PID) when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::client::HttpClient;

/// Path of a workspace binary: `$SLUICE_BIN_DIR/NAME`, else beside the test executable's
/// `deps/` directory (the target profile directory cargo built it into).
pub fn binary(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("SLUICE_BIN_DIR") {
        return Path::new(&dir).join(name);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    profile_dir.join(name)
}

/// Runs `sluice --mode validate` on `bootstrap` (written to a temporary file): whether it
/// accepted the config, and what it printed on stderr.
pub fn validate(bootstrap: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("bootstrap.json");
    std::fs::write(&path, bootstrap).expect("write the bootstrap");
    let out = Command::new(binary("sluice"))
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .output()
        .expect("run sluice --mode validate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `sluice`.
pub struct Sluice {
    child: Child,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sluice {
    /// Starts `sluice -c` with `bootstrap` (which must put the admin server on `admin`)
    /// and waits until `/ready` answers.
    pub async fn start(bootstrap: &str, admin: SocketAddr) -> anyhow::Result<Self> {
        Self::start_with_args(bootstrap, admin, &[]).await
    }

    /// As [`Sluice::start`], with extra command-line arguments.
    pub async fn start_with_args(
        bootstrap: &str,
        admin: SocketAddr,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::spawn(bootstrap, admin, args, Stdio::inherit()).await
    }

    /// As [`Sluice::start`], with its log (stderr) written to `log`.
    pub async fn start_logged(
        bootstrap: &str,
        admin: SocketAddr,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let file = std::fs::File::create(log)?;
        Self::spawn(bootstrap, admin, &[], Stdio::from(file)).await
    }

    async fn spawn(
        bootstrap: &str,
        admin: SocketAddr,
        args: &[&str],
        stderr: Stdio,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("bootstrap.yaml");
        std::fs::write(&config_path, bootstrap)?;
        let bin = binary("sluice");
        if !bin.exists() {
            bail!(
                "{} not found: build it first (cargo build --bins)",
                bin.display()
            );
        }
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", "2", "--drain-time-s", "2"])
            .args(args)
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let mut sluice = Self {
            child,
            admin,
            config_path,
            _dir: dir,
        };
        sluice.wait_ready().await?;
        Ok(sluice)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = HttpClient::http1();
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait()? {
                bail!("sluice exited early: {status}");
            }
            if let Ok(r) = client.get(self.admin, "admin", "/ready", &[]).await {
                if r.status == 200 {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("sluice did not become ready")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: i32) {
        let _ = kill(self.child.id(), signal);
    }

    /// Writes a new bootstrap and sends SIGHUP.
    pub fn reload(&self, bootstrap: &str) -> anyhow::Result<()> {
        std::fs::write(&self.config_path, bootstrap)?;
        self.signal(libc::SIGHUP);
        Ok(())
    }

    /// `GET` an admin path.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<String> {
        let r = HttpClient::http1()
            .get(self.admin, "admin", path, &[])
            .await?;
        Ok(String::from_utf8_lossy(&r.body).into_owned())
    }

    /// The value of one `/stats` counter (0 when absent).
    pub async fn stat(&self, name: &str) -> anyhow::Result<i64> {
        let stats = self.admin_get("/stats").await?;
        Ok(crate::client::stat_value(&stats, name).unwrap_or(0))
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("sluice did not exit");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kill(pid: u32, signal: i32) -> std::io::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}

/// Resident set size of a process in bytes (VmRSS).
pub fn rss_of(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS:")
}

/// Peak resident set size of a process in bytes (VmHWM).
pub fn peak_rss_of(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM:")
}

/// A `kB` line of `/proc/PID/status`, in bytes (0 when absent).
fn status_bytes(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A running `sluice-cp` with its own store directory; serves the resources written to its
/// file when started with some.
pub struct ControlPlane {
    child: Child,
    pub xds: SocketAddr,
    pub api: SocketAddr,
    pub resources_path: PathBuf,
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts `sluice-cp` on `xds` with `resources` (YAML documents) and waits for its port.
    pub async fn start(resources: &str, xds: SocketAddr) -> anyhow::Result<Self> {
        Self::start_with_args(resources, xds, &[]).await
    }

    /// As [`ControlPlane::start`], with extra command-line arguments.
    pub async fn start_with_args(
        resources: &str,
        xds: SocketAddr,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let resources_path = dir.path().join("resources.yaml");
        std::fs::write(&resources_path, resources)?;
        let mut all: Vec<String> = vec!["--resources".into(), resources_path.display().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        Self::launch(dir, resources_path, xds, all).await
    }

    /// Starts `sluice-cp` with an empty store and no resources file: everything comes
    /// through the operator API.
    pub async fn start_empty(xds: SocketAddr) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let resources_path = dir.path().join("unused.yaml");
        Self::launch(dir, resources_path, xds, Vec::new()).await
    }

    async fn launch(
        dir: tempfile::TempDir,
        resources_path: PathBuf,
        xds: SocketAddr,
        args: Vec<String>,
    ) -> anyhow::Result<Self> {
        let api = crate::free_addr();
        let child = Self::spawn(dir.path(), xds, api, &args)?;
        let mut cp = Self {
            child,
            xds,
            api,
            resources_path,
            args,
            _dir: dir,
        };
        cp.wait_listening().await?;
        Ok(cp)
    }

    fn spawn(
        dir: &Path,
        xds: SocketAddr,
        api: SocketAddr,
        args: &[String],
    ) -> anyhow::Result<Child> {
        let bin = binary("sluice-cp");
        if !bin.exists() {
            bail!(
                "{} not found: build it first (cargo build --bins)",
                bin.display()
            );
        }
        Command::new(&bin)
            .arg("--xds-listen")
            .arg(xds.to_string())
            .arg("--api-listen")
            .arg(api.to_string())
            .arg("--store")
            .arg(format!("file:{}", dir.join("store").display()))
            .args(["--log-level", "info"])
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))
    }

    async fn wait_listening(&mut self) -> anyhow::Result<()> {
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait()? {
                bail!("sluice-cp exited early: {status}");
            }
            if tokio::net::TcpStream::connect(self.xds).await.is_ok()
                && tokio::net::TcpStream::connect(self.api).await.is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        bail!("sluice-cp did not start listening")
    }

    /// SIGKILLs the process and starts it again on the same store and addresses.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.start_again().await
    }

    /// SIGKILLs the process (and reaps it); [`ControlPlane::start_again`] brings it back.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the process again on the same store and addresses after [`ControlPlane::kill`].
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.child = Self::spawn(self._dir.path(), self.xds, self.api, &self.args)?;
        self.wait_listening().await
    }

    /// `sluicectl` pointed at this control plane with the write token it generated.
    pub fn sluicectl_command(&self) -> Command {
        let mut command = Command::new(binary("sluicectl"));
        command
            .arg("--server")
            .arg(format!("http://{}", self.api))
            .env("SLUICE_TOKEN_FILE", self.token_file());
        command
    }

    /// The write token `sluice-cp` generated into its store.
    pub fn token_file(&self) -> PathBuf {
        self._dir.path().join("store").join("admin-token")
    }

    /// Runs `sluicectl --server <this API> ARGS`, returning (success, stdout, stderr).
    pub fn sluicectl(&self, args: &[&str]) -> (bool, String, String) {
        let out = self
            .sluicectl_command()
            .args(args)
            .output()
            .expect("run sluicectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts `sluicectl --server <this API> ARGS` without waiting for it (for many at once).
    pub fn sluicectl_spawn(&self, args: &[&str]) -> Child {
        self.sluicectl_command()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sluicectl")
    }

    /// Every revision file in the store, oldest first, as JSON (what a restart loads).
    pub fn stored_revisions(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let dir = self._dir.path().join("store").join("revisions");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|p| {
                let bytes = std::fs::read(p)?;
                serde_json::from_slice(&bytes).with_context(|| format!("{}", p.display()))
            })
            .collect()
    }

    /// Starts `sluicectl --server <this API> ARGS` for a command that keeps printing
    /// (`nodes --watch`); its output is collected as it arrives.
    pub fn sluicectl_watch(&self, args: &[&str]) -> Watching {
        let mut child = self
            .sluicectl_command()
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("run sluicectl");
        let output = Arc::new(Mutex::new(String::new()));
        let mut stdout = child.stdout.take().expect("piped stdout");
        let sink = output.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buffer) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Watching { child, output }
    }

    /// Replaces the resources file and sends SIGHUP.
    pub fn update(&self, resources: &str) -> anyhow::Result<()> {
        std::fs::write(&self.resources_path, resources)?;
        Ok(kill(self.child.id(), libc::SIGHUP)?)
    }
}

/// A long-running `sluicectl` (see [`ControlPlane::sluicectl_watch`]); killed by PID when
/// dropped.
pub struct Watching {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Watching {
    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
