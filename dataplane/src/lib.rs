//! `sluice`, the data plane: an Envoy-compatible HTTP proxy configured by Envoy's own
//! bootstrap and resource types.
//!
//! # Layout
//! - [`server`]: the process — first snapshot, listeners, admin, signals (reload, drain).
//! - [`config`]: the immutable [`config::Snapshot`] and its `ArcSwap` store.
//! - [`listener`]: binding, accepting, listener filters, filter chain selection, TLS
//!   termination ([`listener::tls`]) and the hand-off to a network filter.
//! - [`http`]: the HTTP connection manager's connection loop (hyper, timeouts, drain);
//!   [`tcp`]: the TCP proxy; [`xfcc`]: `x-forwarded-client-cert`.
//! - [`tls`]: what TLS termination and TLS to upstreams share (rustls, certificates, CAs).
//! - [`proxy`]: the request path — route, then direct response, redirect or forward.
//! - [`router`]: virtual host and route selection, compiled per route table.
//! - [`upstream`]: clusters at run time — hosts and their state, load balancing, the
//!   connection pool, health checks, outlier detection, circuit breakers, DNS, TLS.
//! - [`local_reply`]: responses the proxy makes itself, and Envoy's response flags.
//! - [`access_log`]: Envoy's access log formats, filters and non-blocking sinks.
//! - [`admin`], [`stats`]: the admin endpoints and the counters behind them.
//! - [`xds`]: the ADS client (state of the world and delta) for `dynamic_resources`.
//! - [`body`], [`conn`]: body and connection plumbing shared by the above.

pub mod access_log;
pub mod admin;
pub mod body;
pub mod config;
pub mod conn;
pub mod file_xds;
pub mod hash_policy;
pub mod http;
pub mod listener;
pub mod local_reply;
pub mod otlp;
pub mod overload;
pub mod proxy;
pub mod router;
pub mod server;
pub mod stats;
pub mod tcp;
pub mod tls;
pub mod trace;
pub mod upstream;
pub mod xds;
pub mod xfcc;
