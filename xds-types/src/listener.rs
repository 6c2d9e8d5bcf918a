//! Validated `Listener`: an address, the listener filters that inspect a new connection,
//! and the filter chains one of which takes it — each a TLS context (or none) and a
//! network filter (the HTTP connection manager or the TCP proxy).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use prost::Message;

use crate::access_log::AccessLog;
use crate::cluster::socket_address;
use crate::error::{Result, ValidationError};
use crate::filter_chain::{check_unique, FilterChainMatch};
use crate::hcm::HttpConnectionManager;
use crate::pb::envoy::config::core::v3 as core;
use crate::pb::envoy::config::listener::v3 as pb;
use crate::pb::envoy::extensions::filters::listener::proxy_protocol::v3::ProxyProtocol as ProxyProtocolPb;
use crate::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector as TlsInspectorPb;
use crate::pb::envoy::extensions::filters::network::connection_limit::v3::ConnectionLimit as ConnectionLimitPb;
use crate::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager as HcmPb;
use crate::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy as TcpProxyPb;
use crate::route::RouteTable;
use crate::tcp_proxy::TcpProxy;
use crate::tls::{self, DownstreamTls, SdsRef};
use crate::type_urls;
use crate::util::{duration, optional_timeout, unpack_any};

/// Envoy's default `listener_filters_timeout`.
pub const DEFAULT_LISTENER_FILTERS_TIMEOUT: Duration = Duration::from_secs(15);
/// Listen backlog when `tcp_backlog_size` is not set (the kernel caps it at somaxconn).
pub const DEFAULT_BACKLOG: u32 = 4096;

/// A bound address and what its connections run.
#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub address: ListenAddress,
    /// Run in order on each new connection, before a filter chain is chosen.
    pub listener_filters: Vec<ListenerFilter>,
    /// How long the listener filters may wait for bytes; `None`: forever.
    pub listener_filters_timeout: Option<Duration>,
    /// On that timeout, choose a chain with what is known instead of closing.
    pub continue_on_listener_filters_timeout: bool,
    pub filter_chains: Vec<FilterChain>,
    /// Takes connections no chain matches; without it they are closed.
    pub default_filter_chain: Option<FilterChain>,
    pub socket: SocketSettings,
    /// One line per connection, when it closes.
    pub access_log: Vec<AccessLog>,
    /// Not held to, nor counted in, the bootstrap's global connection cap (a health or
    /// admin-style listener that must answer when the proxy is full).
    pub ignore_global_conn_limit: bool,
    /// Exempt from the overload actions (a health listener that must keep answering).
    pub bypass_overload_manager: bool,
}

/// Where a listener accepts connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddress {
    Socket(SocketAddr),
    /// A Unix domain socket (`pipe`): a path, made with `mode`'s permissions (0: the
    /// umask's) after a stale file there is removed, or `@name` in the abstract namespace.
    /// How a sidecar takes its application's traffic without a TCP port.
    Pipe {
        path: String,
        mode: u32,
    },
}

impl ListenAddress {
    /// The TCP address, for a socket listener.
    pub fn socket(&self) -> Option<SocketAddr> {
        match self {
            Self::Socket(a) => Some(*a),
            Self::Pipe { .. } => None,
        }
    }
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Socket(a) => a.fmt(f),
            Self::Pipe { path, .. } => f.write_str(path),
        }
    }
}

/// What one filter chain does with the connections it takes.
#[derive(Debug, Clone)]
pub struct FilterChain {
    pub name: String,
    pub matcher: FilterChainMatch,
    /// TLS termination; `None`: the bytes are passed on as they come.
    pub tls: Option<DownstreamTls>,
    /// Time allowed for the TLS handshake; `None`: no limit.
    pub handshake_timeout: Option<Duration>,
    pub connection_limit: Option<ConnectionLimit>,
    pub network: NetworkFilter,
    /// Equal for two versions of a chain that differ at most in an inline route table, so
    /// an update that changes only routes drains no connection.
    pub identity: u64,
}

/// The terminal network filter of a chain.
#[derive(Debug, Clone)]
pub enum NetworkFilter {
    Http(Box<HttpConnectionManager>),
    Tcp(TcpProxy),
}

