//! Which fields of which Envoy messages Sluice implements.
//!
//! This table is the single source of truth: [`check`] rejects any set field not listed
//! here (so nothing that changes behaviour is silently ignored), and
//! `docs/xds-support.md` is rendered from it by [`render_markdown`] (a test keeps the file
//! equal to the rendering, and another test requires a fixture config for every field).
//! Messages in `google.protobuf.*` (durations, wrappers) are leaves; an `Any` is unpacked
//! and checked as the message it carries.

use prost_reflect::{DynamicMessage, ReflectMessage, Value};

use crate::decode::pool;
use crate::error::{Result, ValidationError};

/// Supported fields of one message type, each with a note for operators.
#[derive(Debug)]
pub struct SupportedMessage {
    /// Full protobuf name, e.g. `envoy.config.cluster.v3.Cluster`.
    pub message: &'static str,
    /// `(field name, note)`; an empty note means "as Envoy documents it".
    pub fields: &'static [(&'static str, &'static str)],
}

macro_rules! supported {
    ($($message:literal => [$($field:literal $(: $note:literal)?),* $(,)?]),* $(,)?) => {
        &[$(SupportedMessage { message: $message, fields: &[$(($field, supported!(@note $($note)?))),*] }),*]
    };
    (@note) => { "" };
    (@note $note:literal) => { $note };
}

