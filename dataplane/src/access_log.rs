//! Access logs: Envoy's substitution format rendered for one stream or connection, and
//! the sinks the lines go to.
//!
//! A line is rendered on the task that ends the stream and handed to its sink's queue; one
//! writer thread per sink (file path, stdout, stderr) writes it, so a slow disk or a full
//! pipe never blocks traffic. A full queue drops the line and counts it. The OpenTelemetry
//! logger ([`otlp`]) renders a log record instead, and its queue feeds an OTLP exporter.

mod otlp;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use rand::Rng;
use serde_json::Value as Json;
use tracing::warn;
use xds_types::access_log::{
    AccessLog, Field, HeaderLookup, JsonField, LogFilter, LogFormat, Operator, Segment, Sink,
};
use xds_types::Bootstrap;

use crate::config::SnapshotStore;
use crate::local_reply::ResponseFlag;
use crate::stats::Stats;
use crate::trace::SpanContext;

/// Lines a sink holds before it drops new ones (`--access-log-queue-lines`).
static QUEUE_LINES: AtomicUsize = AtomicUsize::new(8192);

/// Sets how many lines each sink queues before it drops new ones; read when a sink opens.
/// The bound is what keeps a slow disk or a stalled pipe from holding memory or requests.
pub fn set_queue_lines(lines: usize) {
    QUEUE_LINES.store(lines.max(1), Ordering::Relaxed);
}

/// The access logs of one listener, connection manager, TCP proxy or admin server,
/// compiled: the header names their formats and filters read, resolved once.
pub struct AccessLogs {
    logs: Vec<CompiledLog>,
    /// The request headers the formats and filters read, in capture order.
    request_names: Vec<String>,
    /// The response headers the formats read.
    response_names: Vec<String>,
}

struct CompiledLog {
    filter: Option<LogFilter>,
    format: CompiledFormat,
    sink: Output,
}

/// Where a rendered entry goes.
enum Output {
    Lines(Arc<SinkWriter>),
    Otlp(Arc<otlp::OtlpLogger>),
}

enum CompiledFormat {
    Text(Vec<Piece>),
    Json {
        fields: Vec<(String, JsonPiece)>,
        omit_empty: bool,
    },
    Otlp(otlp::CompiledRecord),
}

enum JsonPiece {
    Template(Vec<Piece>),
    Object(Vec<(String, JsonPiece)>),
    Literal(Json),
}

/// A segment with its header lookups resolved to capture indexes.
enum Piece {
    Literal(String),
    Value {
        source: Source,
        max_len: Option<usize>,
    },
}

enum Source {
    StartTime(Option<String>),
    Request(usize, Option<usize>),
    Response(usize, Option<usize>),
    Constant(Option<String>),
    Field(Field),
}

/// One rendered value: absent (`-` in text, `null` in JSON), text, or a number.
enum Value<'a> {
    Absent,
    Text(std::borrow::Cow<'a, str>),
    Number(u64),
}

/// What one stream or connection did, as the formats read it.
pub struct Entry<'a> {
    pub start: SystemTime,
    /// Values of [`AccessLogs::request_names`], in order (empty for TCP).
    pub request: &'a [Option<HeaderValue>],
    /// Values of the response headers the formats read, in order.
    pub response: &'a [Option<HeaderValue>],
    /// 0 when there was no HTTP response (TCP, a reset before the headers).
    pub status: u16,
    /// Envoy's response flags, in its order (a TCP proxy can set two).
    pub flags: &'a [ResponseFlag],
    pub duration: Duration,
    /// Until the response headers were ready.
    pub response_duration: Option<Duration>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub protocol: Option<&'static str>,
    pub upstream_host: Option<&'a str>,
    pub upstream_cluster: Option<&'a str>,
    pub attempts: Option<u32>,
    pub remote: SocketAddr,
    /// The peer of the TCP connection (the PROXY protocol's source is `remote`).
    pub direct_remote: SocketAddr,
    pub local: SocketAddr,
    pub server_name: Option<&'a str>,
    pub route_name: Option<&'a str>,
    /// The stream's span, when tracing gave it one (sampled or not).
    pub trace: Option<SpanContext>,
    pub traced: bool,
    /// The health check filter took the request for a health check.
    pub health_check: bool,
    pub connection_id: u64,
    pub details: Option<&'a str>,
}

