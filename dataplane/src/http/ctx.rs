//! `RequestCtx`: what the filters of one request share — the connection, the route the
//! request matched, the client address after `x-forwarded-for` processing, and what
//! filters add to the response.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use super::filter::{Overrides, PerRoute};
use super::filters::local_ratelimit::ConnLimiters;
use crate::config::Snapshot;
use crate::listener::tls::TlsInfo;
use crate::router::RouteMatch;

/// One request's context for its filters.
pub struct RequestCtx<'a> {
    /// The snapshot the request uses from start to end (clusters for filters that call out).
    pub snapshot: &'a Arc<Snapshot>,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub tls: Option<&'a TlsInfo>,
    /// The client address as Envoy derives it: the peer with `use_remote_address`, else
    /// the `x-forwarded-for` entry `xff_num_trusted_hops` from the right (the peer when
    /// there is none).
    pub client_ip: IpAddr,
    /// `Host` (or the HTTP/2 authority).
    pub host: &'a str,
    /// `https` on TLS connections.
    pub scheme: &'static str,
    pub route: Option<RouteMatch<'a>>,
    /// Headers every response to this request gets (CORS, rate limit headers, …).
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// Per-connection rate limiters.
    pub conn_limiters: &'a ConnLimiters,
    /// What runs when the stream ends (the log phase): a filter's per-request state that
    /// must live as long as the stream, such as an active fault's slot.
    pub at_end: Vec<EndHook>,
    /// What a filter decided on the request for its response phases, by type (a fault's
    /// response rate limit).
    pub state: http::Extensions,
    /// Whether the request has a body (Envoy's filters skip some work without one).
    pub request_has_body: bool,
    /// Transformations of the request body a filter asked for (a decompressor), applied
    /// before the next filter runs.
    pub request_body: Vec<BodyTransform>,
}

/// A filter's transformation of a body stream.
pub type BodyTransform = Box<dyn FnOnce(crate::body::Body) -> crate::body::Body + Send + Sync>;

/// A hook of the log phase, run once with how the stream ended.
pub type EndHook = Box<dyn FnOnce(&StreamEnd) + Send + Sync>;

/// How a stream ended, for the log phase.
#[derive(Debug, Clone)]
pub struct StreamEnd {
    pub status: http::StatusCode,
    pub flag: Option<crate::local_reply::ResponseFlag>,
    /// From the request's arrival to the end of the response (or its abandonment).
    pub duration: std::time::Duration,
}

/// Runs a stream's [`EndHook`]s when the response body ends or is dropped.
pub struct AtEnd {
    hooks: Vec<EndHook>,
    end: StreamEnd,
    started: std::time::Instant,
}

impl AtEnd {
    pub fn new(
        hooks: Vec<EndHook>,
        status: http::StatusCode,
        flag: Option<crate::local_reply::ResponseFlag>,
        started: std::time::Instant,
    ) -> Self {
        Self {
            hooks,
            end: StreamEnd {
                status,
                flag,
                duration: std::time::Duration::ZERO,
            },
            started,
        }
    }
}

impl Drop for AtEnd {
    fn drop(&mut self) {
        self.end.duration = self.started.elapsed();
        for hook in self.hooks.drain(..) {
            hook(&self.end);
        }
    }
}

impl<'a> RequestCtx<'a> {
    /// The most specific override for the filter named `name`: route, virtual host,
    /// route table.
    pub fn override_for(&self, name: &str) -> Option<&'a PerRoute> {
        self.levels()
            .find_map(|level| level.iter().find(|(n, _)| n == name).map(|(_, p)| p))
    }

    /// The overrides of every level, most specific first (empty without a route).
    pub fn levels(&self) -> impl Iterator<Item = &'a Overrides> {
        self.route.into_iter().flat_map(|m| m.overrides)
    }

    /// Every level's override that `pick` accepts, most specific first (the filters that
    /// combine levels, such as CORS and header mutation).
    pub fn overrides_of<T: 'a>(
        &self,
        pick: impl Fn(&'a PerRoute) -> Option<&'a T>,
    ) -> impl Iterator<Item = &'a T> {
        self.levels()
            .flat_map(|level| level.iter())
            .filter_map(move |(_, p)| pick(p))
    }

    /// The cluster the route sends to, when it names one directly.
    pub fn route_cluster(&self) -> Option<&'a str> {
        use xds_types::route::{ClusterTarget, RouteAction};
        match &self.route?.route.action {
            RouteAction::Forward(f) => match &f.target {
                ClusterTarget::Cluster(c) => Some(c),
                ClusterTarget::Weighted { .. } => None,
            },
            _ => None,
        }
    }
}

/// The client address Envoy's connection manager derives for a request.
pub fn client_ip(
    remote: IpAddr,
    headers: &http::HeaderMap,
    use_remote_address: bool,
    xff_num_trusted_hops: u32,
) -> IpAddr {
    if use_remote_address {
        return remote;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.rsplit(','))
        .nth(xff_num_trusted_hops as usize)
        .and_then(|entry| entry.trim().parse().ok())
        .unwrap_or(remote)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ip_follows_xff_and_trusted_hops() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let mut h = http::HeaderMap::new();
        assert_eq!(client_ip(peer, &h, false, 0), peer);
        h.insert("x-forwarded-for", "10.0.0.1, 10.0.0.2".parse().unwrap());
        assert_eq!(client_ip(peer, &h, false, 0).to_string(), "10.0.0.2");
        assert_eq!(client_ip(peer, &h, false, 1).to_string(), "10.0.0.1");
        assert_eq!(client_ip(peer, &h, false, 2), peer);
        assert_eq!(client_ip(peer, &h, true, 0), peer);
    }
}
