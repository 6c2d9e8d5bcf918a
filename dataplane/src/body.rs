//! The one body type every request and response is carried in: a boxed stream of frames,
//! so hyper's `Incoming` bodies stream through unbuffered in both directions.

use std::future::Future;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Errors a body can fail with, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming body of either direction.
pub type Body = BoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body from bytes held in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Streams hyper's incoming body as a [`Body`].
pub fn incoming(body: hyper::body::Incoming) -> Body {
    body.map_err(|e| Box::new(e) as BoxError).boxed()
}

pin_project_lite::pin_project! {
    /// A body that holds `guard` until the stream ends (or the body is dropped): keeps
    /// in-flight counters and least-request state true for streamed responses.
    pub struct Guarded<G> {
        #[pin]
        inner: Body,
        guard: Option<G>,
    }
}

impl<G> Guarded<G> {
    /// Wraps `inner`, holding `guard` until it ends.
    pub fn new(inner: Body, guard: G) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<G> http_body::Body for Guarded<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let result = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        if !matches!(result, Some(Ok(_))) || this.inner.is_end_stream() {
            this.guard.take();
        }
        std::task::Poll::Ready(result)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A stream's idle clock (`stream_idle_timeout`): data on the request body touches it;
/// [`IdleTimer::expired`] resolves once it has not been touched for the timeout.
pub struct IdleTimer {
    origin: tokio::time::Instant,
    /// Nanoseconds after `origin` of the last activity.
    last: std::sync::atomic::AtomicU64,
    timeout: std::time::Duration,
}

impl IdleTimer {
    pub fn new(timeout: std::time::Duration) -> Self {
        Self {
            origin: tokio::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
            timeout,
        }
    }

    /// Records activity now.
    pub fn touch(&self) {
        let nanos = self.origin.elapsed().as_nanos() as u64;
        self.last.store(nanos, std::sync::atomic::Ordering::Relaxed);
    }

    /// Resolves after `timeout` without activity.
    pub async fn expired(&self) {
        loop {
            let last = self.last.load(std::sync::atomic::Ordering::Relaxed);
            let at = self.origin + std::time::Duration::from_nanos(last) + self.timeout;
            tokio::time::sleep_until(at).await;
            if self.last.load(std::sync::atomic::Ordering::Relaxed) == last {
                return;
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A request body that touches an [`IdleTimer`] with every frame.
    pub struct Touching {
        #[pin]
        inner: Body,
        idle: std::sync::Arc<IdleTimer>,
    }
}

impl Touching {
    pub fn new(inner: Body, idle: std::sync::Arc<IdleTimer>) -> Self {
        Self { inner, idle }
    }
}

impl http_body::Body for Touching {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        this.idle.touch();
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A response body that fails when its timer fires: at a fixed deadline
    /// (`max_stream_duration`), or after a stretch without a frame (the stream idle
    /// timeout once the response has started). hyper then resets the stream, as Envoy does.
    pub struct Timed {
        #[pin]
        inner: Body,
        #[pin]
        timer: tokio::time::Sleep,
        // Set for an idle timer: each frame pushes the timer this far out.
        idle: Option<std::time::Duration>,
        reason: &'static str,
    }
}

impl Timed {
    /// Fails at `at` whatever flows.
    pub fn deadline(inner: Body, at: tokio::time::Instant) -> Self {
        Self {
            inner,
            timer: tokio::time::sleep_until(at),
            idle: None,
            reason: "max stream duration reached",
        }
    }

    /// Fails after `timeout` without a frame.
    pub fn idle(inner: Body, timeout: std::time::Duration) -> Self {
        Self {
            inner,
            timer: tokio::time::sleep(timeout),
            idle: Some(timeout),
            reason: "stream idle timeout",
        }
    }
}

impl http_body::Body for Timed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let std::task::Poll::Ready(frame) = this.inner.poll_frame(cx) {
            if let Some(timeout) = this.idle {
                this.timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + *timeout);
            }
            return std::task::Poll::Ready(frame);
        }
        std::task::ready!(this.timer.poll(cx));
        std::task::Poll::Ready(Some(Err((*this.reason).into())))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Fires once when a request body has been fully received (or failed): Envoy starts the
/// route timeout at the end of the downstream request, not at its first byte.
#[derive(Debug, Default)]
pub struct EndOfStream {
    done: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl EndOfStream {
    /// Marks the body complete and wakes the waiter.
    pub fn fire(&self) {
        if !self.done.swap(true, std::sync::atomic::Ordering::AcqRel) {
            // Wakes every `wait` whose `Notified` exists; later ones see `done` first.
            self.notify.notify_waiters();
        }
    }

    /// Whether the body is complete.
    pub fn is_done(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves once the body is complete.
    pub async fn wait(&self) {
        while !self.done.load(std::sync::atomic::Ordering::Acquire) {
            let notified = self.notify.notified();
            if self.done.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// A guard that fires an [`EndOfStream`] when the wrapped body ends.
#[derive(Debug)]
pub struct FireOnDrop(pub std::sync::Arc<EndOfStream>);

impl Drop for FireOnDrop {
    fn drop(&mut self) {
        self.0.fire();
    }
}
