//! Tracing as Envoy's connection manager does it with its OpenTelemetry tracer: the W3C
//! trace context is read from `traceparent` (its sampled flag wins over sampling), a
//! SERVER span is started for the stream (and a CLIENT span for the upstream request
//! with `spawn_upstream_span`), the upstream gets `traceparent` with the proxy's span id,
//! and sampled spans are queued for export when the stream ends. A malformed
//! `traceparent` starts nothing and is forwarded untouched, as in Envoy.

pub mod export;

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::{span, status, Span, Status};
use xds_types::http_filter::Fraction;
use xds_types::route::Route;
use xds_types::tracing::{CustomTag, TagValue, Tracing};

// Envoy's span tags are all strings.
use crate::otlp::string_attribute as string;
use crate::stats::Stats;

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// OTLP span flags: the context's is-remote bit is known (0x100) and set (0x200).
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

/// A W3C trace context (`traceparent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl SpanContext {
    /// Parses a version-00 `traceparent`, as Envoy's extractor does: 55 characters, four
    /// hex fields, neither id all zeros. `None` when malformed.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(value).ok()?;
        if text.len() != 55 {
            return None;
        }
        let mut fields = text.split('-');
        let (version, trace, span, flags) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        if fields.next().is_some()
            || version.len() != 2
            || trace.len() != 32
            || span.len() != 16
            || flags.len() != 2
            || version.eq_ignore_ascii_case("ff")
        {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        hex_decode(trace, &mut trace_id)?;
        hex_decode(span, &mut span_id)?;
        let mut flag = [0u8; 1];
        hex_decode(flags, &mut flag)?;
        hex_decode(version, &mut [0u8; 1])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flag[0] & 1 == 1,
        })
    }

    /// The `traceparent` value for this context.
    pub fn header(&self) -> HeaderValue {
        let mut text = [b'-'; 55];
        text[..2].copy_from_slice(b"00");
        hex_into(&self.trace_id, &mut text[3..35]);
        hex_into(&self.span_id, &mut text[36..52]);
        text[53..].copy_from_slice(if self.sampled { b"01" } else { b"00" });
        HeaderValue::from_bytes(&text).expect("hex is a valid header value")
    }

    /// The trace id as 32 lowercase hex digits (`%TRACE_ID%`).
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

fn hex_decode(text: &str, out: &mut [u8]) -> Option<()> {
    let bytes = text.as_bytes();
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = std::str::from_utf8(bytes.get(2 * i..2 * i + 2)?).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(())
}

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut out);
    String::from_utf8(out).expect("hex digits are ASCII")
}

fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let id: [u8; N] = rand::random();
        if id != [0; N] {
            return id;
        }
    }
}

/// A connection manager's tracer: its sampling, its tags and its exporter.
pub struct Tracer {
    config: Tracing,
    exporter: Arc<export::Exporter>,
    node_id: String,
}

impl Tracer {
    /// The tracer for `config`; spans of tracers with the same provider share an exporter.
    pub fn new(config: &Tracing, node_id: &str, stats: &Stats) -> Arc<Self> {
        Arc::new(Self {
            config: config.clone(),
            exporter: export::Exporter::shared(&config.provider, stats),
            node_id: node_id.to_string(),
        })
    }

