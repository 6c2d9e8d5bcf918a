//! Envoy's bootstrap (the subset `sluice -c` reads): node, admin and static resources.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::access_log::AccessLog;
use crate::cluster::{socket_address, Cluster};
use crate::config_source::{config_source, grpc_server, GrpcServer, Origin};
use crate::decode;
use crate::error::{Result, ValidationError};
use crate::listener::Listener;
use crate::pb::envoy::config::bootstrap::v3 as pb;
use crate::secret::Secret;
use crate::tls::SecretSource;

/// Full name of the bootstrap message.
pub const BOOTSTRAP: &str = "envoy.config.bootstrap.v3.Bootstrap";

pub use crate::config_source::DEFAULT_INITIAL_FETCH_TIMEOUT;

/// A validated bootstrap. `raw` keeps the accepted proto for `/config_dump`.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub node_id: String,
    pub node_cluster: String,
    /// `node.locality.zone`.
    pub node_zone: String,
    pub admin: Option<SocketAddr>,
    /// The admin server's access logs (`admin.access_log`, or `access_log_path`).
    pub admin_access_log: Vec<AccessLog>,
    pub listeners: Vec<Listener>,
    pub clusters: Vec<Cluster>,
    /// `static_resources.secrets`, which `SdsSecretConfig`s without `sds_config` name.
    pub secrets: Vec<Secret>,
    /// The gRPC xDS servers: the ADS stream, and where dynamic listeners and clusters
    /// come from when not from files.
    pub xds: XdsSources,
    /// Listeners and clusters read from watched files instead (`path_config_source`).
    pub files: Option<FileSources>,
    /// The static layers of `layered_runtime`, flattened (see [`crate::overload`]).
    pub runtime: std::collections::BTreeMap<String, String>,
    /// At most this many downstream connections at once, across the listeners that do not
    /// set `ignore_global_conn_limit`; `None`: no cap.
    pub max_downstream_connections: Option<u64>,
    /// The heap monitors and the actions they trigger.
    pub overload: crate::overload::OverloadConfig,
    pub raw: pb::Bootstrap,
}

/// `dynamic_resources` whose `lds_config` / `cds_config` are `path_config_source`s: each
/// file holds a `DiscoveryResponse` and is re-read whenever it is replaced (the
/// Kubernetes ConfigMap pattern).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSources {
    pub listeners: Option<PathBuf>,
    pub clusters: Option<PathBuf>,
}

/// `dynamic_resources` served by gRPC xDS servers: the ADS stream that every `ads: {}`
/// source shares, and where listeners and clusters come from (the ADS stream, or each its
/// own stream to a server of its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsSources {
    /// `ads_config`.
    pub ads: Option<GrpcServer>,
    /// `lds_config`, when not a file: [`Origin::Ads`] or [`Origin::Grpc`].
    pub listeners: Option<Origin>,
    /// `cds_config`, when not a file.
    pub clusters: Option<Origin>,
    /// How long readiness waits for the first response of each type.
    pub initial_fetch_timeout: Duration,
}

impl Default for XdsSources {
    fn default() -> Self {
        Self {
            ads: None,
            listeners: None,
            clusters: None,
            initial_fetch_timeout: DEFAULT_INITIAL_FETCH_TIMEOUT,
        }
    }
}

impl Bootstrap {
    /// Parses and validates a YAML or JSON bootstrap.
    pub fn from_yaml(text: &str) -> Result<Self> {
        let raw: pb::Bootstrap = decode::from_yaml(text, BOOTSTRAP)?;
        Self::try_from(raw)
    }

    /// Whether the bootstrap asks for JSON application logs
    /// (`application_log_config.log_format.json_format`); read before the bootstrap is
    /// validated, since logging starts first. A bootstrap that does not decode says no.
    pub fn wants_json_logs(text: &str) -> bool {
        use pb::bootstrap::application_log_config::log_format::LogFormat;
        decode::from_yaml::<pb::Bootstrap>(text, BOOTSTRAP).is_ok_and(|raw| {
            matches!(
                raw.application_log_config
                    .and_then(|c| c.log_format)
                    .and_then(|f| f.log_format),
                Some(LogFormat::JsonFormat(_))
            )
        })
    }

