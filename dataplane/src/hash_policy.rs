//! A request's consistent hash for RING_HASH and MAGLEV clusters, from the route's
//! `hash_policy` list as Envoy computes it: each policy that finds its input contributes
//! `xxHash64(value)`, combined by rotating the hash so far and XOR-ing; a `terminal`
//! policy that produced a hash ends the list. A cookie policy with a `ttl` generates the
//! cookie when the request has none, and the response sets it.

use std::borrow::Cow;
use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue, Uri};
use xds_types::route::{HashPolicy, HashSource};
use xxhash_rust::xxh64::xxh64;

/// The hash, and a `Set-Cookie` value when a cookie was generated.
#[derive(Debug, Default)]
pub struct RequestHash {
    pub hash: Option<u64>,
    pub set_cookie: Option<HeaderValue>,
}

/// Computes the request's hash under `policies`.
pub fn compute(
    policies: &[HashPolicy],
    headers: &HeaderMap,
    uri: &Uri,
    remote: SocketAddr,
    local: SocketAddr,
) -> RequestHash {
    let mut out = RequestHash::default();
    for policy in policies {
        let value = match &policy.source {
            HashSource::Header { name, rewrite } => headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| match rewrite {
                    Some((re, substitution)) => re.replace_all(v, substitution.as_str()),
                    None => Cow::Borrowed(v),
                }),
            HashSource::Cookie {
                name,
                ttl,
                path,
                attributes,
            } => match cookie(headers, name) {
                Some(value) => Some(Cow::Borrowed(value)),
                None => match ttl {
                    Some(ttl) => {
                        // Stable per connection, as Envoy's: the two addresses, hashed.
                        let value =
                            format!("{:016x}", xxh64(format!("{remote}{local}").as_bytes(), 0));
                        out.set_cookie =
                            set_cookie(name, &value, path.as_deref(), ttl.as_secs(), attributes);
                        Some(Cow::Owned(value))
                    }
                    None => None,
                },
            },
            HashSource::SourceIp => Some(Cow::Owned(remote.ip().to_string())),
            HashSource::QueryParameter(name) => query_parameter(uri, name).map(Cow::Borrowed),
        };
        if let Some(value) = value {
            let new = xxh64(value.as_bytes(), 0);
            out.hash = Some(match out.hash {
                Some(old) => old.rotate_left(1) ^ new,
                None => new,
            });
        }
        if policy.terminal && out.hash.is_some() {
            break;
        }
    }
    out
}

/// The value of cookie `name` (quotes stripped), from any `Cookie` header.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Envoy's generated-cookie `Set-Cookie` value.
fn set_cookie(
    name: &str,
    value: &str,
    path: Option<&str>,
    max_age: u64,
    attributes: &[(String, String)],
) -> Option<HeaderValue> {
    let mut out = format!("{name}=\"{value}\"");
    if max_age > 0 {
        out.push_str(&format!("; Max-Age={max_age}"));
    }
    if let Some(path) = path {
        out.push_str(&format!("; Path={path}"));
    }
    for (k, v) in attributes {
        if v.is_empty() {
            out.push_str(&format!("; {k}"));
        } else {
            out.push_str(&format!("; {k}={v}"));
        }
    }
    out.push_str("; HttpOnly");
    HeaderValue::from_str(&out).ok()
}

/// The first value of query parameter `name`.
fn query_parameter<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    xds_types::route::query_pairs(uri.query()?)
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn policy(source: HashSource, terminal: bool) -> HashPolicy {
        HashPolicy { source, terminal }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn inputs_combine_and_terminal_stops() {
        let header = policy(
            HashSource::Header {
                name: http::HeaderName::from_static("x-user"),
                rewrite: None,
            },
            true,
        );
        let ip = policy(HashSource::SourceIp, false);
        let mut headers = HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_static("alice"));
        let uri: Uri = "/".parse().unwrap();
        let (r, l) = (addr("10.0.0.1:5000"), addr("127.0.0.1:80"));
        let alice = xxh64(b"alice", 0);
        let h = compute(&[header.clone(), ip.clone()], &headers, &uri, r, l);
        assert_eq!(
            h.hash,
            Some(alice),
            "terminal: the source IP is not mixed in"
        );
        let both = compute(&[ip.clone(), header], &headers, &uri, r, l);
        assert_eq!(
            both.hash,
            Some(xxh64(b"10.0.0.1", 0).rotate_left(1) ^ alice)
        );
        let none = compute(&[], &headers, &uri, r, l);
        assert_eq!(none.hash, None);
    }

    #[test]
    fn a_missing_cookie_is_generated_and_set() {
        let p = policy(
            HashSource::Cookie {
                name: "session".into(),
                ttl: Some(Duration::from_secs(60)),
                path: Some("/".into()),
                attributes: vec![("SameSite".into(), "Lax".into())],
            },
            false,
        );
        let uri: Uri = "/".parse().unwrap();
        let (r, l) = (addr("10.0.0.1:5000"), addr("127.0.0.1:80"));
        let first = compute(std::slice::from_ref(&p), &HeaderMap::new(), &uri, r, l);
        let cookie = first.set_cookie.unwrap();
        let text = cookie.to_str().unwrap();
        assert!(text.starts_with("session=\""), "{text}");
        assert!(
            text.ends_with("; Max-Age=60; Path=/; SameSite=Lax; HttpOnly"),
            "{text}"
        );
        // The client sends it back: same hash, nothing set.
        let value = text.split('"').nth(1).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            HeaderValue::from_str(&format!("a=b; session=\"{value}\"")).unwrap(),
        );
        let again = compute(&[p], &headers, &uri, addr("10.0.0.9:1"), l);
        assert_eq!(again.hash, first.hash);
        assert!(again.set_cookie.is_none());
    }

    #[test]
    fn query_parameters_hash_by_value() {
        let p = policy(HashSource::QueryParameter("user".into()), false);
        let uri: Uri = "/x?a=1&user=bob".parse().unwrap();
        let h = compute(
            &[p],
            &HeaderMap::new(),
            &uri,
            addr("1.1.1.1:1"),
            addr("1.1.1.1:2"),
        );
        assert_eq!(h.hash, Some(xxh64(b"bob", 0)));
    }
}