/// A listener filter, run before the filter chain is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerFilter {
    /// Reads a PROXY protocol header (v1 or v2); its source becomes the downstream address.
    ProxyProtocol(ProxyProtocol),
    /// Reads the TLS ClientHello without consuming it: SNI, ALPN, transport `tls`.
    TlsInspector {
        /// Close a connection whose ClientHello does not parse (else it is `raw_buffer`).
        close_on_parse_error: bool,
    },
    /// Detects plaintext HTTP/1.x or the HTTP/2 preface as the application protocol.
    HttpInspector,
}

/// `envoy.filters.listener.proxy_protocol`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocol {
    /// A connection without a header is served as is (else closed).
    pub allow_requests_without_proxy_protocol: bool,
    /// Header versions (1, 2) that close the connection.
    pub disallowed_versions: Vec<u8>,
}

/// Envoy's `envoy.filters.network.connection_limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimit {
    pub max_connections: u64,
    /// How long to hold a refused connection before closing it.
    pub delay: Option<Duration>,
}

/// Socket settings the listener applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketSettings {
    pub backlog: u32,
    /// TCP keepalive on accepted connections.
    pub keepalive: Option<Keepalive>,
}

/// TCP keepalive parameters; `None` fields keep the kernel's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Keepalive {
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
    pub probes: Option<u32>,
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

impl Listener {
    /// A listener from `static_resources`: as [`Listener::try_from`], except that one
    /// without a name is named after its address, as Envoy names it.
    pub fn from_static(l: &pb::Listener) -> Result<Self> {
        if !l.name.is_empty() {
            return Self::try_from(l);
        }
        let mut named = l.clone();
        let address = l
            .address
            .as_ref()
            .ok_or_else(|| ValidationError::required("address"))?;
        named.name = match listen_address(address)? {
            ListenAddress::Socket(a) => format!("{}_{}", a.ip(), a.port()),
            ListenAddress::Pipe { path, .. } => path,
        };
        Self::try_from(&named)
    }

    /// Every chain, the default one last.
    pub fn chains(&self) -> impl Iterator<Item = &FilterChain> {
        self.filter_chains
            .iter()
            .chain(self.default_filter_chain.as_ref())
    }

    /// The HTTP connection managers of its chains.
    pub fn http_managers(&self) -> impl Iterator<Item = &HttpConnectionManager> {
        self.chains().filter_map(|c| match &c.network {
            NetworkFilter::Http(h) => Some(h.as_ref()),
            NetworkFilter::Tcp(_) => None,
        })
    }

    /// The RDS route configurations its chains wait for.
    pub fn rds_names(&self) -> impl Iterator<Item = &str> {
        self.http_managers().filter_map(|h| h.rds_name())
    }

    /// Where the RDS route configurations its connection managers wait for come from.
    pub fn route_origins(&self) -> impl Iterator<Item = &crate::config_source::Origin> {
        self.http_managers().filter_map(|h| match &h.routes {
            crate::hcm::RouteSource::Rds { origin, .. } => Some(origin),
            crate::hcm::RouteSource::Inline(_) => None,
        })
    }

