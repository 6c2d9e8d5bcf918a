//! `envoy.filters.http.compressor`: compresses response bodies with gzip, brotli or zstd
//! as Envoy's filter decides it — `Accept-Encoding` q-values and `*` (several compressor
//! filters in one chain agree on one encoding, the first one to see the response
//! deciding for all), content types, a minimum length, `no-transform`, ETags, and
//! `Vary: Accept-Encoding` on every response that could have been compressed.
//!
//! The body streams: each data frame is compressed and flushed on its own (Envoy's
//! behaviour), so memory stays bounded by the codec's window and one frame.

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use prometheus_client::metrics::counter::Counter;
use xds_types::http_filter::compressor::{Codec, Compressor, CompressorPerRoute, Library};

use crate::body::{Body, BoxError};
use crate::http::ctx::RequestCtx;
use crate::http::filter::{Decision, HttpFilter, PerRoute};
use crate::stats::Stats;

/// The filter: its config and Envoy's counters for its library.
pub struct CompressorFilter {
    config: Arc<Compressor>,
    counters: Counters,
}

/// Envoy's counters, under `compressor.<library name>.<library>.`.
struct Counters {
    compressed: Counter,
    not_compressed: Counter,
    total_uncompressed_bytes: Counter,
    total_compressed_bytes: Counter,
    content_length_too_small: Counter,
    no_accept_header: Counter,
    header_identity: Counter,
    header_compressor_used: Counter,
    header_compressor_overshadowed: Counter,
    header_wildcard: Counter,
    header_not_valid: Counter,
    not_compressed_etag: Counter,
    request_not_compressed: Counter,
}

impl Counters {
    fn new(config: &Compressor, hcm_prefix: &str, stats: &Stats) -> Self {
        let base = format!(
            "compressor.{}.{}.",
            config.library.name,
            config.library.codec.stats_prefix()
        );
        // As Envoy: the direction counters move under `response.` when the response
        // direction is configured; the Accept-Encoding counters stay at the base.
        let direction = if config.response_stats_scoped {
            format!("{base}response.")
        } else {
            base.clone()
        };
        let at = |prefix: &str, n: &str| stats.filter_counter(hcm_prefix, &format!("{prefix}{n}"));
        Self {
            compressed: at(&direction, "compressed"),
            not_compressed: at(&direction, "not_compressed"),
            total_uncompressed_bytes: at(&direction, "total_uncompressed_bytes"),
            total_compressed_bytes: at(&direction, "total_compressed_bytes"),
            content_length_too_small: at(&direction, "content_length_too_small"),
            no_accept_header: at(&base, "no_accept_header"),
            header_identity: at(&base, "header_identity"),
            header_compressor_used: at(&base, "header_compressor_used"),
            header_compressor_overshadowed: at(&base, "header_compressor_overshadowed"),
            header_wildcard: at(&base, "header_wildcard"),
            header_not_valid: at(&base, "header_not_valid"),
            not_compressed_etag: at(&base, "not_compressed_etag"),
            request_not_compressed: at(&base, "request.not_compressed"),
        }
    }
}

/// The compressor filters a request went through, in chain order, and the encoding they
/// agreed on: Envoy keeps the same registry in the stream's filter state.
#[derive(Clone, Default)]
struct Registry {
    filters: Vec<Registered>,
    decision: Option<EncodingDecision>,
    /// The filters (by config address) that compress this response.
    compressing: Vec<usize>,
    /// A HEAD request: its response never has a body to compress.
    head: bool,
}

#[derive(Clone)]
struct Registered {
    id: usize,
    config: Arc<Compressor>,
    /// The encoding of the filter's own library. As in Envoy, the chain's choice is made
    /// among these even where a route replaces a library, so a route whose library has
    /// another encoding only compresses when the choice names that encoding.
    encoding: &'static str,
    /// `Accept-Encoding` as this filter saw it (an earlier compressor may remove it).
    accept_encoding: Option<String>,
}

/// Why the encoding was chosen, for Envoy's `header_*` counters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HeaderStat {
    ValidCompressor,
    Identity,
    Wildcard,
    NotValid,
}

