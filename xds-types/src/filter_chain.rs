//! Validated `FilterChainMatch`: what a connection must look like for a filter chain to
//! take it. Selection itself (Envoy's match order) runs in the data plane; here the match
//! is parsed, normalised (lowercase names, masked prefixes) and checked for chains that
//! would match the same connections, which Envoy refuses.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::error::{Result, ValidationError};
use crate::pb::envoy::config::core::v3 as core;
use crate::pb::envoy::config::listener::v3 as pb;

/// The transport protocol of a connection no listener filter recognised.
pub const RAW_BUFFER: &str = "raw_buffer";
/// The transport protocol `tls_inspector` sets for a TLS ClientHello.
pub const TLS: &str = "tls";

/// Envoy's `FilterChainMatch`; empty fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FilterChainMatch {
    pub destination_port: Option<u16>,
    pub prefix_ranges: Vec<CidrRange>,
    pub server_names: Vec<ServerName>,
    pub transport_protocol: Option<String>,
    pub application_protocols: Vec<String>,
    pub direct_source_prefix_ranges: Vec<CidrRange>,
    pub source_type: SourceType,
    pub source_prefix_ranges: Vec<CidrRange>,
    pub source_ports: Vec<u16>,
}

/// An address prefix, masked to its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CidrRange {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl CidrRange {
    /// A range from an address and a length (bits past the length are cleared).
    pub fn new(address: IpAddr, prefix_len: u8) -> Option<Self> {
        let max = if address.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return None;
        }
        Some(Self {
            address: mask(address, prefix_len),
            prefix_len,
        })
    }

    /// Whether `ip` is inside the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.address.is_ipv4() && mask(ip, self.prefix_len) == self.address
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

/// A `server_names` entry, lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServerName {
    Exact(String),
    /// `*.example.com`, kept as `.example.com`: matches any name ending with it.
    Suffix(String),
}

/// Envoy's `ConnectionSourceType`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SourceType {
    #[default]
    Any,
    /// The source is the destination's own address or loopback.
    SameIpOrLoopback,
    External,
}

impl TryFrom<&pb::FilterChainMatch> for FilterChainMatch {
    type Error = ValidationError;

    fn try_from(m: &pb::FilterChainMatch) -> Result<Self> {
        if !m.address_suffix.is_empty() || m.suffix_len.is_some() {
            return Err(ValidationError::unsupported("address_suffix"));
        }
        let destination_port = match m.destination_port.as_ref() {
            None => None,
            Some(p) => Some(port(p.value, "destination_port")?),
        };
        let server_names = m
            .server_names
            .iter()
            .enumerate()
            .map(|(i, n)| server_name(n).map_err(|e| e.within(format!("server_names[{i}]"))))
            .collect::<Result<Vec<_>>>()?;
        use pb::filter_chain_match::ConnectionSourceType as T;
        let source_type = match T::try_from(m.source_type) {
            Ok(T::Any) => SourceType::Any,
            Ok(T::SameIpOrLoopback) => SourceType::SameIpOrLoopback,
            Ok(T::External) => SourceType::External,
            Err(_) => return Err(ValidationError::new("source_type", "unknown value")),
        };
        Ok(Self {
            destination_port,
            prefix_ranges: ranges(&m.prefix_ranges, "prefix_ranges")?,
            server_names,
            transport_protocol: (!m.transport_protocol.is_empty())
                .then(|| m.transport_protocol.clone()),
            application_protocols: m.application_protocols.clone(),
            direct_source_prefix_ranges: ranges(
                &m.direct_source_prefix_ranges,
                "direct_source_prefix_ranges",
            )?,
            source_type,
            source_prefix_ranges: ranges(&m.source_prefix_ranges, "source_prefix_ranges")?,
            source_ports: m
                .source_ports
                .iter()
                .enumerate()
                .map(|(i, p)| port(*p, &format!("source_ports[{i}]")))
                .collect::<Result<Vec<_>>>()?,
        })
    }
}

impl FilterChainMatch {
    /// Whether the chain needs `tls_inspector` to be told apart (SNI or `tls`).
    pub fn needs_tls_inspector(&self) -> bool {
        !self.server_names.is_empty()
            || self.transport_protocol.as_deref() == Some(TLS)
            || (!self.application_protocols.is_empty()
                && self.transport_protocol.as_deref() != Some(RAW_BUFFER))
    }

    /// Whether the chain needs `http_inspector` (plaintext HTTP application protocols).
    pub fn needs_http_inspector(&self) -> bool {
        self.transport_protocol.as_deref() == Some(RAW_BUFFER)
            && self
                .application_protocols
                .iter()
                .any(|p| p.starts_with("http/") || p == "h2c")
    }
}

fn port(value: u32, path: &str) -> Result<u16> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ValidationError::new(path, "must be in [1, 65535]"))
}

fn server_name(name: &str) -> Result<ServerName> {
    let lower = name.to_ascii_lowercase();
    if let Some(suffix) = lower.strip_prefix('*') {
        if suffix.starts_with('.') && suffix.len() > 1 && !suffix[1..].contains('*') {
            return Ok(ServerName::Suffix(suffix.to_string()));
        }
    } else if !lower.is_empty() && !lower.contains('*') {
        return Ok(ServerName::Exact(lower));
    }
    Err(ValidationError::new(
        "",
        format!("{name:?}: a server name is exact or a leading wildcard (*.example.com)"),
    ))
}