    /// Every extension and field of a YAML or JSON bootstrap that sluice lacks, each
    /// with its path, and every setting accepted without effect: what `--mode validate`
    /// and the compatibility report show. [`Bootstrap::from_yaml`] may still refuse the
    /// values of a bootstrap with nothing unsupported.
    pub fn inspect(text: &str) -> decode::Inspection {
        decode::inspect_yaml(text, BOOTSTRAP)
    }
}

impl TryFrom<pb::Bootstrap> for Bootstrap {
    type Error = ValidationError;

    fn try_from(raw: pb::Bootstrap) -> Result<Self> {
        let node = raw.node.clone().unwrap_or_default();
        let runtime = crate::overload::static_runtime(raw.layered_runtime.as_ref());
        let (max_downstream_connections, overload) =
            crate::overload::overload(raw.overload_manager.as_ref(), &runtime)?;
        let admin = match raw.admin.as_ref().and_then(|a| a.address.as_ref()) {
            None => None,
            Some(address) => {
                let (host, port) =
                    socket_address(address).map_err(|e| e.within("admin.address"))?;
                let ip = host.parse().map_err(|_| {
                    ValidationError::new(
                        "admin.address.socket_address.address",
                        "must be an IP address",
                    )
                })?;
                Some(SocketAddr::new(ip, port))
            }
        };
        let admin_access_log = match raw.admin.as_ref() {
            None => Vec::new(),
            Some(a) => {
                let mut logs = AccessLog::list(&a.access_log, "admin.access_log")?;
                if !a.access_log_path.is_empty() {
                    logs.push(AccessLog::file(&a.access_log_path));
                }
                logs
            }
        };
        let statics = raw.static_resources.clone().unwrap_or_default();
        let clusters = statics
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Cluster::try_from(c)
                    .map_err(|e| e.within(format!("static_resources.clusters[{i}]")))
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(local) = raw
            .cluster_manager
            .as_ref()
            .map(|m| m.local_cluster_name.as_str())
            .filter(|n| !n.is_empty())
        {
            // As Envoy, the local cluster must be a static one.
            if !clusters.iter().any(|c| c.name == local) {
                return Err(ValidationError::new(
                    "cluster_manager.local_cluster_name",
                    format!("local cluster {local:?} must be defined in static_resources.clusters"),
                ));
            }
        }
        let listeners = statics
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                Listener::from_static(l)
                    .map_err(|e| e.within(format!("static_resources.listeners[{i}]")))
            })
            .collect::<Result<Vec<_>>>()?;
        let secrets = statics
            .secrets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Secret::try_from(s).map_err(|e| e.within(format!("static_resources.secrets[{i}]")))
            })
            .collect::<Result<Vec<_>>>()?;
        unique(
            clusters.iter().map(|c| c.name.as_str()),
            "static_resources.clusters",
            "cluster",
        )?;
        unique(
            listeners.iter().map(|l| l.name.as_str()),
            "static_resources.listeners",
            "listener",
        )?;
        unique(
            secrets.iter().map(|s| s.name.as_str()),
            "static_resources.secrets",
            "secret",
        )?;
        let mut addresses = HashSet::new();
        for (i, l) in listeners.iter().enumerate() {
            if !addresses.insert(l.address.clone()) {
                return Err(ValidationError::new(
                    format!("static_resources.listeners[{i}].address"),
                    format!("{} is used by another listener", l.address),
                ));
            }
        }
        let names: HashSet<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
        for (i, l) in listeners.iter().enumerate() {
            if let Some(missing) = l
                .referenced_clusters()
                .into_iter()
                .find(|c| !names.contains(*c))
            {
                return Err(ValidationError::new(
                    format!("static_resources.listeners[{i}].filter_chains"),
                    format!("references unknown cluster {missing:?}"),
                ));
            }
        }
        let files = match raw.dynamic_resources.as_ref() {
            None => None,
            Some(d) => file_sources(d).map_err(|e| e.within("dynamic_resources"))?,
        };
        let xds = match raw.dynamic_resources.as_ref() {
            Some(d) if files.is_none() => {
                xds_sources(d).map_err(|e| e.within("dynamic_resources"))?
            }
            _ => XdsSources::default(),
        };
        // Every source a static listener or cluster names must be one that is configured:
        // ADS needs `ads_config`, a server of its own a static cluster to reach it by.
        let check_origin = |path: String, what: &str, origin: &Origin| -> Result<()> {
            match origin {
                Origin::Ads if xds.ads.is_none() => Err(ValidationError::new(
                    path,
                    format!("{what} needs dynamic_resources.ads_config"),
                )),
                Origin::Grpc(server) if !names.contains(server.cluster.as_str()) => {
                    Err(ValidationError::new(
                        path,
                        format!(
                            "{what} names the xDS cluster {:?}, which is not a static cluster",
                            server.cluster
                        ),
                    ))
                }
                _ => Ok(()),
            }
        };
        let secret_names: HashSet<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
        let sds_users = listeners
            .iter()
            .enumerate()
            .flat_map(|(i, l)| {
                l.sds_refs()
                    .map(move |r| (format!("static_resources.listeners[{i}]"), r))
            })
            .chain(clusters.iter().enumerate().flat_map(|(i, c)| {
                c.tls
                    .iter()
                    .flat_map(|t| t.sds_names())
                    .map(move |r| (format!("static_resources.clusters[{i}]"), r))
            }));
        for (path, sds) in sds_users {
            match &sds.source {
                SecretSource::Static if !secret_names.contains(sds.name.as_str()) => {
                    return Err(ValidationError::new(
                        path,
                        format!(
                            "names secret {:?}, which is not in static_resources.secrets (add sds_config to fetch it over SDS)",
                            sds.name
                        ),
                    ))
                }
                SecretSource::Xds { origin, .. } => check_origin(
                    path,
                    &format!("secret {:?} over SDS", sds.name),
                    origin,
                )?,
                SecretSource::Static => {}
            }
        }
        for (i, c) in clusters.iter().enumerate() {
            if let Some(eds) = &c.eds {
                check_origin(
                    format!("static_resources.clusters[{i}].eds_cluster_config"),
                    "EDS",
                    &eds.origin,
                )?;
            }
        }
        for (i, l) in listeners.iter().enumerate() {
            for origin in l.route_origins() {
                check_origin(
                    format!("static_resources.listeners[{i}].filter_chains"),
                    "RDS",
                    origin,
                )?;
            }
        }
        for (field, origin) in [
            ("lds_config", &xds.listeners),
            ("cds_config", &xds.clusters),
        ] {
            if let Some(origin) = origin {
                check_origin(format!("dynamic_resources.{field}"), field, origin)?;
            }
        }
        if let Some(ads) = &xds.ads {
            match clusters.iter().find(|c| c.name == ads.cluster) {
                None => {
                    return Err(ValidationError::new(
                        "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name",
                        format!("unknown static cluster {:?}", ads.cluster),
                    ))
                }
                Some(c)
                    if c.tls.as_ref().is_some_and(|t| {
                        t.sds_names().any(|r| {
                            matches!(
                                r.source,
                                SecretSource::Xds {
                                    origin: Origin::Ads,
                                    ..
                                }
                            )
                        })
                    }) =>
                {
                    return Err(ValidationError::new(
                        "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name",
                        "the xDS cluster's TLS cannot use secrets delivered over that same xDS",
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(Self {
            node_zone: node.locality.map(|l| l.zone).unwrap_or_default(),
            node_id: node.id,
            node_cluster: node.cluster,
            admin,
            admin_access_log,
            listeners,
            clusters,
            secrets,
            xds,
            files,
            runtime,
            max_downstream_connections,
            overload,
            raw,
        })
    }
}

fn unique<'a>(names: impl Iterator<Item = &'a str>, path: &str, what: &str) -> Result<()> {
    let mut seen = HashSet::new();
    for (i, name) in names.enumerate() {
        if !seen.insert(name) {
            return Err(ValidationError::new(
                format!("{path}[{i}].name"),
                format!("duplicate {what} name {name:?}"),
            ));
        }
    }
    Ok(())
}

/// The files `lds_config` and `cds_config` name, when either is a `path_config_source`
/// (or the deprecated `path`). Files and ADS are not mixed: each source publishes its
/// whole set of resources, so the two would overwrite each other's.
fn file_sources(d: &pb::bootstrap::DynamicResources) -> Result<Option<FileSources>> {
    use crate::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
    let file = |config: Option<&crate::pb::envoy::config::core::v3::ConfigSource>,
                field: &str|
     -> Result<Option<PathBuf>> {
        let path = match config.and_then(|c| c.config_source_specifier.as_ref()) {
            Some(ConfigSourceSpecifier::PathConfigSource(p)) => &p.path,
            #[allow(deprecated)]
            Some(ConfigSourceSpecifier::Path(p)) => p,
            _ => return Ok(None),
        };
        if path.is_empty() {
            return Err(ValidationError::required(format!(
                "{field}.path_config_source.path"
            )));
        }
        Ok(Some(PathBuf::from(path)))
    };
    let listeners = file(d.lds_config.as_ref(), "lds_config")?;
    let clusters = file(d.cds_config.as_ref(), "cds_config")?;
    if listeners.is_none() && clusters.is_none() {
        return Ok(None);
    }
    if d.ads_config.is_some() {
        return Err(ValidationError::new(
            "ads_config",
            "not supported together with a path_config_source for lds_config or cds_config",
        ));
    }
    for (field, config, path) in [
        ("lds_config", d.lds_config.as_ref(), &listeners),
        ("cds_config", d.cds_config.as_ref(), &clusters),
    ] {
        if config.is_some() && path.is_none() {
            return Err(ValidationError::new(
                field,
                "must be a path_config_source when the other type is read from a file",
            ));
        }
    }
    Ok(Some(FileSources {
        listeners,
        clusters,
    }))
}

/// The gRPC sources of `dynamic_resources` (none of them a file).
fn xds_sources(d: &pb::bootstrap::DynamicResources) -> Result<XdsSources> {
    let ads = d
        .ads_config
        .as_ref()
        .map(|a| grpc_server(a).map_err(|e| e.within("ads_config")))
        .transpose()?;
    let mut initial_fetch_timeout = DEFAULT_INITIAL_FETCH_TIMEOUT;
    let mut source = |config: Option<&crate::pb::envoy::config::core::v3::ConfigSource>,
                      field: &str|
     -> Result<Option<Origin>> {
        let Some(config) = config else {
            return Ok(None);
        };
        let source = config_source(config, field, true)?;
        if source.origin == Origin::Ads && ads.is_none() {
            return Err(ValidationError::required("ads_config"));
        }
        // A zero timeout (wait forever) keeps readiness waiting at most the default.
        if let (Some(t), Some(_)) = (source.initial_fetch_timeout, &config.initial_fetch_timeout) {
            initial_fetch_timeout = t;
        }
        Ok(Some(source.origin))
    };
    let listeners = source(d.lds_config.as_ref(), "lds_config")?;
    let clusters = source(d.cds_config.as_ref(), "cds_config")?;
    Ok(XdsSources {
        ads,
        listeners,
        clusters,
        initial_fetch_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eds_without_ads_is_refused() {
        let err = Bootstrap::from_yaml(
            "static_resources: {clusters: [{name: web, type: EDS, eds_cluster_config: {eds_config: {ads: {}}}}]}",
        )
        .unwrap_err();
        assert_eq!(err.path, "static_resources.clusters[0].eds_cluster_config");
    }

    #[test]
    fn each_type_may_have_a_stream_of_its_own_to_a_static_cluster() {
        let own = |cluster: &str| {
            format!(
                "{{api_config_source: {{api_type: GRPC, grpc_services: [{{envoy_grpc: {{cluster_name: {cluster}}}}}]}}}}"
            )
        };
        let xds = "{name: xds, load_assignment: {cluster_name: xds, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}}]}]}}";
        let b = Bootstrap::from_yaml(&format!(
            "dynamic_resources: {{lds_config: {}, cds_config: {}}}\nstatic_resources: {{clusters: [{xds}]}}",
            own("xds"),
            own("xds")
        ))
        .unwrap();
        let server = GrpcServer {
            cluster: "xds".into(),
            delta: false,
            node_on_first_message_only: false,
        };
        assert_eq!(b.xds.listeners, Some(Origin::Grpc(server.clone())));
        assert_eq!(b.xds.clusters, Some(Origin::Grpc(server)));
        assert_eq!(b.xds.ads, None);
        // The server's cluster must be a static one.
        let err = Bootstrap::from_yaml(&format!(
            "dynamic_resources: {{lds_config: {}}}",
            own("nowhere")
        ))
        .unwrap_err();
        assert_eq!(err.path, "dynamic_resources.lds_config", "{err}");
        // ads: {} beside per-type streams still needs ads_config.
        let err = Bootstrap::from_yaml(&format!(
            "dynamic_resources: {{lds_config: {}, cds_config: {{ads: {{}}}}}}\nstatic_resources: {{clusters: [{xds}]}}",
            own("xds")
        ))
        .unwrap_err();
        assert_eq!(err.path, "dynamic_resources.ads_config", "{err}");
    }

    #[test]
    fn listeners_and_clusters_come_from_files_or_ads_never_both() {
        let b = Bootstrap::from_yaml(
            "dynamic_resources: {lds_config: {path_config_source: {path: /l.yaml}}, cds_config: {path: /c.yaml}}",
        )
        .unwrap();
        assert_eq!(
            b.files,
            Some(FileSources {
                listeners: Some("/l.yaml".into()),
                clusters: Some("/c.yaml".into()),
            })
        );
        assert_eq!(b.xds, XdsSources::default());
        let err = Bootstrap::from_yaml(
            "dynamic_resources: {lds_config: {path_config_source: {path: /l.yaml}}, cds_config: {ads: {}}}",
        )
        .unwrap_err();
        assert_eq!(err.path, "dynamic_resources.cds_config");
        let err = Bootstrap::from_yaml(
            "dynamic_resources: {lds_config: {path_config_source: {path: /l.yaml}}, ads_config: {api_type: GRPC}}",
        )
        .unwrap_err();
        assert_eq!(err.path, "dynamic_resources.ads_config");
    }

    #[test]
    fn the_local_cluster_must_exist_and_json_logs_are_asked_for() {
        let err = crate::Bootstrap::from_yaml("cluster_manager: {local_cluster_name: nowhere}")
            .unwrap_err();
        assert_eq!(err.path, "cluster_manager.local_cluster_name", "{err}");
        assert!(crate::Bootstrap::wants_json_logs(
            "application_log_config: {log_format: {json_format: {message: '%v'}}}"
        ));
        assert!(!crate::Bootstrap::wants_json_logs(
            "application_log_config: {log_format: {text_format: '%v'}}"
        ));
        assert!(!crate::Bootstrap::wants_json_logs("{}"));
    }

    #[test]
    fn routes_and_endpoints_from_files_need_no_ads() {
        let listener = |source: &str| {
            format!(
                "static_resources: {{listeners: [{{name: l, address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}, \
                 filter_chains: [{{filters: [{{name: hcm, typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, \
                 stat_prefix: s, rds: {{route_config_name: r, config_source: {source}}}, \
                 http_filters: [{{name: router, typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]}}}}]}}]}}]}}"
            )
        };
        let b = crate::Bootstrap::from_yaml(&listener(
            "{path_config_source: {path: /etc/routes.yaml}}",
        ))
        .unwrap();
        let hcm = b.listeners[0].http_managers().next().unwrap();
        assert!(matches!(
            &hcm.routes,
            crate::hcm::RouteSource::Rds { origin: Origin::File(f), .. } if f == std::path::Path::new("/etc/routes.yaml")
        ));
        let err = crate::Bootstrap::from_yaml(&listener("{ads: {}}")).unwrap_err();
        assert!(err.message.contains("ads_config"), "{err}");
    }
}