#[derive(Clone)]
struct EncodingDecision {
    encoding: String,
    stat: HeaderStat,
}

impl CompressorFilter {
    pub fn new(config: &Compressor, hcm_prefix: &str, stats: &Stats) -> Self {
        Self {
            counters: Counters::new(config, hcm_prefix, stats),
            config: Arc::new(config.clone()),
        }
    }

    fn id(&self) -> usize {
        Arc::as_ptr(&self.config) as usize
    }

    fn route_config(per_route: Option<&PerRoute>) -> Option<&CompressorPerRoute> {
        match per_route {
            Some(PerRoute::Compressor(p)) => Some(p),
            _ => None,
        }
    }

    fn enabled(&self, per_route: Option<&CompressorPerRoute>) -> bool {
        per_route
            .and_then(|p| p.response_enabled)
            .unwrap_or(self.config.response.enabled)
    }

    fn library<'a>(&'a self, per_route: Option<&'a CompressorPerRoute>) -> &'a Library {
        per_route
            .and_then(|p| p.library.as_ref())
            .unwrap_or(&self.config.library)
    }

    /// Whether the response is long enough to compress (a response without a length, a
    /// stream, always is); counts one that is too short.
    fn long_enough(&self, headers: &HeaderMap) -> bool {
        let Some(length) = headers.get(header::CONTENT_LENGTH) else {
            return true;
        };
        let ok = length
            .to_str()
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n >= self.config.response.min_content_length);
        if !ok {
            self.counters.content_length_too_small.inc();
        }
        ok
    }

    fn etag_allowed(&self, headers: &HeaderMap) -> bool {
        let response = &self.config.response;
        let allowed = !(response.disable_on_etag_header
            && !response.weaken_etag_on_compress
            && headers.contains_key(header::ETAG));
        if !allowed {
            self.counters.not_compressed_etag.inc();
        }
        allowed
    }

    /// Whether this filter compresses, deciding the encoding for the whole chain when no
    /// filter has yet; updates the `header_*` counters.
    fn accept_encoding_allows(
        &self,
        registry: &mut Registry,
        headers: &HeaderMap,
        my_encoding: &str,
    ) -> bool {
        let Some(me) = registry.filters.iter().find(|f| f.id == self.id()) else {
            return false;
        };
        let Some(accept_encoding) = me.accept_encoding.clone() else {
            self.counters.no_accept_header.inc();
            return false;
        };
        let decision = match &registry.decision {
            Some(d) => d.clone(),
            None => {
                let d = choose_encoding(&accept_encoding, &registry.filters, headers);
                registry.decision = Some(d.clone());
                d
            }
        };
        let chosen = decision.encoding.eq_ignore_ascii_case(my_encoding);
        match decision.stat {
            HeaderStat::ValidCompressor if chosen => self.counters.header_compressor_used.inc(),
            HeaderStat::ValidCompressor => self.counters.header_compressor_overshadowed.inc(),
            HeaderStat::Identity => self.counters.header_identity.inc(),
            HeaderStat::Wildcard => self.counters.header_wildcard.inc(),
            HeaderStat::NotValid => self.counters.header_not_valid.inc(),
        };
        chosen
    }
}

/// The content type without parameters, trimmed; empty without one.
fn content_type(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or("").trim())
}

