//! A cluster's active health check (`health_checks`), with Envoy's defaults.

use std::ops::Range;
use std::time::Duration;

use crate::error::{Result, ValidationError};
use crate::pb::envoy::config::core::v3 as core;
use crate::route::{mutations, HeaderMutations};
use crate::util::{duration, optional_timeout};

/// Envoy's default `no_traffic_interval`: how often hosts of a cluster that has never
/// carried traffic are checked.
pub const DEFAULT_NO_TRAFFIC_INTERVAL: Duration = Duration::from_secs(60);

/// When and how a cluster's hosts are checked.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub timeout: Duration,
    pub interval: Duration,
    /// Random delay, up to this, before a host's first check.
    pub initial_jitter: Duration,
    /// Random extra delay, up to this, added to each interval.
    pub interval_jitter: Duration,
    /// Random extra delay, up to this percentage of the interval.
    pub interval_jitter_percent: u32,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    /// Check this port instead of the endpoint's.
    pub alt_port: Option<u16>,
    /// Keep the connection between checks (default true).
    pub reuse_connection: bool,
    /// The interval while the cluster has never carried a request.
    pub no_traffic_interval: Duration,
    /// The interval for healthy hosts while the cluster has never carried a request.
    pub no_traffic_healthy_interval: Duration,
    /// The interval for unhealthy hosts (default `interval`).
    pub unhealthy_interval: Duration,
    /// The delay after a host turns unhealthy (default `unhealthy_interval`).
    pub unhealthy_edge_interval: Duration,
    /// The delay after a host turns healthy (default `interval`).
    pub healthy_edge_interval: Duration,
    pub checker: Checker,
}

/// What a check sends and what counts as a pass.
#[derive(Debug, Clone)]
pub enum Checker {
    Http(HttpCheck),
    Tcp(TcpCheck),
    Grpc(GrpcCheck),
}

/// An HTTP request whose response status says whether the host is healthy.
#[derive(Debug, Clone)]
pub struct HttpCheck {
    /// The `Host`/`:authority`; `None`: the cluster's name, as Envoy.
    pub host: Option<String>,
    pub path: String,
    pub method: http::Method,
    /// Passing statuses (default 200 only).
    pub expected_statuses: Vec<Range<u16>>,
    /// Failing statuses that count towards `unhealthy_threshold` instead of failing the
    /// host at once.
    pub retriable_statuses: Vec<Range<u16>>,
    pub headers: HeaderMutations,
    /// A request body.
    pub send: Option<Vec<u8>>,
    /// The response body must contain these bytes, in order.
    pub receive: Vec<Vec<u8>>,
    /// How much of the response body `receive` looks at (default 1024 bytes).
    pub response_buffer_size: usize,
    pub http2: bool,
}

impl HttpCheck {
    /// Whether a response status passes the check.
    pub fn passes(&self, status: u16) -> bool {
        self.expected_statuses.iter().any(|r| r.contains(&status))
    }

    /// Whether a failing status only counts towards `unhealthy_threshold`.
    pub fn is_retriable(&self, status: u16) -> bool {
        self.retriable_statuses.iter().any(|r| r.contains(&status))
    }
}

/// A TCP connect, optionally sending bytes and expecting bytes back.
#[derive(Debug, Clone)]
pub struct TcpCheck {
    pub send: Option<Vec<u8>>,
    /// Every payload must appear in the response, in order; empty: connecting passes.
    pub receive: Vec<Vec<u8>>,
}

/// `grpc.health.v1.Health/Check` over HTTP/2.
#[derive(Debug, Clone)]
pub struct GrpcCheck {
    pub service_name: String,
    /// `:authority`; `None`: the cluster's name.
    pub authority: Option<String>,
    pub metadata: HeaderMutations,
}

impl TryFrom<&core::HealthCheck> for HealthCheck {
    type Error = ValidationError;