    /// Starts the stream's span, or `None` when a malformed `traceparent` came in (that
    /// request is not traced and its header is forwarded as it came).
    pub fn start(
        &self,
        headers: &HeaderMap,
        route: Option<&Route>,
        request: RequestLine<'_>,
    ) -> Option<ActiveSpan> {
        let parent = match headers.get(&TRACEPARENT) {
            None => None,
            Some(value) => Some(SpanContext::parse(value.as_bytes())?),
        };
        let sampled = match parent {
            Some(p) => p.sampled,
            None => self.decide(headers, route),
        };
        let context = SpanContext {
            trace_id: parent.map_or_else(random_id, |p| p.trace_id),
            span_id: random_id(),
            sampled,
        };
        let mut span = ActiveSpan {
            context,
            parent: parent.map(|p| p.span_id),
            spawn_upstream: self.config.spawn_upstream_span,
            attempts: Vec::new(),
            trace_state: headers.get(&TRACESTATE).cloned(),
            start: SystemTime::now(),
            name: String::new(),
            request_attributes: Vec::new(),
            tags: Vec::new(),
        };
        if sampled {
            span.name = route
                .and_then(|r| r.decorator.clone())
                .unwrap_or_else(|| "ingress".to_string());
            span.request_attributes = self.request_attributes(headers, request);
            span.tags = self.custom_tags(headers, route);
        }
        Some(span)
    }

    /// Envoy's decision for a request without a trace context: a client-forced trace
    /// (`x-client-trace-id`) by `client_sampling`, else `random_sampling`; then
    /// `overall_sampling`. A route's `tracing` overrides each fraction.
    fn decide(&self, headers: &HeaderMap, route: Option<&Route>) -> bool {
        let overrides = route.and_then(|r| r.tracing.as_ref());
        let pick = |route: Option<Fraction>, listener: Fraction| route.unwrap_or(listener);
        let first = if headers.contains_key("x-client-trace-id") {
            pick(
                overrides.and_then(|o| o.client_sampling),
                self.config.client_sampling,
            )
        } else {
            pick(
                overrides.and_then(|o| o.random_sampling),
                self.config.random_sampling,
            )
        };
        let overall = pick(
            overrides.and_then(|o| o.overall_sampling),
            self.config.overall_sampling,
        );
        hits(first) && hits(overall)
    }

    fn request_attributes(&self, headers: &HeaderMap, request: RequestLine<'_>) -> Vec<KeyValue> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        let mut url = format!("{}://{}{}", request.scheme, request.host, request.path);
        if url.len() > self.config.max_path_tag_length {
            let mut cut = self.config.max_path_tag_length;
            while !url.is_char_boundary(cut) {
                cut -= 1;
            }
            url.truncate(cut);
        }
        let mut attributes = vec![
            string("node_id", self.node_id.clone()),
            string("zone", String::new()),
            string("guid:x-request-id", header("x-request-id")),
            string("http.url", url),
            string("http.method", request.method.to_string()),
            string(
                "downstream_cluster",
                header("x-envoy-downstream-service-cluster"),
            ),
            string("user_agent", header("user-agent")),
            string("component", "proxy".to_string()),
        ];
        if let Some(id) = headers
            .get("x-client-trace-id")
            .and_then(|v| v.to_str().ok())
        {
            attributes.push(string("guid:x-client-trace-id", id.to_string()));
        }
        attributes
    }

    /// The connection manager's and the route's custom tags: on the SERVER span and on
    /// every upstream span, as Envoy tags them.
    fn custom_tags(&self, headers: &HeaderMap, route: Option<&Route>) -> Vec<KeyValue> {
        let route_tags = route
            .and_then(|r| r.tracing.as_ref())
            .map(|t| t.custom_tags.as_slice())
            .unwrap_or_default();
        self.config
            .custom_tags
            .iter()
            .chain(route_tags)
            .filter_map(|tag| custom_tag(tag, headers).map(|value| string(&tag.tag, value)))
            .collect()
    }

