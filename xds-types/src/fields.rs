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
    "envoy.config.bootstrap.v3.Bootstrap" => [
        "node", "admin", "static_resources", "dynamic_resources",
        "layered_runtime": "static layers are read (flattened, a later layer winning); sluice honours overload.global_downstream_max_connections and logs every other key at start as without effect",
        "overload_manager": "the global_downstream_max_connections monitor (a connection past the cap is closed at accept and counted in listener.<address>.downstream_global_cx_overflow) and the fixed_heap monitor with the actions and load shed points its pressure triggers",
        "stats_config": "accepted; sluice's stat names and Prometheus labels are fixed, and every stat is kept",
        "stats_flush_interval": "accepted; sluice has no stats sinks to flush (stats are read from /stats)",
        "cluster_manager",
        "application_log_config": "json_format: sluice's own log lines are JSON objects (as --log-format json; the keys are sluice's, not the format's); text_format: the default text lines (Envoy's pattern flags are not interpreted)",
        "deferred_stat_options": "accepted; sluice creates its stats when their listener or cluster is created, which costs no worker memory",
    ],
    "envoy.config.bootstrap.v3.ClusterManager" => [
        "local_cluster_name": "must name a static cluster, as Envoy checks; sluice has no zone-aware routing, so it has no other effect",
        "enable_deferred_cluster_creation": "accepted; sluice builds each cluster once, shared by every worker, so there is nothing to defer",
    ],
    "envoy.config.bootstrap.v3.Bootstrap.ApplicationLogConfig" => ["log_format"],
    "envoy.config.bootstrap.v3.Bootstrap.ApplicationLogConfig.LogFormat" => ["json_format", "text_format"],
    "envoy.config.bootstrap.v3.Bootstrap.DeferredStatOptions" => [
        "enable_deferred_creation_stats": "accepted; see deferred_stat_options",
    ],
    "envoy.config.bootstrap.v3.LayeredRuntime" => ["layers"],
    "envoy.config.bootstrap.v3.RuntimeLayer" => [
        "name",
        "static_layer",
        "admin_layer": "accepted; sluice serves no /runtime_modify, so the layer stays empty",
    ],
    "envoy.config.bootstrap.v3.RuntimeLayer.AdminLayer" => [],
    "envoy.config.overload.v3.OverloadManager" => [
        "refresh_interval": "how often the heap monitors are sampled and the actions' states updated (default 1s); the connection count is exact at every accept, not sampled",
        "resource_monitors": "envoy.resource_monitors.global_downstream_max_connections and envoy.resource_monitors.fixed_heap (names unique)",
        "actions": "envoy.overload_actions.stop_accepting_requests (503 envoy overloaded before any filter, http.<prefix>.downstream_rq_overload_close), disable_http_keepalive (HTTP/1 responses say connection: close, HTTP/2 connections drain with GOAWAY; http.<prefix>.downstream_cx_overload_disable_keepalive), stop_accepting_connections (saturated: the listeners stop accepting), reject_incoming_connections (accepted connections closed at once, listener.<address>.downstream_cx_overload_reject) and shrink_heap (saturated: free heap returned to the system every 10 s, overload.<action>.shrink_count); per request or connection with probability equal to the state, as Envoy. Listeners with bypass_overload_manager are exempt. Others are refused by name",
        "loadshed_points": "envoy.load_shed_points.tcp_listener_accept (as reject_incoming_connections) and envoy.load_shed_points.http_connection_manager_decode_headers (as stop_accepting_requests); others are refused by name",
    ],
    "envoy.config.overload.v3.ResourceMonitor" => ["name", "typed_config"],
    "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig" => [
        "max_heap_size_bytes": "required, greater than 0; pressure is the heap in use (glibc's mallinfo2 arena and mmapped bytes, which include free memory not yet returned, as tcmalloc's figure Envoy reads) over this",
    ],
    "envoy.config.overload.v3.OverloadAction" => ["name", "triggers"],
    "envoy.config.overload.v3.LoadShedPoint" => ["name", "triggers"],
    "envoy.config.overload.v3.Trigger" => [
        "name": "a fixed_heap monitor's name, once per action",
        "threshold",
        "scaled",
    ],
    "envoy.config.overload.v3.ThresholdTrigger" => ["value": "0 to 1; state 1 at or above it"],
    "envoy.config.overload.v3.ScaledTrigger" => [
        "scaling_threshold": "0 to 1, less than saturation_threshold",
        "saturation_threshold": "0 to 1",
    ],
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig" => [
        "max_active_downstream_connections": "required, greater than 0",
    ],
    "envoy.config.metrics.v3.StatsConfig" => ["stats_tags", "use_all_default_tags", "stats_matcher"],
    "envoy.config.metrics.v3.TagSpecifier" => ["tag_name", "regex", "fixed_value"],
    "envoy.config.metrics.v3.StatsMatcher" => ["reject_all", "exclusion_list", "inclusion_list"],
    "envoy.config.bootstrap.v3.Bootstrap.DynamicResources" => [
        "ads_config": "the stream every ads: {} source shares",
        "lds_config": "ads, api_config_source (a ListenerDiscoveryService stream), or path_config_source (then cds_config too, and no ads_config)",
        "cds_config": "ads, api_config_source (a ClusterDiscoveryService stream), or path_config_source (then lds_config too, and no ads_config)",
    ],
    "envoy.config.core.v3.PathConfigSource" => [
        "path": "lds_config and cds_config: a DiscoveryResponse (YAML or JSON) with version_info (reported by /config_dump), resources (the whole set of the type; each one refused alone, with its field path, keeping its last good version) and optionally type_url; it must exist at start, and is re-read whenever it is replaced or rewritten (checked every 100ms: a rename onto it, as a Kubernetes ConfigMap update does, is seen whole); a file that does not load keeps the last good resources and logs the field path",
        "watched_directory": "accepted; the file itself is watched, through symlinks, which covers a directory's atomic swap",
    ],
    "envoy.config.core.v3.WatchedDirectory" => ["path"],

    "envoy.config.core.v3.ApiConfigSource" => [
        "api_type": "GRPC (state of the world) or DELTA_GRPC",
        "transport_api_version": "V3",
        "grpc_services": "exactly one, envoy_grpc naming a static cluster",
        "set_node_on_first_message_only": "the node is sent on the first request of each stream only (default: on every request)",
    ],
    "envoy.config.core.v3.GrpcService" => ["envoy_grpc", "timeout": "ext_authz: the check's deadline (default 200ms); OpenTelemetry: the export's (default 5s); refused on the xDS stream"],
    "envoy.config.core.v3.GrpcService.EnvoyGrpc" => ["cluster_name", "authority": "ext_authz: :authority of the checks; refused on the xDS stream"],
    "envoy.config.core.v3.ConfigSource" => [
        "ads", "resource_api_version": "V3",
        "api_config_source": "lds_config, cds_config, rds, eds_config and sds_config: a stream of the type's own discovery service (LDS, CDS, RDS, EDS, SDS) to the server the static cluster reaches; sources naming the same server and protocol share one stream per type; opened when a listener or cluster first names it, closed when none does",
        "path_config_source": "lds_config and cds_config (a file per type, holding the whole set), rds and eds_config (a file holding the named RouteConfiguration or ClusterLoadAssignment, with or without ADS); refused for SDS",
        "path": "deprecated; as path_config_source",
        "initial_fetch_timeout": "lds/cds: readiness waits at most this long for the first response; eds/rds: a cluster or listener warms at most this long, then goes live with no endpoints or an empty route table (default 15s; 0 waits forever)",
    ],
    "envoy.config.core.v3.AggregatedConfigSource" => [],
    "envoy.config.bootstrap.v3.Bootstrap.StaticResources" => [
        "listeners", "clusters",
        "secrets": "named by SdsSecretConfigs without sds_config",
    ],
    "envoy.config.bootstrap.v3.Admin" => [
        "profile_path": "accepted; sluice has no CPU profiler (no /cpuprofiler)",
        "address",
        "access_log": "one line per admin request",
        "access_log_path": "deprecated; a file log in Envoy's default format",
    ],
    "envoy.config.accesslog.v3.AccessLog" => [
        "name": "accepted; informational",
        "filter",
        "typed_config": "envoy.access_loggers.file, envoy.access_loggers.stdout, envoy.access_loggers.stderr, envoy.access_loggers.open_telemetry; lines are queued (8192 per sink) and written off the request path; when the queue is full a line is dropped and counted (access_log.dropped), never waited for",
    ],
    "envoy.config.accesslog.v3.AccessLogFilter" => [
        "status_code_filter", "duration_filter",
        "not_health_check_filter": "skips the requests the health check filter answers or passes as health checks",
        "traceable_filter": "streams whose trace is sampled",
        "runtime_filter", "and_filter", "or_filter", "header_filter", "response_flag_filter",
    ],
    "envoy.config.accesslog.v3.StatusCodeFilter" => ["comparison"],
    "envoy.config.accesslog.v3.DurationFilter" => ["comparison": "milliseconds from the request's start to the end of the response"],
    "envoy.config.accesslog.v3.ComparisonFilter" => ["op", "value"],
    "envoy.config.core.v3.RuntimeUInt32" => ["default_value", "runtime_key": "accepted; sluice has no runtime, the default applies"],
    "envoy.config.accesslog.v3.NotHealthCheckFilter" => [],
    "envoy.config.accesslog.v3.TraceableFilter" => [],
    "envoy.config.accesslog.v3.RuntimeFilter" => [
        "runtime_key": "accepted; sluice has no runtime, percent_sampled applies",
        "percent_sampled": "default 0%",
        "use_independent_randomness": "accepted; every stream is sampled independently",
    ],
    "envoy.config.accesslog.v3.AndFilter" => ["filters"],
    "envoy.config.accesslog.v3.OrFilter" => ["filters"],
    "envoy.config.accesslog.v3.HeaderFilter" => ["header": "on the request headers"],
    "envoy.config.accesslog.v3.ResponseFlagFilter" => ["flags": "short names (UF, UH, …); none: any flag"],
    "envoy.extensions.access_loggers.file.v3.FileAccessLog" => [
        "path": "opened for appending (created if missing); /dev/stdout and /dev/stderr work",
        "log_format",
        "format": "deprecated; a text format",
        "json_format": "deprecated; a JSON format",
        "typed_json_format": "deprecated; a JSON format",
    ],
    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog" => ["log_format"],
    "envoy.extensions.access_loggers.stream.v3.StderrAccessLog" => ["log_format"],
    "envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig" => [
        "grpc_service": "envoy_grpc to a cluster (the collector's OTLP/gRPC LogsService)",
        "http_service": "OTLP/HTTP: protobuf POSTed to http_uri through its cluster",
        "common_config": "deprecated in Envoy; its log_name, grpc_service and buffer settings are used when the top-level ones are unset",
        "log_name": "the log_name resource attribute",
        "disable_builtin_labels": "leaves out log_name, zone_name, cluster_name and node_name",
        "resource_attributes": "copied into the resource as written, over built-in and detected labels of the same key",
        "resource_detectors": "as the tracer's; over the built-in labels",
        "body": "string values are formatted with the command operators (absent values: -); arrays and key-value lists keep their shape; other kinds are refused, as in Envoy",
        "attributes": "formatted as body",
        "custom_tags": "literal, environment (read when the config loads) and request header; appended to the attributes",
        "stat_prefix": "counters access_logs.open_telemetry_access_log.<stat_prefix>logs_written and logs_dropped",
        "buffer_flush_interval": "a batch waits at most this long (default 1s)",
        "buffer_size_bytes": "a batch goes once its records pass this size (default 16384); records queue off the request path (8192 per logger) and are dropped and counted when the queue is full or the collector fails",
    ],
    "envoy.extensions.access_loggers.grpc.v3.CommonGrpcAccessLogConfig" => [
        "log_name", "grpc_service", "transport_api_version": "V3",
        "buffer_flush_interval", "buffer_size_bytes",
    ],
    "opentelemetry.proto.common.v1.KeyValueList" => ["values"],
    "opentelemetry.proto.common.v1.KeyValue" => ["key", "value"],
    "opentelemetry.proto.common.v1.ArrayValue" => ["values"],
    "opentelemetry.proto.common.v1.AnyValue" => [
        "string_value", "array_value", "kvlist_value",
        "bool_value": "resource_attributes only", "int_value": "resource_attributes only",
        "double_value": "resource_attributes only", "bytes_value": "resource_attributes only",
    ],
    "envoy.config.core.v3.SubstitutionFormatString" => [
        "text_format": "deprecated; as text_format_source",
        "text_format_source": "inline_string or inline_bytes; the command operators sluice renders are listed in docs/access-log.md, another is refused by name",
        "json_format": "string values with command operators (one operator alone keeps its type: numbers stay numbers, absent is null), numbers, booleans and nested objects; keys sorted",
        "omit_empty_values": "JSON: absent values are left out",
        "content_type": "accepted; no effect on access logs",
        "json_format_options": "accepted; keys are always sorted",
    ],
    "envoy.config.core.v3.JsonFormatOptions" => ["sort_properties": "accepted; keys are always sorted"],
    "envoy.config.core.v3.Node" => [
        "id", "cluster",
        "metadata": "accepted; reported by /server_info, no other effect",
        "locality": "zone: the OpenTelemetry access logger's zone_name; region and sub_zone accepted with no effect",
        "user_agent_name": "accepted; no effect",
    ],
    "envoy.config.core.v3.Locality" => ["region", "zone", "sub_zone"],
    "envoy.config.core.v3.Address" => [
        "socket_address",
        "pipe": "listeners (no listener filters; one filter chain) and cluster endpoints (STATIC and EDS clusters, the xDS cluster; plaintext); a path or @abstract name",
    ],
    "envoy.config.core.v3.Pipe" => [
        "path",
        "mode": "a listening socket file's permissions; no effect on an endpoint",
    ],
    "envoy.config.core.v3.SocketAddress" => [
        "address": "an IP literal for listeners and STATIC clusters; a hostname for DNS clusters",
        "port_value",
        "protocol": "TCP only",
    ],
    "envoy.config.listener.v3.Listener" => [
        "name": "a static listener without one is named ADDRESS_PORT",
        "address", "filter_chains",
        "default_filter_chain": "takes connections no filter chain matches; without it they are closed",
        "listener_filters": "tls_inspector, http_inspector, proxy_protocol; tls_inspector and http_inspector are added when a chain matches on what they detect, as Envoy does",
        "listener_filters_timeout": "default 15s; 0 waits forever",
        "continue_on_listener_filters_timeout",
        "per_connection_buffer_limit_bytes": "accepted; bodies are streamed with bounded buffers regardless",
        "enable_reuse_port": "accepted; sluice always binds with SO_REUSEPORT",
        "traffic_direction": "accepted; informational",
        "api_listener": "for proxyless gRPC clients (xds:/// targets): served by sluice-cp, refused by sluice",
        "stat_prefix": "accepted; listener stats are named by the listener's address",
        "metadata": "accepted; no effect",
        "max_connections_to_accept_per_socket_event": "accepted; tuning (sluice accepts one connection per wake-up)",
        "tcp_backlog_size": "the listen backlog (default 4096, capped by net.core.somaxconn)",
        "socket_options": "int_value options: SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT applied to accepted sockets; SO_REUSEADDR, SO_REUSEPORT, TCP_NODELAY (always on); others are refused",
        "tcp_keepalive": "TCP keepalive on accepted sockets",
        "bind_to_port": "true only",
        "transparent": "false only",
        "freebind": "false only",
        "drain_type": "accepted; every drain closes listeners of both kinds",
        "connection_balance_config": "accepted; tuning (the kernel balances SO_REUSEPORT sockets)",
        "ignore_global_conn_limit": "the listener's connections are neither held to nor counted in the global cap (overload_manager's global_downstream_max_connections)",
        "bypass_overload_manager": "the listener's connections and requests are exempt from the overload actions and load shed points (the global connection cap is ignore_global_conn_limit's)",
        "access_log": "one line per connection, when it closes (for HTTP connections too: connection fields only)",
    ],
    "envoy.config.core.v3.Metadata" => ["filter_metadata"],
    "envoy.config.listener.v3.Listener.ConnectionBalanceConfig" => ["exact_balance"],
    "envoy.config.listener.v3.Listener.ConnectionBalanceConfig.ExactBalance" => [],
    "envoy.config.core.v3.SocketOption" => ["description", "level", "name", "int_value", "state"],
    "envoy.config.core.v3.TcpKeepalive" => ["keepalive_probes", "keepalive_time", "keepalive_interval"],
    "envoy.config.listener.v3.ListenerFilter" => [
        "name": "alone (no typed_config) for the three supported listener filters",
        "typed_config",
    ],
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" => [
        "close_connection_on_client_hello_parsing_errors": "else a connection that is not TLS is raw_buffer",
        "enable_ja3_fingerprinting": "accepted; no effect (no fingerprint is computed)",
        "enable_ja4_fingerprinting": "accepted; no effect (no fingerprint is computed)",
        "initial_read_buffer_size": "accepted; tuning",
        "max_client_hello_size": "accepted; ClientHellos up to 64 KiB are read",
    ],
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector" => [],
    "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol" => [
        "allow_requests_without_proxy_protocol", "disallowed_versions",
        "stat_prefix": "accepted; no effect",
    ],
    "envoy.config.listener.v3.ApiListener" => [
        "api_listener": "an HttpConnectionManager",
    ],
    "envoy.config.listener.v3.FilterChain" => [
        "name", "filters", "filter_chain_match",
        "transport_socket": "envoy.transport_sockets.tls with a DownstreamTlsContext (TLS termination), or raw_buffer",
        "transport_socket_connect_timeout": "time allowed for the TLS handshake",
        "metadata": "accepted; no effect",
    ],
    "envoy.config.listener.v3.FilterChainMatch" => [
        "destination_port", "prefix_ranges",
        "server_names": "exact or *.suffix, case-insensitive",
        "transport_protocol": "tls (tls_inspector) or raw_buffer",
        "application_protocols": "ALPN from the ClientHello; http/1.0, http/1.1 or h2c from http_inspector",
        "source_type", "source_prefix_ranges", "direct_source_prefix_ranges", "source_ports",
    ],
    "envoy.config.core.v3.CidrRange" => ["address_prefix", "prefix_len"],
    "envoy.config.listener.v3.Filter" => [
        "name",
        "typed_config": "envoy.filters.network.connection_limit (optional, first) then envoy.filters.network.http_connection_manager or envoy.filters.network.tcp_proxy",
    ],
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy" => [
        "stat_prefix", "cluster", "weighted_clusters",
        "idle_timeout": "default 1h; 0 disables",
        "max_connect_attempts": "each attempt to an endpoint the cluster's load balancer picks",
        "max_downstream_connection_duration",
        "access_log": "one line per connection, when it closes",
    ],
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster" => ["clusters"],
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight" => ["name", "weight"],
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
        "internal_address_config": "requests from its cidr_ranges are internal (x-envoy-internal); with none set no request is, as Envoy",
        "generate_request_id", "preserve_external_request_id",
        "drain_timeout", "server_name",
        "forward_client_cert_details": "SANITIZE (default), FORWARD_ONLY, APPEND_FORWARD, SANITIZE_SET, ALWAYS_FORWARD_ONLY",
        "stream_idle_timeout": "default 5m; 0 disables. Activity: request body data, response headers and body data; 408 before the response starts, the stream reset after; an upgraded (WebSocket) stream closes when no bytes cross for this long",
        "request_timeout": "408 when the whole request has not arrived in time (the timer stops when the request is sent upstream or the response starts)",
        "normalize_path": "RFC 3986 as Envoy: dot segments removed, percent-encoded unreserved characters decoded, backslashes made slashes; the upstream sees the result",
        "merge_slashes", "path_with_escaped_slashes_action": "%2F and %5C, any case; UNESCAPE_AND_REDIRECT answers 307 to the unescaped path",
        "server_header_transformation", "strip_matching_host_port", "strip_any_host_port",
        "http2_protocol_options", "http_protocol_options",
        "set_current_client_cert_details",
        "access_log": "one line per stream, when its response ends or it is reset",
        "tracing": "a SERVER span per traced stream (and a CLIENT span per upstream request with spawn_upstream_span), exported over OTLP/gRPC",
    ],
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.InternalAddressConfig" => [
        "cidr_ranges",
        "unix_sockets": "accepted; no effect: sluice listens on no Unix socket",
    ],
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.Tracing" => [
        "client_sampling": "requests with x-client-trace-id (default 100%)",
        "random_sampling": "requests without a trace decision (default 100%)",
        "overall_sampling": "applied after the other two (default 100%)",
        "verbose": "accepted; sluice logs no per-filter events to spans",
        "max_path_tag_length": "http.url is cut to this length (default 256)",
        "custom_tags", "provider": "envoy.tracers.opentelemetry only",
        "spawn_upstream_span",
    ],
    "envoy.config.trace.v3.Tracing.Http" => ["name", "typed_config"],
    "envoy.config.trace.v3.OpenTelemetryConfig" => [
        "grpc_service": "envoy_grpc to a cluster (OTLP/gRPC)",
        "http_service": "OTLP/HTTP: protobuf POSTed to http_uri through its cluster",
        "service_name": "the resource's service.name (default unknown_service:envoy)",
        "resource_detectors": "environment (OTEL_RESOURCE_ATTRIBUTES) and static_config, read when the config loads; others refused by name",
    ],
    "envoy.extensions.tracers.opentelemetry.resource_detectors.v3.EnvironmentResourceDetectorConfig" => [],
    "envoy.extensions.tracers.opentelemetry.resource_detectors.v3.StaticConfigResourceDetectorConfig" => ["attributes"],
    "envoy.type.v3.Percent" => ["value"],
    "envoy.type.tracing.v3.CustomTag" => [
        "tag", "literal", "environment": "read when the config loads", "request_header",
    ],
    "envoy.type.tracing.v3.CustomTag.Literal" => ["value"],
    "envoy.type.tracing.v3.CustomTag.Environment" => ["name", "default_value"],
    "envoy.type.tracing.v3.CustomTag.Header" => ["name", "default_value"],
    "envoy.config.route.v3.Tracing" => [
        "client_sampling", "random_sampling", "overall_sampling", "custom_tags",
    ],
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.SetCurrentClientCertDetails" => [
        "subject", "cert", "chain", "dns", "uri",
    ],
    "envoy.extensions.filters.network.http_connection_manager.v3.Rds" => [
        "config_source": "ads only", "route_config_name",
    ],
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter" => [
        "name": "what typed_per_filter_config keys refer to; unique in the list",
        "typed_config": "router (last), cors, local_ratelimit, ratelimit, basic_auth, jwt_authn, rbac, fault, ext_authz, header_mutation, buffer, health_check, compressor, decompressor, cache, sluice.extensions.filters.http.file_server.v1.FileServer; another type is refused with its name unless is_optional",
        "is_optional": "a filter of a type sluice does not implement is skipped with a warning, as Envoy skips it",
        "disabled": "the filter runs only where a route, virtual host or route table enables it with typed_per_filter_config",
    ],
    "envoy.config.route.v3.FilterConfig" => [
        "config": "required unless disabled, as in Envoy", "is_optional": "an override of a type sluice does not implement is ignored",
        "disabled": "the filter does not run for this route (virtual host, table)",
    ],
    "envoy.config.route.v3.Decorator" => ["operation", "propagate"],
    "envoy.config.route.v3.RouteAction.UpgradeConfig" => ["upgrade_type", "enabled"],
    "envoy.config.route.v3.RouteAction.RequestMirrorPolicy" => [
        "cluster", "runtime_fraction": "default 100%", "trace_sampled": "accepted; mirrors are not traced",
        "disable_shadow_host_suffix_append",
    ],
    "envoy.extensions.filters.http.cors.v3.Cors" => [],
    "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb" => [],
    "envoy.extensions.filters.http.cors.v3.CorsPolicy" => [
        "allow_origin_string_match", "allow_methods": "`*` echoes Access-Control-Request-Method",
        "allow_headers": "`*` echoes Access-Control-Request-Headers", "expose_headers", "max_age",
        "allow_credentials", "allow_private_network_access",
        "forward_not_matching_preflights": "default true: a preflight from an origin not allowed goes upstream",
        "filter_enabled": "default 100%; the runtime key is ignored (there is no runtime)",
        "shadow_enabled": "counts origin_valid / origin_invalid without changing responses",
    ],
    "envoy.config.route.v3.CorsPolicy" => [
        "allow_origin_string_match", "allow_methods", "allow_headers", "expose_headers", "max_age",
        "allow_credentials", "allow_private_network_access", "forward_not_matching_preflights",
        "filter_enabled", "shadow_enabled",
    ],
    "envoy.config.core.v3.RuntimeFractionalPercent" => [
        "default_value", "runtime_key": "accepted; there is no runtime, the default value applies",
    ],
    "envoy.type.v3.FractionalPercent" => ["numerator", "denominator"],
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit" => [
        "stat_prefix": "counters http_local_rate_limit.{enabled,enforced,rate_limited,ok} under it",
        "status": "default 429", "token_bucket": "unset: the default bucket never limits",
        "filter_enabled": "default 0%, as in Envoy", "filter_enforced": "default 0%, as in Envoy",
        "request_headers_to_add_when_not_enforced", "response_headers_to_add",
        "descriptors": "an entry with an empty value is a wildcard: one bucket per distinct value, at most max_dynamic_descriptors (least recently used dropped)",
        "stage", "local_rate_limit_per_downstream_connection", "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
        "vh_rate_limits", "always_consume_default_token_bucket",
        "rate_limits": "descriptors from these actions instead of the route's", "max_dynamic_descriptors": "default 20",
    ],
    "envoy.type.v3.TokenBucket" => ["max_tokens", "tokens_per_fill", "fill_interval": "at least 50ms"],
    "envoy.type.v3.HttpStatus" => ["code"],
    "envoy.extensions.common.ratelimit.v3.LocalRateLimitDescriptor" => ["entries", "token_bucket"],
    "envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry" => ["key", "value"],
    "envoy.config.route.v3.RateLimit" => ["stage", "actions"],
    "envoy.config.route.v3.RateLimit.Action" => [
        "remote_address": "the client address after x-forwarded-for processing",
        "destination_cluster", "request_headers", "generic_key", "header_value_match",
    ],
    "envoy.config.route.v3.RateLimit.Action.RemoteAddress" => [],
    "envoy.config.route.v3.RateLimit.Action.DestinationCluster" => [],
    "envoy.config.route.v3.RateLimit.Action.RequestHeaders" => ["header_name", "descriptor_key", "skip_if_absent"],
    "envoy.config.route.v3.RateLimit.Action.GenericKey" => ["descriptor_value", "descriptor_key"],
    "envoy.config.route.v3.RateLimit.Action.HeaderValueMatch" => [
        "descriptor_value", "descriptor_key", "expect_match", "headers",
    ],
    "envoy.extensions.filters.http.basic_auth.v3.BasicAuth" => [
        "users": "htpasswd lines with {SHA} hashes (Envoy's only format)",
        "forward_username_header", "authentication_header",
    ],
    "envoy.extensions.filters.http.basic_auth.v3.BasicAuthPerRoute" => ["users"],
    "envoy.extensions.filters.http.rbac.v3.RBAC" => [
        "rules", "rules_stat_prefix", "shadow_rules", "shadow_rules_stat_prefix",
    ],
    "envoy.extensions.filters.http.rbac.v3.RBACPerRoute" => ["rbac": "unset: no policy on this route"],
    "envoy.config.rbac.v3.RBAC" => ["action": "ALLOW, DENY or LOG", "policies"],
    "envoy.config.rbac.v3.Policy" => ["permissions", "principals"],
    "envoy.config.rbac.v3.Permission" => [
        "any", "and_rules", "or_rules", "not_rule", "header", "url_path": "the path without its query",
        "destination_ip", "destination_port", "destination_port_range", "requested_server_name",
    ],
    "envoy.config.rbac.v3.Permission.Set" => ["rules"],
    "envoy.config.rbac.v3.Principal" => [
        "any", "and_ids", "or_ids", "not_id",
        "authenticated": "a verified client certificate; principal_name matches its URI SANs, then DNS SANs, then subject",
        "source_ip": "deprecated in Envoy: as direct_remote_ip", "direct_remote_ip",
        "remote_ip": "the client address after x-forwarded-for processing", "header", "url_path",
    ],
    "envoy.config.rbac.v3.Principal.Set" => ["ids"],
    "envoy.config.rbac.v3.Principal.Authenticated" => ["principal_name"],
    "envoy.type.matcher.v3.PathMatcher" => ["path"],
    "envoy.type.v3.Int32Range" => ["start", "end"],
    "envoy.config.core.v3.CidrRange" => ["address_prefix", "prefix_len"],
    "envoy.extensions.filters.http.fault.v3.HTTPFault" => [
        "delay", "abort", "upstream_cluster", "headers", "downstream_nodes",
        "max_active_faults": "a request holds a slot while delayed; with response_rate_limit configured, until its stream ends (as Envoy)",
        "response_rate_limit": "the response body is sent a sixteenth of the rate at a time, sixteen times a second",
        "response_rate_limit_percent_runtime": "accepted; there is no runtime",
        "delay_percent_runtime": "accepted; there is no runtime", "abort_percent_runtime": "accepted; there is no runtime",
        "delay_duration_runtime": "accepted; there is no runtime", "abort_http_status_runtime": "accepted; there is no runtime",
        "max_active_faults_runtime": "accepted; there is no runtime", "abort_grpc_status_runtime": "accepted; there is no runtime",
        "disable_downstream_cluster_stats": "accepted; no per-downstream-cluster fault stats are kept",
    ],
    "envoy.extensions.filters.http.fault.v3.FaultAbort" => [
        "http_status", "grpc_status", "header_abort": "x-envoy-fault-abort-request / x-envoy-fault-abort-grpc-request",
        "response_body": "default: fault filter abort",
        "percentage": "unset: 0%, as in Envoy; header-controlled: x-envoy-fault-abort-request-percentage may lower it",
    ],
    "envoy.extensions.filters.http.fault.v3.FaultAbort.HeaderAbort" => [],
    "envoy.extensions.filters.common.fault.v3.FaultDelay" => [
        "fixed_delay", "header_delay": "x-envoy-fault-delay-request (ms)",
        "percentage": "unset: 0%, as in Envoy; header-controlled: x-envoy-fault-delay-request-percentage may lower it",
    ],
    "envoy.extensions.filters.common.fault.v3.FaultDelay.HeaderDelay" => [],
    "envoy.extensions.filters.common.fault.v3.FaultRateLimit" => [
        "fixed_limit", "header_limit": "x-envoy-fault-throughput-response (KiB/s)",
        "percentage": "unset: 0%, as in Envoy; header-controlled: x-envoy-fault-throughput-response-percentage may lower it",
    ],
    "envoy.extensions.filters.common.fault.v3.FaultRateLimit.FixedLimit" => ["limit_kbps": "KiB per second"],
    "envoy.extensions.filters.common.fault.v3.FaultRateLimit.HeaderLimit" => [],
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz" => [
        "grpc_service": "envoy_grpc to a cleartext HTTP/2 cluster",
        "http_service": "a plain HTTP check through a cleartext cluster's pool: 200 allows, 5xx or no answer is an error, any other status denies",
        "transport_api_version": "V3", "failure_mode_allow", "failure_mode_allow_header_add",
        "status_on_error": "default 403", "stat_prefix",
        "filter_enabled": "default 100%", "deny_at_disable",
        "with_request_body": "the body is read before the check (up to max_request_bytes) and replayed to the upstream unchanged",
    ],
    "envoy.extensions.filters.http.ext_authz.v3.BufferSettings" => [
        "max_request_bytes", "allow_partial_message": "else a longer body is answered 413",
        "pack_as_bytes": "gRPC: raw_body instead of body",
    ],
    "envoy.extensions.filters.http.ext_authz.v3.HttpService" => [
        "server_uri": "cluster and timeout; the URI's host is the check's :authority",
        "path_prefix", "path_override", "authorization_request", "authorization_response",
    ],
    "envoy.extensions.filters.http.ext_authz.v3.AuthorizationRequest" => [
        "allowed_headers": "besides Authorization, :method, :path and :authority, always sent",
        "headers_to_add",
    ],
    "envoy.extensions.filters.http.ext_authz.v3.AuthorizationResponse" => [
        "allowed_upstream_headers", "allowed_upstream_headers_to_append",
        "allowed_client_headers": "unset: every header of a denial but Host",
        "allowed_client_headers_on_success",
    ],
    "envoy.type.matcher.v3.ListStringMatcher" => ["patterns"],
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute" => ["disabled", "check_settings"],
    "envoy.extensions.filters.http.ratelimit.v3.RateLimit" => [
        "domain", "stage", "request_type": "both (the default)", "timeout": "default 20ms",
        "failure_mode_deny", "rate_limit_service", "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
        "disable_x_envoy_ratelimited_header", "rate_limited_status": "default 429",
        "response_headers_to_add", "status_on_error": "default 500", "rate_limits",
    ],
    "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication" => [
        "providers", "rules": "the first rule whose match accepts the request decides", "requirement_map",
        "bypass_cors_preflight", "stat_prefix",
    ],
    "envoy.extensions.filters.http.jwt_authn.v3.JwtProvider" => [
        "issuer", "audiences", "require_expiration", "forward",
        "from_headers": "default: Authorization with the Bearer prefix, and the access_token query parameter",
        "from_params", "forward_payload_header": "base64url of the payload",
        "claim_to_headers": "string, number and boolean claims; a.b reaches nested claims",
        "clock_skew_seconds": "default 60", "local_jwks",
        "remote_jwks": "fetched through the cluster on first use, kept for cache_duration",
    ],
    "envoy.extensions.filters.http.jwt_authn.v3.RemoteJwks" => ["http_uri", "cache_duration": "default 5m"],
    "envoy.config.core.v3.HttpUri" => ["uri", "cluster", "timeout": "jwt_authn: default 1s; ext_authz and OpenTelemetry: required, the call's deadline"],
    "envoy.config.core.v3.HttpService" => ["http_uri", "request_headers_to_add": "header key and value; sent with every export"],
    "envoy.extensions.filters.http.jwt_authn.v3.JwtHeader" => ["name", "value_prefix"],
    "envoy.extensions.filters.http.jwt_authn.v3.JwtClaimToHeader" => ["header_name", "claim_name"],
    "envoy.extensions.filters.http.jwt_authn.v3.RequirementRule" => ["match", "requires", "requirement_name"],
    "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirement" => [
        "provider_name", "provider_and_audiences", "requires_any", "requires_all",
        "allow_missing", "allow_missing_or_failed",
    ],
    "envoy.extensions.filters.http.jwt_authn.v3.ProviderWithAudiences" => ["provider_name", "audiences"],
    "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirementOrList" => ["requirements"],
    "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirementAndList" => ["requirements"],
    "envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig" => ["disabled", "requirement_name"],
    "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation" => [
        "mutations", "most_specific_header_mutations_wins",
    ],
    "envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute" => ["mutations"],
    "envoy.extensions.filters.http.compressor.v3.Compressor" => [
        "compressor_library": "gzip, brotli or zstd; another library is refused by name",
        "response_direction_config", "choose_first",
        "request_direction_config": "only with request compression off (common_config.enabled false): request compression is refused",
        "content_length": "deprecated; used when response_direction_config is absent, as in Envoy",
        "content_type": "deprecated; used when response_direction_config is absent",
        "disable_on_etag_header": "deprecated; used when response_direction_config is absent",
        "remove_accept_encoding_header": "deprecated; used when response_direction_config is absent",
        "runtime_enabled": "deprecated; used when response_direction_config is absent",
    ],
    "envoy.extensions.filters.http.compressor.v3.Compressor.RequestDirectionConfig" => ["common_config"],
    "envoy.extensions.filters.http.compressor.v3.Compressor.ResponseDirectionConfig" => [
        "common_config", "disable_on_etag_header", "weaken_etag_on_compress",
        "remove_accept_encoding_header", "uncompressible_response_codes",
        "status_header_enabled": "false only: the x-envoy-compression-status header is refused",
    ],
    "envoy.extensions.filters.http.compressor.v3.Compressor.CommonDirectionConfig" => [
        "enabled",
        "min_content_length": "default 30 (0 means 30, as in Envoy)",
        "content_type": "deprecated; exact types, compared without parameters and case",
        "content_type_matcher": "takes precedence over content_type",
    ],
    "envoy.extensions.filters.http.compressor.v3.CompressorPerRoute" => ["disabled", "overrides"],
    "envoy.extensions.filters.http.compressor.v3.CompressorOverrides" => ["response_direction_config", "compressor_library"],
    "envoy.extensions.filters.http.compressor.v3.ResponseDirectionOverrides" => ["remove_accept_encoding_header"],
    "envoy.extensions.compression.gzip.compressor.v3.Gzip" => [
        "compression_level", "window_bits",
        "memory_level": "accepted; no effect: the zlib-rs backend sizes its own state",
        "compression_strategy": "accepted; no effect: the default strategy is used",
        "chunk_size": "accepted; no effect: each body frame is compressed and flushed whole",
    ],
    "envoy.extensions.compression.brotli.compressor.v3.Brotli" => [
        "quality", "encoder_mode", "window_bits", "input_block_bits", "disable_literal_context_modeling",
        "chunk_size": "accepted; no effect: each body frame is compressed and flushed whole",
    ],
    "envoy.extensions.compression.zstd.compressor.v3.Zstd" => [
        "compression_level", "enable_checksum", "strategy",
        "chunk_size": "accepted; no effect: each body frame is compressed and flushed whole",
    ],
    "envoy.extensions.filters.http.decompressor.v3.Decompressor" => [
        "decompressor_library": "gzip, brotli or zstd; another library is refused by name",
        "request_direction_config", "response_direction_config",
    ],
    "envoy.extensions.filters.http.decompressor.v3.Decompressor.RequestDirectionConfig" => ["common_config", "advertise_accept_encoding"],
    "envoy.extensions.filters.http.decompressor.v3.Decompressor.ResponseDirectionConfig" => ["common_config"],
    "envoy.extensions.filters.http.decompressor.v3.Decompressor.CommonDirectionConfig" => ["enabled", "ignore_no_transform_header"],
    "envoy.extensions.compression.gzip.decompressor.v3.Gzip" => [
        "max_inflate_ratio": "a body that inflates past this ratio of its compressed bytes is cut off with a reset",
        "window_bits": "accepted; the decoder takes any window up to 15 bits",
        "chunk_size": "accepted; no effect: each body frame is decompressed whole",
    ],
    "envoy.extensions.compression.brotli.decompressor.v3.Brotli" => [
        "disable_ring_buffer_reallocation": "accepted; no effect",
        "chunk_size": "accepted; no effect: each body frame is decompressed whole",
    ],
    "envoy.extensions.compression.zstd.decompressor.v3.Zstd" => [
        "chunk_size": "accepted; no effect: each body frame is decompressed whole",
    ],
    "sluice.extensions.filters.http.file_server.v1.FileServer" => [
        "root": "required; the directory is not checked when the config is validated (a control plane cannot see the node's disk)",
        "index_files": "default index.html", "mime_types", "default_mime_type": "default application/octet-stream", "strip_prefix",
    ],
    "sluice.extensions.filters.http.file_server.v1.FileServerPerRoute" => ["file_server"],
    "envoy.extensions.filters.http.cache.v3.CacheConfig" => [
        "typed_config": "SimpleHttpCacheConfig (bounded at 64 MiB, least recently used evicted first) or sluice.extensions.http.cache.memory.v1.MemoryHttpCacheConfig; another storage is refused by name",
        "disabled", "allowed_vary_headers": "a response that varies on a header no matcher allows is not stored; Vary: * never is",
        "key_creator_params", "max_body_bytes": "0: only the store's bound limits a body",
        "ignore_request_cache_control_header",
    ],
    "envoy.extensions.filters.http.cache.v3.CacheConfig.KeyCreatorParams" => [
        "exclude_scheme", "exclude_host", "query_parameters_included", "query_parameters_excluded",
    ],
    "envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig" => [],
    "sluice.extensions.http.cache.memory.v1.MemoryHttpCacheConfig" => [
        "max_size_bytes": "default 64 MiB: bodies, headers and keys; least recently used evicted first",
        "store_responses_with_set_cookie": "default false; when true the stored copy drops its Set-Cookie headers",
    ],
    "envoy.extensions.filters.http.buffer.v3.Buffer" => [
        "max_request_bytes": "the whole request body is read first; a longer one is answered 413 Payload Too Large",
    ],
    "envoy.extensions.filters.http.buffer.v3.BufferPerRoute" => ["disabled", "buffer"],
    "envoy.extensions.filters.http.health_check.v3.HealthCheck" => [
        "pass_through_mode": "false: the proxy answers (200, or 503 with flag LH after /healthcheck/fail or below a cluster minimum); true: the upstream does, unless the proxy is failing",
        "cache_time": "pass-through mode: an upstream answer is reused for this long",
        "cluster_min_healthy_percentages": "answering mode: healthy hosts / hosts of each cluster, from its membership",
        "headers": "all must match for a request to be a health check (pseudo-headers included); health checks are not traced and not_health_check_filter skips them",
    ],
    "envoy.extensions.filters.http.header_mutation.v3.Mutations" => ["request_mutations", "response_mutations"],
    "envoy.config.common.mutation_rules.v3.HeaderMutation" => ["remove", "append", "remove_on_match"],
    "envoy.config.common.mutation_rules.v3.HeaderMutation.RemoveOnMatch" => ["key_matcher"],
    "envoy.config.ratelimit.v3.RateLimitServiceConfig" => ["grpc_service", "transport_api_version": "V3"],
    "envoy.extensions.filters.http.ext_authz.v3.CheckSettings" => ["context_extensions", "disable_request_body_buffering"],
    "envoy.config.core.v3.RuntimeFeatureFlag" => [
        "default_value", "runtime_key": "accepted; there is no runtime, the default value applies",
    ],
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig" => [
        "upgrade_type", "enabled",
    ],
    "envoy.extensions.filters.http.router.v3.Router" => [
        "suppress_envoy_headers": "leaves out x-envoy-upstream-service-time, x-envoy-expected-rq-timeout-ms, x-envoy-overloaded and x-envoy-attempt-count",
    ],
    "envoy.config.core.v3.HttpProtocolOptions" => [
        "headers_with_underscores_action": "downstream: ALLOW (default), REJECT_REQUEST (400), DROP_HEADER",
        "max_stream_duration": "downstream: before the response starts 408 (request still arriving) or 504; after, the stream is reset",
        "idle_timeout": "downstream: close a connection with no active request after this long (default 1h); upstream: pool idle timeout",
        "max_headers_count",
        "max_requests_per_connection": "upstream: a connection is closed after this many requests",
        "max_connection_duration": "upstream: a connection is closed (when idle) this long after it was made",
    ],
    "envoy.config.route.v3.RouteConfiguration" => [
        "name", "virtual_hosts", "ignore_port_in_host_matching",
        "internal_only_headers": "removed from requests that are not internal, before filters and routing",
        "typed_per_filter_config": "overrides of the HTTP filters for every route of the table",
        "request_headers_to_add", "request_headers_to_remove",
        "response_headers_to_add", "response_headers_to_remove",
        "validate_clusters": "accepted; inline tables in a bootstrap are always checked against its static clusters, and sluice-cp checks every table against the group's clusters",
    ],
    "envoy.config.route.v3.RouteAction.MaxStreamDuration" => [
        "max_stream_duration", "grpc_timeout_header_max", "grpc_timeout_header_offset",
    ],
    "envoy.config.route.v3.VirtualHost" => [
        "name", "domains", "routes", "retry_policy",
        "typed_per_filter_config": "overrides of the HTTP filters for the virtual host's routes",
        "cors": "deprecated in Envoy; used when no per-filter CORS policy is set",
        "rate_limits": "read by the local rate limit filter",
        "metadata": "accepted; no filter reads it yet",
        "include_request_attempt_count", "include_attempt_count_in_response",
        "request_headers_to_add", "request_headers_to_remove",
        "response_headers_to_add", "response_headers_to_remove",
    ],
    "envoy.config.route.v3.Route" => [
        "name", "match", "route", "redirect", "direct_response",
        "typed_per_filter_config": "overrides of the HTTP filters for this route (the most specific level)",
        "metadata": "accepted; no filter reads it yet",
        "decorator": "the span's name; with propagate (default) the upstream gets x-envoy-decorator-operation",
        "tracing": "sampling overrides and custom tags for the route's spans",
        "request_headers_to_add", "request_headers_to_remove",
        "response_headers_to_add", "response_headers_to_remove",
    ],
    "envoy.config.route.v3.RouteMatch" => [
        "prefix", "path", "safe_regex", "path_separated_prefix",
        "case_sensitive", "headers", "query_parameters",
        "grpc": "only requests whose content-type is application/grpc or application/grpc+…",
    ],
    "envoy.config.route.v3.RouteMatch.GrpcRouteMatchOptions" => [],
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
        "max_stream_duration": "the stream's lifetime on this route: a grpc-timeout header's (capped, less the offset) when grpc_timeout_header_max is set, else its max_stream_duration (0 lifts the connection manager's)",
        "cluster_not_found_response_code",
        "hash_policy": "for RING_HASH and MAGLEV clusters; no effect on others, as in Envoy",
        "cors": "deprecated in Envoy; used when no per-filter CORS policy is set",
        "rate_limits": "read by the local rate limit filter", "include_vh_rate_limits",
        "upgrade_configs": "per-route upgrade switches over the connection manager's",
        "request_mirror_policies": "fire and forget; the body is mirrored when it is at most 1 MiB with a known length (it is buffered)",
    ],
    "envoy.config.route.v3.RouteAction.HashPolicy" => [
        "header", "cookie", "connection_properties", "query_parameter", "terminal",
    ],
    "envoy.config.route.v3.RouteAction.HashPolicy.Header" => ["header_name", "regex_rewrite"],
    "envoy.config.route.v3.RouteAction.HashPolicy.Cookie" => [
        "name", "ttl": "a missing cookie is generated and set on the response (0s: a session cookie)",
        "path", "attributes",
    ],
    "envoy.config.route.v3.RouteAction.HashPolicy.CookieAttribute" => ["name", "value"],
    "envoy.config.route.v3.RouteAction.HashPolicy.ConnectionProperties" => ["source_ip"],
    "envoy.config.route.v3.RouteAction.HashPolicy.QueryParameter" => ["name"],
    "envoy.config.route.v3.WeightedCluster" => [
        "clusters",
        "total_weight": "deprecated in Envoy; when set it must equal the sum of the weights",
    ],
    "envoy.config.route.v3.WeightedCluster.ClusterWeight" => ["name", "weight"],
    "envoy.config.route.v3.RetryPolicy" => [
        "retry_on": "5xx, gateway-error, connect-failure, reset, retriable-status-codes (others are rejected)",
        "num_retries", "per_try_timeout", "retriable_status_codes", "retry_back_off",
        "retry_host_predicate": "envoy.retry_host_predicates.previous_hosts",
        "host_selection_retry_max_attempts",
    ],
    "envoy.config.route.v3.RetryPolicy.RetryHostPredicate" => ["name", "typed_config"],
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate" => [],
    "envoy.config.route.v3.RetryPolicy.RetryBackOff" => ["base_interval", "max_interval"],
    "envoy.config.route.v3.RedirectAction" => [
        "https_redirect", "scheme_redirect", "host_redirect", "port_redirect",
        "path_redirect", "prefix_rewrite", "response_code", "strip_query",
    ],
    "envoy.config.route.v3.DirectResponseAction" => ["status", "body"],
    "envoy.config.core.v3.DataSource" => [
        "inline_string", "inline_bytes",
        "filename": "for TLS certificates, keys and CAs: read when the config is taken (and again on SIGHUP); not watched",
    ],
    "envoy.config.core.v3.HeaderValueOption" => [
        "header", "append": "deprecated in Envoy; use append_action", "append_action",
        "keep_empty_value",
    ],
    "envoy.config.core.v3.HeaderValue" => [
        "key", "value": "literal values; `%` command operators are rejected",
    ],
    "envoy.config.cluster.v3.Cluster.CustomClusterType" => ["name", "typed_config"],
    "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig" => [
        "dns_resolver_options": "accepted; sluice asks the system resolver, which reads resolv.conf for TCP and search domains",
        "filter_unroutable_families": "accepted; no effect",
        "udp_max_queries": "accepted; no effect",
        "query_timeout_seconds": "accepted; the system resolver's timeouts apply",
        "query_tries": "accepted; the system resolver's retries apply",
        "rotate_nameservers": "accepted; no effect",
        "edns0_max_payload_size": "accepted; no effect",
        "max_udp_channel_duration": "accepted; no effect",
        "reinit_channel_on_timeout": "accepted; no effect",
        "qcache_max_ttl": "accepted; no effect",
    ],
    "envoy.config.core.v3.DnsResolverOptions" => [
        "use_tcp_for_dns_lookups": "accepted; no effect",
        "no_default_search_domain": "accepted; no effect",
    ],
    "envoy.extensions.network.dns_resolver.getaddrinfo.v3.GetAddrInfoDnsResolverConfig" => [
        "num_retries": "accepted; the system resolver's retries apply",
        "num_resolver_threads": "accepted; lookups run on tokio's blocking pool",
    ],
    "envoy.extensions.clusters.aggregate.v3.ClusterConfig" => [
        "clusters": "at least one, each once, not the aggregate itself; a cluster that does not exist (or is itself an aggregate) counts as one with no healthy hosts",
    ],
    "envoy.extensions.clusters.dns.v3.DnsCluster" => [
        "typed_dns_resolver_config": "as the cluster's",
        "dns_refresh_rate": "default 5s",
        "dns_lookup_family": "AUTO (also when unset), V4_ONLY, V6_ONLY, V4_PREFERRED, ALL",
        "all_addresses_in_single_endpoint": "true: logical DNS (one endpoint, the first address); false: strict DNS (an endpoint per address)",
    ],
    "envoy.config.cluster.v3.Cluster" => [
        "name", "type": "STATIC, STRICT_DNS, LOGICAL_DNS, EDS",
        "typed_dns_resolver_config": "envoy.network.dns_resolver.cares (without resolvers: the system's name servers) or envoy.network.dns_resolver.getaddrinfo, which only pick a resolver implementation; sluice resolves through the system resolver either way. A c-ares config naming its own resolvers is refused",
        "cluster_type": "envoy.cluster.dns (DnsCluster: strict DNS, or logical DNS with all_addresses_in_single_endpoint) and envoy.clusters.aggregate (with lb_policy CLUSTER_PROVIDED: a request goes to the first listed cluster while it is healthy enough, spilling over by the clusters' health as Envoy's priority levels do; the choice is made once per request, retries stay on it); other cluster extensions are refused by name",
        "eds_cluster_config": "endpoints over ADS; the cluster warms until they arrive",
        "connect_timeout", "lb_policy": "ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH, MAGLEV; CLUSTER_PROVIDED for an aggregate cluster",
        "load_assignment", "dns_refresh_rate", "dns_lookup_family": "AUTO, V4_ONLY, V6_ONLY, V4_PREFERRED, ALL",
        "least_request_lb_config", "ring_hash_lb_config", "maglev_lb_config", "round_robin_lb_config",
        "load_balancing_policy": "replaces lb_policy and its lb_config",
        "common_lb_config",
        "health_checks": "at most one per cluster",
        "outlier_detection",
        "ignore_health_on_host_removal",
        "http2_protocol_options": "deprecated in Envoy; selects HTTP/2 upstream",
        "typed_extension_protocol_options": "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "per_connection_buffer_limit_bytes": "accepted; bodies are streamed with bounded buffers regardless",
        "alt_stat_name",
        "transport_socket": "envoy.transport_sockets.tls with an UpstreamTlsContext",
        "circuit_breakers": "default-priority thresholds apply; HIGH thresholds are accepted and never reached (routes all use the default priority)",
        "max_requests_per_connection": "deprecated in Envoy; use common_http_protocol_options.max_requests_per_connection",
        "upstream_connection_options",
        "metadata": "accepted; shown in /config_dump, no filter of sluice reads a cluster's metadata",
    ],
    "envoy.config.cluster.v3.Cluster.LeastRequestLbConfig" => [
        "choice_count",
        "active_request_bias": "with unequal weights, a host's weight is divided by (active requests + 1) to this power",
    ],
    "envoy.config.core.v3.RuntimeDouble" => [
        "default_value", "runtime_key": "accepted; sluice has no runtime, so the default applies",
    ],
    "envoy.config.cluster.v3.Cluster.RingHashLbConfig" => [
        "minimum_ring_size", "maximum_ring_size", "hash_function": "XX_HASH only",
    ],
    "envoy.config.cluster.v3.Cluster.MaglevLbConfig" => ["table_size": "a prime, at most 5000011"],
    "envoy.config.cluster.v3.Cluster.RoundRobinLbConfig" => [],
    "envoy.config.cluster.v3.Cluster.CommonLbConfig" => [
        "healthy_panic_threshold": "default 50%; 0 disables panic mode",
        "zone_aware_lb_config": "accepted; no effect (zone-aware routing needs a local cluster, which sluice does not have)",
        "locality_weighted_lb_config",
        "update_merge_window": "accepted; tuning (sluice applies host changes at once)",
        "ignore_new_hosts_until_first_hc",
        "close_connections_on_host_set_change": "false only",
        "consistent_hashing_lb_config",
    ],
    "envoy.config.cluster.v3.Cluster.CommonLbConfig.ZoneAwareLbConfig" => [
        "routing_enabled", "min_cluster_size", "fail_traffic_on_panic",
    ],
    "envoy.config.cluster.v3.Cluster.CommonLbConfig.LocalityWeightedLbConfig" => [],
    "envoy.config.cluster.v3.Cluster.CommonLbConfig.ConsistentHashingLbConfig" => [],
    "envoy.config.cluster.v3.LoadBalancingPolicy" => [
        "policies": "the first policy sluice implements is used and the others are not checked, as in Envoy: round_robin, least_request, random, ring_hash, maglev, wrr_locality",
    ],
    "envoy.config.cluster.v3.LoadBalancingPolicy.Policy" => ["typed_extension_config"],
    "envoy.config.core.v3.TypedExtensionConfig" => ["name", "typed_config"],
    "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin" => ["locality_lb_config"],
    "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest" => [
        "choice_count", "active_request_bias", "locality_lb_config",
        "enable_full_scan", "selection_method",
    ],
    "envoy.extensions.load_balancing_policies.random.v3.Random" => ["locality_lb_config"],
    "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash" => [
        "hash_function": "XX_HASH (DEFAULT_HASH) only", "minimum_ring_size", "maximum_ring_size",
        "consistent_hashing_lb_config", "locality_weighted_lb_config",
    ],
    "envoy.extensions.load_balancing_policies.maglev.v3.Maglev" => [
        "table_size", "consistent_hashing_lb_config", "locality_weighted_lb_config",
    ],
    "envoy.extensions.load_balancing_policies.wrr_locality.v3.WrrLocality" => [
        "endpoint_picking_policy": "locality-weighted, then this policy within the locality",
    ],
    "envoy.extensions.load_balancing_policies.common.v3.LocalityLbConfig" => [
        "zone_aware_lb_config": "accepted; no effect (zone-aware routing needs a local cluster, which sluice does not have)",
        "locality_weighted_lb_config",
    ],
    "envoy.extensions.load_balancing_policies.common.v3.LocalityLbConfig.ZoneAwareLbConfig" => [
        "routing_enabled", "min_cluster_size", "fail_traffic_on_panic",
        "force_locality_direct_routing", "force_local_zone", "locality_basis",
    ],
    "envoy.extensions.load_balancing_policies.common.v3.LocalityLbConfig.ZoneAwareLbConfig.ForceLocalZone" => ["min_size"],
    "envoy.extensions.load_balancing_policies.common.v3.LocalityLbConfig.LocalityWeightedLbConfig" => [],
    "envoy.extensions.load_balancing_policies.common.v3.ConsistentHashingLbConfig" => [],
    "envoy.config.core.v3.HealthCheck" => [
        "timeout", "interval", "initial_jitter", "interval_jitter", "interval_jitter_percent",
        "unhealthy_threshold", "healthy_threshold", "alt_port", "reuse_connection",
        "no_traffic_interval": "default 60s: until the cluster has carried a request, hosts are checked this often",
        "no_traffic_healthy_interval", "unhealthy_interval", "unhealthy_edge_interval",
        "healthy_edge_interval",
        "http_health_check", "tcp_health_check", "grpc_health_check",
        "always_log_health_check_failures": "accepted; failures are logged at debug level",
        "always_log_health_check_success": "accepted; no effect",
        "tls_options": "checks use the cluster's transport socket; alpn_protocols is refused",
    ],
    "envoy.config.core.v3.HealthCheck.TlsOptions" => [],
    "envoy.config.core.v3.HealthCheck.HttpHealthCheck" => [
        "host": "default: the cluster's name", "path", "method": "not CONNECT",
        "send": "a request body", "receive": "the response body must contain each payload, in order",
        "response_buffer_size": "how much of the body receive looks at (default 1024 bytes)",
        "request_headers_to_add", "request_headers_to_remove",
        "expected_statuses": "default [200, 201)", "retriable_statuses",
        "codec_client_type": "HTTP1 or HTTP2",
    ],
    "envoy.config.core.v3.HealthCheck.TcpHealthCheck" => ["send", "receive"],
    "envoy.config.core.v3.HealthCheck.GrpcHealthCheck" => [
        "service_name", "authority": "default: the cluster's name", "initial_metadata",
    ],
    "envoy.config.core.v3.HealthCheck.Payload" => ["text": "hex-encoded bytes", "binary"],
    "envoy.type.v3.Int64Range" => ["start", "end"],
    "envoy.config.cluster.v3.OutlierDetection" => [
        "consecutive_5xx", "interval", "base_ejection_time",
        "max_ejection_percent": "default 10%: with fewer than 10 hosts nothing is ejected unless always_eject_one_host",
        "enforcing_consecutive_5xx", "enforcing_success_rate", "success_rate_minimum_hosts",
        "success_rate_request_volume", "success_rate_stdev_factor", "consecutive_gateway_failure",
        "enforcing_consecutive_gateway_failure": "default 0%: detected and counted, not ejected",
        "split_external_local_origin_errors", "consecutive_local_origin_failure",
        "enforcing_consecutive_local_origin_failure", "enforcing_local_origin_success_rate",
        "failure_percentage_threshold", "enforcing_failure_percentage",
        "enforcing_failure_percentage_local_origin", "failure_percentage_minimum_hosts",
        "failure_percentage_request_volume", "max_ejection_time", "max_ejection_time_jitter",
        "successful_active_health_check_uneject_host", "always_eject_one_host",
    ],
    "envoy.config.cluster.v3.CircuitBreakers" => ["thresholds"],
    "envoy.config.cluster.v3.CircuitBreakers.Thresholds" => [
        "priority", "max_connections", "max_pending_requests", "max_requests",
        "max_retries": "retries in flight; replaced by retry_budget when set",
        "retry_budget",
        "track_remaining": "accepted; remaining-capacity gauges are not exported",
    ],
    "envoy.config.cluster.v3.CircuitBreakers.Thresholds.RetryBudget" => [
        "budget_percent", "min_retry_concurrency",
    ],
    "envoy.config.cluster.v3.UpstreamConnectionOptions" => ["tcp_keepalive"],
    "envoy.type.v3.Percent" => ["value"],
    "envoy.config.core.v3.TransportSocket" => ["name", "typed_config"],
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext" => [
        "common_tls_context",
        "sni": "sent, and the name the server certificate is checked against; default: the endpoint's address is checked and no SNI is sent for an IP",
        "auto_host_sni": "SNI (and, with auto_sni_san_validation, the name checked) from the request's host",
        "auto_sni_san_validation",
        "allow_renegotiation": "false only (rustls never renegotiates)",
        "max_session_keys": "accepted; tuning (rustls keeps its own session cache)",
        "enforce_rsa_key_usage": "accepted; rustls always checks key usage",
    ],
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext" => [
        "common_tls_context",
        "require_client_certificate": "mutual TLS: a handshake without a certificate the validation context trusts fails",
        "require_sni": "a handshake without SNI fails",
        "disable_stateless_session_resumption": "else session tickets (rustls, keys rotated every 6h) resume sessions",
        "disable_stateful_session_resumption",
        "prefer_client_ciphers",
        "session_timeout": "accepted; sessions live for rustls's fixed ticket lifetime",
        "full_scan_certs_on_sni_mismatch": "accepted; every certificate of the chain is always considered",
        "ocsp_staple_policy": "LENIENT_STAPLING only (no staple is sent)",
    ],
    "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext" => [
        "tls_certificates": "downstream: any number (RSA and ECDSA), picked by SNI and what the client supports; upstream: at most one, the client certificate",
        "tls_certificate_sds_secret_configs": "certificates by name: over ADS (sds_config: {ads: {}}) or from static_resources.secrets; the listener or cluster warms until they arrive",
        "alpn_protocols": "downstream: offered in order (h2 and http/1.1 feed the HTTP connection manager); upstream: offered to the server",
        "tls_params", "validation_context", "validation_context_sds_secret_config",
        "combined_validation_context",
    ],
    "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.CombinedCertificateValidationContext" => [
        "default_validation_context", "validation_context_sds_secret_config",
    ],
    "envoy.extensions.transport_sockets.tls.v3.TlsParameters" => [
        "tls_minimum_protocol_version": "TLSv1_2 (default) or TLSv1_3; TLSv1_0 and TLSv1_1 are refused",
        "tls_maximum_protocol_version": "TLSv1_2 or TLSv1_3 (default)",
        "cipher_suites": "TLS 1.2 ECDHE suites with AES-GCM or ChaCha20-Poly1305, in order; the CBC and RSA key-exchange suites of Envoy's default list are accepted and never offered; TLS 1.3 suites are always on",
        "ecdh_curves": "X25519, P-256, P-384",
    ],
    "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig" => [
        "name", "sds_config": "ads only; absent: static_resources.secrets",
    ],
    "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext" => [
        "trusted_ca": "PEM CA bundle",
        "match_typed_subject_alt_names": "the peer certificate needs a SAN matching one of them",
        "match_subject_alt_names": "deprecated in Envoy; any SAN type",
        "trust_chain_verification": "VERIFY_TRUST_CHAIN only",
    ],
    "envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher" => [
        "san_type": "DNS, URI, EMAIL or IP_ADDRESS", "matcher",
    ],
    "envoy.config.cluster.v3.Cluster.EdsClusterConfig" => [
        "eds_config": "ads only", "service_name",
    ],
    "envoy.config.endpoint.v3.ClusterLoadAssignment" => ["cluster_name", "endpoints", "policy"],
    "envoy.config.endpoint.v3.ClusterLoadAssignment.Policy" => [
        "overprovisioning_factor": "default 140: a priority keeps all its traffic until fewer than 1/1.4 of its hosts are healthy",
    ],
    "envoy.config.endpoint.v3.LocalityLbEndpoints" => [
        "lb_endpoints", "locality",
        "load_balancing_weight": "the locality's weight with locality-weighted load balancing; else no effect, as in Envoy",
        "priority": "0 is the highest; lower priorities take the traffic higher ones lack the health for",
    ],
    "envoy.config.endpoint.v3.LbEndpoint" => [
        "endpoint", "load_balancing_weight",
        "health_status": "UNHEALTHY and TIMEOUT (/failed_eds_health) and DRAINING (/eds_status_draining) take no traffic; DEGRADED takes traffic only when its priority has no healthy host",
    ],
    "envoy.config.endpoint.v3.Endpoint" => ["address", "hostname"],
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" => [
        "explicit_http_config", "common_http_protocol_options",
        "auto_config": "HTTP/2 when TLS negotiates h2 by ALPN, else HTTP/1.1",
        "upstream_http_protocol_options",
        "use_downstream_protocol_config": "the downstream request's protocol: HTTP/2 upstream for an HTTP/2 request when http2_protocol_options is set, else HTTP/1.1; plaintext clusters (over TLS use auto_config)",
    ],
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.UseDownstreamHttpConfig" => [
        "http_protocol_options", "http2_protocol_options",
    ],
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.AutoHttpConfig" => [
        "http_protocol_options", "http2_protocol_options",
    ],
    "envoy.config.core.v3.UpstreamHttpProtocolOptions" => [
        "auto_sni": "SNI from the request's host", "auto_san_validation",
    ],
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig" => [
        "http_protocol_options", "http2_protocol_options",
    ],
    "envoy.extensions.transport_sockets.tls.v3.Secret" => [
        "name",
        "tls_certificate": "a certificate and key: checked (the key must match the certificate) before it is used; a rotated one applies to the next handshake",
        "validation_context": "trusted CAs and SAN matchers",
    ],
    "envoy.extensions.transport_sockets.tls.v3.TlsCertificate" => [
        "certificate_chain": "PEM, leaf first",
        "private_key": "PEM (RSA, ECDSA or Ed25519); redacted in every read from sluice-cp and in /config_dump",
    ],
    "envoy.config.core.v3.KeepaliveSettings" => [
        "interval": "unset or zero: no periodic PING, as in Envoy",
        "timeout",
        "interval_jitter": "accepted; PINGs are sent at the interval exactly",
    ],
    "envoy.config.core.v3.Http1ProtocolOptions" => [
        "accept_http_10": "downstream: default false, as Envoy: an HTTP/1.0 request is answered 426 Upgrade Required",
        "default_host_for_http_10": "downstream: the Host of an HTTP/1.0 request without one",
    ],
    "envoy.config.core.v3.Http2ProtocolOptions" => [
        "max_concurrent_streams": "downstream", "initial_stream_window_size": "downstream",
        "initial_connection_window_size": "downstream",
        "connection_keepalive": "downstream and upstream: a PING every interval; a connection whose peer does not answer within timeout is closed",
        "max_outbound_frames": "accepted; tuning of Envoy's flood protection: the h2 codec bounds each stream's send buffer and the resets a peer may cause instead",
        "max_outbound_control_frames": "accepted; tuning of Envoy's flood protection (see max_outbound_frames)",
        "max_consecutive_inbound_frames_with_empty_payload": "accepted; tuning of Envoy's flood protection (see max_outbound_frames)",
        "max_inbound_priority_frames_per_stream": "accepted; tuning of Envoy's flood protection (h2 ignores PRIORITY frames)",
        "max_inbound_window_update_frames_per_data_frame_sent": "accepted; tuning of Envoy's flood protection (see max_outbound_frames)",
    ],
};

