//! `envoy.filters.http.decompressor`: undoes gzip, brotli or zstd on request and response
//! bodies whose `Content-Encoding` starts with the library's encoding, as Envoy's filter:
//! the encoding comes off the header with `Content-Length`, `no-transform` is respected
//! unless told otherwise, and responses are advertised upstream in `Accept-Encoding`.
//!
//! Bodies stream through a bounded output buffer: a frame that inflates a lot comes out as
//! several frames, so a small hostile body never makes a large allocation; gzip's
//! `max_inflate_ratio` cuts a body off (reset) once it inflates past the ratio.

use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use xds_types::http_filter::decompressor::{DecoderCodec, Decompressor, Direction};

use crate::body::{Body, BoxError};
use crate::http::ctx::RequestCtx;
use crate::http::filter::{Decision, HttpFilter, PerRoute};
use crate::stats::Stats;

/// The most a decoder writes per step (and per body frame it yields).
const OUTPUT_CHUNK: usize = 64 * 1024;

/// The filter and its counters per direction.
pub struct DecompressorFilter {
    config: Arc<Decompressor>,
    request: Counters,
    response: Counters,
}

/// Envoy's counters of one direction, under `decompressor.<name>.<library>.<direction>.`.
#[derive(Clone)]
struct Counters {
    decompressed: Counter,
    not_decompressed: Counter,
    total_compressed_bytes: Counter,
    total_uncompressed_bytes: Counter,
}

impl Counters {
    fn new(prefix: &str, hcm_prefix: &str, stats: &Stats) -> Self {
        let at = |n: &str| stats.filter_counter(hcm_prefix, &format!("{prefix}{n}"));
        Self {
            decompressed: at("decompressed"),
            not_decompressed: at("not_decompressed"),
            total_compressed_bytes: at("total_compressed_bytes"),
            total_uncompressed_bytes: at("total_uncompressed_bytes"),
        }
    }
}

/// The decompressor filters (by config address) that undo this response's encoding.
#[derive(Clone, Default)]
struct Decompressing(Vec<usize>);

impl DecompressorFilter {
    pub fn new(config: &Decompressor, hcm_prefix: &str, stats: &Stats) -> Self {
        let base = format!(
            "decompressor.{}.{}.",
            config.name,
            config.codec.stats_prefix()
        );
        Self {
            request: Counters::new(&format!("{base}request."), hcm_prefix, stats),
            response: Counters::new(&format!("{base}response."), hcm_prefix, stats),
            config: Arc::new(config.clone()),
        }
    }

    fn id(&self) -> usize {
        Arc::as_ptr(&self.config) as usize
    }

    /// Whether this direction's body is decompressed: on, not `no-transform` (unless
    /// ignored), and the first listed coding is the library's (any case or spacing).
    fn applies(&self, direction: Direction, headers: &HeaderMap) -> bool {
        let first = headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or("").trim());
        direction.enabled
            && (direction.ignore_no_transform_header || !no_transform(headers))
            && first.is_some_and(|c| c.eq_ignore_ascii_case(self.config.codec.encoding()))
    }
}

/// `body`, decoded with `codec` as it streams.
fn decoding(codec: DecoderCodec, body: Body, counters: &Counters) -> Body {
    let max_ratio = match codec {
        DecoderCodec::Gzip { max_inflate_ratio } => Some(u64::from(max_inflate_ratio)),
        _ => None,
    };
    match Decoder::new(codec) {
        Ok(decoder) => http_body_util::BodyExt::boxed(DecodingBody {
            inner: body,
            decoder: Mutex::new(decoder),
            input: Bytes::new(),
            drain: false,
            finished: false,
            ended: false,
            trailers: None,
            total_in: 0,
            total_out: 0,
            max_ratio,
            compressed: counters.total_compressed_bytes.clone(),
            uncompressed: counters.total_uncompressed_bytes.clone(),
        }),
        Err(e) => {
            // The decoder could not start (out of memory): the body fails rather than
            // going on undecoded under headers that say it is not encoded.
            let failed =
                futures_util::stream::iter([Err::<http_body::Frame<Bytes>, BoxError>(Box::new(e))]);
            http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(failed))
        }
    }
}

fn no_transform(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("no-transform"))
}