    /// Queues the stream's span (and its upstream span) when sampled.
    pub fn finish(
        &self,
        span: ActiveSpan,
        end: &SpanEnd<'_>,
        store: &crate::config::SnapshotStore,
    ) {
        if !span.context.sampled {
            return;
        }
        let end_time = SystemTime::now();
        let trace_state = span.trace_state_text();
        let mut attributes = span.request_attributes;
        attributes.extend(span.tags.iter().cloned());
        attributes.extend([
            string("http.protocol", end.protocol.to_string()),
            string("peer.address", end.peer.to_string()),
            string("request_size", end.request_size.to_string()),
            string("response_size", end.response_size.to_string()),
            string("http.status_code", end.status.to_string()),
            string("response_flags", end.flags.to_string()),
        ]);
        if let Some(cluster) = end.cluster {
            attributes.push(string("upstream_cluster", cluster.to_string()));
            attributes.push(string("upstream_cluster.name", cluster.to_string()));
        }
        let failed = end.status >= 500;
        if failed {
            attributes.push(string("error", "true".to_string()));
        }
        let sampled_flag = 0x01;
        let remote = if span.parent.is_some() {
            FLAG_IS_REMOTE
        } else {
            0
        };
        let server = Span {
            trace_id: span.context.trace_id.to_vec(),
            span_id: span.context.span_id.to_vec(),
            trace_state,
            parent_span_id: span.parent.map(|p| p.to_vec()).unwrap_or_default(),
            flags: sampled_flag | FLAG_HAS_IS_REMOTE | remote,
            name: span.name,
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: nanos(span.start),
            end_time_unix_nano: nanos(end_time),
            attributes,
            status: error_status(failed),
            ..Span::default()
        };
        // One CLIENT span per upstream attempt, as Envoy's router: a retried attempt is
        // `canceled` and later ones carry `retry.count`.
        if let Some(cluster) = end.cluster {
            for (retry, attempt) in span.attempts.iter().enumerate() {
                let retried = attempt.end.is_some();
                let status = attempt.status.unwrap_or(end.status);
                // An attempt that got a response has no upstream failure of its own.
                let flags = if attempt.status.is_some() {
                    "-"
                } else {
                    end.flags
                };
                let mut attributes = vec![
                    string("component", "proxy".to_string()),
                    string("upstream_cluster", cluster.to_string()),
                    string("upstream_cluster.name", cluster.to_string()),
                    string("http.protocol", end.protocol.to_string()),
                    string("http.status_code", status.to_string()),
                    string("response_flags", flags.to_string()),
                    string("upstream_address", attempt.host.clone()),
                    string("peer.address", attempt.host.clone()),
                ];
                if retry > 0 {
                    attributes.push(string("retry.count", retry.to_string()));
                }
                if retried {
                    attributes.push(string("canceled", "true".to_string()));
                }
                if status >= 500 {
                    attributes.push(string("error", "true".to_string()));
                }
                attributes.extend(span.tags.iter().cloned());
                self.exporter.submit(
                    Span {
                        trace_id: span.context.trace_id.to_vec(),
                        span_id: attempt.span_id.to_vec(),
                        trace_state: server.trace_state.clone(),
                        parent_span_id: span.context.span_id.to_vec(),
                        flags: sampled_flag | FLAG_HAS_IS_REMOTE,
                        name: format!("router {cluster} egress"),
                        kind: span::SpanKind::Client as i32,
                        start_time_unix_nano: nanos(attempt.start),
                        end_time_unix_nano: attempt.end.map_or(server.end_time_unix_nano, nanos),
                        attributes,
                        status: error_status(status >= 500),
                        ..Span::default()
                    },
                    store,
                );
            }
        }
        self.exporter.submit(server, store);
    }
}

/// The request's line, for `http.method` and `http.url`.
#[derive(Clone, Copy)]
pub struct RequestLine<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    pub host: &'a str,
    pub path: &'a str,
}

/// What the span records when the stream ends.
pub struct SpanEnd<'a> {
    pub status: u16,
    pub flags: &'a str,
    pub protocol: &'a str,
    pub peer: std::net::IpAddr,
    pub request_size: u64,
    pub response_size: u64,
    pub cluster: Option<&'a str>,
}

/// One upstream attempt of a stream that spawns upstream spans.
#[derive(Debug, Clone)]
struct Attempt {
    span_id: [u8; 8],
    start: SystemTime,
    host: String,
    /// The upstream's status, when it answered.
    status: Option<u16>,
    /// When a retry ended it; the last attempt ends with the stream.
    end: Option<SystemTime>,
}

