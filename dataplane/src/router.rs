//! Route selection, compiled once per route table: virtual hosts are indexed by domain
//! (exact, longest `*suffix`, longest `prefix*`, then `*`, as Envoy orders them; a port in
//! `Host` is part of the name, as in Envoy without `strip_matching_host_port`) and routes
//! are tried in order with matchers that were compiled during validation.

use std::collections::HashMap;

use http::HeaderMap;
use xds_types::route::{Route, RouteTable, VirtualHost};

use crate::http::filter::{compile_overrides, Overrides};
use crate::stats::Stats;

/// A route table ready to serve, with its HTTP filter overrides compiled.
pub struct CompiledRoutes {
    pub table: RouteTable,
    table_overrides: Overrides,
    vhost_overrides: Vec<Overrides>,
    /// By virtual host, then route.
    route_overrides: Vec<Vec<Overrides>>,
    exact: HashMap<String, usize>,
    /// `(suffix, vhost)`, longest suffix first.
    suffixes: Vec<(String, usize)>,
    /// `(prefix, vhost)`, longest prefix first.
    prefixes: Vec<(String, usize)>,
    catch_all: Option<usize>,
}

/// What the router found for a request.
#[derive(Clone, Copy)]
pub struct RouteMatch<'a> {
    pub virtual_host: &'a VirtualHost,
    pub route: &'a Route,
    /// Filter overrides of the route, its virtual host and the table: most specific first.
    pub overrides: [&'a Overrides; 3],
}

impl CompiledRoutes {
    /// Indexes the virtual hosts of `table` by domain and compiles the filter overrides
    /// (`hcm_prefix` names their counters).
    pub fn new(table: RouteTable, hcm_prefix: &str, stats: &Stats) -> Self {
        let mut exact = HashMap::new();
        let mut suffixes = Vec::new();
        let mut prefixes = Vec::new();
        let mut catch_all = None;
        for (i, vh) in table.virtual_hosts.iter().enumerate() {
            for domain in &vh.domains {
                if domain == "*" {
                    catch_all = Some(i);
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    suffixes.push((suffix.to_string(), i));
                } else if let Some(prefix) = domain.strip_suffix('*') {
                    prefixes.push((prefix.to_string(), i));
                } else {
                    exact.insert(domain.clone(), i);
                }
            }
        }
        suffixes.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let compile = |c| compile_overrides(c, hcm_prefix, stats);
        Self {
            table_overrides: compile(&table.per_filter),
            vhost_overrides: table
                .virtual_hosts
                .iter()
                .map(|v| compile(&v.per_filter))
                .collect(),
            route_overrides: table
                .virtual_hosts
                .iter()
                .map(|v| v.routes.iter().map(|r| compile(&r.per_filter)).collect())
                .collect(),
            table,
            exact,
            suffixes,
            prefixes,
            catch_all,
        }
    }

    /// The virtual host serving `host` (already lowercased by the caller or not).
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        self.virtual_host_index(host)
            .map(|i| &self.table.virtual_hosts[i])
    }

    fn virtual_host_index(&self, host: &str) -> Option<usize> {
        let host = if self.table.ignore_port_in_host_matching {
            crate::proxy::split_host_port(host).0
        } else {
            host
        };
        let host = host.to_ascii_lowercase();
        let index = self
            .exact
            .get(&host)
            .copied()
            .or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
                    .map(|(_, i)| *i)
            })
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()))
                    .map(|(_, i)| *i)
            })
            .or(self.catch_all)?;
        (index < self.table.virtual_hosts.len()).then_some(index)
    }

    /// The first route of the matching virtual host whose matcher accepts the request.
    pub fn route<'a>(
        &'a self,
        method: &http::Method,
        host: &str,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Option<RouteMatch<'a>> {
        let vh = self.virtual_host_index(host)?;
        let virtual_host = &self.table.virtual_hosts[vh];
        let (index, route) =
            virtual_host.routes.iter().enumerate().find(|(_, r)| {
                request_matches(&r.matcher, method, host, path_and_query, headers)
            })?;
        Some(RouteMatch {
            virtual_host,
            route,
            overrides: [
                &self.route_overrides[vh][index],
                &self.vhost_overrides[vh],
                &self.table_overrides,
            ],
        })
    }
}

/// Whether a request matches a route matcher (path, headers, query); JWT rules use the
/// same matcher.
pub(crate) fn request_matches(
    m: &xds_types::route::RouteMatch,
    method: &http::Method,
    host: &str,
    path_and_query: &str,
    headers: &HeaderMap,
) -> bool {
    let query = path_and_query.split_once('?').map(|(_, q)| q);
    m.matches_path(path_and_query)
        && m.headers
            .iter()
            .all(|h| header_matches(h, headers, method, host, path_and_query))
        && m.query_parameters.iter().all(|q| q.matches(query))
        && (!m.grpc || is_grpc(headers))
}