/// Rejects the first set field, anywhere in `message`, that [`SUPPORTED`] does not list.
pub fn check(message: &DynamicMessage) -> Result<()> {
    match unsupported_fields(message).into_iter().next() {
        Some(first) => Err(first),
        None => Ok(()),
    }
}

/// Every set field, anywhere in `message`, that [`SUPPORTED`] does not list — one error
/// per unsupported subtree, in field order — so `--mode validate` can show an operator the
/// whole gap of a config at once.
pub fn unsupported_fields(message: &DynamicMessage) -> Vec<ValidationError> {
    inspect(message).errors
}

/// Every unsupported field of `message` and every set field that is accepted without
/// effect, in one walk.
pub(crate) fn inspect(message: &DynamicMessage) -> Problems {
    let mut found = Problems::default();
    walk(message, "", &mut found);
    found
}

/// A set field that sluice accepts without effect (its note starts with "accepted"), so a
/// report can show an operator which of their settings do nothing here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InertField {
    /// Where it is set, e.g. `static_resources.clusters[0].metadata`.
    pub path: String,
    /// `message.field`, e.g. `envoy.config.cluster.v3.Cluster.metadata`.
    pub field: String,
    /// The note from [`SUPPORTED`] saying why it is accepted.
    pub note: &'static str,
}