fn error_status(failed: bool) -> Option<Status> {
    failed.then(|| Status {
        code: status::StatusCode::Error as i32,
        message: String::new(),
    })
}

/// A stream's span while the stream runs.
#[derive(Debug, Clone)]
pub struct ActiveSpan {
    pub context: SpanContext,
    parent: Option<[u8; 8]>,
    /// `spawn_upstream_span`: a CLIENT span per upstream attempt.
    spawn_upstream: bool,
    attempts: Vec<Attempt>,
    /// As it came (a cheap clone of the request's value).
    trace_state: Option<HeaderValue>,
    start: SystemTime,
    name: String,
    request_attributes: Vec<KeyValue>,
    /// The custom tags, for the upstream spans too.
    tags: Vec<KeyValue>,
}

impl ActiveSpan {
    /// Sets what the upstream sees: `traceparent` naming the proxy's span (each attempt
    /// names its own with `spawn_upstream_span`, see [`ActiveSpan::begin_attempt`]), and
    /// `tracestate` as it came (empty when none came, as Envoy sends it).
    pub fn inject(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT.clone(), self.context.header());
        let state = self
            .trace_state
            .clone()
            .unwrap_or_else(|| HeaderValue::from_static(""));
        headers.insert(TRACESTATE.clone(), state);
    }

    /// An upstream attempt to `host` starts: with `spawn_upstream_span` it gets its own
    /// span, which the attempt's `traceparent` names.
    pub fn begin_attempt(&mut self, headers: &mut HeaderMap, host: &str) {
        if !self.spawn_upstream {
            return;
        }
        let span_id = random_id();
        let context = SpanContext {
            span_id,
            ..self.context
        };
        headers.insert(TRACEPARENT.clone(), context.header());
        if self.context.sampled {
            self.attempts.push(Attempt {
                span_id,
                start: SystemTime::now(),
                host: host.to_string(),
                status: None,
                end: None,
            });
        }
    }

    /// The current attempt's upstream answered with `status`.
    pub fn attempt_answered(&mut self, status: u16) {
        if let Some(attempt) = self.attempts.last_mut() {
            attempt.status = Some(status);
        }
    }

    /// The current attempt is given up for a retry.
    pub fn attempt_retried(&mut self) {
        if let Some(attempt) = self.attempts.last_mut() {
            attempt.end = Some(SystemTime::now());
        }
    }

    fn trace_state_text(&self) -> String {
        self.trace_state
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }
}

fn custom_tag(tag: &CustomTag, headers: &HeaderMap) -> Option<String> {
    match &tag.value {
        TagValue::Literal(value) => Some(value.clone()),
        TagValue::Environment { name, default } => std::env::var(name)
            .ok()
            .or_else(|| (!default.is_empty()).then(|| default.clone())),
        TagValue::RequestHeader { name, default } => headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| (!default.is_empty()).then(|| default.clone())),
    }
}

fn hits(fraction: Fraction) -> bool {
    fraction.per_million >= 1_000_000
        || (fraction.per_million > 0 && rand::random_range(0..1_000_000) < fraction.per_million)
}

fn nanos(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parses_and_prints_back() {
        let header = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let context = SpanContext::parse(header).unwrap();
        assert!(context.sampled);
        assert_eq!(context.header().as_bytes(), header);
        let unsampled =
            SpanContext::parse(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").unwrap();
        assert!(!unsampled.sampled);
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            &b"00-xyz-abc-01"[..],
            b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
            b"00-0af7651916cd43dd8448eb211c80319cb-7ad6b7169203331-01",
            b"00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01",
        ] {
            assert_eq!(
                SpanContext::parse(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn fractions_decide_all_or_none_at_the_ends() {
        assert!(hits(Fraction::ALWAYS));
        assert!(!hits(Fraction::NEVER));
    }
}
