//! Validated access logs (`envoy.config.accesslog.v3.AccessLog`), as listeners, HTTP
//! connection managers, TCP proxies and the admin server carry them: where the lines go
//! (`envoy.access_loggers.file`, `stdout`, `stderr`, `open_telemetry`), which requests are
//! logged (`filter`),
//! and the line itself — Envoy's substitution format, text or JSON, parsed here once so that
//! the control plane refuses an unknown command operator before any data plane would.

mod open_telemetry;

use std::path::PathBuf;

pub use open_telemetry::{OtlpLogSink, OtlpRecordFormat, OtlpValue};

use crate::error::{Result, ValidationError};
use crate::http_filter::Fraction;
use crate::pb::envoy::config::accesslog::v3 as pb;
use crate::pb::envoy::config::core::v3 as core;
use crate::pb::envoy::extensions::access_loggers::{file::v3 as file_pb, stream::v3 as stream_pb};
use crate::pb::google::protobuf::{value::Kind, Struct};
use crate::route::HeaderMatcher;
use crate::type_urls;

/// Envoy's default format for HTTP streams (and, with `-` for what a TCP connection lacks,
/// for TCP proxies), used when an access log names none.
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// One access log: a sink, an optional filter and a format.
#[derive(Debug, Clone)]
pub struct AccessLog {
    pub filter: Option<LogFilter>,
    pub sink: Sink,
    pub format: LogFormat,
}

/// Where the lines are written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sink {
    /// `envoy.access_loggers.file` (`/dev/stdout` is a file like any other).
    File(PathBuf),
    Stdout,
    Stderr,
    /// `envoy.access_loggers.open_telemetry`: OTLP log records to a collector.
    OpenTelemetry(Box<OtlpLogSink>),
}

/// How one line is rendered.
#[derive(Debug, Clone, PartialEq)]
pub enum LogFormat {
    /// A line of text (its own newline included, as written).
    Text(Vec<Segment>),
    /// One JSON object per line.
    Json {
        fields: Vec<(String, JsonField)>,
        /// Values that render empty are left out.
        omit_empty: bool,
    },
    /// An OTLP log record (the OpenTelemetry logger's only format).
    Otlp(OtlpRecordFormat),
}

/// A value of a JSON format.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonField {
    /// A string with command operators. A string that is exactly one operator keeps its
    /// type (numbers stay numbers) and is `null` when the value is absent, as Envoy.
    Template(Vec<Segment>),
    Object(Vec<(String, JsonField)>),
    /// A number or a boolean, written as is.
    Literal(serde_json::Value),
}

/// A piece of a format string.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Literal(String),
    Command {
        operator: Operator,
        /// The `:N` suffix: string values are cut to N bytes.
        max_len: Option<usize>,
    },
}

/// A command operator of Envoy's substitution format.
#[derive(Debug, Clone, PartialEq)]
pub enum Operator {
    /// `%START_TIME%` (Envoy's `%Y-%m-%dT%H:%M:%S.%3fZ`, UTC) or `%START_TIME(strftime)%`.
    StartTime(Option<String>),
    /// `%REQ(X?Y)%`: request header X, else Y (lowercased; `:path` and friends included).
    Request(HeaderLookup),
    /// `%RESP(X?Y)%`.
    Response(HeaderLookup),
    /// `%ENVIRONMENT(X)%`: read once, when the format is compiled.
    Environment(String),
    /// An operator without arguments.
    Field(Field),
}

/// `X?Y`: a header, with a fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderLookup {
    pub main: String,
    pub alternative: Option<String>,
}

/// The operators without arguments that sluice renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    ResponseCode,
    ResponseCodeDetails,
    ResponseFlags,
    ResponseFlagsLong,
    Duration,
    ResponseDuration,
    BytesReceived,
    BytesSent,
    Protocol,
    UpstreamHost,
    UpstreamCluster,
    UpstreamRequestAttemptCount,
    UpstreamTransportFailureReason,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamRemotePort,
    DownstreamDirectRemoteAddress,
    DownstreamDirectRemoteAddressWithoutPort,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamLocalPort,
    RequestedServerName,
    RouteName,
    Hostname,
    TraceId,
    ConnectionId,
}

