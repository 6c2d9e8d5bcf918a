//! `envoy.filters.http.fault`: delays, then aborts, a share of the requests that match
//! the fault's cluster, headers and downstream nodes, and sends a share of the responses
//! no faster than a rate; fixed or driven by the request's `x-envoy-fault-*` headers
//! (which can only lower the configured share).
//!
//! As Envoy, a faulted request holds one of `max_active_faults` slots: while it is delayed,
//! or — when the fault has a response rate limit — until its stream ends.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use prometheus_client::metrics::counter::Counter;
use xds_types::http_filter::fault::{AbortSource, DelaySource, FaultShare, RateSource};
use xds_types::http_filter::{Fault, Fraction};

use super::sample;
use crate::body::Body;
use crate::http::ctx::RequestCtx;
use crate::http::filter::{Decision, HttpFilter, PerRoute};
use crate::local_reply::{LocalReply, ResponseFlag};
use crate::stats::Stats;

const DELAY_HEADER: &str = "x-envoy-fault-delay-request";
const DELAY_PERCENT_HEADER: &str = "x-envoy-fault-delay-request-percentage";
const ABORT_HEADER: &str = "x-envoy-fault-abort-request";
const ABORT_GRPC_HEADER: &str = "x-envoy-fault-abort-grpc-request";
const ABORT_PERCENT_HEADER: &str = "x-envoy-fault-abort-request-percentage";
const THROUGHPUT_HEADER: &str = "x-envoy-fault-throughput-response";
const THROUGHPUT_PERCENT_HEADER: &str = "x-envoy-fault-throughput-response-percentage";
const DOWNSTREAM_NODE_HEADER: &str = "x-envoy-downstream-service-node";
const DEFAULT_ABORT_BODY: &str = "fault filter abort";

/// The filter, its counters (`http.<prefix>.fault.*`) and its active faults.
pub struct FaultFilter {
    config: Fault,
    shared: Arc<Shared>,
}

struct Shared {
    active: AtomicU32,
    delays_injected: Counter,
    aborts_injected: Counter,
    faults_overflow: Counter,
    response_rl_injected: Counter,
}

/// A request's response rate limit, in KiB per second, left for the response phase.
#[derive(Clone, Copy)]
struct Throttle(u64);

