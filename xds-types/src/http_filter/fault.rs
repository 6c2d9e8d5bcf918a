//! `envoy.extensions.filters.http.fault.v3.HTTPFault`: delays and aborts injected into a
//! share of requests, fixed or controlled by the request's `x-envoy-fault-*` headers.

use std::time::Duration;

use super::Fraction;
use crate::error::{Result, ValidationError};
use crate::pb::envoy::extensions::filters::common::fault::v3 as common;
use crate::pb::envoy::extensions::filters::http::fault::v3 as pb;
use crate::route::HeaderMatcher;

/// A share of requests; with a header-controlled fault the request header may lower it
/// (its numerator counts in the configured denominator's units).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultShare {
    pub fraction: Fraction,
    /// Parts per million one unit of the configured numerator is.
    pub unit: u32,
}

/// What is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelaySource {
    Fixed(Duration),
    /// `x-envoy-fault-delay-request` (milliseconds).
    Header,
}

/// How an aborted request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortSource {
    Http(u16),
    Grpc(u32),
    /// `x-envoy-fault-abort-request` (HTTP status) or `x-envoy-fault-abort-grpc-request`.
    Header,
}

#[derive(Debug, Clone)]
pub struct Delay {
    pub source: DelaySource,
    pub share: FaultShare,
}

#[derive(Debug, Clone)]
pub struct Abort {
    pub source: AbortSource,
    pub share: FaultShare,
    /// The body of the local reply (Envoy's default text when empty).
    pub body: String,
}

/// The validated filter config.
/// Where a response rate limit's rate (KiB/s) comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateSource {
    Fixed(u64),
    /// `x-envoy-fault-throughput-response`.
    Header,
}

/// `response_rate_limit`: the response body is sent no faster than the rate.
#[derive(Debug, Clone)]
pub struct ResponseRateLimit {
    pub source: RateSource,
    pub share: FaultShare,
}

#[derive(Debug, Clone)]
pub struct Fault {
    pub delay: Option<Delay>,
    pub abort: Option<Abort>,
    pub response_rate_limit: Option<ResponseRateLimit>,
    /// Faults apply only to requests routed to this cluster.
    pub upstream_cluster: Option<String>,
    /// Faults apply only to requests whose headers all match.
    pub headers: Vec<HeaderMatcher>,
    /// Faults apply only to requests whose `x-envoy-downstream-service-node` is listed.
    pub downstream_nodes: Vec<String>,
    pub max_active_faults: Option<u32>,
}

fn share(p: Option<&crate::pb::envoy::r#type::v3::FractionalPercent>) -> FaultShare {
    match p {
        // An unset percentage is the proto default, 0 of HUNDRED, as in Envoy.
        None => FaultShare {
            fraction: Fraction::NEVER,
            unit: Fraction::unit(0),
        },
        Some(p) => FaultShare {
            fraction: Fraction::from_proto(p),
            unit: Fraction::unit(p.denominator),
        },
    }
}

impl TryFrom<&pb::HttpFault> for Fault {
    type Error = ValidationError;

    fn try_from(c: &pb::HttpFault) -> Result<Self> {
        let response_rate_limit = c
            .response_rate_limit
            .as_ref()
            .map(|r| {
                use common::fault_rate_limit::LimitType;
                let source = match r.limit_type.as_ref() {
                    Some(LimitType::FixedLimit(f)) if f.limit_kbps >= 1 => {
                        RateSource::Fixed(f.limit_kbps)
                    }
                    Some(LimitType::FixedLimit(_)) => {
                        return Err(ValidationError::new(
                            "response_rate_limit.fixed_limit.limit_kbps",
                            "must be at least 1",
                        ))
                    }
                    Some(LimitType::HeaderLimit(_)) => RateSource::Header,
                    None => {
                        return Err(ValidationError::required("response_rate_limit.fixed_limit"))
                    }
                };
                Ok(ResponseRateLimit {
                    source,
                    share: share(r.percentage.as_ref()),
                })
            })
            .transpose()?;
        let delay = c
            .delay
            .as_ref()
            .map(|d| {
                use common::fault_delay::FaultDelaySecifier as S;
                let source = match d.fault_delay_secifier.as_ref() {
                    Some(S::FixedDelay(f)) => {
                        DelaySource::Fixed(crate::util::duration(f, "delay.fixed_delay")?)
                    }
                    Some(S::HeaderDelay(_)) => DelaySource::Header,
                    None => return Err(ValidationError::required("delay.fixed_delay")),
                };
                Ok(Delay {
                    source,
                    share: share(d.percentage.as_ref()),
                })
            })
            .transpose()?;
        let abort = c
            .abort
            .as_ref()
            .map(|a| {
                use pb::fault_abort::ErrorType as E;
                let source = match a.error_type.as_ref() {
                    Some(E::HttpStatus(s)) if (200..600).contains(s) => {
                        AbortSource::Http(*s as u16)
                    }
                    Some(E::HttpStatus(_)) => {
                        return Err(ValidationError::new(
                            "abort.http_status",
                            "must be in [200, 600)",
                        ))
                    }
                    Some(E::GrpcStatus(s)) => AbortSource::Grpc(*s),
                    Some(E::HeaderAbort(_)) => AbortSource::Header,
                    None => return Err(ValidationError::required("abort.http_status")),
                };
                Ok(Abort {
                    source,
                    share: share(a.percentage.as_ref()),
                    body: a.response_body.clone(),
                })
            })
            .transpose()?;
        Ok(Self {
            delay,
            abort,
            response_rate_limit,
            upstream_cluster: (!c.upstream_cluster.is_empty()).then(|| c.upstream_cluster.clone()),
            headers: c
                .headers
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    HeaderMatcher::try_from(h).map_err(|e| e.within(format!("headers[{i}]")))
                })
                .collect::<Result<_>>()?,
            downstream_nodes: c.downstream_nodes.clone(),
            max_active_faults: c.max_active_faults.as_ref().map(|v| v.value),
        })
    }
}
