//! Locates the FileDescriptorSet that the `envoy-types` crate ships (but does not export)
//! and writes the part of it Sluice reads into OUT_DIR, so proto3-JSON/YAML authoring can
//! use `prost-reflect` without copying Envoy's `.proto` files or descriptors into this
//! repository. The full set (every Envoy extension) costs ~50 MB of RSS once decoded; the
//! transitive closure of the messages below is a fraction of that.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};

/// Messages that can appear in a bootstrap or an xDS resource Sluice accepts, including
/// inside `Any` fields. Everything they import comes along.
const ROOTS: &[&str] = &[
    "envoy.config.bootstrap.v3.Bootstrap",
    "envoy.config.listener.v3.Listener",
    "envoy.config.route.v3.RouteConfiguration",
    "envoy.config.cluster.v3.Cluster",
    "envoy.config.endpoint.v3.ClusterLoadAssignment",
    "envoy.extensions.clusters.dns.v3.DnsCluster",
    "envoy.extensions.clusters.aggregate.v3.ClusterConfig",
    "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
    "envoy.extensions.network.dns_resolver.getaddrinfo.v3.GetAddrInfoDnsResolverConfig",
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
    "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
    // The shape of a path_config_source file.
    "envoy.service.discovery.v3.DiscoveryResponse",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
    "envoy.extensions.filters.http.router.v3.Router",
    "envoy.config.route.v3.FilterConfig",
    "envoy.extensions.filters.http.cors.v3.Cors",
    "envoy.extensions.filters.http.cors.v3.CorsPolicy",
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
    "envoy.extensions.filters.http.basic_auth.v3.BasicAuth",
    "envoy.extensions.filters.http.basic_auth.v3.BasicAuthPerRoute",
    "envoy.extensions.filters.http.rbac.v3.RBAC",
    "envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
    "envoy.extensions.filters.http.fault.v3.HTTPFault",
    "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
    "envoy.extensions.filters.http.ratelimit.v3.RateLimit",
    "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
    "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb",
    // Lua is common in real configs and not implemented: it decodes, so it is refused by
    // name (or skipped when optional) instead of failing as an unknown type.
    "envoy.extensions.filters.http.lua.v3.Lua",
    "envoy.extensions.filters.http.lua.v3.LuaPerRoute",
    "envoy.extensions.filters.http.compressor.v3.Compressor",
    "envoy.extensions.filters.http.compressor.v3.CompressorPerRoute",
    "envoy.extensions.compression.gzip.compressor.v3.Gzip",
    "envoy.extensions.compression.brotli.compressor.v3.Brotli",
    "envoy.extensions.compression.zstd.compressor.v3.Zstd",
    "envoy.extensions.filters.http.decompressor.v3.Decompressor",
    "envoy.extensions.compression.gzip.decompressor.v3.Gzip",
    "envoy.extensions.compression.brotli.decompressor.v3.Brotli",
    "envoy.extensions.compression.zstd.decompressor.v3.Zstd",
    "envoy.extensions.filters.http.buffer.v3.Buffer",
    "envoy.extensions.filters.http.cache.v3.CacheConfig",
    "envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig",
    "envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
    "envoy.extensions.filters.http.health_check.v3.HealthCheck",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "envoy.extensions.transport_sockets.tls.v3.Secret",
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
    "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol",
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
    "envoy.extensions.access_loggers.file.v3.FileAccessLog",
    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
    "envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
    "envoy.config.trace.v3.OpenTelemetryConfig",
    // Tracers sluice does not implement, refused by name.
    "envoy.config.trace.v3.ZipkinConfig",
    "envoy.config.trace.v3.DatadogConfig",
    "envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
    "envoy.extensions.tracers.opentelemetry.resource_detectors.v3.EnvironmentResourceDetectorConfig",
    "envoy.extensions.tracers.opentelemetry.resource_detectors.v3.StaticConfigResourceDetectorConfig",
    "envoy.extensions.tracers.opentelemetry.resource_detectors.v3.DynatraceResourceDetectorConfig",
    // Loggers sluice does not implement, refused by name.
    "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
    // Every typed load-balancing policy, so a list that names one Sluice does not
    // implement before one it does still decodes (Envoy uses the first it knows).
    "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin",
    "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
    "envoy.extensions.load_balancing_policies.random.v3.Random",
    "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash",
    "envoy.extensions.load_balancing_policies.maglev.v3.Maglev",
    "envoy.extensions.load_balancing_policies.wrr_locality.v3.WrrLocality",
    "envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin",
    "envoy.extensions.load_balancing_policies.pick_first.v3.PickFirst",
    "envoy.extensions.load_balancing_policies.cluster_provided.v3.ClusterProvided",
];