/// Errors collected while walking a config; each gap is named once, at its outermost
/// path: an error inside a subtree that already has one is dropped, and one that covers
/// errors found earlier (an unknown extension, then its unsupported parent) replaces them.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    pub(crate) errors: Vec<ValidationError>,
    /// Set fields accepted without effect, met on the way.
    pub(crate) inert: Vec<InertField>,
}

impl Problems {
    pub(crate) fn push(&mut self, error: ValidationError) {
        if self
            .errors
            .iter()
            .any(|e| within_path(&error.path, &e.path))
        {
            return;
        }
        self.errors.retain(|e| !within_path(&e.path, &error.path));
        self.errors.push(error);
    }
}

/// Whether `path` is `parent` or lies below it (`parent.x`, `parent[0]`).
fn within_path(path: &str, parent: &str) -> bool {
    match path.strip_prefix(parent) {
        Some(rest) => parent.is_empty() || rest.is_empty() || rest.starts_with(['.', '[']),
        None => false,
    }
}

fn supported_fields(message: &str) -> Option<&'static [(&'static str, &'static str)]> {
    SUPPORTED
        .iter()
        .find(|m| m.message == message)
        .map(|m| m.fields)
}

fn walk(message: &DynamicMessage, path: &str, found: &mut Problems) {
    let descriptor = message.descriptor();
    let name = descriptor.full_name();
    if name == "google.protobuf.Any" {
        return walk_any(message, path, found);
    }
    if name.starts_with("google.protobuf.") {
        return;
    }
    if name == "envoy.config.cluster.v3.LoadBalancingPolicy" {
        return walk_lb_policies(message, path, found);
    }
    if name == "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter" {
        let optional = message
            .get_field_by_name("is_optional")
            .is_some_and(|v| v.as_bool() == Some(true));
        let filter_name = message
            .get_field_by_name("name")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        if let Some(any) = message
            .has_field_by_name("typed_config")
            .then(|| message.get_field_by_name("typed_config"))
            .flatten()
            .and_then(|v| v.as_message().cloned())
        {
            if !filter_type_known(&any, &filter_name, optional, path, found) {
                return;
            }
        }
    }
    if name == "envoy.config.accesslog.v3.AccessLog" && !access_logger_known(message, path, found) {
        return;
    }
    let supported = supported_fields(name).unwrap_or(&[]);
    for (field, value) in message.fields() {
        let field_path = join(path, field.name());
        let Some((_, note)) = supported.iter().find(|(f, _)| *f == field.name()) else {
            found.push(ValidationError::unsupported(field_path));
            continue;
        };
        if note.starts_with("accepted") {
            found.inert.push(InertField {
                path: field_path.clone(),
                field: format!("{name}.{}", field.name()),
                note,
            });
        }
        if field.name() == "typed_per_filter_config" {
            walk_per_filter_configs(value, &field_path, found);
            continue;
        }
        walk_value(value, &field_path, found);
    }
}