/// Operator names, as written between `%`.
const FIELDS: &[(&str, Field)] = &[
    ("RESPONSE_CODE", Field::ResponseCode),
    ("RESPONSE_CODE_DETAILS", Field::ResponseCodeDetails),
    ("RESPONSE_FLAGS", Field::ResponseFlags),
    ("RESPONSE_FLAGS_LONG", Field::ResponseFlagsLong),
    ("DURATION", Field::Duration),
    ("RESPONSE_DURATION", Field::ResponseDuration),
    ("BYTES_RECEIVED", Field::BytesReceived),
    ("BYTES_SENT", Field::BytesSent),
    ("PROTOCOL", Field::Protocol),
    ("UPSTREAM_HOST", Field::UpstreamHost),
    ("UPSTREAM_CLUSTER", Field::UpstreamCluster),
    (
        "UPSTREAM_REQUEST_ATTEMPT_COUNT",
        Field::UpstreamRequestAttemptCount,
    ),
    (
        "UPSTREAM_TRANSPORT_FAILURE_REASON",
        Field::UpstreamTransportFailureReason,
    ),
    ("DOWNSTREAM_REMOTE_ADDRESS", Field::DownstreamRemoteAddress),
    (
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
        Field::DownstreamRemoteAddressWithoutPort,
    ),
    ("DOWNSTREAM_REMOTE_PORT", Field::DownstreamRemotePort),
    (
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS",
        Field::DownstreamDirectRemoteAddress,
    ),
    (
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
        Field::DownstreamDirectRemoteAddressWithoutPort,
    ),
    ("DOWNSTREAM_LOCAL_ADDRESS", Field::DownstreamLocalAddress),
    (
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
        Field::DownstreamLocalAddressWithoutPort,
    ),
    ("DOWNSTREAM_LOCAL_PORT", Field::DownstreamLocalPort),
    ("REQUESTED_SERVER_NAME", Field::RequestedServerName),
    ("ROUTE_NAME", Field::RouteName),
    ("HOSTNAME", Field::Hostname),
    ("TRACE_ID", Field::TraceId),
    ("CONNECTION_ID", Field::ConnectionId),
];

/// Which streams are logged.
#[derive(Debug, Clone)]
pub enum LogFilter {
    StatusCode(Comparison),
    /// In milliseconds.
    Duration(Comparison),
    /// Streams the health check filter did not take for health checks.
    NotHealthCheck,
    /// Streams whose trace is sampled.
    Traceable,
    /// A random sample (the runtime key is not read: there is no runtime).
    Runtime(Fraction),
    And(Vec<LogFilter>),
    Or(Vec<LogFilter>),
    Header(HeaderMatcher),
    /// Any of these flags (short names); empty: any flag at all.
    ResponseFlags(Vec<String>),
}

/// `ComparisonFilter`: `value` is the runtime value's default (there is no runtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comparison {
    pub op: CompareOp,
    pub value: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ge,
    Le,
    Ne,
}

impl Comparison {
    /// Whether `actual` passes.
    pub fn accepts(&self, actual: u64) -> bool {
        match self.op {
            CompareOp::Eq => actual == self.value,
            CompareOp::Ge => actual >= self.value,
            CompareOp::Le => actual <= self.value,
            CompareOp::Ne => actual != self.value,
        }
    }
}

/// Envoy's response flags by short name, for `response_flag_filter`.
pub const RESPONSE_FLAGS: &[&str] = &[
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR",
    "UDO", "RBAC",
];

