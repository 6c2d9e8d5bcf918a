//! Filter chain selection, pure: which chain takes a connection, in Envoy's documented
//! order — destination port, destination IP, server name, transport protocol, application
//! protocols, direct source IP, source type, source IP, source port. At each step only the
//! most specific candidates that match go on (a more specific match never falls back to a
//! less specific one, as in Envoy); a step no candidate matches means no chain.

use std::net::SocketAddr;

use xds_types::filter_chain::{CidrRange, FilterChainMatch, ServerName, SourceType};

/// What is known about a connection when its chain is chosen.
#[derive(Debug, Clone)]
pub struct ConnectionFacts<'a> {
    /// The local address it was accepted on (or the PROXY protocol's destination).
    pub destination: SocketAddr,
    /// The downstream address (the PROXY protocol's source when there is one).
    pub source: SocketAddr,
    /// The peer of the socket itself.
    pub direct_source: SocketAddr,
    /// SNI from the ClientHello, lowercase.
    pub server_name: Option<&'a str>,
    /// `tls` or `raw_buffer`.
    pub transport: &'a str,
    /// ALPN from the ClientHello, or the plaintext protocol `http_inspector` saw.
    pub application_protocols: &'a [String],
}

/// One selection step: a candidate's score (higher is more specific), `None` if it fails.
type Step<'a> = dyn Fn(&FilterChainMatch) -> Option<u32> + 'a;

/// The index of the chain `facts` selects among `matches`, if any.
pub fn select(matches: &[&FilterChainMatch], facts: &ConnectionFacts<'_>) -> Option<usize> {
    let mut candidates: Vec<usize> = (0..matches.len()).collect();
    let steps: [&Step<'_>; 9] = [
        &|m| match m.destination_port {
            None => Some(0),
            Some(p) if p == facts.destination.port() => Some(1),
            Some(_) => None,
        },
        &|m| prefix_score(&m.prefix_ranges, facts.destination),
        &|m| name_score(&m.server_names, facts.server_name),
        &|m| match m.transport_protocol.as_deref() {
            None => Some(0),
            Some(t) if t == facts.transport => Some(1),
            Some(_) => None,
        },
        &|m| {
            if m.application_protocols.is_empty() {
                Some(0)
            } else if m
                .application_protocols
                .iter()
                .any(|p| facts.application_protocols.contains(p))
            {
                Some(1)
            } else {
                None
            }
        },
        &|m| prefix_score(&m.direct_source_prefix_ranges, facts.direct_source),
        &|m| {
            let local =
                facts.source.ip().is_loopback() || facts.source.ip() == facts.destination.ip();
            match (m.source_type, local) {
                (SourceType::Any, _) => Some(0),
                (SourceType::SameIpOrLoopback, true) | (SourceType::External, false) => Some(1),
                _ => None,
            }
        },
        &|m| prefix_score(&m.source_prefix_ranges, facts.source),
        &|m| {
            if m.source_ports.is_empty() {
                Some(0)
            } else if m.source_ports.contains(&facts.source.port()) {
                Some(1)
            } else {
                None
            }
        },
    ];
    for step in steps {
        let scores: Vec<(usize, u32)> = candidates
            .iter()
            .filter_map(|&i| step(matches[i]).map(|s| (i, s)))
            .collect();
        let best = scores.iter().map(|(_, s)| *s).max()?;
        candidates = scores
            .into_iter()
            .filter(|(_, s)| *s == best)
            .map(|(i, _)| i)
            .collect();
    }
    // Listeners refuse duplicate matches, so at most one remains.
    candidates.first().copied()
}

/// 0 for no ranges, 1 + the longest matching prefix length, `None` when none matches.
fn prefix_score(ranges: &[CidrRange], address: SocketAddr) -> Option<u32> {
    if ranges.is_empty() {
        return Some(0);
    }
    ranges
        .iter()
        .filter(|r| r.contains(address.ip()))
        .map(|r| 1 + u32::from(r.prefix_len))
        .max()
}