impl<'a> Entry<'a> {
    /// An entry with only a connection's facts; the rest is absent or zero.
    pub fn connection(
        remote: SocketAddr,
        direct_remote: SocketAddr,
        local: SocketAddr,
        connection_id: u64,
        start: SystemTime,
    ) -> Self {
        Self {
            start,
            request: &[],
            response: &[],
            status: 0,
            flags: &[],
            duration: Duration::ZERO,
            response_duration: None,
            bytes_received: 0,
            bytes_sent: 0,
            protocol: None,
            upstream_host: None,
            upstream_cluster: None,
            attempts: None,
            remote,
            direct_remote,
            local,
            server_name: None,
            route_name: None,
            trace: None,
            traced: false,
            health_check: false,
            connection_id,
            details: None,
        }
    }
}

/// A process-wide connection number (`%CONNECTION_ID%`), from 1.
pub fn next_connection_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl AccessLogs {
    /// Compiles `logs`, opening (or sharing) their sinks; `node` names the OpenTelemetry
    /// loggers' resource.
    pub fn new(logs: &[AccessLog], node: &Bootstrap, stats: &Stats) -> Option<Arc<Self>> {
        if logs.is_empty() {
            return None;
        }
        let mut request_names = Vec::new();
        let mut response_names = Vec::new();
        let compiled = logs
            .iter()
            .map(|log| {
                if let Some(filter) = &log.filter {
                    collect_filter_headers(filter, &mut request_names);
                }
                let sink = match &log.sink {
                    Sink::OpenTelemetry(sink) => {
                        Output::Otlp(otlp::OtlpLogger::shared(sink, node, stats))
                    }
                    lines => Output::Lines(SinkWriter::shared(lines, stats)),
                };
                CompiledLog {
                    filter: log.filter.clone(),
                    format: compile_format(&log.format, &mut request_names, &mut response_names),
                    sink,
                }
            })
            .collect();
        Some(Arc::new(Self {
            logs: compiled,
            request_names,
            response_names,
        }))
    }

    /// The request header values the logs read; pseudo-headers come from `head`.
    pub fn capture_request(&self, head: &RequestView<'_>) -> Vec<Option<HeaderValue>> {
        self.request_names.iter().map(|n| head.get(n)).collect()
    }

    /// The response header values the logs read.
    pub fn capture_response(&self, headers: &HeaderMap) -> Vec<Option<HeaderValue>> {
        self.response_names
            .iter()
            .map(|n| joined(headers, n))
            .collect()
    }

    /// Renders and queues one line (or record) per log whose filter passes; `store`
    /// gives the OpenTelemetry loggers their collector's hosts.
    pub fn write(&self, entry: &Entry<'_>, store: &SnapshotStore) {
        for log in &self.logs {
            if let Some(filter) = &log.filter {
                if !self.passes(filter, entry) {
                    continue;
                }
            }
            let sink = match &log.sink {
                Output::Lines(sink) => sink,
                Output::Otlp(logger) => {
                    if let CompiledFormat::Otlp(record) = &log.format {
                        logger.submit(record.render(entry), store);
                    }
                    continue;
                }
            };
            let line = match &log.format {
                CompiledFormat::Text(pieces) => {
                    let mut line = String::new();
                    render_text(pieces, entry, &mut line);
                    line.into_bytes()
                }
                CompiledFormat::Json { fields, omit_empty } => {
                    let mut line = serde_json::to_vec(&render_object(fields, entry, *omit_empty))
                        .unwrap_or_default();
                    line.push(b'\n');
                    line
                }
                // Only the OpenTelemetry logger has this format, and it was served above.
                CompiledFormat::Otlp(_) => continue,
            };
            sink.send(line);
        }
    }

    fn passes(&self, filter: &LogFilter, entry: &Entry<'_>) -> bool {
        match filter {
            LogFilter::StatusCode(c) => c.accepts(u64::from(entry.status)),
            LogFilter::Duration(c) => c.accepts(entry.duration.as_millis() as u64),
            LogFilter::NotHealthCheck => !entry.health_check,
            LogFilter::Traceable => entry.traced,
            LogFilter::Runtime(fraction) => {
                rand::rng().random_range(0..1_000_000) < fraction.per_million
            }
            LogFilter::And(all) => all.iter().all(|f| self.passes(f, entry)),
            LogFilter::Or(any) => any.iter().any(|f| self.passes(f, entry)),
            LogFilter::Header(matcher) => {
                let value = self
                    .request_names
                    .iter()
                    .position(|n| *n == matcher.name)
                    .and_then(|i| entry.request.get(i).cloned().flatten());
                matcher.matches(value.as_ref().and_then(|v| v.to_str().ok()))
            }
            LogFilter::ResponseFlags(names) => {
                !entry.flags.is_empty()
                    && (names.is_empty()
                        || entry
                            .flags
                            .iter()
                            .any(|flag| names.iter().any(|n| n == flag.short_name())))
            }
        }
    }
}