/// Whether an HTTP filter's config (or a per-route override) is of a type Sluice
/// implements: `false` for an unknown optional one (skipped, as Envoy skips it), and for
/// an unknown required one, which is recorded as an error naming the type.
fn filter_type_known(
    any: &DynamicMessage,
    filter_name: &str,
    optional: bool,
    path: &str,
    found: &mut Problems,
) -> bool {
    let (type_url, _) = unpack(any);
    if crate::http_filter::is_known_filter(&type_url) {
        return true;
    }
    if !optional {
        found.push(crate::http_filter::unsupported_type(
            path,
            filter_name,
            &type_url,
        ));
    }
    false
}

/// An access log's `typed_config` must be a logger Sluice implements: another is named,
/// never refused field by field.
fn access_logger_known(message: &DynamicMessage, path: &str, found: &mut Problems) -> bool {
    let Some(any) = message
        .has_field_by_name("typed_config")
        .then(|| message.get_field_by_name("typed_config"))
        .flatten()
        .and_then(|v| v.as_message().cloned())
    else {
        return true;
    };
    let (type_url, _) = unpack(&any);
    use crate::type_urls::{
        FILE_ACCESS_LOG, OPEN_TELEMETRY_ACCESS_LOG, STDERR_ACCESS_LOG, STDOUT_ACCESS_LOG,
    };
    if [
        FILE_ACCESS_LOG,
        STDOUT_ACCESS_LOG,
        STDERR_ACCESS_LOG,
        OPEN_TELEMETRY_ACCESS_LOG,
    ]
    .contains(&type_url.as_str())
    {
        return true;
    }
    let logger = message
        .get_field_by_name("name")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let full = crate::type_urls::message_name(&type_url);
    let short = full.rsplit('.').next().unwrap_or(full);
    found.push(ValidationError::new(
        join(path, "typed_config"),
        format!("{logger} ({short}) is not supported by sluice ({full})"),
    ));
    false
}