/// The supported subset of Envoy's v3 API.
pub const SUPPORTED: &[SupportedMessage] = supported! {
    "envoy.config.bootstrap.v3.Bootstrap" => ["node", "admin", "static_resources", "dynamic_resources"],
    "envoy.config.bootstrap.v3.Bootstrap.DynamicResources" => [
        "ads_config",
        "lds_config": "ADS only",
        "cds_config": "ADS only",
    ],
    "envoy.config.core.v3.ApiConfigSource" => [
        "api_type": "GRPC (state of the world) or DELTA_GRPC",
        "transport_api_version": "V3",
        "grpc_services": "exactly one, envoy_grpc naming a static cluster",
        "set_node_on_first_message_only": "accepted; the node is sent on every request",
    ],
    "envoy.config.core.v3.GrpcService" => ["envoy_grpc"],
    "envoy.config.core.v3.GrpcService.EnvoyGrpc" => ["cluster_name"],
    "envoy.config.core.v3.ConfigSource" => [
        "ads", "resource_api_version": "V3",
        "initial_fetch_timeout": "lds/cds: readiness waits at most this long for the first response; eds/rds: a cluster or listener warms at most this long, then goes live with no endpoints or an empty route table (default 15s; 0 waits forever)",
    ],
    "envoy.config.core.v3.AggregatedConfigSource" => [],
    "envoy.config.bootstrap.v3.Bootstrap.StaticResources" => ["listeners", "clusters"],
    "envoy.config.bootstrap.v3.Admin" => ["address"],
    "envoy.config.core.v3.Node" => [
        "id", "cluster",
        "metadata": "accepted; reported by /server_info, no other effect",
        "locality": "accepted; no effect yet",
        "user_agent_name": "accepted; no effect",
    ],
    "envoy.config.core.v3.Locality" => ["region", "zone", "sub_zone"],
    "envoy.config.core.v3.Address" => ["socket_address"],
    "envoy.config.core.v3.SocketAddress" => [
        "address": "an IP literal for listeners and STATIC clusters; a hostname for DNS clusters",
        "port_value",
        "protocol": "TCP only",
    ],
    "envoy.config.listener.v3.Listener" => [
        "name", "address", "filter_chains",
        "per_connection_buffer_limit_bytes": "accepted; bodies are streamed with bounded buffers regardless",
        "enable_reuse_port": "accepted; sluice always binds with SO_REUSEPORT",
        "traffic_direction": "accepted; informational",
        "api_listener": "for proxyless gRPC clients (xds:/// targets): served by sluice-cp, refused by sluice",
    ],
    "envoy.config.listener.v3.ApiListener" => [
        "api_listener": "an HttpConnectionManager",
    ],
    "envoy.config.listener.v3.FilterChain" => ["name", "filters"],
    "envoy.config.listener.v3.Filter" => [
        "name",
        "typed_config": "envoy.filters.network.connection_limit (optional, first) then envoy.filters.network.http_connection_manager",
    ],
    "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit" => [
        "stat_prefix", "max_connections",
        "delay": "connections over the limit are closed after this delay",
    ],
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" => [
        "codec_type": "AUTO, HTTP1 or HTTP2 (cleartext HTTP/2 with prior knowledge)",
        "stat_prefix", "route_config",
        "rds": "delivered over ADS; the listener warms until it arrives",
        "http_filters", "upgrade_configs",
        "request_headers_timeout": "when it expires before the request headers are complete, 408 and close",
        "common_http_protocol_options",
        "max_request_headers_kb": "over the limit, 431 and close",
        "use_remote_address", "xff_num_trusted_hops", "skip_xff_append",
        "generate_request_id", "preserve_external_request_id",
        "drain_timeout", "server_name",
    ],
    "envoy.extensions.filters.network.http_connection_manager.v3.Rds" => [
        "config_source": "ads only", "route_config_name",
    ],
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter" => [
        "name",
        "typed_config": "only envoy.filters.http.router, which must be last",
    ],
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig" => [
        "upgrade_type", "enabled",
    ],
    "envoy.extensions.filters.http.router.v3.Router" => [],
    "envoy.config.core.v3.HttpProtocolOptions" => [
        "idle_timeout": "downstream: close a connection with no active request after this long (default 1h); upstream: pool idle timeout",
        "max_headers_count",
    ],
    "envoy.config.route.v3.RouteConfiguration" => [
        "name", "virtual_hosts",
        "request_headers_to_add", "request_headers_to_remove",
        "response_headers_to_add", "response_headers_to_remove",
        "validate_clusters": "accepted; inline tables in a bootstrap are always checked against its static clusters, and sluice-cp checks every table against the group's clusters",
    ],
    "envoy.config.route.v3.VirtualHost" => [
        "name", "domains", "routes", "retry_policy",
        "request_headers_to_add", "request_headers_to_remove",
        "response_headers_to_add", "response_headers_to_remove",
    ],
    "envoy.config.route.v3.Route" => [
        "name", "match", "route", "redirect", "direct_response",
        "request_headers_to_add", "request_headers_to_remove",
        "response_headers_to_add", "response_headers_to_remove",
    ],
    "envoy.config.route.v3.RouteMatch" => [
        "prefix", "path", "safe_regex", "path_separated_prefix",
        "case_sensitive", "headers", "query_parameters",
    ],
    "envoy.config.route.v3.HeaderMatcher" => [
        "name", "exact_match", "safe_regex_match", "present_match", "prefix_match",
        "suffix_match", "contains_match", "string_match", "invert_match",
        "treat_missing_header_as_empty",
    ],
    "envoy.config.route.v3.QueryParameterMatcher" => ["name", "string_match", "present_match"],
    "envoy.type.matcher.v3.StringMatcher" => [
        "exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case",
    ],
    "envoy.type.matcher.v3.RegexMatcher" => [
        "regex": "Rust `regex` syntax (RE2-compatible for the common subset); full match",
        "google_re2": "accepted; deprecated in Envoy, no effect",
    ],
    "envoy.type.matcher.v3.RegexMatcher.GoogleRE2" => [],
    "envoy.type.matcher.v3.RegexMatchAndSubstitute" => [
        "pattern", "substitution": "`\\1`-style group references",
    ],
    "envoy.config.route.v3.RouteAction" => [
        "cluster", "weighted_clusters", "prefix_rewrite", "regex_rewrite",
        "host_rewrite_literal", "timeout", "retry_policy",
        "cluster_not_found_response_code",
    ],
    "envoy.config.route.v3.WeightedCluster" => [
        "clusters",
        "total_weight": "deprecated in Envoy; when set it must equal the sum of the weights",
    ],
    "envoy.config.route.v3.WeightedCluster.ClusterWeight" => ["name", "weight"],
    "envoy.config.route.v3.RetryPolicy" => [
        "retry_on": "5xx, gateway-error, connect-failure, reset, retriable-status-codes (others are rejected)",
        "num_retries", "per_try_timeout", "retriable_status_codes", "retry_back_off",
    ],
    "envoy.config.route.v3.RetryPolicy.RetryBackOff" => ["base_interval", "max_interval"],
    "envoy.config.route.v3.RedirectAction" => [
        "https_redirect", "scheme_redirect", "host_redirect", "port_redirect",
        "path_redirect", "prefix_rewrite", "response_code", "strip_query",
    ],
    "envoy.config.route.v3.DirectResponseAction" => ["status", "body"],
    "envoy.config.core.v3.DataSource" => [
        "inline_string", "inline_bytes",
        "filename": "only for the TLS files of the xDS cluster",
    ],
    "envoy.config.core.v3.HeaderValueOption" => [
        "header", "append": "deprecated in Envoy; use append_action", "append_action",
        "keep_empty_value",
    ],
    "envoy.config.core.v3.HeaderValue" => [
        "key", "value": "literal values; `%` command operators are rejected",
    ],
    "envoy.config.cluster.v3.Cluster" => [
        "name", "type": "STATIC, STRICT_DNS, LOGICAL_DNS, EDS",
        "eds_cluster_config": "endpoints over ADS; the cluster warms until they arrive",
        "connect_timeout", "lb_policy": "ROUND_ROBIN, LEAST_REQUEST, RANDOM",
        "load_assignment", "dns_refresh_rate", "dns_lookup_family": "AUTO, V4_ONLY, V6_ONLY, V4_PREFERRED, ALL",
        "least_request_lb_config",
        "http2_protocol_options": "deprecated in Envoy; selects HTTP/2 upstream",
        "typed_extension_protocol_options": "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "per_connection_buffer_limit_bytes": "accepted; bodies are streamed with bounded buffers regardless",
        "alt_stat_name",
        "transport_socket": "envoy.transport_sockets.tls with an UpstreamTlsContext, on the bootstrap's xDS cluster only",
    ],
    "envoy.config.core.v3.TransportSocket" => ["name", "typed_config"],
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext" => [
        "common_tls_context",
        "sni": "the name the server certificate is checked against; default: the endpoint address",
    ],
    "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext" => [
        "tls_certificates": "at most one: the client certificate for mutual TLS",
        "validation_context": "required",
        "alpn_protocols": "accepted; gRPC always negotiates h2",
    ],
    "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext" => [
        "trusted_ca": "a PEM file",
    ],
    "envoy.config.cluster.v3.Cluster.LeastRequestLbConfig" => ["choice_count"],
    "envoy.config.cluster.v3.Cluster.EdsClusterConfig" => [
        "eds_config": "ads only", "service_name",
    ],
    "envoy.config.endpoint.v3.ClusterLoadAssignment" => ["cluster_name", "endpoints"],
    "envoy.config.endpoint.v3.LocalityLbEndpoints" => [
        "lb_endpoints", "locality",
        "load_balancing_weight": "accepted; locality weighting is not applied yet",
        "priority": "only priority 0",
    ],
    "envoy.config.endpoint.v3.LbEndpoint" => [
        "endpoint", "load_balancing_weight",
        "health_status": "UNHEALTHY, DRAINING and TIMEOUT endpoints receive no traffic",
    ],
    "envoy.config.endpoint.v3.Endpoint" => ["address", "hostname"],
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" => [
        "explicit_http_config", "common_http_protocol_options",
    ],
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig" => [
        "http_protocol_options", "http2_protocol_options",
    ],
    "envoy.extensions.transport_sockets.tls.v3.Secret" => [
        "name",
        "tls_certificate": "served by sluice-cp over SDS/ADS (to Envoy); sluice itself does not terminate TLS yet",
    ],
    "envoy.extensions.transport_sockets.tls.v3.TlsCertificate" => [
        "certificate_chain": "PEM: inline in Secret resources; a filename in the xDS cluster's TLS context",
        "private_key": "PEM: inline in Secret resources (redacted in every read from sluice-cp); a filename in the xDS cluster's TLS context",
    ],
    "envoy.config.core.v3.Http1ProtocolOptions" => [],
    "envoy.config.core.v3.Http2ProtocolOptions" => [],
};

