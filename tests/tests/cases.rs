//! The end-to-end suites, one module each, all in the one `e2e` binary so the harness and
//! the dependency tree link once.

mod access_log;
mod compat;
mod concurrent_changes;
mod controlplane_envoy;
mod cp_security;
mod differential;
mod ext_authz;
mod file_server;
mod file_xds;
mod filter_phases;
mod global_ratelimit;
mod hostile;
mod http1;
mod http_cache;
mod http_filters;
mod jwt_authn;
mod lifecycle;
mod operator;
mod path_normalization;
mod proxyless_grpc;
mod resilience;
mod routing;
mod secrets;
mod streaming;
mod tcp_proxy;
mod tls;
mod tracing;
mod upgrades_grpc;
mod upstream_limits;
mod web_filters;
mod xds_atomicity;
mod xds_dataplane;
mod xds_eds_rds;
mod xds_fleet;
mod xds_per_type;