/// A request as the logs capture it: its head, with the pseudo-headers answered.
pub struct RequestView<'a> {
    pub method: &'a http::Method,
    pub path: &'a str,
    pub authority: &'a str,
    pub scheme: &'static str,
    pub headers: &'a HeaderMap,
    /// The path before a route rewrote it, answered as `x-envoy-original-path` (Envoy's
    /// router sets that header when it rewrites).
    pub original_path: Option<&'a str>,
}

impl RequestView<'_> {
    fn get(&self, name: &str) -> Option<HeaderValue> {
        let text = match name {
            ":method" => self.method.as_str(),
            ":path" => self.path,
            // Envoy keeps Host as the authority.
            ":authority" | "host" => self.authority,
            ":scheme" => self.scheme,
            "x-envoy-original-path" if self.original_path.is_some() => {
                return joined(self.headers, name).or_else(|| {
                    self.original_path
                        .and_then(|p| HeaderValue::from_str(p).ok())
                })
            }
            _ => return joined(self.headers, name),
        };
        HeaderValue::from_str(text).ok()
    }
}

/// A header's values joined by `,` (Envoy's view of a repeated header).
fn joined(headers: &HeaderMap, name: &str) -> Option<HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?.clone();
    let rest: Vec<&HeaderValue> = values.collect();
    if rest.is_empty() {
        return Some(first);
    }
    let mut bytes = first.as_bytes().to_vec();
    for v in rest {
        bytes.push(b',');
        bytes.extend_from_slice(v.as_bytes());
    }
    HeaderValue::from_bytes(&bytes).ok()
}

fn collect_filter_headers(filter: &LogFilter, names: &mut Vec<String>) {
    match filter {
        LogFilter::Header(m) => {
            index_of(names, &m.name);
        }
        LogFilter::And(list) | LogFilter::Or(list) => {
            for f in list {
                collect_filter_headers(f, names);
            }
        }
        _ => {}
    }
}

fn index_of(names: &mut Vec<String>, name: &str) -> usize {
    match names.iter().position(|n| n == name) {
        Some(i) => i,
        None => {
            names.push(name.to_string());
            names.len() - 1
        }
    }
}

fn compile_format(
    format: &LogFormat,
    request: &mut Vec<String>,
    response: &mut Vec<String>,
) -> CompiledFormat {
    match format {
        LogFormat::Text(segments) => {
            CompiledFormat::Text(compile_segments(segments, request, response))
        }
        LogFormat::Json { fields, omit_empty } => CompiledFormat::Json {
            fields: compile_json(fields, request, response),
            omit_empty: *omit_empty,
        },
        LogFormat::Otlp(format) => {
            CompiledFormat::Otlp(otlp::CompiledRecord::new(format, request, response))
        }
    }
}

