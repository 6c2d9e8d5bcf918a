//! `envoy.filters.http.health_check`: requests matching the filter's headers are health
//! checks. Without `pass_through_mode` the proxy answers them itself — 200, or 503 with
//! flag `LH` while `/healthcheck/fail` is in effect or a cluster has fewer healthy hosts
//! than its minimum — and with it the upstream answers, unless the proxy is failing or a
//! recent upstream answer is cached. As Envoy's filter, a health check is not traced, its
//! answer names the node's cluster (`x-envoy-upstream-healthchecked-cluster`), and every
//! response of a failing proxy says so (`x-envoy-immediate-health-check-fail`).

use std::sync::Mutex;
use std::time::Instant;

use http::request::Parts;
use http::{HeaderName, HeaderValue, StatusCode};
use xds_types::http_filter::HealthCheckFilter as Config;

use crate::admin::health_check_failed;
use crate::http::ctx::RequestCtx;
use crate::http::filter::{Decision, HttpFilter, PerRoute};
use crate::local_reply::{LocalReply, ResponseFlag};

static HEALTHCHECKED_CLUSTER: HeaderName =
    HeaderName::from_static("x-envoy-upstream-healthchecked-cluster");
static IMMEDIATE_FAIL: HeaderName = HeaderName::from_static("x-envoy-immediate-health-check-fail");
static DEGRADED: HeaderName = HeaderName::from_static("x-envoy-degraded");

/// Left in the request's state: this stream is a health check (the access logs'
/// `not_health_check_filter` and the tracer read it).
#[derive(Debug, Clone, Copy)]
pub struct HealthCheckRequest;

/// The filter, and the last upstream answer in pass-through mode with `cache_time`.
pub struct HealthCheckFilter {
    config: Config,
    cached: Mutex<Option<(Instant, StatusCode, bool)>>,
}

impl HealthCheckFilter {
    pub fn new(config: &Config) -> Self {
        Self {
            config: config.clone(),
            cached: Mutex::new(None),
        }
    }

    fn cached(&self) -> Option<(StatusCode, bool)> {
        let ttl = self.config.cache_time?;
        let cached = *self.cached.lock().unwrap_or_else(|e| e.into_inner());
        cached
            .filter(|(at, ..)| at.elapsed() < ttl)
            .map(|(_, status, degraded)| (status, degraded))
    }

    /// The answer the proxy gives itself.
    fn answer(&self, ctx: &RequestCtx<'_>) -> LocalReply {
        let failing = |status| {
            let mut reply = LocalReply::new(status, "");
            reply.flag = Some(ResponseFlag::FailedLocalHealthCheck);
            reply
        };
        if health_check_failed() {
            return failing(StatusCode::SERVICE_UNAVAILABLE);
        }
        if let Some((status, degraded)) = self.cached() {
            let mut reply = if status.is_success() {
                LocalReply::new(status, "")
            } else {
                failing(status)
            };
            if degraded {
                reply
                    .headers
                    .push((DEGRADED.clone(), HeaderValue::from_static("")));
            }
            return reply;
        }
        for (cluster, min_percent) in &self.config.cluster_min_healthy_percentages {
            let Some(state) = ctx.snapshot.clusters.get(cluster) else {
                return failing(StatusCode::SERVICE_UNAVAILABLE);
            };
            let total = state.stats.membership_total.get() as f64;
            let healthy = state.stats.membership_healthy.get() as f64;
            let below = if total == 0.0 {
                *min_percent > 0.0
            } else {
                healthy < total * min_percent / 100.0
            };
            if below {
                return failing(StatusCode::SERVICE_UNAVAILABLE);
            }
        }
        LocalReply::new(StatusCode::OK, "")
    }
}

impl HttpFilter for HealthCheckFilter {
    fn on_request(
        &self,
        ctx: &mut RequestCtx<'_>,
        _per_route: Option<&PerRoute>,
        request: &mut Parts,
    ) -> Decision {
        let path = request.uri.path_and_query().map_or("/", |p| p.as_str());
        let is_check = self.config.headers.iter().all(|h| {
            crate::router::header_matches(h, &request.headers, &request.method, ctx.host, path)
        });
        if !is_check {
            return Decision::Continue;
        }
        ctx.state.insert(HealthCheckRequest);
        if !self.config.pass_through_mode || health_check_failed() || self.cached().is_some() {
            return Decision::Respond(self.answer(ctx));
        }
        Decision::Continue
    }

    fn on_response(
        &self,
        ctx: &mut RequestCtx<'_>,
        _per_route: Option<&PerRoute>,
        response: &mut http::response::Parts,
        _end_stream: bool,
    ) {
        if ctx.state.get::<HealthCheckRequest>().is_some() {
            if self.config.pass_through_mode && self.config.cache_time.is_some() {
                let degraded = response.headers.contains_key(&DEGRADED);
                *self.cached.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), response.status, degraded));
            }
            if let Ok(cluster) = HeaderValue::from_str(&ctx.snapshot.bootstrap.node_cluster) {
                response
                    .headers
                    .insert(HEALTHCHECKED_CLUSTER.clone(), cluster);
            }
        }
        if health_check_failed() {
            response
                .headers
                .insert(IMMEDIATE_FAIL.clone(), HeaderValue::from_static("true"));
        }
    }
}