impl AccessLog {
    /// Converts a list of access logs, naming the entry of an error (`access_log[i]`).
    pub fn list(logs: &[pb::AccessLog], field: &str) -> Result<Vec<AccessLog>> {
        logs.iter()
            .enumerate()
            .map(|(i, l)| AccessLog::try_from(l).map_err(|e| e.within(format!("{field}[{i}]"))))
            .collect()
    }

    /// The same log with Envoy's default format, for a file path alone (the admin
    /// server's deprecated `access_log_path`).
    pub fn file(path: &str) -> AccessLog {
        AccessLog {
            filter: None,
            sink: Sink::File(PathBuf::from(path)),
            format: LogFormat::Text(parse_format(DEFAULT_FORMAT).expect("the default parses")),
        }
    }
}

impl TryFrom<&pb::AccessLog> for AccessLog {
    type Error = ValidationError;

    fn try_from(l: &pb::AccessLog) -> Result<Self> {
        use pb::access_log::ConfigType;
        let Some(ConfigType::TypedConfig(any)) = l.config_type.as_ref() else {
            return Err(ValidationError::required("typed_config"));
        };
        let (sink, format) = match any.type_url.as_str() {
            type_urls::FILE_ACCESS_LOG => {
                let f: file_pb::FileAccessLog =
                    crate::util::unpack_any(any, type_urls::FILE_ACCESS_LOG, "typed_config")?;
                if f.path.is_empty() {
                    return Err(ValidationError::required("typed_config.path"));
                }
                use file_pb::file_access_log::AccessLogFormat as F;
                let format = match f.access_log_format.as_ref() {
                    None => None,
                    Some(F::Format(text)) => Some(text_format(text, "typed_config.format")?),
                    Some(F::JsonFormat(s) | F::TypedJsonFormat(s)) => Some(LogFormat::Json {
                        fields: json_fields(s).map_err(|e| e.within("typed_config.json_format"))?,
                        omit_empty: false,
                    }),
                    Some(F::LogFormat(s)) => Some(
                        substitution_format(s).map_err(|e| e.within("typed_config.log_format"))?,
                    ),
                };
                (Sink::File(PathBuf::from(&f.path)), format)
            }
            type_urls::STDOUT_ACCESS_LOG => {
                let s: stream_pb::StdoutAccessLog =
                    crate::util::unpack_any(any, type_urls::STDOUT_ACCESS_LOG, "typed_config")?;
                let format = s
                    .access_log_format
                    .as_ref()
                    .map(
                        |stream_pb::stdout_access_log::AccessLogFormat::LogFormat(f)| {
                            substitution_format(f).map_err(|e| e.within("typed_config.log_format"))
                        },
                    )
                    .transpose()?;
                (Sink::Stdout, format)
            }
            type_urls::STDERR_ACCESS_LOG => {
                let s: stream_pb::StderrAccessLog =
                    crate::util::unpack_any(any, type_urls::STDERR_ACCESS_LOG, "typed_config")?;
                let format = s
                    .access_log_format
                    .as_ref()
                    .map(
                        |stream_pb::stderr_access_log::AccessLogFormat::LogFormat(f)| {
                            substitution_format(f).map_err(|e| e.within("typed_config.log_format"))
                        },
                    )
                    .transpose()?;
                (Sink::Stderr, format)
            }
            type_urls::OPEN_TELEMETRY_ACCESS_LOG => {
                let config = crate::util::unpack_any(
                    any,
                    type_urls::OPEN_TELEMETRY_ACCESS_LOG,
                    "typed_config",
                )?;
                let (sink, format) =
                    open_telemetry::logger(&config).map_err(|e| e.within("typed_config"))?;
                (sink, Some(format))
            }
            other => {
                let message = type_urls::message_name(other);
                let short = message.rsplit('.').next().unwrap_or(message);
                return Err(ValidationError::new(
                    "typed_config",
                    format!(
                        "{} ({short}) is not supported by sluice ({message})",
                        l.name
                    ),
                ));
            }
        };
        let format = match format {
            Some(f) => f,
            None => LogFormat::Text(parse_format(DEFAULT_FORMAT).expect("the default parses")),
        };
        let filter = l
            .filter
            .as_ref()
            .map(|f| LogFilter::try_from(f).map_err(|e| e.within("filter")))
            .transpose()?;
        Ok(Self {
            filter,
            sink,
            format,
        })
    }
}