    fn try_from(h: &core::HealthCheck) -> Result<Self> {
        use core::health_check::HealthChecker as H;
        let required_positive = |d: Option<&crate::pb::google::protobuf::Duration>, field: &str| {
            let d = d.ok_or_else(|| ValidationError::required(field))?;
            let d = duration(d, field)?;
            if d.is_zero() {
                return Err(ValidationError::new(field, "must be greater than 0"));
            }
            Ok(d)
        };
        let positive_or =
            |d: Option<&crate::pb::google::protobuf::Duration>, field: &str, default: Duration| {
                match d {
                    None => Ok(default),
                    Some(_) => required_positive(d, field),
                }
            };
        let timeout = required_positive(h.timeout.as_ref(), "timeout")?;
        let interval = required_positive(h.interval.as_ref(), "interval")?;
        let threshold = |v: Option<&crate::pb::google::protobuf::UInt32Value>, field: &str| {
            let v = v.ok_or_else(|| ValidationError::required(field))?.value;
            Ok::<_, ValidationError>(v.max(1))
        };
        let no_traffic_interval = positive_or(
            h.no_traffic_interval.as_ref(),
            "no_traffic_interval",
            DEFAULT_NO_TRAFFIC_INTERVAL,
        )?;
        let unhealthy_interval = positive_or(
            h.unhealthy_interval.as_ref(),
            "unhealthy_interval",
            interval,
        )?;
        let checker =
            match h.health_checker.as_ref() {
                Some(H::HttpHealthCheck(c)) => {
                    Checker::Http(http_check(c).map_err(|e| e.within("http_health_check"))?)
                }
                Some(H::TcpHealthCheck(c)) => {
                    if c.proxy_protocol_config.is_some() {
                        return Err(ValidationError::unsupported(
                            "tcp_health_check.proxy_protocol_config",
                        ));
                    }
                    Checker::Tcp(TcpCheck {
                        send: c
                            .send
                            .as_ref()
                            .map(|p| payload(p, "tcp_health_check.send"))
                            .transpose()?,
                        receive: payloads(&c.receive, "tcp_health_check.receive")?,
                    })
                }
                Some(H::GrpcHealthCheck(c)) => Checker::Grpc(GrpcCheck {
                    service_name: c.service_name.clone(),
                    authority: (!c.authority.is_empty()).then(|| c.authority.clone()),
                    metadata: mutations(&c.initial_metadata, &[], "initial_metadata", "")
                        .map_err(|e| e.within("grpc_health_check"))?,
                }),
                Some(H::CustomHealthCheck(_)) => {
                    return Err(ValidationError::unsupported("custom_health_check"))
                }
                None => return Err(ValidationError::new(
                    "",
                    "one of http_health_check, tcp_health_check or grpc_health_check is required",
                )),
            };
        let alt_port = h
            .alt_port
            .as_ref()
            .map(|p| {
                u16::try_from(p.value)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| ValidationError::new("alt_port", "must be 1 to 65535"))
            })
            .transpose()?;
        if let Some(tls) = h.tls_options.as_ref() {
            if !tls.alpn_protocols.is_empty() {
                return Err(ValidationError::unsupported("tls_options.alpn_protocols"));
            }
        }
        Ok(Self {
            timeout,
            interval,
            initial_jitter: optional_timeout(h.initial_jitter.as_ref(), "initial_jitter", None)?
                .unwrap_or_default(),
            interval_jitter: optional_timeout(h.interval_jitter.as_ref(), "interval_jitter", None)?
                .unwrap_or_default(),
            interval_jitter_percent: h.interval_jitter_percent,
            unhealthy_threshold: threshold(h.unhealthy_threshold.as_ref(), "unhealthy_threshold")?,
            healthy_threshold: threshold(h.healthy_threshold.as_ref(), "healthy_threshold")?,
            alt_port,
            reuse_connection: h.reuse_connection.as_ref().is_none_or(|v| v.value),
            no_traffic_healthy_interval: positive_or(
                h.no_traffic_healthy_interval.as_ref(),
                "no_traffic_healthy_interval",
                no_traffic_interval,
            )?,
            no_traffic_interval,
            unhealthy_edge_interval: positive_or(
                h.unhealthy_edge_interval.as_ref(),
                "unhealthy_edge_interval",
                unhealthy_interval,
            )?,
            healthy_edge_interval: positive_or(
                h.healthy_edge_interval.as_ref(),
                "healthy_edge_interval",
                interval,
            )?,
            unhealthy_interval,
            checker,
        })
    }
}

fn http_check(c: &core::health_check::HttpHealthCheck) -> Result<HttpCheck> {
    use crate::pb::envoy::r#type::v3::CodecClientType as Codec;
    if c.path.is_empty() {
        return Err(ValidationError::required("path"));
    }
    if !c.path.starts_with('/') || http::uri::PathAndQuery::try_from(c.path.as_str()).is_err() {
        return Err(ValidationError::new("path", "not a valid request path"));
    }
    if c.service_name_matcher.is_some() {
        return Err(ValidationError::unsupported("service_name_matcher"));
    }
    let method = match core::RequestMethod::try_from(c.method) {
        Ok(core::RequestMethod::MethodUnspecified | core::RequestMethod::Get) => http::Method::GET,
        Ok(core::RequestMethod::Head) => http::Method::HEAD,
        Ok(core::RequestMethod::Post) => http::Method::POST,
        Ok(core::RequestMethod::Put) => http::Method::PUT,
        Ok(core::RequestMethod::Delete) => http::Method::DELETE,
        Ok(core::RequestMethod::Options) => http::Method::OPTIONS,
        Ok(core::RequestMethod::Trace) => http::Method::TRACE,
        Ok(core::RequestMethod::Patch) => http::Method::PATCH,
        Ok(core::RequestMethod::Connect) | Err(_) => {
            return Err(ValidationError::new(
                "method",
                "CONNECT cannot health check",
            ))
        }
    };
    let http2 = match Codec::try_from(c.codec_client_type) {
        Ok(Codec::Http1) => false,
        Ok(Codec::Http2) => true,
        _ => {
            return Err(ValidationError::new(
                "codec_client_type",
                "HTTP1 or HTTP2 only",
            ))
        }
    };
    if !c.host.is_empty() && http::HeaderValue::from_str(&c.host).is_err() {
        return Err(ValidationError::new("host", "not a valid header value"));
    }
    let expected = ranges(&c.expected_statuses, "expected_statuses")?;
    Ok(HttpCheck {
        host: (!c.host.is_empty()).then(|| c.host.clone()),
        path: c.path.clone(),
        method,
        expected_statuses: if expected.is_empty() {
            // Envoy's default: only 200 is healthy.
            std::iter::once(200..201).collect()
        } else {
            expected
        },
        retriable_statuses: ranges(&c.retriable_statuses, "retriable_statuses")?,
        headers: mutations(
            &c.request_headers_to_add,
            &c.request_headers_to_remove,
            "request_headers_to_add",
            "request_headers_to_remove",
        )?,
        send: c.send.as_ref().map(|p| payload(p, "send")).transpose()?,
        receive: payloads(&c.receive, "receive")?,
        response_buffer_size: c
            .response_buffer_size
            .as_ref()
            .map_or(1024, |v| v.value.min(1 << 20) as usize),
        http2,
    })
}