    /// The clusters its chains send to directly: TCP proxies' and inline route tables'.
    pub fn referenced_clusters(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for chain in self.chains() {
            match &chain.network {
                NetworkFilter::Http(h) => out.extend(
                    h.inline_routes()
                        .into_iter()
                        .flat_map(RouteTable::referenced_clusters),
                ),
                NetworkFilter::Tcp(t) => out.extend(t.clusters()),
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The SDS secrets its chains' TLS contexts name.
    pub fn sds_refs(&self) -> impl Iterator<Item = &SdsRef> {
        self.chains()
            .filter_map(|c| c.tls.as_ref())
            .flat_map(|t| t.sds_names())
    }
}

/// A listener's address: an IP and port, or a Unix socket.
fn listen_address(address: &core::Address) -> Result<ListenAddress> {
    use core::address::Address as A;
    if let Some(A::Pipe(pipe)) = address.address.as_ref() {
        if pipe.path.is_empty() {
            return Err(ValidationError::required("address.pipe.path"));
        }
        if pipe.mode > 0o777 {
            return Err(ValidationError::new(
                "address.pipe.mode",
                format!(
                    "{} is over 0777 (511): YAML 1.2 reads 0660 as decimal, where Envoy's parser reads \
                     a leading 0 as octal; write the mode in decimal ({})",
                    pipe.mode,
                    u32::from_str_radix(&pipe.mode.to_string(), 8).map_or_else(|_| "0660 is 432".into(), |m| format!("0{} is {m}", pipe.mode)),
                ),
            ));
        }
        if pipe.path.starts_with('@') && pipe.mode != 0 {
            return Err(ValidationError::new(
                "address.pipe.mode",
                "an abstract socket has no file to set permissions on",
            ));
        }
        return Ok(ListenAddress::Pipe {
            path: pipe.path.clone(),
            mode: pipe.mode,
        });
    }
    let (host, port) = socket_address(address).map_err(|e| e.within("address"))?;
    let ip: IpAddr = host.parse().map_err(|_| {
        ValidationError::new(
            "address.socket_address.address",
            format!("{host:?} is not an IP address"),
        )
    })?;
    Ok(ListenAddress::Socket(SocketAddr::new(ip, port)))
}

/// What a Unix socket listener cannot do: its connections carry no TCP facts to inspect
/// or to match a chain on, so one chain (or the default one) takes them all.
fn pipe_listener_limits(filters: &[ListenerFilter], chains: &[FilterChain]) -> Result<()> {
    if !filters.is_empty() {
        return Err(ValidationError::new(
            "listener_filters",
            "not supported on a Unix socket listener (nor a filter_chain_match that needs one)",
        ));
    }
    if let Some(i) = chains
        .iter()
        .position(|c| c.matcher != FilterChainMatch::default())
    {
        return Err(ValidationError::new(
            format!("filter_chains[{i}].filter_chain_match"),
            "a Unix socket listener's chains cannot match on connection facts",
        ));
    }
    if chains.len() > 1 {
        return Err(ValidationError::new(
            "filter_chains",
            "a Unix socket listener has one filter chain (or a default_filter_chain)",
        ));
    }
    Ok(())
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
        let address = listen_address(address)?;
        if l.filter_chains.is_empty() && l.default_filter_chain.is_none() {
            return Err(ValidationError::new(
                "filter_chains",
                "a listener needs at least one filter chain or a default_filter_chain",
            ));
        }
        let filter_chains = l
            .filter_chains
            .iter()
            .enumerate()
            .map(|(i, c)| filter_chain(c).map_err(|e| e.within(format!("filter_chains[{i}]"))))
            .collect::<Result<Vec<_>>>()?;
        let matches: Vec<&FilterChainMatch> = filter_chains.iter().map(|c| &c.matcher).collect();
        check_unique(&matches).map_err(|(index, message)| {
            ValidationError::new(
                format!("filter_chains[{index}].filter_chain_match"),
                message,
            )
        })?;
        let default_filter_chain = match l.default_filter_chain.as_ref() {
            None => None,
            Some(c) => {
                if c.filter_chain_match.is_some() {
                    return Err(ValidationError::new(
                        "default_filter_chain.filter_chain_match",
                        "the default filter chain has no match",
                    ));
                }
                Some(filter_chain(c).map_err(|e| e.within("default_filter_chain"))?)
            }
        };
        let mut listener_filters = l
            .listener_filters
            .iter()
            .enumerate()
            .map(|(i, f)| {
                listener_filter(f).map_err(|e| e.within(format!("listener_filters[{i}]")))
            })
            .collect::<Result<Vec<_>>>()?;
        // As Envoy does: a chain that matches on SNI, ALPN or `tls` gets a TLS inspector,
        // and one that matches on plaintext HTTP an HTTP inspector, even when unlisted.
        let has_tls_inspector = listener_filters
            .iter()
            .any(|f| matches!(f, ListenerFilter::TlsInspector { .. }));
        if !has_tls_inspector
            && filter_chains
                .iter()
                .any(|c| c.matcher.needs_tls_inspector())
        {
            listener_filters.push(ListenerFilter::TlsInspector {
                close_on_parse_error: false,
            });
        }
        let has_http_inspector = listener_filters.contains(&ListenerFilter::HttpInspector);
        if !has_http_inspector
            && filter_chains
                .iter()
                .any(|c| c.matcher.needs_http_inspector())
        {
            listener_filters.push(ListenerFilter::HttpInspector);
        }
        if matches!(address, ListenAddress::Pipe { .. }) {
            pipe_listener_limits(&listener_filters, &filter_chains)?;
        }
        if l.bind_to_port.as_ref().is_some_and(|v| !v.value) {
            return Err(ValidationError::new(
                "bind_to_port",
                "listeners that do not bind (original_dst redirection) are not supported",
            ));
        }
        for (field, set) in [
            (
                "transparent",
                l.transparent.as_ref().is_some_and(|v| v.value),
            ),
            ("freebind", l.freebind.as_ref().is_some_and(|v| v.value)),
            ("enable_mptcp", l.enable_mptcp),
        ] {
            if set {
                return Err(ValidationError::new(field, "is not supported"));
            }
        }
        Ok(Self {
            access_log: AccessLog::list(&l.access_log, "access_log")?,
            name: l.name.clone(),
            address,
            listener_filters,
            listener_filters_timeout: optional_timeout(
                l.listener_filters_timeout.as_ref(),
                "listener_filters_timeout",
                Some(DEFAULT_LISTENER_FILTERS_TIMEOUT),
            )?,
            continue_on_listener_filters_timeout: l.continue_on_listener_filters_timeout,
            filter_chains,
            default_filter_chain,
            socket: socket_settings(l)?,
            ignore_global_conn_limit: l.ignore_global_conn_limit,
            bypass_overload_manager: l.bypass_overload_manager,
        })
    }
}

fn socket_settings(l: &pb::Listener) -> Result<SocketSettings> {
    let backlog = l
        .tcp_backlog_size
        .as_ref()
        .map_or(DEFAULT_BACKLOG, |v| v.value);
    let mut keepalive = l.tcp_keepalive.as_ref().map(|k| Keepalive {
        time: k
            .keepalive_time
            .as_ref()
            .map(|v| Duration::from_secs(v.value.into())),
        interval: k
            .keepalive_interval
            .as_ref()
            .map(|v| Duration::from_secs(v.value.into())),
        probes: k.keepalive_probes.as_ref().map(|v| v.value),
    });
    // The socket options real listeners carry; anything else would be silently different.
    const SOL_SOCKET: i64 = 1;
    const IPPROTO_TCP: i64 = 6;
    for (i, option) in l.socket_options.iter().enumerate() {
        let at = format!("socket_options[{i}]");
        let value = match option.value.as_ref() {
            Some(core::socket_option::Value::IntValue(v)) => *v,
            _ => {
                return Err(ValidationError::new(
                    format!("{at}.buf_value"),
                    "only int_value socket options are supported",
                ))
            }
        };
        match (option.level, option.name) {
            // SO_KEEPALIVE.
            (SOL_SOCKET, 9) if value != 0 => {
                keepalive.get_or_insert_with(Keepalive::default);
            }
            (SOL_SOCKET, 9) => keepalive = None,
            // TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT.
            (IPPROTO_TCP, 4) => {
                keepalive.get_or_insert_with(Keepalive::default).time =
                    Some(Duration::from_secs(value.max(1) as u64))
            }
            (IPPROTO_TCP, 5) => {
                keepalive.get_or_insert_with(Keepalive::default).interval =
                    Some(Duration::from_secs(value.max(1) as u64))
            }
            (IPPROTO_TCP, 6) => {
                keepalive.get_or_insert_with(Keepalive::default).probes = Some(value.max(1) as u32)
            }
            // SO_REUSEADDR, SO_REUSEPORT and TCP_NODELAY are always on.
            (SOL_SOCKET, 2 | 15) | (IPPROTO_TCP, 1) if value != 0 => {}
            (level, name) => {
                return Err(ValidationError::new(
                    at,
                    format!(
                        "socket option level {level} name {name} (value {value}) is not supported"
                    ),
                ))
            }
        }
    }
    Ok(SocketSettings { backlog, keepalive })
}

fn listener_filter(f: &pb::ListenerFilter) -> Result<ListenerFilter> {
    if f.filter_disabled.is_some() {
        return Err(ValidationError::unsupported("filter_disabled"));
    }
    let any = match f.config_type.as_ref() {
        Some(pb::listener_filter::ConfigType::TypedConfig(any)) => Some(any),
        Some(_) => return Err(ValidationError::unsupported("config_discovery")),
        None => None,
    };
    let kind = any.map_or_else(
        || match f.name.as_str() {
            "envoy.filters.listener.tls_inspector" => type_urls::TLS_INSPECTOR,
            "envoy.filters.listener.http_inspector" => type_urls::HTTP_INSPECTOR,
            "envoy.filters.listener.proxy_protocol" => type_urls::PROXY_PROTOCOL,
            _ => "",
        },
        |a| a.type_url.as_str(),
    );
    match kind {
        type_urls::TLS_INSPECTOR => {
            let config: TlsInspectorPb = match any {
                Some(a) => unpack_any(a, type_urls::TLS_INSPECTOR, "typed_config")?,
                None => TlsInspectorPb::default(),
            };
            Ok(ListenerFilter::TlsInspector {
                close_on_parse_error: config.close_connection_on_client_hello_parsing_errors,
            })
        }
        type_urls::HTTP_INSPECTOR => Ok(ListenerFilter::HttpInspector),
        type_urls::PROXY_PROTOCOL => {
            let config: ProxyProtocolPb = match any {
                Some(a) => unpack_any(a, type_urls::PROXY_PROTOCOL, "typed_config")?,
                None => ProxyProtocolPb::default(),
            };
            let disallowed_versions = config
                .disallowed_versions
                .iter()
                .map(|v| match v {
                    0 => Ok(1),
                    1 => Ok(2),
                    _ => Err(ValidationError::new("typed_config.disallowed_versions", "V1 or V2")),
                })
                .collect::<Result<Vec<u8>>>()?;
            Ok(ListenerFilter::ProxyProtocol(ProxyProtocol {
                allow_requests_without_proxy_protocol: config
                    .allow_requests_without_proxy_protocol,
                disallowed_versions,
            }))
        }
        "" => Err(ValidationError::new(
            "name",
            format!("listener filter {:?} is not supported (tls_inspector, http_inspector, proxy_protocol)", f.name),
        )),
        other => Err(ValidationError::new(
            "typed_config",
            format!("listener filter {} is not supported (tls_inspector, http_inspector, proxy_protocol)", type_urls::message_name(other)),
        )),
    }
}

fn filter_chain(c: &pb::FilterChain) -> Result<FilterChain> {
    if c.use_proxy_proto.as_ref().is_some_and(|v| v.value) {
        return Err(ValidationError::new(
            "use_proxy_proto",
            "deprecated in Envoy; use the envoy.filters.listener.proxy_protocol listener filter",
        ));
    }
    let matcher = match c.filter_chain_match.as_ref() {
        Some(m) => FilterChainMatch::try_from(m).map_err(|e| e.within("filter_chain_match"))?,
        None => FilterChainMatch::default(),
    };
    let tls = match c.transport_socket.as_ref() {
        None => None,
        Some(socket) if socket.name == "envoy.transport_sockets.raw_buffer" => None,
        Some(socket) => Some(tls::downstream(socket).map_err(|e| e.within("transport_socket"))?),
    };
    let handshake_timeout = match c.transport_socket_connect_timeout.as_ref() {
        None => None,
        Some(d) => {
            let d = duration(d, "transport_socket_connect_timeout")?;
            (!d.is_zero()).then_some(d)
        }
    };
    let (connection_limit, network) = network_filters(&c.filters)?;
    Ok(FilterChain {
        name: c.name.clone(),
        matcher,
        tls,
        handshake_timeout,
        connection_limit,
        network,
        identity: identity(c),
    })
}

/// A hash of the chain with every inline route table left out.
fn identity(c: &pb::FilterChain) -> u64 {
    let mut chain = c.clone();
    for filter in &mut chain.filters {
        if let Some(pb::filter::ConfigType::TypedConfig(any)) = filter.config_type.as_mut() {
            if any.type_url == type_urls::HTTP_CONNECTION_MANAGER {
                if let Ok(mut hcm) = HcmPb::decode(any.value.as_slice()) {
                    use crate::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
                    if matches!(hcm.route_specifier, Some(RouteSpecifier::RouteConfig(_))) {
                        hcm.route_specifier = None;
                    }
                    any.value = hcm.encode_to_vec();
                }
            }
        }
    }
    crate::util::fingerprint(&chain, "envoy.config.listener.v3.FilterChain")
}

fn network_filters(filters: &[pb::Filter]) -> Result<(Option<ConnectionLimit>, NetworkFilter)> {
    let mut limit = None;
    let mut terminal = None;
    for (i, f) in filters.iter().enumerate() {
        let path = format!("filters[{i}].typed_config");
        let Some(pb::filter::ConfigType::TypedConfig(any)) = f.config_type.as_ref() else {
            return Err(ValidationError::required(path));
        };
        if terminal.is_some() {
            return Err(ValidationError::new(
                format!("filters[{i}]"),
                "the HTTP connection manager or TCP proxy must be the last filter",
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
                terminal = Some(NetworkFilter::Http(Box::new(
                    HttpConnectionManager::try_from(&h).map_err(|e| e.within(&path))?,
                )));
            }
            type_urls::TCP_PROXY => {
                let t: TcpProxyPb = unpack_any(any, type_urls::TCP_PROXY, &path)?;
                terminal = Some(NetworkFilter::Tcp(
                    TcpProxy::try_from(&t).map_err(|e| e.within(&path))?,
                ));
            }
            other => {
                return Err(ValidationError::new(
                    path,
                    format!(
                        "network filter {} is not supported (connection_limit, then http_connection_manager or tcp_proxy)",
                        type_urls::message_name(other)
                    ),
                ))
            }
        }
    }
    let terminal = terminal.ok_or_else(|| {
        ValidationError::new(
            "filters",
            "an http_connection_manager or tcp_proxy filter is required",
        )
    })?;
    Ok((limit, terminal))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(json: serde_json::Value) -> Result<Listener> {
        let pb: pb::Listener =
            crate::decode::from_json_value(json, "envoy.config.listener.v3.Listener")?;
        Listener::from_static(&pb)
    }

    fn tcp(cluster: &str) -> serde_json::Value {
        serde_json::json!({ "name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "tcp", "cluster": cluster } })
    }

    fn address() -> serde_json::Value {
        serde_json::json!({ "socket_address": { "address": "127.0.0.1", "port_value": 10000 } })
    }

    #[test]
    fn sni_chains_get_a_tls_inspector_and_an_unnamed_listener_a_name() {
        let l = listener(serde_json::json!({
            "address": address(),
            "filter_chains": [
                { "filter_chain_match": { "server_names": ["a.example"] }, "filters": [tcp("a")] },
                { "filters": [tcp("b")] }
            ]
        }))
        .unwrap();
        assert_eq!(l.name, "127.0.0.1_10000");
        assert_eq!(
            l.listener_filters,
            vec![ListenerFilter::TlsInspector {
                close_on_parse_error: false
            }]
        );
        assert_eq!(l.referenced_clusters(), vec!["a", "b"]);
    }

    #[test]
    fn duplicate_matches_and_unknown_filters_are_named() {
        let err = listener(serde_json::json!({
            "name": "l", "address": address(),
            "filter_chains": [ { "filters": [tcp("a")] }, { "filters": [tcp("b")] } ]
        }))
        .unwrap_err();
        assert_eq!(err.path, "filter_chains[1].filter_chain_match");
        let err = listener(serde_json::json!({
            "name": "l", "address": address(),
            "listener_filters": [ { "name": "envoy.filters.listener.original_dst" } ],
            "filter_chains": [ { "filters": [tcp("a")] } ]
        }))
        .unwrap_err();
        assert_eq!(err.path, "listener_filters[0].name");
    }

    #[test]
    fn an_inline_route_change_keeps_the_chain_identity() {
        let hcm = |prefix: &str| {
            serde_json::json!({ "name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "h",
                "route_config": { "virtual_hosts": [ { "name": "v", "domains": ["*"],
                    "routes": [ { "match": { "prefix": prefix }, "direct_response": { "status": 200 } } ] } ] },
                "http_filters": [ { "name": "router", "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } } ] } })
        };
        let with = |prefix: &str, idle: &str| {
            let mut filter = hcm(prefix);
            filter["typed_config"]["common_http_protocol_options"] =
                serde_json::json!({ "idle_timeout": idle });
            listener(serde_json::json!({ "name": "l", "address": address(),
                "filter_chains": [ { "filters": [filter] } ] }))
            .unwrap()
            .filter_chains[0]
                .identity
        };
        assert_eq!(with("/a", "10s"), with("/b", "10s"));
        assert_ne!(with("/a", "10s"), with("/a", "20s"));
    }
}