/// Whether a request is gRPC as Envoy decides (for the `grpc` route match and for local
/// replies): by its content-type, `application/grpc` or `application/grpc+…` (`;` for
/// parameters); gRPC-Web is not.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t == "application/grpc"
                || t.starts_with("application/grpc+")
                || t.starts_with("application/grpc;")
        })
}

/// Whether one header matcher accepts the request (pseudo-headers included).
pub(crate) fn header_matches(
    h: &xds_types::route::HeaderMatcher,
    headers: &HeaderMap,
    method: &http::Method,
    host: &str,
    path_and_query: &str,
) -> bool {
    h.matches(header_value(headers, &h.name, method, host, path_and_query).as_deref())
}

/// A header's value for matching: values of a repeated header joined by `,`, and the
/// pseudo-headers `:authority`, `:path` and `:method` answered from the request.
fn header_value(
    headers: &HeaderMap,
    name: &str,
    method: &http::Method,
    host: &str,
    path: &str,
) -> Option<String> {
    match name {
        ":authority" => return Some(host.to_string()),
        ":path" => return Some(path.to_string()),
        ":method" => return Some(method.as_str().to_string()),
        _ => {}
    }
    let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = values.next()?;
    Some(values.fold(first.to_string(), |mut acc, v| {
        acc.push(',');
        acc.push_str(v);
        acc
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_types::pb::envoy::config::route::v3::RouteConfiguration;

    fn compile(yaml: &str) -> CompiledRoutes {
        let rc: RouteConfiguration =
            xds_types::decode::from_yaml(yaml, "envoy.config.route.v3.RouteConfiguration").unwrap();
        CompiledRoutes::new(RouteTable::try_from(&rc).unwrap(), "test", &Stats::new())
    }

    #[test]
    fn domain_precedence_follows_envoy() {
        let r = compile(
            "virtual_hosts: [
               {name: exact, domains: ['api.example.com']},
               {name: suffix, domains: ['*.example.com']},
               {name: longer_suffix, domains: ['*.eu.example.com']},
               {name: prefix, domains: ['api.*']},
               {name: any, domains: ['*']}]",
        );
        let vh = |h: &str| r.virtual_host(h).unwrap().name.clone();
        assert_eq!(vh("API.example.com"), "exact");
        // As in Envoy, a port in Host is part of the name being matched.
        assert_eq!(vh("api.example.com:8080"), "prefix");
        assert_eq!(vh("x.example.com"), "suffix");
        assert_eq!(vh("x.eu.example.com"), "longer_suffix");
        assert_eq!(vh("api.other.org"), "prefix");
        assert_eq!(vh("other.org"), "any");
    }

    #[test]
    fn routes_match_headers_and_query() {
        let r = compile(
            "virtual_hosts: [{name: a, domains: ['*'], routes: [
               {name: h, match: {prefix: /, headers: [{name: x-canary, string_match: {exact: 'yes'}}]}, direct_response: {status: 200}},
               {name: q, match: {prefix: /, query_parameters: [{name: debug, present_match: true}]}, direct_response: {status: 200}},
               {name: inv, match: {prefix: /, headers: [{name: x-block, present_match: true, invert_match: true}]}, direct_response: {status: 200}}]}]",
        );
        let mut headers = HeaderMap::new();
        let name = |p: &str, h: &HeaderMap| {
            r.route(&http::Method::GET, "h", p, h)
                .map(|m| m.route.name.clone())
        };
        assert_eq!(name("/x?debug", &headers).as_deref(), Some("q"));
        assert_eq!(name("/x", &headers).as_deref(), Some("inv"));
        headers.insert("x-block", "1".parse().unwrap());
        assert_eq!(name("/x", &headers), None);
        headers.insert("x-canary", "yes".parse().unwrap());
        assert_eq!(name("/x", &headers).as_deref(), Some("h"));
    }

    #[test]
    fn a_grpc_match_takes_only_grpc_content_types() {
        let r = compile(
            "virtual_hosts: [{name: a, domains: ['*'], routes: [
               {name: grpc, match: {prefix: /, grpc: {}}, direct_response: {status: 200}},
               {name: other, match: {prefix: /}, direct_response: {status: 200}}]}]",
        );
        let name = |content_type: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(t) = content_type {
                h.insert(http::header::CONTENT_TYPE, t.parse().unwrap());
            }
            r.route(&http::Method::POST, "h", "/pkg.Svc/Call", &h)
                .map(|m| m.route.name.clone())
                .unwrap()
        };
        assert_eq!(name(Some("application/grpc")), "grpc");
        assert_eq!(name(Some("application/grpc+proto")), "grpc");
        assert_eq!(name(Some("application/grpc-web")), "other");
        assert_eq!(name(Some("application/json")), "other");
        assert_eq!(name(None), "other");
    }
}
