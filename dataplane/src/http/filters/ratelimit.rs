//! `envoy.filters.http.ratelimit`: global rate limiting. The request's descriptors (the
//! route's `rate_limits` at the filter's stage) go to a rate limit service in a cluster;
//! over the limit is 429 with `x-envoy-ratelimited`, a failed call lets the request on
//! unless `failure_mode_deny`. A request with no descriptors is not sent.

use http::request::Parts;
use http::{HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use tracing::debug;
use xds_types::http_filter::local_ratelimit::VhRateLimits;
use xds_types::http_filter::GlobalRateLimit;
use xds_types::pb::envoy::extensions::common::ratelimit::v3 as common;
use xds_types::pb::envoy::service::ratelimit::v3 as rls;

use super::descriptors::descriptors;
use super::grpc::Channels;
use crate::http::ctx::RequestCtx;
use crate::http::filter::{Decision, Edits, HttpFilter, PerRoute};
use crate::local_reply::{LocalReply, ResponseFlag};
use crate::stats::Stats;

static X_ENVOY_RATELIMITED: HeaderName = HeaderName::from_static("x-envoy-ratelimited");
static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// `cluster.<rls cluster>.ratelimit.*`, as in Envoy.
#[derive(Clone)]
struct Counters {
    ok: Counter,
    over_limit: Counter,
    error: Counter,
    failure_mode_allowed: Counter,
}

/// The filter.
pub struct RateLimitFilter {
    config: std::sync::Arc<GlobalRateLimit>,
    counters: Counters,
    channels: Channels,
}

impl RateLimitFilter {
    pub fn new(config: &GlobalRateLimit, stats: &Stats) -> Self {
        let c = |n: &str| {
            stats.named_counter(
                "envoy_cluster_ratelimit",
                &config.cluster,
                &format!("cluster.{}.ratelimit.{n}", config.cluster),
                n,
            )
        };
        Self {
            config: std::sync::Arc::new(config.clone()),
            counters: Counters {
                ok: c("ok"),
                over_limit: c("over_limit"),
                error: c("error"),
                failure_mode_allowed: c("failure_mode_allowed"),
            },
            channels: Channels::default(),
        }
    }
}

/// Seconds in a rate limit unit.
fn window_seconds(unit: i32) -> u64 {
    use rls::rate_limit_response::rate_limit::Unit;
    match Unit::try_from(unit) {
        Ok(Unit::Second) => 1,
        Ok(Unit::Minute) => 60,
        Ok(Unit::Hour) => 3600,
        Ok(Unit::Day) => 86_400,
        Ok(Unit::Week) => 604_800,
        Ok(Unit::Month) => 2_592_000,
        Ok(Unit::Year) => 31_536_000,
        _ => 0,
    }
}

/// The draft-03 `x-ratelimit-*` headers from the service's descriptor statuses: the
/// closest limit's numbers, and every limit's quota policy.
fn x_ratelimit_headers(
    statuses: &[rls::rate_limit_response::DescriptorStatus],
) -> Vec<(HeaderName, HeaderValue)> {
    let limited: Vec<_> = statuses
        .iter()
        .filter_map(|s| s.current_limit.as_ref().map(|l| (s, l)))
        .collect();
    let Some((closest, limit)) = limited.iter().min_by_key(|(s, _)| s.limit_remaining) else {
        return Vec::new();
    };
    let mut value = limit.requests_per_unit.to_string();
    for (_, l) in &limited {
        value.push_str(&format!(
            ", {};w={}",
            l.requests_per_unit,
            window_seconds(l.unit)
        ));
        if !l.name.is_empty() {
            value.push_str(&format!(";name=\"{}\"", l.name));
        }
    }
    let reset = closest
        .duration_until_reset
        .as_ref()
        .map_or(0, |d| d.seconds.max(0) as u64);
    let mut out = Vec::new();
    if let Ok(v) = HeaderValue::from_str(&value) {
        out.push((X_RATELIMIT_LIMIT.clone(), v));
    }
    out.push((
        X_RATELIMIT_REMAINING.clone(),
        HeaderValue::from(closest.limit_remaining),
    ));
    out.push((X_RATELIMIT_RESET.clone(), HeaderValue::from(reset)));
    out
}

fn header_list(
    headers: &[xds_types::pb::envoy::config::core::v3::HeaderValue],
) -> Vec<(HeaderName, HeaderValue)> {
    headers
        .iter()
        .filter_map(|h| {
            Some((
                HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes()).ok()?,
                HeaderValue::from_str(&h.value).ok()?,
            ))
        })
        .collect()
}