/// Takes the first coding off `Content-Encoding` (the header goes when it was the only one).
fn remove_first_coding(headers: &mut HeaderMap) {
    let rest = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(','))
        .map(|(_, rest)| rest.trim().to_string());
    match rest.and_then(|r| HeaderValue::from_str(&r).ok()) {
        Some(rest) => {
            headers.insert(header::CONTENT_ENCODING, rest);
        }
        None => {
            headers.remove(header::CONTENT_ENCODING);
        }
    }
}

impl HttpFilter for DecompressorFilter {
    fn on_request(
        &self,
        ctx: &mut RequestCtx<'_>,
        _per_route: Option<&PerRoute>,
        request: &mut Parts,
    ) -> Decision {
        let encoding = self.config.codec.encoding();
        if self.config.response.enabled && self.config.advertise_accept_encoding {
            let current: Vec<&str> = request
                .headers
                .get_all(header::ACCEPT_ENCODING)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let value = if current.is_empty() {
                encoding.to_string()
            } else {
                format!("{},{encoding}", current.join(","))
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                request.headers.insert(header::ACCEPT_ENCODING, v);
            }
        }
        // As Envoy: a request without a body is not counted either way.
        if !ctx.request_has_body {
            return Decision::Continue;
        }
        if self.applies(self.config.request, &request.headers) {
            self.request.decompressed.inc();
            request.headers.remove(header::CONTENT_LENGTH);
            remove_first_coding(&mut request.headers);
            let (codec, counters) = (self.config.codec, self.request.clone());
            ctx.request_body
                .push(Box::new(move |body| decoding(codec, body, &counters)));
        } else {
            self.request.not_decompressed.inc();
        }
        Decision::Continue
    }

    fn on_response(
        &self,
        ctx: &mut RequestCtx<'_>,
        _per_route: Option<&PerRoute>,
        response: &mut http::response::Parts,
        end_stream: bool,
    ) {
        if end_stream {
            return;
        }
        if self.applies(self.config.response, &response.headers) {
            self.response.decompressed.inc();
            response.headers.remove(header::CONTENT_LENGTH);
            remove_first_coding(&mut response.headers);
            match ctx.state.get_mut::<Decompressing>() {
                Some(d) => d.0.push(self.id()),
                None => {
                    ctx.state.insert(Decompressing(vec![self.id()]));
                }
            }
        } else {
            self.response.not_decompressed.inc();
        }
    }

    fn on_response_body(
        &self,
        ctx: &mut RequestCtx<'_>,
        _per_route: Option<&PerRoute>,
        _response: &http::response::Parts,
        body: Body,
    ) -> Body {
        let mine = ctx
            .state
            .get::<Decompressing>()
            .is_some_and(|d| d.0.contains(&self.id()));
        if mine {
            decoding(self.config.codec, body, &self.response)
        } else {
            body
        }
    }
}

/// One body's decompression state.
enum Decoder {
    Gzip(Box<flate2::Decompress>),
    Brotli(
        Box<
            brotli_decompressor::BrotliState<
                brotli_decompressor::StandardAlloc,
                brotli_decompressor::StandardAlloc,
                brotli_decompressor::StandardAlloc,
            >,
        >,
    ),
    Zstd(Box<zstd::stream::raw::Decoder<'static>>),
}

/// What one decoding step did.
struct Step {
    consumed: usize,
    produced: usize,
    /// The compressed stream is complete (anything after it is ignored).
    finished: bool,
}

impl Decoder {
    fn new(codec: DecoderCodec) -> std::io::Result<Self> {
        use brotli_decompressor::StandardAlloc;
        Ok(match codec {
            DecoderCodec::Gzip { .. } => Decoder::Gzip(Box::new(flate2::Decompress::new_gzip(15))),
            DecoderCodec::Brotli => {
                Decoder::Brotli(Box::new(brotli_decompressor::BrotliState::new(
                    StandardAlloc::default(),
                    StandardAlloc::default(),
                    StandardAlloc::default(),
                )))
            }
            DecoderCodec::Zstd => Decoder::Zstd(Box::new(zstd::stream::raw::Decoder::new()?)),
        })
    }