fn text_format(text: &str, path: &str) -> Result<LogFormat> {
    parse_format(text)
        .map(LogFormat::Text)
        .map_err(|m| ValidationError::new(path, m))
}

fn substitution_format(s: &core::SubstitutionFormatString) -> Result<LogFormat> {
    use core::substitution_format_string::Format as F;
    if !s.formatters.is_empty() {
        return Err(ValidationError::unsupported("formatters"));
    }
    match s.format.as_ref() {
        None => Err(ValidationError::required("text_format_source")),
        Some(F::TextFormat(text)) => text_format(text, "text_format"),
        Some(F::TextFormatSource(source)) => {
            let bytes =
                crate::route::data_source(source).map_err(|e| e.within("text_format_source"))?;
            let text = String::from_utf8(bytes).map_err(|_| {
                ValidationError::new("text_format_source", "the format is not UTF-8")
            })?;
            text_format(&text, "text_format_source")
        }
        Some(F::JsonFormat(fields)) => Ok(LogFormat::Json {
            fields: json_fields(fields).map_err(|e| e.within("json_format"))?,
            omit_empty: s.omit_empty_values,
        }),
    }
}

fn json_fields(s: &Struct) -> Result<Vec<(String, JsonField)>> {
    // Sorted, so lines are stable whatever order the map came in (Envoy sorts them too).
    let mut keys: Vec<&String> = s.fields.keys().collect();
    keys.sort();
    keys.into_iter()
        .map(|key| {
            let value = &s.fields[key];
            let field = match value.kind.as_ref() {
                Some(Kind::StringValue(text)) => JsonField::Template(
                    parse_format(text).map_err(|m| ValidationError::new(key.as_str(), m))?,
                ),
                Some(Kind::StructValue(inner)) => {
                    JsonField::Object(json_fields(inner).map_err(|e| e.within(key))?)
                }
                // Integral numbers are written without a fraction, as Envoy writes them.
                Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9e15 => {
                    JsonField::Literal(serde_json::Value::from(*n as i64))
                }
                Some(Kind::NumberValue(n)) => JsonField::Literal(
                    serde_json::Number::from_f64(*n)
                        .map(serde_json::Value::Number)
                        .unwrap_or(serde_json::Value::Null),
                ),
                Some(Kind::BoolValue(b)) => JsonField::Literal(serde_json::Value::Bool(*b)),
                _ => {
                    return Err(ValidationError::new(
                        key.as_str(),
                        "only strings, numbers, booleans and nested objects are supported",
                    ))
                }
            };
            Ok((key.clone(), field))
        })
        .collect()
}

/// Parses Envoy's format string: text with `%OPERATOR%`, `%OPERATOR(args)%` and
/// `%OPERATOR(args):N%`; `%%` is a literal `%`. The error names the operator.
pub fn parse_format(text: &str) -> std::result::Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('%') {
        literal.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('%') {
            literal.push('%');
            rest = after;
            continue;
        }
        let name_len = rest
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..name_len];
        rest = &rest[name_len..];
        if name.is_empty() {
            return Err(format!(
                "a '%' must start a command operator (write %% for a literal one): {text:?}"
            ));
        }
        let args = match rest.strip_prefix('(') {
            Some(inner) => {
                let close = inner
                    .find(')')
                    .ok_or_else(|| format!("%{name}(: missing ')'"))?;
                rest = &inner[close + 1..];
                Some(&inner[..close])
            }
            None => None,
        };
        let max_len = match rest.strip_prefix(':') {
            Some(after) => {
                let digits = after
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after.len());
                let n = after[..digits]
                    .parse::<usize>()
                    .map_err(|_| format!("%{name}: the length after ':' must be a number"))?;
                rest = &after[digits..];
                Some(n)
            }
            None => None,
        };
        rest = rest
            .strip_prefix('%')
            .ok_or_else(|| format!("%{name}: missing the closing '%'"))?;
        let operator = operator(name, args)?;
        if !literal.is_empty() {
            segments.push(Segment::Literal(std::mem::take(&mut literal)));
        }
        segments.push(Segment::Command { operator, max_len });
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok(segments)
}