fn compile_json(
    fields: &[(String, JsonField)],
    request: &mut Vec<String>,
    response: &mut Vec<String>,
) -> Vec<(String, JsonPiece)> {
    fields
        .iter()
        .map(|(key, field)| {
            let piece = match field {
                JsonField::Template(segments) => {
                    JsonPiece::Template(compile_segments(segments, request, response))
                }
                JsonField::Object(inner) => {
                    JsonPiece::Object(compile_json(inner, request, response))
                }
                JsonField::Literal(v) => JsonPiece::Literal(v.clone()),
            };
            (key.clone(), piece)
        })
        .collect()
}

fn compile_segments(
    segments: &[Segment],
    request: &mut Vec<String>,
    response: &mut Vec<String>,
) -> Vec<Piece> {
    let lookup = |names: &mut Vec<String>, h: &HeaderLookup| {
        (
            index_of(names, &h.main),
            h.alternative.as_deref().map(|a| index_of(names, a)),
        )
    };
    segments
        .iter()
        .map(|segment| match segment {
            Segment::Literal(text) => Piece::Literal(text.clone()),
            Segment::Command { operator, max_len } => {
                let source = match operator {
                    Operator::StartTime(pattern) => Source::StartTime(pattern.clone()),
                    Operator::Request(h) => {
                        let (main, alt) = lookup(request, h);
                        Source::Request(main, alt)
                    }
                    Operator::Response(h) => {
                        let (main, alt) = lookup(response, h);
                        Source::Response(main, alt)
                    }
                    Operator::Environment(name) => Source::Constant(std::env::var(name).ok()),
                    Operator::Field(field) => Source::Field(*field),
                };
                Piece::Value {
                    source,
                    max_len: *max_len,
                }
            }
        })
        .collect()
}

fn render_text(pieces: &[Piece], entry: &Entry<'_>, out: &mut String) {
    for piece in pieces {
        match piece {
            Piece::Literal(text) => out.push_str(text),
            Piece::Value { source, max_len } => match value(source, entry) {
                Value::Absent => out.push('-'),
                Value::Number(n) => out.push_str(&n.to_string()),
                Value::Text(text) => out.push_str(truncate(&text, *max_len)),
            },
        }
    }
}

fn render_object(fields: &[(String, JsonPiece)], entry: &Entry<'_>, omit_empty: bool) -> Json {
    let mut object = serde_json::Map::new();
    for (key, piece) in fields {
        let rendered = match piece {
            JsonPiece::Literal(v) => v.clone(),
            JsonPiece::Object(inner) => render_object(inner, entry, omit_empty),
            // One operator alone keeps its type, as Envoy's JSON formatter.
            JsonPiece::Template(pieces) => match pieces.as_slice() {
                [Piece::Value { source, max_len }] => match value(source, entry) {
                    Value::Absent => Json::Null,
                    Value::Number(n) => Json::from(n),
                    Value::Text(text) => Json::from(truncate(&text, *max_len)),
                },
                _ => {
                    let mut text = String::new();
                    render_text(pieces, entry, &mut text);
                    Json::from(text)
                }
            },
        };
        if omit_empty && (rendered.is_null() || rendered.as_str() == Some("")) {
            continue;
        }
        object.insert(key.clone(), rendered);
    }
    Json::Object(object)
}

fn truncate(text: &str, max_len: Option<usize>) -> &str {
    match max_len {
        Some(n) if text.len() > n => {
            let mut end = n;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            &text[..end]
        }
        _ => text,
    }
}

fn header(values: &[Option<HeaderValue>], main: usize, alt: Option<usize>) -> Value<'_> {
    let found = values
        .get(main)
        .and_then(Option::as_ref)
        .or_else(|| alt.and_then(|a| values.get(a)).and_then(Option::as_ref));
    match found {
        Some(v) => Value::Text(String::from_utf8_lossy(v.as_bytes())),
        None => Value::Absent,
    }
}

/// Envoy's rendering of a flag set: the names joined by commas, `-` for none.
fn flag_names<'a>(flags: &[ResponseFlag], name: fn(ResponseFlag) -> &'static str) -> Value<'a> {
    match flags {
        [] => Value::Text("-".into()),
        [one] => Value::Text(name(*one).into()),
        many => Value::Text(
            many.iter()
                .map(|f| name(*f))
                .collect::<Vec<_>>()
                .join(",")
                .into(),
        ),
    }
}

