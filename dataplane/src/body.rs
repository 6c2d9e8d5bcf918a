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

/// Streams a downstream or upstream body from hyper as a [`Body`].
pub fn incoming(
    body: impl http_body::Body<Data = Bytes, Error = hyper::Error> + Send + Sync + 'static,
) -> Body {
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

pin_project_lite::pin_project! {
    /// A response body that counts the bytes it passes (`%BYTES_SENT%`).
    pub struct Counted {
        #[pin]
        inner: Body,
        sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    }
}

impl Counted {
    pub fn new(inner: Body, sent: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        Self { inner, sent }
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(Ok(Some(data))) = result.as_ref().map(|f| f.as_ref().map(|f| f.data_ref())) {
            this.sent
                .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
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

/// `hint` with `n` more bytes held in front of it.
fn plus(mut hint: http_body::SizeHint, n: u64) -> http_body::SizeHint {
    if let Some(upper) = hint.upper() {
        hint.set_upper(upper + n);
    }
    hint.set_lower(hint.lower() + n);
    hint
}

/// The downstream request body as the router receives it: hyper's stream, after whatever
/// part of it a filter read (the request-body phase: an authorization check that sends the
/// body). What was read is replayed first, so the upstream sees the body unchanged — unless
/// a filter transformed it ([`Downstream::wrap`], a decompressor).
pub struct Downstream {
    /// Data a filter read, not yet handed on.
    head: Option<Bytes>,
    /// Trailers a filter read (the stream had ended).
    trailers: Option<http::HeaderMap>,
    rest: Option<Rest>,
    /// Bytes received from the client, for the access logs.
    received: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

/// What is left of the body: straight from hyper, or through a filter's transformation.
enum Rest {
    Wire(hyper::body::Incoming),
    Wrapped(Body),
}

impl Rest {
    fn is_end_stream(&self) -> bool {
        match self {
            Rest::Wire(b) => http_body::Body::is_end_stream(b),
            Rest::Wrapped(b) => http_body::Body::is_end_stream(b),
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self {
            Rest::Wire(b) => http_body::Body::poll_frame(std::pin::Pin::new(b), cx)
                .map_err(|e| Box::new(e) as BoxError),
            Rest::Wrapped(b) => http_body::Body::poll_frame(std::pin::Pin::new(b), cx),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Rest::Wire(b) => http_body::Body::size_hint(b),
            Rest::Wrapped(b) => http_body::Body::size_hint(b),
        }
    }
}

impl Downstream {
    pub fn new(incoming: hyper::body::Incoming) -> Self {
        Self {
            head: None,
            trailers: None,
            rest: Some(Rest::Wire(incoming)),
            received: None,
        }
    }

    /// Counts the bytes that arrive from now on into `counter`.
    pub fn count_into(&mut self, counter: std::sync::Arc<std::sync::atomic::AtomicU64>) {
        self.received = Some(counter);
    }

    /// Passes the rest of the body (what a filter read included) through `transform`; the
    /// bytes received are still counted as they arrive, before it.
    pub fn wrap(&mut self, transform: impl FnOnce(Body) -> Body) {
        let inner = Downstream {
            head: self.head.take(),
            trailers: self.trailers.take(),
            rest: self.rest.take(),
            received: self.received.take(),
        };
        self.rest = Some(Rest::Wrapped(transform(http_body_util::BodyExt::boxed(
            inner,
        ))));
    }

    fn count(&self, bytes: usize) {
        if let Some(received) = &self.received {
            received.fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// What has been read so far.
    pub fn buffered(&self) -> &[u8] {
        self.head.as_deref().unwrap_or_default()
    }

    /// Whether the whole body has been read.
    pub fn is_complete(&self) -> bool {
        self.rest.as_ref().is_none_or(Rest::is_end_stream)
    }

    /// Reads the body until it ends or `limit` bytes are held (each frame touching
    /// `idle`); returns whether it ended.
    pub async fn read_up_to(
        &mut self,
        limit: usize,
        idle: Option<&IdleTimer>,
    ) -> Result<bool, BoxError> {
        let mut held = bytes::BytesMut::from(self.head.take().unwrap_or_default());
        let result = loop {
            let Some(rest) = self.rest.as_mut().filter(|r| !r.is_end_stream()) else {
                break Ok(true);
            };
            if held.len() >= limit {
                break Ok(false);
            }
            match std::future::poll_fn(|cx| rest.poll_frame(cx)).await {
                None => {
                    self.rest = None;
                    break Ok(true);
                }
                Some(Err(e)) => break Err(e),
                Some(Ok(frame)) => {
                    if let Some(idle) = idle {
                        idle.touch();
                    }
                    match frame.into_data() {
                        Ok(data) => {
                            self.count(data.len());
                            held.extend_from_slice(&data);
                        }
                        Err(frame) => {
                            self.trailers = frame.into_trailers().ok();
                            self.rest = None;
                        }
                    }
                }
            }
        };
        if !held.is_empty() {
            self.head = Some(held.freeze());
        }
        result
    }
}

impl http_body::Body for Downstream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        if let Some(head) = self.head.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(head))));
        }
        if let Some(rest) = self.rest.as_mut() {
            match std::task::ready!(rest.poll_frame(cx)) {
                None => self.rest = None,
                frame => {
                    if let Some(data) = frame.as_ref().and_then(|f| f.as_ref().ok()?.data_ref()) {
                        self.count(data.len());
                    }
                    return std::task::Poll::Ready(frame);
                }
            }
        }
        std::task::Poll::Ready(
            self.trailers
                .take()
                .map(|t| Ok(http_body::Frame::trailers(t))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.trailers.is_none() && self.is_complete()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let held = self.head.as_ref().map_or(0, |h| h.len() as u64);
        let rest = self
            .rest
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), Rest::size_hint);
        plus(rest, held)
    }
}

pin_project_lite::pin_project! {
    /// A response body sent no faster than a rate (a fault's `response_rate_limit`), as
    /// Envoy's stream rate limiter: a token bucket of one second's bytes, full at the
    /// start and refilled continuously; when it is empty the body waits a fill interval.
    pub struct Throttled {
        #[pin]
        inner: Body,
        // Data taken from `inner`, not yet sent.
        pending: Bytes,
        // Trailers that wait for `pending` to drain.
        trailers: Option<http::HeaderMap>,
        // Bytes per second, and the bucket's capacity.
        rate: f64,
        tokens: f64,
        filled_at: tokio::time::Instant,
        #[pin]
        wait: tokio::time::Sleep,
        waiting: bool,
        ended: bool,
    }
}

/// How long an empty bucket waits before sending again (Envoy's fill interval).
const THROTTLE_FILL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

impl Throttled {
    pub fn new(inner: Body, kib_per_second: u64) -> Self {
        let rate = kib_per_second as f64 * 1024.0;
        Self {
            inner,
            pending: Bytes::new(),
            trailers: None,
            rate,
            tokens: rate,
            filled_at: tokio::time::Instant::now(),
            wait: tokio::time::sleep(std::time::Duration::ZERO),
            waiting: false,
            ended: false,
        }
    }
}

impl http_body::Body for Throttled {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let mut this = self.project();
        while this.pending.is_empty() && !*this.ended {
            match std::task::ready!(this.inner.as_mut().poll_frame(cx)) {
                None => *this.ended = true,
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => *this.pending = data,
                    Err(frame) => {
                        *this.trailers = frame.into_trailers().ok();
                        *this.ended = true;
                    }
                },
            }
        }
        if this.pending.is_empty() {
            return Poll::Ready(
                this.trailers
                    .take()
                    .map(|t| Ok(http_body::Frame::trailers(t))),
            );
        }
        loop {
            if *this.waiting {
                std::task::ready!(this.wait.as_mut().poll(cx));
                *this.waiting = false;
            }
            let now = tokio::time::Instant::now();
            let refill = now.duration_since(*this.filled_at).as_secs_f64() * *this.rate;
            *this.tokens = (*this.tokens + refill).min(*this.rate);
            *this.filled_at = now;
            let n = (*this.tokens as usize).min(this.pending.len());
            if n > 0 {
                *this.tokens -= n as f64;
                return Poll::Ready(Some(Ok(http_body::Frame::data(this.pending.split_to(n)))));
            }
            this.wait.as_mut().reset(now + THROTTLE_FILL_INTERVAL);
            *this.waiting = true;
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.pending.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        plus(self.inner.size_hint(), self.pending.len() as u64)
    }
}

pin_project_lite::pin_project! {
    /// One side of a spliced (upgraded) connection: bytes read from it touch the stream's
    /// idle clock.
    pub struct TouchingIo<T> {
        #[pin]
        inner: T,
        idle: Option<std::sync::Arc<IdleTimer>>,
    }
}

impl<T> TouchingIo<T> {
    pub fn new(inner: T, idle: Option<std::sync::Arc<IdleTimer>>) -> Self {
        Self { inner, idle }
    }
}

impl<T: tokio::io::AsyncRead> tokio::io::AsyncRead for TouchingIo<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            if let Some(idle) = this.idle {
                idle.touch();
            }
        }
        result
    }
}

impl<T: tokio::io::AsyncWrite> tokio::io::AsyncWrite for TouchingIo<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of `body` with the (paused, virtual) time each arrived, from the start.
    async fn timed_frames(body: Throttled) -> Vec<(usize, std::time::Duration)> {
        let mut body = std::pin::pin!(body);
        let start = tokio::time::Instant::now();
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            out.push((data.len(), start.elapsed()));
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_body_sends_a_second_of_bytes_then_the_rate() {
        // 1 KiB/s: the full bucket sends the first KiB at once, the rest follows at the rate.
        let body = Throttled::new(full(vec![b'x'; 3 * 1024]), 1);
        let frames = timed_frames(body).await;
        let total: usize = frames.iter().map(|(n, _)| n).sum();
        assert_eq!(total, 3 * 1024, "every byte arrives");
        assert_eq!(frames[0], (1024, std::time::Duration::ZERO));
        let last = frames.last().unwrap().1;
        assert!(
            last >= std::time::Duration::from_millis(1950)
                && last <= std::time::Duration::from_millis(2100),
            "the other 2 KiB take 2 s: {frames:?}"
        );
    }
}