/// A map key as a config path shows it: `["name"]` for a string, `[3]` for a number.
fn map_key(key: &prost_reflect::MapKey) -> String {
    match key {
        prost_reflect::MapKey::String(s) => format!("{s:?}"),
        other => format!("{other:?}"),
    }
}

/// `typed_per_filter_config`: each value must be a filter type Sluice implements, unless
/// it is wrapped in a `FilterConfig` with `is_optional`.
fn walk_per_filter_configs(value: &Value, path: &str, found: &mut Problems) {
    let Value::Map(map) = value else {
        return walk_value(value, path, found);
    };
    for (key, any) in map {
        let filter_name = key.as_str().unwrap_or_default();
        let entry_path = format!("{path}[{filter_name:?}]");
        let Some(any) = any.as_message() else {
            continue;
        };
        if !filter_type_known(any, filter_name, false, &entry_path, found) {
            continue;
        }
        let (type_url, inner) = unpack(any);
        if type_url == crate::type_urls::ROUTE_FILTER_CONFIG {
            if let Some(inner) = &inner {
                let optional = inner
                    .get_field_by_name("is_optional")
                    .is_some_and(|v| v.as_bool() == Some(true));
                if let Some(config) = inner
                    .has_field_by_name("config")
                    .then(|| inner.get_field_by_name("config"))
                    .flatten()
                    .and_then(|v| v.as_message().cloned())
                {
                    if !filter_type_known(
                        &config,
                        filter_name,
                        optional,
                        &format!("{entry_path}.config"),
                        found,
                    ) {
                        continue;
                    }
                }
            }
        }
        walk_any(any, &entry_path, found);
    }
}