/// Rejects the first set field, anywhere in `message`, that [`SUPPORTED`] does not list.
pub fn check(message: &DynamicMessage) -> Result<()> {
    walk(message, "")
}

fn supported_fields(message: &str) -> Option<&'static [(&'static str, &'static str)]> {
    SUPPORTED
        .iter()
        .find(|m| m.message == message)
        .map(|m| m.fields)
}

fn walk(message: &DynamicMessage, path: &str) -> Result<()> {
    let descriptor = message.descriptor();
    let name = descriptor.full_name();
    if name == "google.protobuf.Any" {
        return walk_any(message, path);
    }
    if name.starts_with("google.protobuf.") {
        return Ok(());
    }
    let supported = supported_fields(name).unwrap_or(&[]);
    for (field, value) in message.fields() {
        let field_path = join(path, field.name());
        if !supported.iter().any(|(f, _)| *f == field.name()) {
            return Err(ValidationError::unsupported(field_path));
        }
        walk_value(value, &field_path)?;
    }
    Ok(())
}

fn walk_value(value: &Value, path: &str) -> Result<()> {
    match value {
        Value::Message(m) => walk(m, path),
        Value::List(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| walk_value(v, &format!("{path}[{i}]"))),
        Value::Map(map) => map
            .iter()
            .try_for_each(|(k, v)| walk_value(v, &format!("{path}[{k:?}]"))),
        _ => Ok(()),
    }
}

