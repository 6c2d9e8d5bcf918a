#![allow(deprecated)] // Envoy deprecates fields (exact_match, http2_protocol_options) that operators still use.
//! The shared language of Sluice's two planes: Envoy's xDS v3 resources, decoded and
//! validated into small Rust types.
//!
//! # Layout
//! - [`pb`]: Envoy's generated protobuf types (from the `envoy-types` crate). Raw protos are
//!   used only through this module.
//! - [`decode`]: proto3-JSON / YAML and binary decoding through Envoy's own descriptors,
//!   with the unsupported-field check of [`fields`] applied first.
//! - [`fields`]: the table of supported fields; it drives rejection (with field paths) and
//!   `docs/xds-support.md`.
//! - [`resource`]: the resource kinds (type URL, message, names, push order), once.
//! - [`listener`] (with [`filter_chain`], [`tcp_proxy`]), [`hcm`], [`route`], [`cluster`]
//!   (with [`lb`], [`health_check`], [`outlier`]), [`tls`], [`secret`], [`bootstrap`]: the
//!   validated model.
//!   Every conversion is pure: no I/O, no locks; regexes compile here, once.
//! - [`http_filter`] (with [`rate_limit`]): the HTTP filters in front of the router and
//!   their per-route overrides.
//! - [`config_source`]: where dynamic resources come from (ADS, a per-type stream, a file).
//! - [`access_log`]: access logs and Envoy's substitution format strings.
//! - [`error`]: [`ValidationError`], which always names the field path.

pub mod access_log;
pub mod bootstrap;
pub mod cluster;
pub mod config_source;
pub mod decode;
pub mod error;
pub mod fields;
pub mod filter_chain;
pub mod hcm;
pub mod health_check;
pub mod http_filter;
pub mod lb;
pub mod listener;
pub mod outlier;
pub mod overload;
pub mod pb;
pub mod rate_limit;
pub mod resource;
pub mod route;
pub mod secret;
pub mod tcp_proxy;
pub mod tls;
pub mod tracing;
pub mod type_urls;
mod util;

pub use bootstrap::Bootstrap;
pub use cluster::Cluster;
pub use error::ValidationError;
pub use hcm::HttpConnectionManager;
pub use listener::Listener;
pub use route::RouteTable;