impl HttpFilter for RateLimitFilter {
    fn on_request(
        &self,
        ctx: &mut RequestCtx<'_>,
        _per_route: Option<&PerRoute>,
        request: &mut Parts,
    ) -> Decision {
        let config = &self.config;
        let found = descriptors(
            &config.rate_limits,
            config.stage,
            VhRateLimits::Override,
            ctx,
            request,
        );
        if found.is_empty() {
            return Decision::Continue;
        }
        let call = rls::RateLimitRequest {
            domain: config.domain.clone(),
            descriptors: found
                .into_iter()
                .map(|d| common::RateLimitDescriptor {
                    entries: d
                        .into_iter()
                        .map(|(key, value)| common::rate_limit_descriptor::Entry { key, value })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            hits_addend: 0,
        };
        let channel = self
            .channels
            .pick(ctx.snapshot, &config.cluster, config.timeout);
        let config = config.clone();
        let counters = self.counters.clone();
        Decision::Wait(Box::pin(async move {
            let answer = match channel {
                None => None,
                Some(channel) => {
                    let mut client =
                        rls::rate_limit_service_client::RateLimitServiceClient::new(channel);
                    let mut request = tonic::Request::new(call);
                    request.set_timeout(config.timeout);
                    match tokio::time::timeout(config.timeout, client.should_rate_limit(request))
                        .await
                    {
                        Ok(Ok(response)) => Some(response.into_inner()),
                        Ok(Err(status)) => {
                            debug!(%status, "rate limit call failed");
                            None
                        }
                        Err(_) => {
                            debug!("rate limit call timed out");
                            None
                        }
                    }
                }
            };
            use rls::rate_limit_response::Code;
            // Any answer counts, UNKNOWN included (as OK, as in Envoy); only a failed call
            // is an error.
            let response = match answer {
                Some(r) => r,
                None => {
                    counters.error.inc();
                    if config.failure_mode_deny {
                        let mut reply = LocalReply::new(config.status_on_error, "");
                        reply.flag = Some(ResponseFlag::RateLimitServiceError);
                        return Decision::Respond(reply);
                    }
                    counters.failure_mode_allowed.inc();
                    return Decision::Continue;
                }
            };
            let mut response_headers = if config.x_ratelimit_headers {
                x_ratelimit_headers(&response.statuses)
            } else {
                Vec::new()
            };
            response_headers.extend(header_list(&response.response_headers_to_add));
            if response.overall_code == Code::OverLimit as i32 {
                counters.over_limit.inc();
                let mut reply = LocalReply::new(config.rate_limited_status, response.raw_body);
                if config.x_envoy_ratelimited_header {
                    reply.headers.push((
                        X_ENVOY_RATELIMITED.clone(),
                        HeaderValue::from_static("true"),
                    ));
                }
                reply.headers.extend(response_headers);
                reply.mutations = Some(config.response_headers.clone());
                reply.flag = Some(ResponseFlag::RateLimited);
                return Decision::Respond(reply);
            }
            counters.ok.inc();
            Decision::ContinueWith(Edits {
                request: header_list(&response.request_headers_to_add)
                    .into_iter()
                    .map(|(n, v)| (n, v, false))
                    .collect(),
                response: response_headers,
                ..Edits::default()
            })
        }))
    }
}