fn operator(name: &str, args: Option<&str>) -> std::result::Result<Operator, String> {
    fn needs_args<'a>(name: &str, args: Option<&'a str>) -> std::result::Result<&'a str, String> {
        args.filter(|a| !a.is_empty())
            .ok_or_else(|| format!("%{name}(...)% needs an argument"))
    }
    Ok(match name {
        "START_TIME" => Operator::StartTime(args.filter(|a| !a.is_empty()).map(str::to_string)),
        "REQ" => Operator::Request(header_lookup(name, needs_args(name, args)?)?),
        "RESP" => Operator::Response(header_lookup(name, needs_args(name, args)?)?),
        "ENVIRONMENT" => Operator::Environment(needs_args(name, args)?.to_string()),
        _ => match FIELDS.iter().find(|(n, _)| *n == name) {
            Some((_, field)) if args.is_none() => Operator::Field(*field),
            Some(_) => return Err(format!("%{name}% takes no arguments")),
            None => {
                return Err(format!(
                    "command operator %{name}% is not supported by sluice"
                ))
            }
        },
    })
}

fn header_lookup(operator: &str, args: &str) -> std::result::Result<HeaderLookup, String> {
    let (main, alternative) = match args.split_once('?') {
        Some((m, a)) => (m, Some(a)),
        None => (args, None),
    };
    let check = |h: &str| {
        if h.is_empty() || h.contains('?') {
            Err(format!("%{operator}({args})%: expected X or X?Y"))
        } else {
            Ok(h.to_ascii_lowercase())
        }
    };
    Ok(HeaderLookup {
        main: check(main)?,
        alternative: alternative.map(check).transpose()?,
    })
}

impl TryFrom<&pb::AccessLogFilter> for LogFilter {
    type Error = ValidationError;

