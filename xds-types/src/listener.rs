//! Validated `Listener`: an address and the network filters for its connections.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::cluster::socket_address;
use crate::error::{Result, ValidationError};
use crate::hcm::HttpConnectionManager;
use crate::pb::envoy::config::listener::v3 as pb;
use crate::pb::envoy::extensions::filters::network::connection_limit::v3::ConnectionLimit as ConnectionLimitPb;
use crate::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager as HcmPb;
use crate::type_urls;
use crate::util::{optional_timeout, unpack_any};

/// A bound address and what its connections run.
#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// `None`: no limit on concurrent connections.
    pub connection_limit: Option<ConnectionLimit>,
    pub http: HttpConnectionManager,
}

/// Envoy's `envoy.filters.network.connection_limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimit {
    pub max_connections: u64,
    /// How long to hold a refused connection before closing it.
    pub delay: Option<Duration>,
}

/// A listener with no socket: what proxyless gRPC clients ask for by name (the target of
/// an `xds:///name` channel). `sluice-cp` serves it; `sluice` refuses it, as it has nothing
/// to bind.
#[derive(Debug, Clone)]
pub struct ApiListener {
    pub name: String,
    pub http: HttpConnectionManager,
}

impl TryFrom<&pb::Listener> for ApiListener {
    type Error = ValidationError;

    fn try_from(l: &pb::Listener) -> Result<Self> {
        if l.name.is_empty() {
            return Err(ValidationError::required("name"));
        }
        if l.address.is_some() || !l.filter_chains.is_empty() {
            return Err(ValidationError::new(
                "api_listener",
                "an API listener has no address and no filter_chains",
            ));
        }
        let any = l
            .api_listener
            .as_ref()
            .and_then(|a| a.api_listener.as_ref())
            .ok_or_else(|| ValidationError::required("api_listener.api_listener"))?;
        let path = "api_listener.api_listener";
        let h: HcmPb = unpack_any(any, type_urls::HTTP_CONNECTION_MANAGER, path)?;
        Ok(Self {
            name: l.name.clone(),
            http: HttpConnectionManager::try_from(&h).map_err(|e| e.within(path))?,
        })
    }
}

impl TryFrom<&pb::Listener> for Listener {
    type Error = ValidationError;

    fn try_from(l: &pb::Listener) -> Result<Self> {
        if l.name.is_empty() {
            return Err(ValidationError::required("name"));
        }
        if l.api_listener.is_some() {
            return Err(ValidationError::new(
                "api_listener",
                "API listeners are for proxyless gRPC clients; sluice needs an address and filter_chains",
            ));
        }
        let address = l
            .address
            .as_ref()
            .ok_or_else(|| ValidationError::required("address"))?;
        let (host, port) = socket_address(address).map_err(|e| e.within("address"))?;
        let ip: IpAddr = host.parse().map_err(|_| {
            ValidationError::new(
                "address.socket_address.address",
                format!("{host:?} is not an IP address"),
            )
        })?;
        let [chain] = l.filter_chains.as_slice() else {
            return Err(ValidationError::new(
                "filter_chains",
                "exactly one filter chain is supported",
            ));
        };
        let (connection_limit, http) =
            filters(&chain.filters).map_err(|e| e.within("filter_chains[0]"))?;
        Ok(Self {
            name: l.name.clone(),
            address: SocketAddr::new(ip, port),
            connection_limit,
            http,
        })
    }
}

fn filters(filters: &[pb::Filter]) -> Result<(Option<ConnectionLimit>, HttpConnectionManager)> {
    let mut limit = None;
    let mut http = None;
    for (i, f) in filters.iter().enumerate() {
        let path = format!("filters[{i}].typed_config");
        let Some(pb::filter::ConfigType::TypedConfig(any)) = f.config_type.as_ref() else {
            return Err(ValidationError::required(path));
        };
        if http.is_some() {
            return Err(ValidationError::new(
                format!("filters[{i}]"),
                "the HTTP connection manager must be the last filter",
            ));
        }
        match any.type_url.as_str() {
            type_urls::CONNECTION_LIMIT if limit.is_none() => {
                let c: ConnectionLimitPb = unpack_any(any, type_urls::CONNECTION_LIMIT, &path)?;
                let max_connections = c.max_connections.as_ref().map_or(0, |v| v.value);
                if max_connections == 0 {
                    return Err(ValidationError::new(
                        format!("{path}.max_connections"),
                        "must be at least 1",
                    ));
                }
                limit = Some(ConnectionLimit {
                    max_connections,
                    delay: optional_timeout(c.delay.as_ref(), &format!("{path}.delay"), None)?,
                });
            }
            type_urls::HTTP_CONNECTION_MANAGER => {
                let h: HcmPb = unpack_any(any, type_urls::HTTP_CONNECTION_MANAGER, &path)?;
                http = Some(HttpConnectionManager::try_from(&h).map_err(|e| e.within(&path))?);
            }
            other => {
                return Err(ValidationError::new(
                    path,
                    format!("unsupported network filter {other:?}"),
                ))
            }
        }
    }
    let http = http.ok_or_else(|| {
        ValidationError::new(
            "filters",
            "an envoy.filters.network.http_connection_manager filter is required",
        )
    })?;
    Ok((limit, http))
}
