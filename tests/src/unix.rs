//! A Unix socket in front of a TCP server, for tests of Unix socket endpoints: every
//! connection accepted on the socket is spliced to the TCP address, and counted, so a
//! test sees that the proxy really dialled the socket.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::{TcpStream, UnixListener};
use tokio::task::JoinHandle;

/// A running relay; stops (and removes a path socket) when dropped.
pub struct UnixRelay {
    accepted: Arc<AtomicU64>,
    path: Option<std::path::PathBuf>,
    task: JoinHandle<()>,
}

impl UnixRelay {
    /// Listens on `socket` — a path, or `@name` in Linux's abstract namespace, as Envoy
    /// spells it — and relays each connection to `target`.
    pub fn start(socket: &str, target: SocketAddr) -> std::io::Result<Self> {
        let (listener, path) = match socket.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                let listener = std::os::unix::net::UnixListener::bind_addr(&address)?;
                listener.set_nonblocking(true)?;
                (UnixListener::from_std(listener)?, None)
            }
            None => (
                UnixListener::bind(socket)?,
                Some(Path::new(socket).to_path_buf()),
            ),
        };
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut unix, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    if let Ok(mut tcp) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut unix, &mut tcp).await;
                    }
                });
            }
        });
        Ok(Self {
            accepted,
            path,
            task,
        })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for UnixRelay {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// One HTTP/1.1 GET over a new connection to the Unix socket `path`: the status and the
/// body.
pub async fn get(path: &str, host: &str, uri: &str) -> anyhow::Result<(u16, bytes::Bytes)> {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::UnixStream::connect(path).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let request = http::Request::get(uri)
        .header("host", host)
        .body(Empty::<bytes::Bytes>::new())?;
    let response = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        sender.send_request(request),
    )
    .await??;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    connection.abort();
    Ok((status, body))
}