fn walk_any(any: &DynamicMessage, path: &str) -> Result<()> {
    let (type_url, inner) = unpack(any);
    let inner = inner.ok_or_else(|| {
        ValidationError::new(path, format!("unknown or undecodable type {type_url:?}"))
    })?;
    walk(&inner, path)
}

/// The type URL of a dynamic `Any` and, when the pool knows the type and the bytes decode,
/// the message it carries.
fn unpack(any: &DynamicMessage) -> (String, Option<DynamicMessage>) {
    let type_url = any
        .get_field_by_name("type_url")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let bytes = any
        .get_field_by_name("value")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    let inner = pool()
        .get_message_by_name(crate::type_urls::message_name(&type_url))
        .and_then(|d| DynamicMessage::decode(d, bytes).ok());
    (type_url, inner)
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// Renders [`SUPPORTED`] as the Markdown body of `docs/xds-support.md`.
pub fn render_markdown() -> String {
    let mut out = String::from(
        "# Supported xDS fields\n\n\
         Generated from `xds-types/src/fields.rs` (`SUPPORTED`); a test fails when this file\n\
         and the table differ, and another requires a fixture config using every field.\n\
         Regenerate with `UPDATE_DOCS=1 cargo test -p xds-types --test docs`.\n\n\
         Any field **not** listed here is rejected when set: a bootstrap exits with the field\n\
         path, and an xDS resource is NACKed with it. `google.protobuf.*` values (durations,\n\
         wrappers) are accepted wherever their field is.\n",
    );
    for message in SUPPORTED {
        out.push_str(&format!("\n## `{}`\n\n", message.message));
        if message.fields.is_empty() {
            out.push_str("No fields may be set (an empty message is accepted).\n");
            continue;
        }
        out.push_str("| field | notes |\n| --- | --- |\n");
        for (field, note) in message.fields {
            out.push_str(&format!("| `{field}` | {note} |\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_message_and_field_exists_in_envoys_descriptors() {
        for m in SUPPORTED {
            let d = pool()
                .get_message_by_name(m.message)
                .unwrap_or_else(|| panic!("{} is not an Envoy message", m.message));
            for (field, _) in m.fields {
                assert!(
                    d.get_field_by_name(field).is_some(),
                    "{}.{field} does not exist",
                    m.message
                );
            }
        }
    }

    #[test]
    fn unsupported_field_is_rejected_with_its_path() {
        let err = crate::decode::from_yaml::<crate::pb::envoy::config::cluster::v3::Cluster>(
            "name: a\ncircuit_breakers: {thresholds: [{max_connections: 1}]}",
            "envoy.config.cluster.v3.Cluster",
        )
        .unwrap_err();
        assert_eq!(err.path, "circuit_breakers");
    }
}