/// 0 for no names; an exact name beats the longest matching `*.suffix`; a connection
/// without SNI matches only chains without names.
fn name_score(names: &[ServerName], sni: Option<&str>) -> Option<u32> {
    if names.is_empty() {
        return Some(0);
    }
    let sni = sni?;
    names
        .iter()
        .filter_map(|n| match n {
            ServerName::Exact(e) if e == sni => Some(u32::MAX),
            ServerName::Suffix(s) if sni.len() > s.len() && sni.ends_with(s.as_str()) => {
                Some(1 + s.len() as u32)
            }
            _ => None,
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(json: serde_json::Value) -> FilterChainMatch {
        let pb: xds_types::pb::envoy::config::listener::v3::FilterChainMatch =
            xds_types::decode::from_json_value(json, "envoy.config.listener.v3.FilterChainMatch")
                .unwrap();
        FilterChainMatch::try_from(&pb).unwrap()
    }

    fn facts(sni: Option<&'static str>, transport: &'static str) -> ConnectionFacts<'static> {
        ConnectionFacts {
            destination: "127.0.0.1:443".parse().unwrap(),
            source: "10.1.2.3:40000".parse().unwrap(),
            direct_source: "10.1.2.3:40000".parse().unwrap(),
            server_name: sni,
            transport,
            application_protocols: &[],
        }
    }

    #[test]
    fn exact_names_beat_wildcards_and_the_longest_wildcard_wins() {
        let chains = [
            m(serde_json::json!({ "server_names": ["*.example.com"] })),
            m(serde_json::json!({ "server_names": ["*.api.example.com"] })),
            m(serde_json::json!({ "server_names": ["www.example.com"] })),
            m(serde_json::json!({})),
        ];
        let refs: Vec<&FilterChainMatch> = chains.iter().collect();
        assert_eq!(
            select(&refs, &facts(Some("www.example.com"), "tls")),
            Some(2)
        );
        assert_eq!(
            select(&refs, &facts(Some("v1.api.example.com"), "tls")),
            Some(1)
        );
        assert_eq!(
            select(&refs, &facts(Some("shop.example.com"), "tls")),
            Some(0)
        );
        assert_eq!(select(&refs, &facts(Some("other.org"), "tls")), Some(3));
        assert_eq!(select(&refs, &facts(None, "raw_buffer")), Some(3));
        // "*.example.com" does not match the bare domain.
        assert_eq!(select(&refs, &facts(Some("example.com"), "tls")), Some(3));
    }

    #[test]
    fn a_more_specific_step_never_falls_back() {
        // The port matches chain 0 specifically; its names do not match, and Envoy does
        // not go back to chain 1 (which has no port): no chain.
        let chains = [
            m(serde_json::json!({ "destination_port": 443, "server_names": ["a.com"] })),
            m(serde_json::json!({ "server_names": ["b.com"] })),
        ];
        let refs: Vec<&FilterChainMatch> = chains.iter().collect();
        assert_eq!(select(&refs, &facts(Some("b.com"), "tls")), None);
        assert_eq!(select(&refs, &facts(Some("a.com"), "tls")), Some(0));
    }

    #[test]
    fn transport_source_and_prefix_steps() {
        let chains = [
            m(serde_json::json!({ "transport_protocol": "tls" })),
            m(
                serde_json::json!({ "transport_protocol": "raw_buffer", "source_prefix_ranges": [{ "address_prefix": "10.0.0.0", "prefix_len": 8 }] }),
            ),
            m(
                serde_json::json!({ "transport_protocol": "raw_buffer", "source_prefix_ranges": [{ "address_prefix": "10.1.0.0", "prefix_len": 16 }] }),
            ),
            m(
                serde_json::json!({ "transport_protocol": "raw_buffer", "source_type": "SAME_IP_OR_LOOPBACK" }),
            ),
        ];
        let refs: Vec<&FilterChainMatch> = chains.iter().collect();
        assert_eq!(select(&refs, &facts(None, "tls")), Some(0));
        // Source type runs before source prefixes: 10.1.2.3 is external, so chain 3 is out,
        // then the longest source prefix wins.
        assert_eq!(select(&refs, &facts(None, "raw_buffer")), Some(2));
        let mut local = facts(None, "raw_buffer");
        local.source = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(select(&refs, &local), Some(3));
    }

    #[test]
    fn alpn_and_ports() {
        let h2 = vec!["h2".to_string(), "http/1.1".to_string()];
        let chains = [
            m(serde_json::json!({ "application_protocols": ["h2"] })),
            m(serde_json::json!({ "source_ports": [40000] })),
        ];
        let refs: Vec<&FilterChainMatch> = chains.iter().collect();
        let mut with_alpn = facts(Some("x"), "tls");
        with_alpn.application_protocols = &h2;
        assert_eq!(select(&refs, &with_alpn), Some(0));
        assert_eq!(select(&refs, &facts(Some("x"), "tls")), Some(1));
    }
}
