//! Per-connection bookkeeping shared between the connection task (which enforces the
//! header-read and idle timeouts) and the requests it serves, and the stream wrapper that
//! feeds it. The 408 of a header timeout is written through that same stream (so it is
//! encrypted on a TLS connection), never on a duplicate of the socket.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

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
    /// The request head being read carries both `Content-Length` and
    /// `Transfer-Encoding`; the request is refused with 400 (hyper would silently prefer
    /// `Transfer-Encoding`, Envoy refuses, and so do we).
    pub conflicting_framing: AtomicBool,
    /// The connection spoke the HTTP/2 preface (header timeouts are HTTP/1's).
    pub http2: AtomicBool,
    /// Set by the connection task when the request headers took too long: the stream
    /// answers 408 on hyper's next read, then reports end of stream.
    pub header_timed_out: AtomicBool,
    /// A request asked the connection to drain (the overload manager's
    /// disable_http_keepalive on HTTP/2); the connection task sends GOAWAY.
    drain_requested: AtomicBool,
    pub drain: Notify,
}

impl ConnState {
    /// Asks the connection task to drain the connection; false when already asked.
    pub fn request_drain(&self) -> bool {
        let first = !self.drain_requested.swap(true, Ordering::Relaxed);
        if first {
            self.drain.notify_one();
        }
        first
    }

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

/// Longest request head the framing inspector buffers.
const MAX_INSPECTED_HEAD: usize = 64 * 1024;

/// The response to a request whose headers did not arrive in time.
const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 15\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nrequest timeout";

/// Progress of writing [`REQUEST_TIMEOUT`].
#[derive(Debug, Clone, Copy)]
enum TimeoutReply {
    Writing(usize),
    Flushing,
    ShuttingDown,
    Done,
}

pin_project_lite::pin_project! {
    /// A stream that reports its activity to a [`ConnState`], inspects HTTP/1 request
    /// heads for conflicting framing headers, and answers a header timeout.
    pub struct TrackedIo<S> {
        #[pin]
        inner: S,
        state: Arc<ConnState>,
        head: HeadInspector,
        reply: TimeoutReply,
    }
}

impl<S> TrackedIo<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, state: Arc<ConnState>) -> Self {
        Self {
            inner,
            state,
            head: HeadInspector::default(),
            reply: TimeoutReply::Writing(0),
        }
    }
}

/// Collects the bytes of the next HTTP/1 request head and parses it with `httparse` once
/// complete. Only the framing headers are looked at; hyper remains the parser of record.
#[derive(Debug, Default)]
struct HeadInspector {
    buffer: Vec<u8>,
    /// `started` value of the last request whose head was inspected.
    inspected_for: Option<u64>,
    /// Not HTTP/1 (the HTTP/2 preface): stop inspecting.
    disabled: bool,
}

impl HeadInspector {
    fn observe(&mut self, state: &ConnState, bytes: &[u8]) {
        if self.disabled || state.active.load(Ordering::Relaxed) != 0 {
            return;
        }
        let started = state.started.load(Ordering::Relaxed);
        if self.inspected_for == Some(started) {
            return;
        }
        if self.buffer.is_empty() && bytes.starts_with(b"PRI * HTTP/2") {
            self.disabled = true;
            state.http2.store(true, Ordering::Relaxed);
            return;
        }
        // Most heads arrive in one read: parse them in place; buffer only split heads.
        let head: &[u8] = if self.buffer.is_empty() {
            bytes
        } else {
            self.buffer.extend_from_slice(bytes);
            &self.buffer
        };
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(head) {
            Ok(httparse::Status::Partial) if head.len() < MAX_INSPECTED_HEAD => {
                if self.buffer.is_empty() {
                    self.buffer.extend_from_slice(bytes);
                }
                return;
            }
            Ok(httparse::Status::Complete(_)) => {
                let has = |name: &str| {
                    request
                        .headers
                        .iter()
                        .any(|h| h.name.eq_ignore_ascii_case(name))
                };
                if has("content-length") && has("transfer-encoding") {
                    state.conflicting_framing.store(true, Ordering::Relaxed);
                }
            }
            // Too long or malformed: hyper answers those itself (431/400).
            _ => {}
        }
        self.buffer.clear();
        self.inspected_for = Some(started);
    }
}

impl<S: AsyncRead + AsyncWrite> AsyncRead for TrackedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut this = self.project();
        if this.state.header_timed_out.load(Ordering::Relaxed) {
            // hyper is waiting for the rest of a head: answer 408 through this stream,
            // then end it, so hyper closes the connection.
            loop {
                *this.reply = match *this.reply {
                    TimeoutReply::Writing(sent) => {
                        match ready!(this.inner.as_mut().poll_write(cx, &REQUEST_TIMEOUT[sent..])) {
                            Ok(n) if n > 0 && sent + n < REQUEST_TIMEOUT.len() => {
                                TimeoutReply::Writing(sent + n)
                            }
                            Ok(n) if n > 0 => TimeoutReply::Flushing,
                            _ => TimeoutReply::Done,
                        }
                    }
                    TimeoutReply::Flushing => match ready!(this.inner.as_mut().poll_flush(cx)) {
                        Ok(()) => TimeoutReply::ShuttingDown,
                        Err(_) => TimeoutReply::Done,
                    },
                    TimeoutReply::ShuttingDown => {
                        let _ = ready!(this.inner.as_mut().poll_shutdown(cx));
                        TimeoutReply::Done
                    }
                    TimeoutReply::Done => return Poll::Ready(Ok(())),
                };
            }
        }
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.head.observe(this.state, &buf.filled()[before..]);
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