fn ranges(ranges: &[core::CidrRange], path: &str) -> Result<Vec<CidrRange>> {
    ranges
        .iter()
        .enumerate()
        .map(|(i, r)| cidr(r, &format!("{path}[{i}]")))
        .collect()
}

/// One `CidrRange`; an unset `prefix_len` is the address's full length.
pub(crate) fn cidr(r: &core::CidrRange, at: &str) -> Result<CidrRange> {
    let address: IpAddr = r.address_prefix.parse().map_err(|_| {
        ValidationError::new(
            format!("{at}.address_prefix"),
            format!("{:?} is not an IP address", r.address_prefix),
        )
    })?;
    let len = r
        .prefix_len
        .as_ref()
        .map_or(if address.is_ipv4() { 32 } else { 128 }, |v| v.value);
    u8::try_from(len)
        .ok()
        .and_then(|len| CidrRange::new(address, len))
        .ok_or_else(|| ValidationError::new(format!("{at}.prefix_len"), "too long for the address"))
}

/// Most combinations one chain's match may expand to when checking for overlaps.
const MAX_COMBINATIONS: usize = 100_000;

/// One point of the match space: a value (or "any") per field.
type Combination = (
    Option<u16>,
    Option<CidrRange>,
    Option<ServerName>,
    Option<String>,
    Option<String>,
    Option<CidrRange>,
    SourceType,
    Option<CidrRange>,
    Option<u16>,
);

/// Refuses two chains that match exactly the same connections, as Envoy does: each match
/// is expanded to every combination of its values, and no combination may appear twice.
pub fn check_unique(matches: &[&FilterChainMatch]) -> std::result::Result<(), (usize, String)> {
    fn values<T: Clone>(v: &[T]) -> Vec<Option<T>> {
        if v.is_empty() {
            vec![None]
        } else {
            v.iter().cloned().map(Some).collect()
        }
    }
    let mut seen: HashSet<Combination> = HashSet::new();
    for (index, m) in matches.iter().enumerate() {
        let dimensions = [
            m.prefix_ranges.len(),
            m.server_names.len(),
            m.application_protocols.len(),
            m.direct_source_prefix_ranges.len(),
            m.source_prefix_ranges.len(),
            m.source_ports.len(),
        ];
        let total = dimensions
            .iter()
            .try_fold(1usize, |acc, n| acc.checked_mul((*n).max(1)));
        if total.is_none_or(|t| t > MAX_COMBINATIONS) {
            return Err((
                index,
                format!("filter_chain_match expands to more than {MAX_COMBINATIONS} combinations"),
            ));
        }
        let mut mine = Vec::new();
        for prefix in values(&m.prefix_ranges) {
            for name in values(&m.server_names) {
                for alpn in values(&m.application_protocols) {
                    for direct in values(&m.direct_source_prefix_ranges) {
                        for source in values(&m.source_prefix_ranges) {
                            for source_port in values(&m.source_ports) {
                                mine.push((
                                    m.destination_port,
                                    prefix,
                                    name.clone(),
                                    m.transport_protocol.clone(),
                                    alpn.clone(),
                                    direct,
                                    m.source_type,
                                    source,
                                    source_port,
                                ));
                            }
                        }
                    }
                }
            }
        }
        for combination in mine {
            if !seen.insert(combination) {
                return Err((
                    index,
                    "multiple filter chains with the same matching rules are defined".to_string(),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(json: serde_json::Value) -> Result<FilterChainMatch> {
        let pb: pb::FilterChainMatch =
            crate::decode::from_json_value(json, "envoy.config.listener.v3.FilterChainMatch")?;
        FilterChainMatch::try_from(&pb)
    }

    #[test]
    fn names_are_lowercased_and_wildcards_kept_as_suffixes() {
        let m = parsed(serde_json::json!({ "server_names": ["API.Example.com", "*.Example.org"] }))
            .unwrap();
        assert_eq!(
            m.server_names,
            vec![
                ServerName::Exact("api.example.com".into()),
                ServerName::Suffix(".example.org".into())
            ]
        );
        for bad in ["*example.org", "a.*.org", "*"] {
            let err = parsed(serde_json::json!({ "server_names": [bad] })).unwrap_err();
            assert_eq!(err.path, "server_names[0]", "{bad}");
        }
    }

    #[test]
    fn prefixes_are_masked_and_match_mapped_addresses() {
        let m = parsed(serde_json::json!({ "prefix_ranges": [{ "address_prefix": "10.1.2.3", "prefix_len": 8 }] }))
            .unwrap();
        let range = m.prefix_ranges[0];
        assert_eq!(range.address, "10.0.0.0".parse::<IpAddr>().unwrap());
        assert!(range.contains("10.200.0.1".parse().unwrap()));
        assert!(range.contains("::ffff:10.9.9.9".parse().unwrap()));
        assert!(!range.contains("11.0.0.1".parse().unwrap()));
    }

    #[test]
    fn overlapping_matches_are_refused() {
        let a = parsed(serde_json::json!({ "server_names": ["a.com", "b.com"] })).unwrap();
        let b = parsed(serde_json::json!({ "server_names": ["b.com"] })).unwrap();
        let c = parsed(serde_json::json!({ "server_names": ["b.com"], "destination_port": 443 }))
            .unwrap();
        assert!(check_unique(&[&a, &c]).is_ok());
        let (index, message) = check_unique(&[&a, &c, &b]).unwrap_err();
        assert_eq!(index, 2);
        assert!(message.contains("same matching rules"), "{message}");
        let empty = FilterChainMatch::default();
        assert!(check_unique(&[&empty, &empty]).is_err());
    }
}