    fn try_from(f: &pb::AccessLogFilter) -> Result<Self> {
        use pb::access_log_filter::FilterSpecifier as F;
        let comparison = |c: Option<&pb::ComparisonFilter>, field: &str| -> Result<Comparison> {
            let c = c.ok_or_else(|| ValidationError::required(format!("{field}.comparison")))?;
            let op = match pb::comparison_filter::Op::try_from(c.op) {
                Ok(pb::comparison_filter::Op::Eq) => CompareOp::Eq,
                Ok(pb::comparison_filter::Op::Ge) => CompareOp::Ge,
                Ok(pb::comparison_filter::Op::Le) => CompareOp::Le,
                Ok(pb::comparison_filter::Op::Ne) => CompareOp::Ne,
                Err(_) => {
                    return Err(ValidationError::new(
                        format!("{field}.comparison.op"),
                        "unknown value",
                    ))
                }
            };
            let value = c
                .value
                .as_ref()
                .ok_or_else(|| ValidationError::required(format!("{field}.comparison.value")))?;
            Ok(Comparison {
                op,
                value: u64::from(value.default_value),
            })
        };
        let list = |filters: &[pb::AccessLogFilter], field: &str| -> Result<Vec<LogFilter>> {
            if filters.len() < 2 {
                return Err(ValidationError::new(
                    format!("{field}.filters"),
                    "needs at least two filters",
                ));
            }
            filters
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    LogFilter::try_from(f).map_err(|e| e.within(format!("{field}.filters[{i}]")))
                })
                .collect()
        };
        Ok(match f.filter_specifier.as_ref() {
            None => return Err(ValidationError::required("filter_specifier")),
            Some(F::StatusCodeFilter(s)) => {
                LogFilter::StatusCode(comparison(s.comparison.as_ref(), "status_code_filter")?)
            }
            Some(F::DurationFilter(d)) => {
                LogFilter::Duration(comparison(d.comparison.as_ref(), "duration_filter")?)
            }
            Some(F::NotHealthCheckFilter(_)) => LogFilter::NotHealthCheck,
            Some(F::TraceableFilter(_)) => LogFilter::Traceable,
            Some(F::RuntimeFilter(r)) => LogFilter::Runtime(
                r.percent_sampled
                    .as_ref()
                    .map_or(Fraction::NEVER, Fraction::from_proto),
            ),
            Some(F::AndFilter(a)) => LogFilter::And(list(&a.filters, "and_filter")?),
            Some(F::OrFilter(o)) => LogFilter::Or(list(&o.filters, "or_filter")?),
            Some(F::HeaderFilter(h)) => {
                let header = h
                    .header
                    .as_ref()
                    .ok_or_else(|| ValidationError::required("header_filter.header"))?;
                LogFilter::Header(
                    HeaderMatcher::try_from(header)
                        .map_err(|e| e.within("header_filter.header"))?,
                )
            }
            Some(F::ResponseFlagFilter(r)) => {
                for (i, flag) in r.flags.iter().enumerate() {
                    if !RESPONSE_FLAGS.contains(&flag.as_str()) {
                        return Err(ValidationError::new(
                            format!("response_flag_filter.flags[{i}]"),
                            format!("unknown response flag {flag:?}"),
                        ));
                    }
                }
                LogFilter::ResponseFlags(r.flags.clone())
            }
            Some(F::GrpcStatusFilter(_)) => {
                return Err(ValidationError::unsupported("grpc_status_filter"))
            }
            Some(F::ExtensionFilter(_)) => {
                return Err(ValidationError::unsupported("extension_filter"))
            }
            Some(F::MetadataFilter(_)) => {
                return Err(ValidationError::unsupported("metadata_filter"))
            }
            Some(F::LogTypeFilter(_)) => {
                return Err(ValidationError::unsupported("log_type_filter"))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(operator: Operator) -> Segment {
        Segment::Command {
            operator,
            max_len: None,
        }
    }

    #[test]
    fn a_format_string_parses_into_literals_and_operators() {
        let parsed =
            parse_format("[%START_TIME(%s)%] %REQ(X-A?:PATH):5% 100%% %DURATION%\n").unwrap();
        assert_eq!(
            parsed,
            vec![
                Segment::Literal("[".into()),
                command(Operator::StartTime(Some("%s".into()))),
                Segment::Literal("] ".into()),
                Segment::Command {
                    operator: Operator::Request(HeaderLookup {
                        main: "x-a".into(),
                        alternative: Some(":path".into()),
                    }),
                    max_len: Some(5),
                },
                Segment::Literal(" 100% ".into()),
                command(Operator::Field(Field::Duration)),
                Segment::Literal("\n".into()),
            ]
        );
    }

    #[test]
    fn unknown_or_malformed_operators_are_named() {
        let err = parse_format("%NOPE%").unwrap_err();
        assert!(err.contains("%NOPE%"), "{err}");
        assert!(parse_format("%REQ()%").unwrap_err().contains("argument"));
        assert!(parse_format("%REQ(a").unwrap_err().contains(")"));
        assert!(parse_format("%DURATION(x)%")
            .unwrap_err()
            .contains("no arguments"));
        assert!(parse_format("50% off").is_err());
    }

    #[test]
    fn the_default_format_parses() {
        let parsed = parse_format(DEFAULT_FORMAT).unwrap();
        assert_eq!(
            parsed
                .iter()
                .filter(|s| matches!(s, Segment::Command { .. }))
                .count(),
            15
        );
    }
}
