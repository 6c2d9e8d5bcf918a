//! Envoy's bootstrap (the subset `sluice -c` reads): node, admin and static resources.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::access_log::AccessLog;
use crate::cluster::{socket_address, Cluster};
use crate::decode;
use crate::error::{Result, ValidationError};
use crate::listener::Listener;
use crate::pb::envoy::config::bootstrap::v3 as pb;
use crate::secret::Secret;
use crate::tls::SecretSource;

/// Full name of the bootstrap message.
pub const BOOTSTRAP: &str = "envoy.config.bootstrap.v3.Bootstrap";

pub use crate::util::DEFAULT_INITIAL_FETCH_TIMEOUT;

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
    /// Where listeners and clusters come from besides the static ones.
    pub ads: Option<AdsSource>,
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

/// `dynamic_resources`: listeners and clusters over one ADS stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdsSource {
    /// The static cluster the control plane is reached through.
    pub cluster: String,
    /// `DELTA_GRPC` rather than `GRPC`.
    pub delta: bool,
    pub listeners: bool,
    pub clusters: bool,
    /// How long readiness waits for the first response of each type.
    pub initial_fetch_timeout: Duration,
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
        let ads = match raw.dynamic_resources.as_ref() {
            Some(d) if files.is_none() => {
                Some(ads_source(d).map_err(|e| e.within("dynamic_resources"))?)
            }
            _ => None,
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
            match sds.source {
                SecretSource::Static if !secret_names.contains(sds.name.as_str()) => {
                    return Err(ValidationError::new(
                        path,
                        format!(
                            "names secret {:?}, which is not in static_resources.secrets (add sds_config to fetch it over ADS)",
                            sds.name
                        ),
                    ))
                }
                SecretSource::Ads { .. } if ads.is_none() => {
                    return Err(ValidationError::new(
                        path,
                        format!("secret {:?} over SDS needs dynamic_resources.ads_config", sds.name),
                    ))
                }
                _ => {}
            }
        }
        if ads.is_none() {
            // EDS and RDS not read from files arrive over ADS: without it they would warm
            // forever.
            if let Some(i) = clusters
                .iter()
                .position(|c| c.eds.as_ref().is_some_and(|e| e.file.is_none()))
            {
                return Err(ValidationError::new(
                    format!("static_resources.clusters[{i}].eds_cluster_config"),
                    "EDS needs dynamic_resources.ads_config",
                ));
            }
            if let Some(i) = listeners.iter().position(|l| l.needs_ads_routes()) {
                return Err(ValidationError::new(
                    format!("static_resources.listeners[{i}].filter_chains"),
                    "RDS needs dynamic_resources.ads_config",
                ));
            }
        }
        if let Some(ads) = &ads {
            match clusters.iter().find(|c| c.name == ads.cluster) {
                None => {
                    return Err(ValidationError::new(
                        "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name",
                        format!("unknown static cluster {:?}", ads.cluster),
                    ))
                }
                Some(c)
                    if c.tls.as_ref().is_some_and(|t| {
                        t.sds_names()
                            .any(|r| matches!(r.source, SecretSource::Ads { .. }))
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
            ads,
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

fn ads_source(d: &pb::bootstrap::DynamicResources) -> Result<AdsSource> {
    use crate::pb::envoy::config::core::v3 as core;
    let ads = d
        .ads_config
        .as_ref()
        .ok_or_else(|| ValidationError::required("ads_config"))?;
    let delta = match core::api_config_source::ApiType::try_from(ads.api_type) {
        Ok(core::api_config_source::ApiType::Grpc) => false,
        Ok(core::api_config_source::ApiType::DeltaGrpc) => true,
        _ => {
            return Err(ValidationError::new(
                "ads_config.api_type",
                "only GRPC and DELTA_GRPC are supported",
            ))
        }
    };
    let [service] = ads.grpc_services.as_slice() else {
        return Err(ValidationError::new(
            "ads_config.grpc_services",
            "exactly one gRPC service is supported",
        ));
    };
    if service.timeout.is_some() {
        return Err(ValidationError::new(
            "ads_config.grpc_services[0].timeout",
            "not supported on the xDS stream",
        ));
    }
    let cluster = match service.target_specifier.as_ref() {
        Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(g)) if !g.cluster_name.is_empty() => {
            if !g.authority.is_empty() {
                return Err(ValidationError::new(
                    "ads_config.grpc_services[0].envoy_grpc.authority",
                    "not supported on the xDS stream",
                ));
            }
            g.cluster_name.clone()
        }
        _ => {
            return Err(ValidationError::required(
                "ads_config.grpc_services[0].envoy_grpc.cluster_name",
            ))
        }
    };
    let mut initial_fetch_timeout = DEFAULT_INITIAL_FETCH_TIMEOUT;
    let mut source = |config: Option<&core::ConfigSource>, field: &str| -> Result<bool> {
        let Some(config) = config else {
            return Ok(false);
        };
        // A zero timeout (wait forever) keeps readiness waiting at most the default.
        if let Some(t) = crate::util::ads_config_source(config, field)? {
            if config.initial_fetch_timeout.is_some() {
                initial_fetch_timeout = t;
            }
        }
        Ok(true)
    };
    let listeners = source(d.lds_config.as_ref(), "lds_config")?;
    let clusters = source(d.cds_config.as_ref(), "cds_config")?;
    Ok(AdsSource {
        cluster,
        delta,
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
        assert!(b.ads.is_none());
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
            crate::hcm::RouteSource::Rds { file: Some(f), .. } if f == std::path::Path::new("/etc/routes.yaml")
        ));
        let err = crate::Bootstrap::from_yaml(&listener("{ads: {}}")).unwrap_err();
        assert!(err.message.contains("ads_config"), "{err}");
    }
}