fn value<'a>(source: &'a Source, entry: &'a Entry<'a>) -> Value<'a> {
    let text = |s: Option<&'a str>| s.map_or(Value::Absent, |s| Value::Text(s.into()));
    let owned = |s: String| Value::Text(s.into());
    let millis =
        |d: Option<Duration>| d.map_or(Value::Absent, |d| Value::Number(d.as_millis() as u64));
    match source {
        Source::StartTime(pattern) => owned(format_time(entry.start, pattern.as_deref())),
        Source::Request(main, alt) => header(entry.request, *main, *alt),
        Source::Response(main, alt) => header(entry.response, *main, *alt),
        Source::Constant(v) => text(v.as_deref()),
        Source::Field(field) => match field {
            Field::ResponseCode => Value::Number(u64::from(entry.status)),
            Field::ResponseCodeDetails => text(entry.details),
            Field::ResponseFlags => flag_names(entry.flags, ResponseFlag::short_name),
            Field::ResponseFlagsLong => flag_names(entry.flags, ResponseFlag::long_name),
            Field::Duration => millis(Some(entry.duration)),
            Field::ResponseDuration => millis(entry.response_duration),
            Field::BytesReceived => Value::Number(entry.bytes_received),
            Field::BytesSent => Value::Number(entry.bytes_sent),
            Field::Protocol => text(entry.protocol),
            Field::UpstreamHost => text(entry.upstream_host),
            Field::UpstreamCluster => text(entry.upstream_cluster),
            Field::UpstreamRequestAttemptCount => entry
                .attempts
                .map_or(Value::Absent, |a| Value::Number(u64::from(a))),
            Field::UpstreamTransportFailureReason => Value::Absent,
            Field::DownstreamRemoteAddress => owned(entry.remote.to_string()),
            Field::DownstreamRemoteAddressWithoutPort => owned(entry.remote.ip().to_string()),
            Field::DownstreamRemotePort => Value::Number(u64::from(entry.remote.port())),
            Field::DownstreamDirectRemoteAddress => owned(entry.direct_remote.to_string()),
            Field::DownstreamDirectRemoteAddressWithoutPort => {
                owned(entry.direct_remote.ip().to_string())
            }
            Field::DownstreamLocalAddress => owned(entry.local.to_string()),
            Field::DownstreamLocalAddressWithoutPort => owned(entry.local.ip().to_string()),
            Field::DownstreamLocalPort => Value::Number(u64::from(entry.local.port())),
            Field::RequestedServerName => text(entry.server_name),
            Field::RouteName => text(entry.route_name),
            Field::Hostname => text(Some(hostname())),
            Field::TraceId => entry
                .trace
                .map_or(Value::Absent, |t| owned(t.trace_id_hex())),
            Field::ConnectionId => Value::Number(entry.connection_id),
        },
    }
}

/// This machine's name, read once.
fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
}

/// `%START_TIME%` in UTC: Envoy's default, or a strftime pattern with Envoy's extra
/// fractional-second specifiers (`%f`, `%1f`…`%9f`, `%E1S`…`%E9S`).
pub fn format_time(at: SystemTime, pattern: Option<&str>) -> String {
    let time: chrono::DateTime<chrono::Utc> = at.into();
    let Some(pattern) = pattern else {
        return time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    };
    let nanos = time.timestamp_subsec_nanos();
    let digits = |n: usize| format!("{nanos:09}")[..n].to_string();
    // Envoy's specifiers first: chrono's `%f` family differs from them.
    let mut expanded = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(at) = rest.find('%') {
        expanded.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        let bytes = tail.as_bytes();
        match bytes {
            [b'f', ..] => {
                expanded.push_str(&digits(9));
                rest = &tail[1..];
            }
            [d @ b'1'..=b'9', b'f', ..] => {
                expanded.push_str(&digits(usize::from(d - b'0')));
                rest = &tail[2..];
            }
            [b'E', d @ b'1'..=b'9', b'S', ..] => {
                expanded.push_str(&format!("{:02}.", time.format("%S")));
                expanded.push_str(&digits(usize::from(d - b'0')));
                rest = &tail[3..];
            }
            [b'%', ..] => {
                expanded.push_str("%%");
                rest = &tail[1..];
            }
            _ => {
                expanded.push('%');
                rest = tail;
            }
        }
    }
    expanded.push_str(rest);
    let items: Vec<chrono::format::Item<'_>> =
        chrono::format::StrftimeItems::new(&expanded).collect();
    if items
        .iter()
        .any(|i| matches!(i, chrono::format::Item::Error))
    {
        return "-".to_string();
    }
    time.format_with_items(items.into_iter()).to_string()
}