impl FaultFilter {
    pub fn new(config: &Fault, hcm_prefix: &str, stats: &Stats) -> Self {
        let c = |n: &str| stats.filter_counter(hcm_prefix, &format!("fault.{n}"));
        Self {
            config: config.clone(),
            shared: Arc::new(Shared {
                active: AtomicU32::new(0),
                delays_injected: c("delays_injected"),
                aborts_injected: c("aborts_injected"),
                faults_overflow: c("faults_overflow"),
                response_rl_injected: c("response_rl_injected"),
            }),
        }
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Whether this request gets the fault: the configured share, lowered by the request's
/// percentage header for header-controlled faults.
fn chosen(
    share: FaultShare,
    header_controlled: bool,
    headers: &HeaderMap,
    percent_header: &str,
) -> bool {
    let mut fraction = share.fraction;
    if header_controlled {
        if let Some(n) = header_u64(headers, percent_header) {
            let asked = u64::from(share.unit).saturating_mul(n).min(1_000_000) as u32;
            fraction = Fraction {
                per_million: asked.min(fraction.per_million),
            };
        }
    }
    sample(fraction)
}

/// The abort's reply, if this request is aborted.
fn abort(config: &Fault, headers: &HeaderMap) -> Option<LocalReply> {
    let a = config.abort.as_ref()?;
    let header = matches!(a.source, AbortSource::Header);
    if !chosen(a.share, header, headers, ABORT_PERCENT_HEADER) {
        return None;
    }
    let body: String = if a.body.is_empty() {
        DEFAULT_ABORT_BODY.into()
    } else {
        a.body.clone()
    };
    let http_status = |code: u64| {
        u16::try_from(code)
            .ok()
            .filter(|c| (200..600).contains(c))
            .and_then(|c| StatusCode::from_u16(c).ok())
    };
    let grpc = |code: u64| {
        let mut reply = LocalReply::new(StatusCode::OK, "");
        reply.headers.push((
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        ));
        reply.headers.push((
            HeaderName::from_static("grpc-status"),
            HeaderValue::from(code),
        ));
        if let Ok(v) = HeaderValue::from_str(&body) {
            reply
                .headers
                .push((HeaderName::from_static("grpc-message"), v));
        }
        reply
    };
    let mut reply = match a.source {
        AbortSource::Http(code) => LocalReply::new(http_status(u64::from(code))?, ""),
        AbortSource::Grpc(code) => grpc(u64::from(code)),
        AbortSource::Header => match header_u64(headers, ABORT_HEADER).and_then(http_status) {
            Some(status) => LocalReply::new(status, ""),
            None => grpc(header_u64(headers, ABORT_GRPC_HEADER)?),
        },
    };
    if reply.body.is_empty() && reply.status != StatusCode::OK {
        reply.body = body.into();
    }
    reply.flag = Some(ResponseFlag::FaultInjected);
    Some(reply)
}

/// A slot of `max_active_faults`, released when dropped.
struct ActiveFault(Arc<Shared>);

impl Drop for ActiveFault {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl FaultFilter {
    /// Takes a slot for this request's faults unless it holds one; false when every slot
    /// is taken (counted as an overflow).
    fn activate(&self, config: &Fault, active: &mut Option<ActiveFault>) -> bool {
        if active.is_some() {
            return true;
        }
        let before = self.shared.active.fetch_add(1, Ordering::Relaxed);
        let guard = ActiveFault(self.shared.clone());
        if config.max_active_faults.is_some_and(|max| before >= max) {
            self.shared.faults_overflow.inc();
            return false;
        }
        *active = Some(guard);
        true
    }
}

/// Keeps a fault's slot until the stream ends.
fn hold_until_end(ctx: &mut RequestCtx<'_>, active: Option<ActiveFault>) {
    if let Some(guard) = active {
        ctx.at_end.push(Box::new(move |_| drop(guard)));
    }
}

/// The response rate (KiB/s) for this request, when the rate limit applies to it.
fn response_rate(config: &Fault, headers: &HeaderMap) -> Option<u64> {
    let limit = config.response_rate_limit.as_ref()?;
    let header = matches!(limit.source, RateSource::Header);
    if !chosen(limit.share, header, headers, THROUGHPUT_PERCENT_HEADER) {
        return None;
    }
    match limit.source {
        RateSource::Fixed(kbps) => Some(kbps),
        RateSource::Header => header_u64(headers, THROUGHPUT_HEADER).filter(|k| *k > 0),
    }
}

impl HttpFilter for FaultFilter {
    fn on_request(
        &self,
        ctx: &mut RequestCtx<'_>,
        per_route: Option<&PerRoute>,
        request: &mut Parts,
    ) -> Decision {
        let config = match per_route {
            Some(PerRoute::Fault(f)) => f,
            _ => &self.config,
        };
        if let Some(cluster) = &config.upstream_cluster {
            if ctx.route_cluster() != Some(cluster.as_str()) {
                return Decision::Continue;
            }
        }
        if !config.downstream_nodes.is_empty() {
            let node = request
                .headers
                .get(DOWNSTREAM_NODE_HEADER)
                .and_then(|v| v.to_str().ok());
            if !node.is_some_and(|n| config.downstream_nodes.iter().any(|d| d == n)) {
                return Decision::Continue;
            }
        }
        let path = request.uri.path_and_query().map_or("/", |p| p.as_str());
        if !config.headers.iter().all(|m| {
            crate::router::header_matches(m, &request.headers, &request.method, ctx.host, path)
        }) {
            return Decision::Continue;
        }
        let mut active = None;
        if let Some(kbps) = response_rate(config, &request.headers) {
            if self.activate(config, &mut active) {
                self.shared.response_rl_injected.inc();
                ctx.state.insert(Throttle(kbps));
            }
        }
        // With a response rate limit configured, the slot is held to the stream's end.
        let hold_to_end = config.response_rate_limit.is_some();
        let delay = config.delay.as_ref().and_then(|d| {
            let header = matches!(d.source, DelaySource::Header);
            if !chosen(d.share, header, &request.headers, DELAY_PERCENT_HEADER) {
                return None;
            }
            match d.source {
                DelaySource::Fixed(t) => Some(t),
                DelaySource::Header => {
                    header_u64(&request.headers, DELAY_HEADER).map(Duration::from_millis)
                }
            }
        });
        if let Some(delay) = delay.filter(|d| !d.is_zero()) {
            if self.activate(config, &mut active) {
                self.shared.delays_injected.inc();
                // Held to the stream's end, or only through the delay.
                let during_delay = if hold_to_end {
                    hold_until_end(ctx, active.take());
                    None
                } else {
                    active.take()
                };
                let abort_reply = abort(config, &request.headers);
                let shared = self.shared.clone();
                return Decision::Wait(Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    drop(during_delay);
                    match abort_reply {
                        Some(reply) => {
                            shared.aborts_injected.inc();
                            Decision::Respond(reply)
                        }
                        None => Decision::Continue,
                    }
                }));
            }
        }
        if let Some(reply) = abort(config, &request.headers) {
            if self.activate(config, &mut active) {
                self.shared.aborts_injected.inc();
                hold_until_end(ctx, active);
                return Decision::Respond(reply);
            }
        }
        hold_until_end(ctx, active);
        Decision::Continue
    }

    fn on_response_body(
        &self,
        ctx: &mut RequestCtx<'_>,
        _per_route: Option<&PerRoute>,
        _response: &http::response::Parts,
        body: Body,
    ) -> Body {
        match ctx.state.get::<Throttle>() {
            Some(Throttle(kbps)) => {
                http_body_util::BodyExt::boxed(crate::body::Throttled::new(body, *kbps))
            }
            None => body,
        }
    }
}
