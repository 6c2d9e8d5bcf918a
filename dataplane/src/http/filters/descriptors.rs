//! Rate limit descriptors: what a route's `rate_limits` actions make of a request, for the
//! local and the global rate limit filters.

use http::request::Parts;
use xds_types::http_filter::local_ratelimit::VhRateLimits;
use xds_types::rate_limit::{RateLimitAction, RateLimitPolicy};
use xds_types::route::RouteAction;

use crate::http::ctx::RequestCtx;

/// One descriptor: `(key, value)` entries.
pub type Descriptor = Vec<(String, String)>;

/// The request's descriptors from the rate limit actions of its route (and virtual host,
/// per `vh_rate_limits`), or the filter's own `rate_limits`, at the filter's stage.
pub fn descriptors(
    own: &[RateLimitPolicy],
    stage: u32,
    vh_rate_limits: VhRateLimits,
    ctx: &RequestCtx<'_>,
    request: &Parts,
) -> Vec<Descriptor> {
    let mut policies: Vec<&RateLimitPolicy> = Vec::new();
    if !own.is_empty() {
        policies.extend(own.iter());
    } else if let Some(m) = ctx.route {
        let route_limits: &[RateLimitPolicy] = match &m.route.action {
            RouteAction::Forward(f) => &f.rate_limits,
            _ => &[],
        };
        let include_vh =
            matches!(&m.route.action, RouteAction::Forward(f) if f.include_vh_rate_limits);
        policies.extend(route_limits.iter());
        let vh = match (include_vh, vh_rate_limits) {
            (true, _) | (false, VhRateLimits::Include) => true,
            (false, VhRateLimits::Ignore) => false,
            (false, VhRateLimits::Override) => route_limits.is_empty(),
        };
        if vh {
            policies.extend(m.virtual_host.rate_limits.iter());
        }
    }
    policies
        .into_iter()
        .filter(|p| p.stage == stage)
        .filter_map(|p| descriptor(p, ctx, request))
        .collect()
}

fn descriptor(
    policy: &RateLimitPolicy,
    ctx: &RequestCtx<'_>,
    request: &Parts,
) -> Option<Descriptor> {
    let mut entries = Vec::with_capacity(policy.actions.len());
    for action in &policy.actions {
        match action {
            RateLimitAction::RemoteAddress => {
                entries.push(("remote_address".into(), ctx.client_ip.to_string()));
            }
            RateLimitAction::DestinationCluster => {
                entries.push((
                    "destination_cluster".into(),
                    ctx.route_cluster()?.to_string(),
                ));
            }
            RateLimitAction::RequestHeader {
                header,
                key,
                skip_if_absent,
            } => match request.headers.get(header).and_then(|v| v.to_str().ok()) {
                Some(v) => entries.push((key.clone(), v.to_string())),
                None if *skip_if_absent => {}
                None => return None,
            },
            RateLimitAction::GenericKey { key, value } => {
                entries.push((key.clone(), value.clone()));
            }
            RateLimitAction::HeaderValueMatch {
                key,
                value,
                expect_match,
                headers,
            } => {
                let matched = headers.iter().all(|h| {
                    h.matches(
                        request
                            .headers
                            .get(h.name.as_str())
                            .and_then(|v| v.to_str().ok()),
                    )
                });
                if matched != *expect_match {
                    return None;
                }
                entries.push((key.clone(), value.clone()));
            }
        }
    }
    (!entries.is_empty()).then_some(entries)
}