/// One sink's queue and its writer thread, shared by every log that names the sink.
struct SinkWriter {
    queue: SyncSender<Vec<u8>>,
    dropped: Counter,
}

/// Open sinks by destination: logs on several listeners share one writer per file.
fn registry() -> &'static Mutex<HashMap<Sink, Weak<SinkWriter>>> {
    static SINKS: OnceLock<Mutex<HashMap<Sink, Weak<SinkWriter>>>> = OnceLock::new();
    SINKS.get_or_init(Default::default)
}

impl SinkWriter {
    fn shared(sink: &Sink, stats: &Stats) -> Arc<SinkWriter> {
        let mut open = registry().lock().expect("access log sinks");
        if let Some(writer) = open.get(sink).and_then(Weak::upgrade) {
            return writer;
        }
        let (queue, lines) = mpsc::sync_channel::<Vec<u8>>(QUEUE_LINES.load(Ordering::Relaxed));
        let written = stats.access_log_counter("written", "Access log lines written");
        let failed =
            stats.access_log_counter("write_failed", "Access log lines a write failed for");
        let destination = sink.clone();
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&destination, &lines, &written, &failed));
        if let Err(error) = spawned {
            warn!(%error, "cannot start an access log writer: lines are dropped");
        }
        let writer = Arc::new(SinkWriter {
            queue,
            dropped: stats.access_log_counter(
                "dropped",
                "Access log lines dropped: the sink's queue was full",
            ),
        });
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(sink.clone(), Arc::downgrade(&writer));
        writer
    }

    fn send(&self, line: Vec<u8>) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(line)
        {
            self.dropped.inc();
        }
    }
}

/// The writer thread: appends lines, flushing whenever the queue is empty; ends when
/// every log using the sink is gone.
fn write_lines(sink: &Sink, lines: &mpsc::Receiver<Vec<u8>>, written: &Counter, failed: &Counter) {
    let mut out: Box<dyn Write> = match sink {
        // Served by an OTLP exporter, never by a writer thread.
        Sink::OpenTelemetry(_) => return,
        Sink::Stdout => Box::new(std::io::stdout()),
        Sink::Stderr => Box::new(std::io::stderr()),
        Sink::File(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(file) => Box::new(file),
            Err(error) => {
                warn!(path = %path.display(), %error, "cannot open the access log: its lines are dropped");
                for _ in lines.iter() {
                    failed.inc();
                }
                return;
            }
        },
    };
    // Each batch goes out in one write, and its lines count as written or failed
    // together. After a small batch the writer rests for GATHER instead of waiting on the
    // queue: a request queueing a line then wakes nobody, and the lines of the next
    // GATHER go out in one write (a full queue is drained at once).
    const GATHER: std::time::Duration = std::time::Duration::from_millis(20);
    let small = QUEUE_LINES.load(Ordering::Relaxed) / 4;
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Ok(first) = lines.recv() {
        batch.clear();
        batch.extend_from_slice(&first);
        let mut count = 1;
        for line in lines.try_iter() {
            batch.extend_from_slice(&line);
            count += 1;
            if batch.len() >= 1 << 20 {
                break;
            }
        }
        match out.write_all(&batch).and_then(|()| out.flush()) {
            Ok(()) => written.inc_by(count),
            Err(_) => failed.inc_by(count),
        };
        if (count as usize) < small {
            std::thread::sleep(GATHER);
        }
    }
}
