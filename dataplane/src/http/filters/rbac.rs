//! `envoy.filters.http.rbac`: allow or deny by policies of permissions and principals,
//! with shadow rules that only count. A denied request gets Envoy's 403.

use http::request::Parts;
use http::StatusCode;
use prometheus_client::metrics::counter::Counter;
use xds_types::http_filter::rbac::{Action, Permission, Principal, Rules};
use xds_types::http_filter::Rbac;
use xds_types::route::HeaderMatcher;

use crate::http::ctx::RequestCtx;
use crate::http::filter::{Decision, HttpFilter, PerRoute};
use crate::local_reply::{LocalReply, ResponseFlag};
use crate::stats::Stats;
use xds_types::tls::SanType;

/// One RBAC config with its counters.
pub struct Engine {
    config: Rbac,
    allowed: Counter,
    denied: Counter,
    shadow_allowed: Counter,
    shadow_denied: Counter,
}

impl Engine {
    /// `hcm_prefix` is the connection manager's `stat_prefix`: counters are
    /// `http.<hcm_prefix>.rbac.<rules_stat_prefix>allowed` and so on.
    pub fn new(config: &Rbac, hcm_prefix: &str, stats: &Stats) -> Self {
        let c =
            |prefix: &str, n: &str| stats.filter_counter(hcm_prefix, &format!("rbac.{prefix}{n}"));
        let (r, s) = (&config.rules_stat_prefix, &config.shadow_rules_stat_prefix);
        Self {
            config: config.clone(),
            allowed: c(r, "allowed"),
            denied: c(r, "denied"),
            shadow_allowed: c(s, "shadow_allowed"),
            shadow_denied: c(s, "shadow_denied"),
        }
    }

    fn decide(&self, ctx: &RequestCtx<'_>, request: &Parts) -> Decision {
        if let Some(shadow) = &self.config.shadow_rules {
            if allows(shadow, ctx, request) {
                self.shadow_allowed.inc();
            } else {
                self.shadow_denied.inc();
            }
        }
        let Some(rules) = &self.config.rules else {
            return Decision::Continue;
        };
        if allows(rules, ctx, request) {
            self.allowed.inc();
            return Decision::Continue;
        }
        self.denied.inc();
        let mut reply = LocalReply::new(StatusCode::FORBIDDEN, "RBAC: access denied");
        reply.flag = Some(ResponseFlag::RbacAccessDenied);
        Decision::Respond(reply)
    }
}

/// Whether `rules` let the request through.
fn allows(rules: &Rules, ctx: &RequestCtx<'_>, request: &Parts) -> bool {
    let matched = rules.policies.values().any(|p| {
        p.permissions.iter().any(|x| permission(x, ctx, request))
            && p.principals.iter().any(|x| principal(x, ctx, request))
    });
    match rules.action {
        Action::Allow => matched,
        Action::Deny => !matched,
        Action::Log => true,
    }
}

fn header(m: &HeaderMatcher, ctx: &RequestCtx<'_>, request: &Parts) -> bool {
    let path = request.uri.path_and_query().map_or("/", |p| p.as_str());
    crate::router::header_matches(m, &request.headers, &request.method, ctx.host, path)
}

fn permission(p: &Permission, ctx: &RequestCtx<'_>, request: &Parts) -> bool {
    match p {
        Permission::Any => true,
        Permission::And(all) => all.iter().all(|x| permission(x, ctx, request)),
        Permission::Or(any) => any.iter().any(|x| permission(x, ctx, request)),
        Permission::Not(x) => !permission(x, ctx, request),
        Permission::Header(m) => header(m, ctx, request),
        Permission::UrlPath(m) => m.matches(request.uri.path()),
        Permission::DestinationIp(range) => range.contains(ctx.local.ip()),
        Permission::DestinationPort(port) => ctx.local.port() == *port,
        Permission::DestinationPortRange(start, end) => (*start..*end).contains(&ctx.local.port()),
        Permission::RequestedServerName(m) => {
            m.matches(ctx.tls.and_then(|t| t.sni.as_deref()).unwrap_or(""))
        }
    }
}

fn principal(p: &Principal, ctx: &RequestCtx<'_>, request: &Parts) -> bool {
    match p {
        Principal::Any => true,
        Principal::And(all) => all.iter().all(|x| principal(x, ctx, request)),
        Principal::Or(any) => any.iter().any(|x| principal(x, ctx, request)),
        Principal::Not(x) => !principal(x, ctx, request),
        Principal::Authenticated(name) => {
            let Some(leaf) = ctx.tls.and_then(|t| t.peer_chain.first()) else {
                return false;
            };
            let Some(name) = name else {
                return true;
            };
            let sans = crate::tls::subject_alt_names(leaf.as_ref());
            let of = |kind: SanType| {
                sans.iter()
                    .filter(move |(t, _)| *t == kind)
                    .map(|(_, v)| v.as_str())
            };
            let uris: Vec<&str> = of(SanType::Uri).collect();
            let dns: Vec<&str> = of(SanType::Dns).collect();
            if !uris.is_empty() {
                uris.iter().any(|v| name.matches(v))
            } else if !dns.is_empty() {
                dns.iter().any(|v| name.matches(v))
            } else {
                name.matches(&crate::xfcc::subject(leaf.as_ref()))
            }
        }
        Principal::DirectRemoteIp(range) => range.contains(ctx.remote.ip()),
        Principal::RemoteIp(range) => range.contains(ctx.client_ip),
        Principal::Header(m) => header(m, ctx, request),
        Principal::UrlPath(m) => m.matches(request.uri.path()),
    }
}

/// The listener-level filter.
pub struct RbacFilter {
    engine: Engine,
}

impl RbacFilter {
    pub fn new(config: &Rbac, hcm_prefix: &str, stats: &Stats) -> Self {
        Self {
            engine: Engine::new(config, hcm_prefix, stats),
        }
    }
}

impl HttpFilter for RbacFilter {
    fn on_request(
        &self,
        ctx: &mut RequestCtx<'_>,
        per_route: Option<&PerRoute>,
        request: &mut Parts,
    ) -> Decision {
        match per_route {
            Some(PerRoute::Rbac(None)) => Decision::Continue,
            Some(PerRoute::Rbac(Some(engine))) => engine.decide(ctx, request),
            _ => self.engine.decide(ctx, request),
        }
    }
}