/// Envoy's choice of encoding from `Accept-Encoding` and the compressors in the chain that
/// would compress this content type: the highest q-value among those, `identity` and `*`
/// (ties keep the earlier entry unless the compressor is `choose_first`); `*` means the
/// first compressor in the chain. Encodings are compared as written (case-sensitive).
fn choose_encoding(
    accept_encoding: &str,
    filters: &[Registered],
    headers: &HeaderMap,
) -> EncodingDecision {
    let content_type = content_type(headers).unwrap_or("");
    // Encoding → (registration order, choose_first); duplicates keep the first filter.
    let mut allowed: Vec<(&str, usize, bool)> = Vec::new();
    for f in filters {
        if !content_type.is_empty() && !f.config.response.content_types.allows(content_type) {
            continue;
        }
        if !allowed.iter().any(|(e, _, _)| *e == f.encoding) {
            allowed.push((f.encoding, allowed.len(), f.config.choose_first));
        }
    }
    let mut pairs: Vec<(&str, f32)> = Vec::new();
    for token in accept_encoding.split(',').filter(|t| !t.is_empty()) {
        let (coding, params) = match token.split_once(';') {
            Some((coding, params)) => (coding, Some(params)),
            None => (token, None),
        };
        let mut q = 1.0f32;
        if let Some((name, value)) = params.and_then(|p| p.split_once('=')) {
            if name.trim().eq_ignore_ascii_case("q") {
                match value.trim().parse::<f32>() {
                    Ok(v) => q = v,
                    // An unparseable q-value drops the entry.
                    Err(_) => continue,
                }
            }
        }
        let coding = coding.trim();
        pairs.push((coding, q));
        if q == 0.0 {
            allowed.retain(|(e, _, _)| *e != coding);
        }
    }
    let not_valid = || EncodingDecision {
        encoding: "identity".to_string(),
        stat: HeaderStat::NotValid,
    };
    if pairs.is_empty() || allowed.is_empty() {
        return not_valid();
    }
    let mut choice: (&str, f32) = ("identity", 0.0);
    for &(coding, q) in &pairs {
        let known = allowed.iter().find(|(e, _, _)| *e == coding);
        if known.is_some() || coding == "identity" || coding == "*" {
            let choose_first = known.is_some_and(|(_, _, first)| *first);
            if q > choice.1 || (q == choice.1 && choose_first) {
                choice = (coding, q);
            }
        }
    }
    if choice.1 == 0.0 {
        return not_valid();
    }
    match choice.0 {
        "identity" => EncodingDecision {
            encoding: "identity".to_string(),
            stat: HeaderStat::Identity,
        },
        "*" => EncodingDecision {
            encoding: allowed
                .iter()
                .min_by_key(|(_, order, _)| *order)
                .map_or("identity", |(e, _, _)| e)
                .to_string(),
            stat: HeaderStat::Wildcard,
        },
        coding => EncodingDecision {
            encoding: coding.to_string(),
            stat: HeaderStat::ValidCompressor,
        },
    }
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Adds `Accept-Encoding` to `Vary` unless it is listed (Envoy compares it as written).
fn insert_vary(headers: &mut HeaderMap) {
    let current: Vec<&str> = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if current.is_empty() {
        headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        return;
    }
    let joined = current.join(",");
    if joined.split(',').any(|t| t.trim() == "Accept-Encoding") {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(&format!("{joined}, Accept-Encoding")) {
        headers.insert(header::VARY, v);
    }
}

/// A compressed body's `ETag`: weak ones stay; strong ones are weakened when configured,
/// else removed (Envoy never rewrites the tag itself).
fn sanitize_etag(headers: &mut HeaderMap, weaken: bool) {
    let Some(etag) = headers.get(header::ETAG) else {
        return;
    };
    let value = etag.as_bytes();
    let weak = value.len() >= 2 && value[0].eq_ignore_ascii_case(&b'w') && value[1] == b'/';
    if weak || value.len() <= 2 {
        return;
    }
    if weaken {
        let mut tag = b"W/".to_vec();
        tag.extend_from_slice(value);
        if let Ok(v) = HeaderValue::from_bytes(&tag) {
            headers.insert(header::ETAG, v);
            return;
        }
    }
    headers.remove(header::ETAG);
}

impl HttpFilter for CompressorFilter {
    fn on_request(
        &self,
        ctx: &mut RequestCtx<'_>,
        per_route: Option<&PerRoute>,
        request: &mut Parts,
    ) -> Decision {
        let route = Self::route_config(per_route);
        let accept_encoding = {
            let values: Vec<&str> = request
                .headers
                .get_all(header::ACCEPT_ENCODING)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!values.is_empty()).then(|| values.join(","))
        };
        if self.enabled(route)
            && route
                .and_then(|p| p.remove_accept_encoding_header)
                .unwrap_or(self.config.response.remove_accept_encoding_header)
        {
            request.headers.remove(header::ACCEPT_ENCODING);
        }
        let head = request.method == http::Method::HEAD;
        let registered = Registered {
            id: self.id(),
            config: self.config.clone(),
            encoding: self.config.library.codec.encoding(),
            accept_encoding,
        };
        match ctx.state.get_mut::<Registry>() {
            Some(registry) => registry.filters.push(registered),
            None => {
                ctx.state.insert(Registry {
                    filters: vec![registered],
                    head,
                    ..Registry::default()
                });
            }
        }
        // Request compression is refused at config time: every request goes as it came.
        self.counters.request_not_compressed.inc();
        Decision::Continue
    }

    fn on_response(
        &self,
        ctx: &mut RequestCtx<'_>,
        per_route: Option<&PerRoute>,
        response: &mut http::response::Parts,
        end_stream: bool,
    ) {
        let route = Self::route_config(per_route);
        let Some(mut registry) = ctx.state.remove::<Registry>() else {
            return;
        };
        let headers = &response.headers;
        let big_enough = self.enabled(route) && self.long_enough(headers);
        let compressible = big_enough
            && response.status != StatusCode::SWITCHING_PROTOCOLS
            && content_type(headers).is_none_or(|t| self.config.response.content_types.allows(t))
            && !has_token(headers, header::CACHE_CONTROL, "no-transform")
            && self.etag_allowed(headers)
            && !headers.contains_key(header::CONTENT_ENCODING)
            && !self
                .config
                .response
                .uncompressible_response_codes
                .contains(&response.status.as_u16());
        let end_stream = end_stream || registry.head;
        let compress = !end_stream
            && big_enough
            && self.accept_encoding_allows(
                &mut registry,
                headers,
                self.library(route).codec.encoding(),
            )
            && compressible
            && !["gzip", "br", "deflate", "compress", "zstd"]
                .iter()
                .any(|t| has_token(headers, header::TRANSFER_ENCODING, t));
        if compress {
            let headers = &mut response.headers;
            sanitize_etag(headers, self.config.response.weaken_etag_on_compress);
            headers.remove(header::CONTENT_LENGTH);
            headers.insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(self.library(route).codec.encoding()),
            );
            self.counters.compressed.inc();
            registry.compressing.push(self.id());
        } else {
            self.counters.not_compressed.inc();
        }
        if compressible {
            insert_vary(&mut response.headers);
        }
        ctx.state.insert(registry);
    }

    fn on_response_body(
        &self,
        ctx: &mut RequestCtx<'_>,
        per_route: Option<&PerRoute>,
        _response: &http::response::Parts,
        body: Body,
    ) -> Body {
        let compressing = ctx
            .state
            .get::<Registry>()
            .is_some_and(|r| r.compressing.contains(&self.id()));
        if !compressing {
            return body;
        }
        let codec = &self.library(Self::route_config(per_route)).codec;
        match Encoder::new(codec) {
            Ok(encoder) => http_body_util::BodyExt::boxed(Compressing {
                inner: body,
                encoder: Mutex::new(Some(encoder)),
                trailers: None,
                done: false,
                uncompressed: self.counters.total_uncompressed_bytes.clone(),
                compressed: self.counters.total_compressed_bytes.clone(),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "compressor could not start; the response goes uncompressed");
                body
            }
        }
    }
}