const ENVOY_TYPES_DIR: &str = "envoy-types-0.7.7";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("envoy_types.bin");
    let source = find_descriptor_set().unwrap_or_else(|| {
        panic!(
            "could not find {ENVOY_TYPES_DIR}/src/generated/types.bin in the cargo registry; \
             set SLUICE_ENVOY_DESCRIPTORS to its path"
        )
    });
    println!("cargo:rerun-if-changed={}", source.display());
    let bytes = std::fs::read(&source).expect("read envoy descriptor set");
    let set = FileDescriptorSet::decode(bytes.as_slice()).expect("decode envoy descriptor set");
    let mut pruned = prune(set);
    pruned.file.extend(sluice_extensions().file);
    std::fs::write(&out, pruned.encode_to_vec()).expect("write descriptor set");
}

/// Sluice's own extensions (`proto/sluice/extensions/`), compiled with `protox` (no
/// `protoc`): their Rust types are generated into OUT_DIR, and their descriptors join
/// Envoy's so configs carrying them decode and are field-checked like Envoy's.
fn sluice_extensions() -> FileDescriptorSet {
    // Read when the script runs, not when it was compiled: a build script cached in a
    // shared target directory may run for a checkout at another path.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let proto_root = format!("{manifest_dir}/../proto");
    let proto_root = proto_root.as_str();
    let files = [
        "sluice/extensions/filters/http/file_server/v1/file_server.proto",
        "sluice/extensions/http/cache/memory/v1/memory.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={proto_root}/{file}");
    }
    let descriptors = protox::compile(files, [proto_root]).expect("compile sluice's extensions");
    prost_build::Config::new()
        .compile_fds(descriptors.clone())
        .expect("generate sluice's extension types");
    descriptors
}

/// Keeps the files defining [`ROOTS`] and everything they import, in the original
/// (dependency-first) order.
fn prune(set: FileDescriptorSet) -> FileDescriptorSet {
    let by_name: HashMap<&str, &FileDescriptorProto> =
        set.file.iter().map(|f| (f.name(), f)).collect();
    let mut keep = HashSet::new();
    let mut pending: Vec<&str> = ROOTS
        .iter()
        .map(|root| {
            let (package, message) = root.rsplit_once('.').expect("qualified name");
            set.file
                .iter()
                .find(|f| {
                    f.package() == package && f.message_type.iter().any(|m| m.name() == message)
                })
                .unwrap_or_else(|| panic!("{root} is not in the envoy-types descriptor set"))
                .name()
        })
        .collect();
    while let Some(name) = pending.pop() {
        if keep.insert(name.to_string()) {
            let file = by_name
                .get(name)
                .unwrap_or_else(|| panic!("missing {name}"));
            pending.extend(file.dependency.iter().map(String::as_str));
        }
    }
    FileDescriptorSet {
        file: set
            .file
            .iter()
            .filter(|f| keep.contains(f.name()))
            .cloned()
            .collect(),
    }
}

fn find_descriptor_set() -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=SLUICE_ENVOY_DESCRIPTORS");
    if let Ok(path) = std::env::var("SLUICE_ENVOY_DESCRIPTORS") {
        return Some(PathBuf::from(path));
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    let registry = cargo_home.join("registry").join("src");
    for index in std::fs::read_dir(registry).ok()?.flatten() {
        let candidate = index
            .path()
            .join(ENVOY_TYPES_DIR)
            .join("src/generated/types.bin");
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    None
}