fn walk_value(value: &Value, path: &str, found: &mut Problems) {
    match value {
        Value::Message(m) => walk(m, path, found),
        Value::List(items) => {
            for (i, v) in items.iter().enumerate() {
                walk_value(v, &format!("{path}[{i}]"), found);
            }
        }
        Value::Map(map) => {
            for (k, v) in map {
                walk_value(v, &format!("{path}[{}]", map_key(k)), found);
            }
        }
        _ => {}
    }
}

/// Checks only the policy Envoy would use: the first one whose type Sluice implements
/// (the others may be any extension). A list with none is refused by the conversion.
fn walk_lb_policies(message: &DynamicMessage, path: &str, found: &mut Problems) {
    let Some(Value::List(policies)) = message
        .get_field_by_name("policies")
        .map(|v| v.into_owned())
    else {
        return;
    };
    for (i, policy) in policies.iter().enumerate() {
        let Some(policy) = policy.as_message() else {
            continue;
        };
        let Some(config) = policy
            .get_field_by_name("typed_extension_config")
            .and_then(|v| v.as_message().cloned())
        else {
            continue;
        };
        let Some(any) = config
            .get_field_by_name("typed_config")
            .and_then(|v| v.as_message().cloned())
        else {
            continue;
        };
        let (type_url, _) = unpack(&any);
        if crate::lb::SUPPORTED_TYPED_POLICIES.contains(&type_url.as_str()) {
            return walk(policy, &format!("{}[{i}]", join(path, "policies")), found);
        }
    }
}

fn walk_any(any: &DynamicMessage, path: &str, found: &mut Problems) {
    let (type_url, inner) = unpack(any);
    match inner {
        Some(inner) => walk(&inner, path, found),
        None => found.push(ValidationError::new(
            path,
            format!("unknown or undecodable type {type_url:?}"),
        )),
    }
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

/// `path.field`, or `field` at the root: the field paths every config error names.
pub(crate) fn join(path: &str, field: &str) -> String {
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
            "name: a\nlrs_server: {self: {}}",
            "envoy.config.cluster.v3.Cluster",
        )
        .unwrap_err();
        assert_eq!(err.path, "lrs_server");
    }
}