/// One response's compression stream.
enum Encoder {
    Gzip(flate2::write::ZlibEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    fn new(codec: &Codec) -> std::io::Result<Self> {
        Ok(match *codec {
            Codec::Gzip { level, window_bits } => {
                let compress =
                    flate2::Compress::new_gzip(flate2::Compression::new(level), window_bits);
                Encoder::Gzip(flate2::write::ZlibEncoder::new_with_compress(
                    Vec::new(),
                    compress,
                ))
            }
            Codec::Brotli {
                quality,
                window_bits,
                input_block_bits,
                mode,
                disable_literal_context_modeling,
            } => {
                use brotli::enc::backward_references::BrotliEncoderMode;
                let params = brotli::enc::BrotliEncoderParams {
                    quality: quality as i32,
                    lgwin: window_bits as i32,
                    lgblock: input_block_bits as i32,
                    mode: match mode {
                        1 => BrotliEncoderMode::BROTLI_MODE_TEXT,
                        2 => BrotliEncoderMode::BROTLI_MODE_FONT,
                        _ => BrotliEncoderMode::BROTLI_MODE_GENERIC,
                    },
                    disable_literal_context_modeling: i32::from(disable_literal_context_modeling),
                    ..Default::default()
                };
                Encoder::Brotli(Box::new(brotli::CompressorWriter::with_params(
                    Vec::new(),
                    4096,
                    &params,
                )))
            }
            Codec::Zstd {
                level,
                enable_checksum,
                strategy,
            } => {
                let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), level)?;
                encoder.include_checksum(enable_checksum)?;
                if let Some(strategy) = zstd_strategy(strategy) {
                    encoder.set_parameter(zstd::stream::raw::CParameter::Strategy(strategy))?;
                }
                Encoder::Zstd(encoder)
            }
        })
    }

    /// Compresses `data` and flushes, returning what the codec produced.
    fn compress(&mut self, data: &[u8]) -> std::io::Result<Bytes> {
        fn step<W: Write>(w: &mut W, data: &[u8]) -> std::io::Result<()> {
            w.write_all(data)?;
            w.flush()
        }
        let out = match self {
            Encoder::Gzip(e) => {
                step(e, data)?;
                e.get_mut()
            }
            Encoder::Brotli(e) => {
                step(e.as_mut(), data)?;
                e.get_mut()
            }
            Encoder::Zstd(e) => {
                step(e, data)?;
                e.get_mut()
            }
        };
        Ok(Bytes::from(std::mem::take(out)))
    }

    /// Ends the stream, returning its last bytes.
    fn finish(self) -> std::io::Result<Bytes> {
        let out = match self {
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Brotli(e) => e.into_inner(),
            Encoder::Zstd(e) => e.finish()?,
        };
        Ok(Bytes::from(out))
    }
}