/// Status ranges `[start, end)`, each within 100..600.
fn ranges(r: &[crate::pb::envoy::r#type::v3::Int64Range], field: &str) -> Result<Vec<Range<u16>>> {
    r.iter()
        .enumerate()
        .map(|(i, r)| {
            if !(100..=600).contains(&r.start) || !(100..=600).contains(&r.end) || r.start >= r.end
            {
                return Err(ValidationError::new(
                    format!("{field}[{i}]"),
                    "must be a non-empty range of HTTP statuses [start, end) within [100, 600)",
                ));
            }
            Ok(r.start as u16..r.end as u16)
        })
        .collect()
}

fn payloads(p: &[core::health_check::Payload], field: &str) -> Result<Vec<Vec<u8>>> {
    p.iter()
        .enumerate()
        .map(|(i, p)| payload(p, &format!("{field}[{i}]")))
        .collect()
}

/// A payload's bytes: `text` is hex, as in Envoy.
fn payload(p: &core::health_check::Payload, field: &str) -> Result<Vec<u8>> {
    use core::health_check::payload::Payload as P;
    match p.payload.as_ref() {
        Some(P::Text(hex)) => decode_hex(hex)
            .ok_or_else(|| ValidationError::new(format!("{field}.text"), "not hex-encoded bytes")),
        Some(P::Binary(b)) => Ok(b.clone()),
        None => Err(ValidationError::new(
            field,
            "one of text or binary is required",
        )),
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<HealthCheck> {
        let h: core::HealthCheck =
            crate::decode::from_yaml(yaml, "envoy.config.core.v3.HealthCheck")?;
        HealthCheck::try_from(&h)
    }

    #[test]
    fn http_defaults_are_envoys() {
        let h = check(
            "timeout: 1s\ninterval: 2s\nunhealthy_threshold: 3\nhealthy_threshold: 2\nhttp_health_check: {path: /healthz}",
        )
        .unwrap();
        assert_eq!(h.no_traffic_interval, Duration::from_secs(60));
        assert_eq!(h.unhealthy_interval, Duration::from_secs(2));
        assert_eq!(h.unhealthy_edge_interval, Duration::from_secs(2));
        assert!(h.reuse_connection);
        let Checker::Http(http) = h.checker else {
            panic!("http")
        };
        assert!(http.passes(200) && !http.passes(204));
        assert_eq!(http.host, None);
        assert_eq!(http.method, http::Method::GET);
    }

    #[test]
    fn required_fields_and_bad_values_are_named() {
        let err = check(
            "interval: 1s\nunhealthy_threshold: 1\nhealthy_threshold: 1\ntcp_health_check: {}",
        )
        .unwrap_err();
        assert_eq!(err.path, "timeout");
        let err = check(
            "timeout: 1s\ninterval: 1s\nunhealthy_threshold: 1\nhealthy_threshold: 1\nhttp_health_check: {path: /, expected_statuses: [{start: 200, end: 700}]}",
        )
        .unwrap_err();
        assert_eq!(err.path, "http_health_check.expected_statuses[0]");
        let err = check(
            "timeout: 1s\ninterval: 1s\nunhealthy_threshold: 1\nhealthy_threshold: 1\ntcp_health_check: {send: {text: zz}}",
        )
        .unwrap_err();
        assert_eq!(err.path, "tcp_health_check.send.text");
    }

    #[test]
    fn tcp_payloads_are_hex() {
        let h = check(
            "timeout: 1s\ninterval: 1s\nunhealthy_threshold: 1\nhealthy_threshold: 1\ntcp_health_check: {send: {text: '50494e47'}, receive: [{text: '504f4e47'}]}",
        )
        .unwrap();
        let Checker::Tcp(tcp) = h.checker else {
            panic!("tcp")
        };
        assert_eq!(tcp.send.as_deref(), Some(&b"PING"[..]));
        assert_eq!(tcp.receive, vec![b"PONG".to_vec()]);
    }
}