    /// Decodes from `input` into `output`, as far as either allows.
    fn step(&mut self, input: &[u8], output: &mut [u8]) -> std::io::Result<Step> {
        let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        match self {
            Decoder::Gzip(d) => {
                let (before_in, before_out) = (d.total_in(), d.total_out());
                let status = d
                    .decompress(input, output, flate2::FlushDecompress::None)
                    .map_err(|e| invalid(&e.to_string()))?;
                Ok(Step {
                    consumed: (d.total_in() - before_in) as usize,
                    produced: (d.total_out() - before_out) as usize,
                    finished: status == flate2::Status::StreamEnd,
                })
            }
            Decoder::Brotli(state) => {
                let (mut available_in, mut input_offset) = (input.len(), 0);
                let (mut available_out, mut output_offset, mut total) = (output.len(), 0, 0);
                let result = brotli_decompressor::BrotliDecompressStream(
                    &mut available_in,
                    &mut input_offset,
                    input,
                    &mut available_out,
                    &mut output_offset,
                    output,
                    &mut total,
                    state,
                );
                if matches!(result, brotli_decompressor::BrotliResult::ResultFailure) {
                    return Err(invalid("invalid brotli data"));
                }
                Ok(Step {
                    consumed: input_offset,
                    produced: output_offset,
                    finished: matches!(result, brotli_decompressor::BrotliResult::ResultSuccess),
                })
            }
            Decoder::Zstd(d) => {
                use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                let mut inb = InBuffer::around(input);
                let mut outb = OutBuffer::around(output);
                let hint = d.run(&mut inb, &mut outb)?;
                Ok(Step {
                    consumed: inb.pos(),
                    produced: outb.pos(),
                    finished: hint == 0,
                })
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A body decompressed as it streams.
    struct DecodingBody {
        #[pin]
        inner: Body,
        // In a mutex only so the body is `Sync`; polling has `&mut` and never locks.
        decoder: Mutex<Decoder>,
        // Compressed bytes not yet decoded.
        input: Bytes,
        // The last step filled its output: step again before reading more.
        drain: bool,
        finished: bool,
        ended: bool,
        trailers: Option<HeaderMap>,
        total_in: u64,
        total_out: u64,
        max_ratio: Option<u64>,
        compressed: Counter,
        uncompressed: Counter,
    }
}

impl http_body::Body for DecodingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let mut this = self.project();
        loop {
            if (!this.input.is_empty() || *this.drain) && !*this.finished {
                let decoder = this.decoder.get_mut().unwrap_or_else(|e| e.into_inner());
                let mut out = vec![0u8; OUTPUT_CHUNK];
                let step = decoder
                    .step(this.input, &mut out)
                    .map_err(|e| Box::new(e) as BoxError)?;
                this.input.advance(step.consumed);
                *this.drain = step.produced == out.len();
                *this.finished = step.finished;
                *this.total_out += step.produced as u64;
                this.uncompressed.inc_by(step.produced as u64);
                if let Some(ratio) = *this.max_ratio {
                    if *this.total_out > ratio.saturating_mul((*this.total_in).max(1)) {
                        return Poll::Ready(Some(Err(Box::new(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "body inflates past max_inflate_ratio",
                        )))));
                    }
                }
                if step.produced > 0 {
                    out.truncate(step.produced);
                    return Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(out)))));
                }
                if step.consumed > 0 {
                    continue;
                }
                // No progress: the decoder needs more input than it has; read on.
                *this.drain = false;
            }
            if *this.finished {
                // Whatever follows a complete stream is dropped.
                this.input.clear();
                *this.drain = false;
            }
            if *this.ended {
                // A truncated stream ends with what could be decoded, as in Envoy.
                return Poll::Ready(
                    this.trailers
                        .take()
                        .map(|t| Ok(http_body::Frame::trailers(t))),
                );
            }
            match std::task::ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => *this.ended = true,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        *this.total_in += data.len() as u64;
                        this.compressed.inc_by(data.len() as u64);
                        if this.input.is_empty() {
                            *this.input = data;
                        } else {
                            let mut joined = bytes::BytesMut::from(&this.input[..]);
                            joined.extend_from_slice(&data);
                            *this.input = joined.freeze();
                        }
                    }
                    Err(frame) => {
                        *this.trailers = frame.into_trailers().ok();
                        *this.ended = true;
                    }
                },
            }
        }
    }
}
