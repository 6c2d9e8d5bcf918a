//! Where xDS resources come from: each `ConfigSource` (and the bootstrap's `ads_config`)
//! read into the one form the data plane acts on — the shared ADS stream, a gRPC stream of
//! the resource type's own service, or a watched file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Result, ValidationError};
use crate::pb::envoy::config::core::v3 as core;
use crate::util::optional_timeout;

/// Envoy's default `ConfigSource.initial_fetch_timeout`.
pub const DEFAULT_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// A gRPC xDS server reached through a static cluster: the bootstrap's `ads_config`, or an
/// `api_config_source` of type `GRPC` / `DELTA_GRPC`. Sources naming the same server share
/// one stream per resource type, as Envoy's per-type subscriptions do.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrpcServer {
    /// The static cluster the server is reached through.
    pub cluster: String,
    /// `DELTA_GRPC` rather than `GRPC`.
    pub delta: bool,
    /// `set_node_on_first_message_only`: later requests of a stream leave out the node.
    pub node_on_first_message_only: bool,
}

/// Where the resources of one config source arrive from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// The bootstrap's ADS stream (`ads: {}`).
    Ads,
    /// The resource type's own discovery service on `GrpcServer` (`api_config_source`).
    Grpc(GrpcServer),
    /// A watched file (`path_config_source`).
    File(PathBuf),
}

impl Origin {
    /// The file the resources are read from, when they are.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Origin::File(path) => Some(path),
            _ => None,
        }
    }
}

/// A `ConfigSource`, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    pub origin: Origin,
    /// How long a listener or cluster warms waiting for the resource before going live
    /// without it; `None` waits forever.
    pub initial_fetch_timeout: Option<Duration>,
}

/// Reads a `ConfigSource` at `path`; `files` says whether a `path_config_source` is
/// supported there (it is not for SDS).
pub(crate) fn config_source(
    config: &core::ConfigSource,
    path: &str,
    files: bool,
) -> Result<ConfigSource> {
    use core::config_source::ConfigSourceSpecifier as S;
    let file = |file: &str, field: &str| -> Result<Origin> {
        if !files {
            return Err(ValidationError::new(
                format!("{path}.{field}"),
                "not supported here (files are for lds_config, cds_config, rds and eds_config)",
            ));
        }
        if file.is_empty() {
            return Err(ValidationError::required(format!("{path}.{field}")));
        }
        Ok(Origin::File(PathBuf::from(file)))
    };
    let origin = match &config.config_source_specifier {
        Some(S::Ads(_)) => Origin::Ads,
        Some(S::ApiConfigSource(api)) => Origin::Grpc(
            grpc_server(api).map_err(|e| e.within(format!("{path}.api_config_source")))?,
        ),
        Some(S::PathConfigSource(p)) => file(&p.path, "path_config_source.path")?,
        #[allow(deprecated)]
        Some(S::Path(p)) => file(p, "path")?,
        Some(_) => {
            return Err(ValidationError::new(
                path,
                "only ads, api_config_source and path_config_source are supported",
            ))
        }
        None => return Err(ValidationError::required(format!("{path}.ads"))),
    };
    let initial_fetch_timeout = optional_timeout(
        config.initial_fetch_timeout.as_ref(),
        &format!("{path}.initial_fetch_timeout"),
        Some(DEFAULT_INITIAL_FETCH_TIMEOUT),
    )?;
    Ok(ConfigSource {
        origin,
        initial_fetch_timeout,
    })
}

/// Reads an `ApiConfigSource` (paths relative to it): one Envoy gRPC service over a
/// cluster, state of the world or delta.
pub(crate) fn grpc_server(api: &core::ApiConfigSource) -> Result<GrpcServer> {
    use core::api_config_source::ApiType;
    let delta = match ApiType::try_from(api.api_type) {
        Ok(ApiType::Grpc) => false,
        Ok(ApiType::DeltaGrpc) => true,
        _ => {
            return Err(ValidationError::new(
                "api_type",
                "only GRPC and DELTA_GRPC are supported",
            ))
        }
    };
    let [service] = api.grpc_services.as_slice() else {
        return Err(ValidationError::new(
            "grpc_services",
            "exactly one gRPC service is supported",
        ));
    };
    if service.timeout.is_some() {
        return Err(ValidationError::new(
            "grpc_services[0].timeout",
            "not supported on an xDS stream",
        ));
    }
    let cluster = match service.target_specifier.as_ref() {
        Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(g)) if !g.cluster_name.is_empty() => {
            if !g.authority.is_empty() {
                return Err(ValidationError::new(
                    "grpc_services[0].envoy_grpc.authority",
                    "not supported on an xDS stream",
                ));
            }
            g.cluster_name.clone()
        }
        _ => {
            return Err(ValidationError::required(
                "grpc_services[0].envoy_grpc.cluster_name",
            ))
        }
    };
    Ok(GrpcServer {
        cluster,
        delta,
        node_on_first_message_only: api.set_node_on_first_message_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(yaml: &str, files: bool) -> Result<ConfigSource> {
        let pb: core::ConfigSource =
            crate::decode::from_yaml(yaml, "envoy.config.core.v3.ConfigSource").unwrap();
        config_source(&pb, "eds_config", files)
    }

    #[test]
    fn each_specifier_reads_to_its_origin() {
        assert_eq!(read("ads: {}", true).unwrap().origin, Origin::Ads);
        let grpc = read(
            "api_config_source: {api_type: DELTA_GRPC, set_node_on_first_message_only: true, \
             grpc_services: [{envoy_grpc: {cluster_name: xds}}]}\ninitial_fetch_timeout: 0s",
            true,
        )
        .unwrap();
        assert_eq!(
            grpc,
            ConfigSource {
                origin: Origin::Grpc(GrpcServer {
                    cluster: "xds".into(),
                    delta: true,
                    node_on_first_message_only: true,
                }),
                initial_fetch_timeout: None,
            }
        );
        assert_eq!(
            read("path_config_source: {path: /e.yaml}", true)
                .unwrap()
                .origin
                .file(),
            Some(Path::new("/e.yaml"))
        );
    }

    #[test]
    fn what_sluice_cannot_follow_is_refused_by_path() {
        let err = read("path_config_source: {path: /e.yaml}", false).unwrap_err();
        assert_eq!(err.path, "eds_config.path_config_source.path");
        let err = read(
            "api_config_source: {api_type: REST, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}",
            true,
        )
        .unwrap_err();
        assert_eq!(err.path, "eds_config.api_config_source.api_type");
        let err = read(
            "api_config_source: {api_type: GRPC, grpc_services: [{envoy_grpc: {cluster_name: a}}, {envoy_grpc: {cluster_name: b}}]}",
            true,
        )
        .unwrap_err();
        assert_eq!(err.path, "eds_config.api_config_source.grpc_services");
    }
}
