//! `envoy.filters.http.cors`: answers preflights from allowed origins and marks responses
//! to simple cross-origin requests, with the policies of the route and its virtual host.
//! As in Envoy: each attribute comes from the most specific policy that sets it, only
//! routes that forward have a policy, and a preflight from an origin that is not allowed
//! goes upstream unless `forward_not_matching_preflights` is false.

use http::request::Parts;
use http::{header, HeaderValue, Method, StatusCode};
use prometheus_client::metrics::counter::Counter;
use xds_types::http_filter::CorsPolicy;
use xds_types::route::RouteAction;

use super::sample;
use crate::http::ctx::RequestCtx;
use crate::http::filter::{Decision, HttpFilter, PerRoute};
use crate::local_reply::LocalReply;
use crate::stats::Stats;

static ALLOW_PRIVATE_NETWORK: header::HeaderName =
    header::HeaderName::from_static("access-control-allow-private-network");
static REQUEST_PRIVATE_NETWORK: header::HeaderName =
    header::HeaderName::from_static("access-control-request-private-network");

/// The CORS filter and its counters (`http.<prefix>.cors.*`).
pub struct Cors {
    origin_valid: Counter,
    origin_invalid: Counter,
}

impl Cors {
    pub fn new(hcm_prefix: &str, stats: &Stats) -> Self {
        let c = |n: &str| stats.filter_counter(hcm_prefix, &format!("cors.{n}"));
        Self {
            origin_valid: c("origin_valid"),
            origin_invalid: c("origin_invalid"),
        }
    }
}

/// The policies that apply to a request, most specific first.
struct Policies<'a>(Vec<&'a CorsPolicy>);

impl<'a> Policies<'a> {
    fn first<T>(&self, f: impl Fn(&'a CorsPolicy) -> Option<T>) -> Option<T> {
        self.0.iter().find_map(|p| f(p))
    }

    fn text(&self, f: impl Fn(&'a CorsPolicy) -> &'a str) -> &'a str {
        self.first(|p| Some(f(p)).filter(|s| !s.is_empty()))
            .unwrap_or("")
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        self.first(|p| Some(&p.allow_origins).filter(|o| !o.is_empty()))
            .is_some_and(|matchers| matchers.iter().any(|m| m.matches("*") || m.matches(origin)))
    }

    fn allow_credentials(&self) -> bool {
        self.first(|p| p.allow_credentials).unwrap_or(false)
    }
}

fn policies<'a>(ctx: &RequestCtx<'a>) -> Policies<'a> {
    let Some(m) = ctx.route else {
        return Policies(Vec::new());
    };
    let RouteAction::Forward(action) = &m.route.action else {
        return Policies(Vec::new());
    };
    let from_filters: Vec<&CorsPolicy> = ctx
        .overrides_of(|p| match p {
            PerRoute::Cors(c) => Some(&**c),
            _ => None,
        })
        .collect();
    if !from_filters.is_empty() {
        return Policies(from_filters);
    }
    Policies(
        [action.cors.as_deref(), m.virtual_host.cors.as_deref()]
            .into_iter()
            .flatten()
            .collect(),
    )
}

fn value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(text).ok()
}

impl HttpFilter for Cors {
    fn on_request(
        &self,
        ctx: &mut RequestCtx<'_>,
        _per_route: Option<&PerRoute>,
        request: &mut Parts,
    ) -> Decision {
        let policies = policies(ctx);
        let Some(primary) = policies.0.first() else {
            return Decision::Continue;
        };
        let enabled = sample(primary.filter_enabled);
        let shadow = primary.shadow_enabled.is_some_and(sample);
        if !enabled && !shadow {
            return Decision::Continue;
        }
        let Some(origin) = request
            .headers
            .get(header::ORIGIN)
            .filter(|o| !o.is_empty())
            .cloned()
        else {
            return Decision::Continue;
        };
        let allowed = origin.to_str().is_ok_and(|o| policies.origin_allowed(o));
        if allowed {
            self.origin_valid.inc();
        } else {
            self.origin_invalid.inc();
        }
        if !enabled {
            return Decision::Continue;
        }
        let request_method = request
            .headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .filter(|m| !m.is_empty())
            .cloned();
        let preflight = request.method == Method::OPTIONS && request_method.is_some();
        if !preflight {
            if allowed {
                ctx.response_headers
                    .push((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin));
                if policies.allow_credentials() {
                    ctx.response_headers.push((
                        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                        HeaderValue::from_static("true"),
                    ));
                }
                if let Some(v) = value(policies.text(|p| &p.expose_headers)) {
                    ctx.response_headers
                        .push((header::ACCESS_CONTROL_EXPOSE_HEADERS, v));
                }
            }
            return Decision::Continue;
        }
        let forward = policies
            .first(|p| p.forward_not_matching_preflights)
            .unwrap_or(true);
        if !allowed && forward {
            return Decision::Continue;
        }
        let mut reply = LocalReply::new(StatusCode::OK, "");
        if allowed {
            reply
                .headers
                .push((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin));
            // Envoy's preflight reply passes through the filter's own response phase.
            if let Some(v) = value(policies.text(|p| &p.expose_headers)) {
                reply
                    .headers
                    .push((header::ACCESS_CONTROL_EXPOSE_HEADERS, v));
            }
        }
        if policies.allow_credentials() {
            reply.headers.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        // `*` echoes what the preflight asked for, empty when it asked for nothing.
        let echo = |configured: &str, asked: Option<&HeaderValue>| match configured {
            "" => None,
            "*" => Some(asked.cloned().unwrap_or(HeaderValue::from_static(""))),
            list => value(list),
        };
        if let Some(v) = echo(policies.text(|p| &p.allow_methods), request_method.as_ref()) {
            reply
                .headers
                .push((header::ACCESS_CONTROL_ALLOW_METHODS, v));
        }
        if let Some(v) = echo(
            policies.text(|p| &p.allow_headers),
            request.headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS),
        ) {
            reply
                .headers
                .push((header::ACCESS_CONTROL_ALLOW_HEADERS, v));
        }
        if let Some(v) = value(policies.text(|p| &p.max_age)) {
            reply.headers.push((header::ACCESS_CONTROL_MAX_AGE, v));
        }
        let private_network = policies
            .first(|p| p.allow_private_network_access)
            .unwrap_or(false);
        if private_network
            && request
                .headers
                .get(&REQUEST_PRIVATE_NETWORK)
                .is_some_and(|v| v == "true")
        {
            reply.headers.push((
                ALLOW_PRIVATE_NETWORK.clone(),
                HeaderValue::from_static("true"),
            ));
        }
        Decision::Respond(reply)
    }
}
