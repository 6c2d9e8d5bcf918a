//! Per-connection bookkeeping shared between the connection task (which enforces the
//! header-read and idle timeouts) and the requests it serves.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the timeout monitor needs to know about a connection, updated lock-free.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Requests whose response has not finished.
    pub active: AtomicUsize,
    /// Requests whose headers were parsed, ever.
    pub started: AtomicU64,
    /// Bytes arrived while no request was active: a request head is being read.
    pub head_pending: AtomicBool,
    /// Read or write events, ever (for idle detection without clock reads per I/O).
    pub io_events: AtomicU64,
}

impl ConnState {
    /// Records that a request's headers were parsed.
    pub fn request_started(self: &Arc<Self>) -> ActiveRequest {
        self.head_pending.store(false, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(self.clone())
    }
}

/// Marks a request active until dropped (when its response body finishes).
#[derive(Debug)]
pub struct ActiveRequest(Arc<ConnState>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A socket that reports its activity to a [`ConnState`].
    pub struct TrackedIo<S> {
        #[pin]
        inner: S,
        state: Arc<ConnState>,
    }
}

impl<S> TrackedIo<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, state: Arc<ConnState>) -> Self {
        Self { inner, state }
    }
}

impl<S: AsyncRead> AsyncRead for TrackedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.state.io_events.fetch_add(1, Ordering::Relaxed);
            if this.state.active.load(Ordering::Relaxed) == 0 {
                this.state.head_pending.store(true, Ordering::Relaxed);
            }
        }
        result
    }
}

impl<S: AsyncWrite> AsyncWrite for TrackedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        this.state.io_events.fetch_add(1, Ordering::Relaxed);
        this.inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        this.state.io_events.fetch_add(1, Ordering::Relaxed);
        this.inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