/// Envoy's zstd strategy numbers are zstd's own (0 is the library's default).
fn zstd_strategy(n: u32) -> Option<zstd::zstd_safe::Strategy> {
    use zstd::zstd_safe::Strategy::*;
    Some(match n {
        1 => ZSTD_fast,
        2 => ZSTD_dfast,
        3 => ZSTD_greedy,
        4 => ZSTD_lazy,
        5 => ZSTD_lazy2,
        6 => ZSTD_btlazy2,
        7 => ZSTD_btopt,
        8 => ZSTD_btultra,
        9 => ZSTD_btultra2,
        _ => return None,
    })
}

pin_project_lite::pin_project! {
    /// A response body compressed frame by frame; trailers wait for the codec's end.
    struct Compressing {
        #[pin]
        inner: Body,
        // In a mutex only so the body is `Sync`; polling has `&mut` and never locks.
        encoder: Mutex<Option<Encoder>>,
        trailers: Option<HeaderMap>,
        done: bool,
        uncompressed: Counter,
        compressed: Counter,
    }
}

impl http_body::Body for Compressing {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(
                this.trailers
                    .take()
                    .map(|t| Ok(http_body::Frame::trailers(t))),
            );
        }
        let encoder = this.encoder.get_mut().unwrap_or_else(|e| e.into_inner());
        loop {
            let trailers = match std::task::ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => None,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let Some(codec) = encoder.as_mut() else {
                            continue;
                        };
                        this.uncompressed.inc_by(data.len() as u64);
                        let out = codec.compress(&data).map_err(|e| Box::new(e) as BoxError)?;
                        this.compressed.inc_by(out.len() as u64);
                        if out.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(http_body::Frame::data(out))));
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => Some(trailers),
                        Err(_) => continue,
                    },
                },
            };
            // The end of the stream, or its trailers: the codec's last bytes go first.
            *this.trailers = trailers;
            *this.done = true;
            let Some(codec) = encoder.take() else {
                return Poll::Ready(None);
            };
            let out = codec.finish().map_err(|e| Box::new(e) as BoxError)?;
            this.compressed.inc_by(out.len() as u64);
            return Poll::Ready(Some(Ok(http_body::Frame::data(out))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(encoding: &'static str, choose_first: bool) -> Registered {
        let mut config: Compressor = test_config();
        config.choose_first = choose_first;
        Registered {
            id: 0,
            config: Arc::new(config),
            encoding,
            accept_encoding: None,
        }
    }

    fn test_config() -> Compressor {
        use xds_types::http_filter::compressor::{ContentTypes, ResponseDirection};
        Compressor {
            library: Library {
                name: "t".into(),
                codec: Codec::Gzip {
                    level: 6,
                    window_bits: 12,
                },
            },
            response: ResponseDirection {
                enabled: true,
                min_content_length: 30,
                content_types: ContentTypes::Exact(vec!["text/plain".into()]),
                disable_on_etag_header: false,
                weaken_etag_on_compress: false,
                remove_accept_encoding_header: false,
                uncompressible_response_codes: Vec::new(),
            },
            choose_first: false,
            response_stats_scoped: true,
        }
    }

    fn choose(accept: &str, filters: &[Registered]) -> (String, bool) {
        let d = choose_encoding(accept, filters, &HeaderMap::new());
        (d.encoding, d.stat == HeaderStat::NotValid)
    }

    #[test]
    fn accept_encoding_picks_as_envoy() {
        let both = [registered("gzip", false), registered("br", false)];
        assert_eq!(choose("gzip", &both).0, "gzip");
        assert_eq!(choose("br;q=0.9, gzip;q=0.8", &both).0, "br");
        assert_eq!(choose("gzip;q=0, *", &both).0, "br");
        assert_eq!(choose("*", &both).0, "gzip");
        assert_eq!(choose("identity;q=1, gzip;q=0.5", &both).0, "identity");
        // Ties keep the first listed entry.
        assert_eq!(choose("br, gzip", &both).0, "br");
        // Case matters, as in Envoy: an unknown coding is not valid.
        assert_eq!(choose("GZIP", &both), ("identity".to_string(), true));
        // An unparseable q-value drops the entry.
        assert_eq!(choose("gzip;q=x, br;q=0.1", &both).0, "br");
        assert!(choose("", &both).1);
        let first = [registered("gzip", false), registered("br", true)];
        assert_eq!(choose("gzip, br", &first).0, "br");
    }

    #[test]
    fn each_codec_round_trips_frame_by_frame() {
        use std::io::Read;
        let text = b"the quick brown fox jumps over the lazy dog; ".repeat(200);
        for codec in [
            Codec::Gzip {
                level: 1,
                window_bits: 9,
            },
            Codec::Brotli {
                quality: 3,
                window_bits: 18,
                input_block_bits: 24,
                mode: 1,
                disable_literal_context_modeling: false,
            },
            Codec::Zstd {
                level: 3,
                enable_checksum: true,
                strategy: 2,
            },
        ] {
            let mut e = Encoder::new(&codec).unwrap();
            let mut out = Vec::new();
            for chunk in text.chunks(1000) {
                let part = e.compress(chunk).unwrap();
                assert!(!part.is_empty(), "each frame is flushed");
                out.extend_from_slice(&part);
            }
            out.extend_from_slice(&e.finish().unwrap());
            assert!(out.len() < text.len() / 4, "{codec:?}: {}", out.len());
            let mut back = Vec::new();
            match codec {
                Codec::Gzip { .. } => {
                    flate2::read::GzDecoder::new(&out[..])
                        .read_to_end(&mut back)
                        .unwrap();
                }
                Codec::Brotli { .. } => {
                    brotli::Decompressor::new(&out[..], 4096)
                        .read_to_end(&mut back)
                        .unwrap();
                }
                Codec::Zstd { .. } => back = zstd::decode_all(&out[..]).unwrap(),
            }
            assert_eq!(back, text);
        }
    }
}
