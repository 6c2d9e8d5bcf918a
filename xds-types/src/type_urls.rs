//! Type URLs of the resources and extensions Sluice understands, written once.

/// Prefix every `google.protobuf.Any` type URL carries.
pub const PREFIX: &str = "type.googleapis.com/";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE_CONFIGURATION: &str =
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const CLUSTER_LOAD_ASSIGNMENT: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
pub const UPSTREAM_TLS_CONTEXT: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
pub const DOWNSTREAM_TLS_CONTEXT: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
pub const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
pub const TLS_INSPECTOR: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
pub const HTTP_INSPECTOR: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";
pub const PROXY_PROTOCOL: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol";
pub const HTTP_CONNECTION_MANAGER: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
pub const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
pub const CONNECTION_LIMIT: &str =
    "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit";
/// `envoy.resource_monitors.fixed_heap`.
pub const FIXED_HEAP_MONITOR: &str =
    "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig";
pub const DOWNSTREAM_CONNECTIONS_MONITOR: &str = "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig";
pub const HTTP_PROTOCOL_OPTIONS: &str =
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// The key under which clusters carry [`HTTP_PROTOCOL_OPTIONS`] in
/// `typed_extension_protocol_options`.
pub const HTTP_PROTOCOL_OPTIONS_KEY: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

pub const OPEN_TELEMETRY_CONFIG: &str =
    "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig";

pub const OPEN_TELEMETRY_ACCESS_LOG: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig";

pub const ENVIRONMENT_RESOURCE_DETECTOR: &str = "type.googleapis.com/envoy.extensions.tracers.opentelemetry.resource_detectors.v3.EnvironmentResourceDetectorConfig";

pub const STATIC_RESOURCE_DETECTOR: &str = "type.googleapis.com/envoy.extensions.tracers.opentelemetry.resource_detectors.v3.StaticConfigResourceDetectorConfig";

pub const FILE_ACCESS_LOG: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";
pub const STDOUT_ACCESS_LOG: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
pub const STDERR_ACCESS_LOG: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog";

/// The message name part of a type URL (`type.googleapis.com/a.b.C` → `a.b.C`).
pub fn message_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

/// HTTP filters and their per-route configs.
pub const CORS: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors";
pub const CORS_POLICY: &str =
    "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy";
pub const LOCAL_RATE_LIMIT: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
pub const BASIC_AUTH: &str =
    "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuth";
pub const BASIC_AUTH_PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuthPerRoute";
pub const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
pub const RBAC_PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";
pub const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
/// `envoy.config.route.v3.FilterConfig`: a per-route wrapper with `disabled`/`is_optional`.
pub const ROUTE_FILTER_CONFIG: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";
pub const EXT_AUTHZ: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
pub const EXT_AUTHZ_PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute";
pub const GLOBAL_RATE_LIMIT: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit";
pub const JWT_AUTHN: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
pub const JWT_PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig";
pub const HEALTH_CHECK_FILTER: &str =
    "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck";
pub const COMPRESSOR: &str =
    "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor";
pub const COMPRESSOR_PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute";
pub const GZIP_COMPRESSOR: &str =
    "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip";
pub const BROTLI_COMPRESSOR: &str =
    "type.googleapis.com/envoy.extensions.compression.brotli.compressor.v3.Brotli";
pub const ZSTD_COMPRESSOR: &str =
    "type.googleapis.com/envoy.extensions.compression.zstd.compressor.v3.Zstd";
pub const DECOMPRESSOR: &str =
    "type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor";
pub const GZIP_DECOMPRESSOR: &str =
    "type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip";
pub const BROTLI_DECOMPRESSOR: &str =
    "type.googleapis.com/envoy.extensions.compression.brotli.decompressor.v3.Brotli";
pub const ZSTD_DECOMPRESSOR: &str =
    "type.googleapis.com/envoy.extensions.compression.zstd.decompressor.v3.Zstd";
pub const FILE_SERVER: &str =
    "type.googleapis.com/sluice.extensions.filters.http.file_server.v1.FileServer";
pub const FILE_SERVER_PER_ROUTE: &str =
    "type.googleapis.com/sluice.extensions.filters.http.file_server.v1.FileServerPerRoute";
/// The `envoy.cluster.dns` cluster extension's config.
pub const DNS_CLUSTER: &str = "type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster";
/// The `envoy.clusters.aggregate` cluster extension's config.
pub const AGGREGATE_CLUSTER: &str =
    "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig";
/// DNS resolver implementations a cluster may name (`typed_dns_resolver_config`).
pub const CARES_DNS_RESOLVER: &str =
    "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig";
pub const GETADDRINFO_DNS_RESOLVER: &str = "type.googleapis.com/envoy.extensions.network.dns_resolver.getaddrinfo.v3.GetAddrInfoDnsResolverConfig";
pub const GRPC_WEB: &str = "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb";
pub const CACHE: &str = "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig";
pub const SIMPLE_HTTP_CACHE: &str =
    "type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig";
pub const MEMORY_HTTP_CACHE: &str =
    "type.googleapis.com/sluice.extensions.http.cache.memory.v1.MemoryHttpCacheConfig";
pub const BUFFER: &str = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer";
pub const BUFFER_PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute";
pub const HEADER_MUTATION: &str =
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation";
pub const HEADER_MUTATION_PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute";
