//! The HTTP filters Sluice implements, one module each, with Envoy's config, defaults,
//! counters and per-route form.

pub mod basic_auth;
pub mod buffer;
pub mod cache;
pub mod call;
pub mod compressor;
pub mod cors;
pub mod decompressor;
pub mod descriptors;
pub mod ext_authz;
pub mod fault;
pub mod file_server;
pub mod grpc;
pub mod grpc_web;
pub mod header_mutation;
pub mod health_check;
pub mod jwt_authn;
pub mod local_ratelimit;
pub mod ratelimit;
pub mod rbac;

use rand::Rng;
use xds_types::http_filter::Fraction;

/// Whether this request falls in `fraction` (no random draw at 0 % or 100 %).
pub(crate) fn sample(fraction: Fraction) -> bool {
    match fraction.per_million {
        0 => false,
        p if p >= 1_000_000 => true,
        p => rand::rng().random_range(0..1_000_000) < p,
    }
}

/// A filter's counter scope under its connection manager: `name.` or, with the filter's
/// own `stat_prefix`, `name.prefix.` (Envoy's layout).
pub(crate) fn stat_scope(name: &str, stat_prefix: &str) -> String {
    if stat_prefix.is_empty() {
        format!("{name}.")
    } else {
        format!("{name}.{stat_prefix}.")
    }
}
