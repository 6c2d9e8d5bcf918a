//! ext_authz against a plain HTTP authorization service, as Envoy's raw HTTP client: the
//! check is a request with the client's method, its path behind `path_prefix` (or
//! `path_override`), its `Host`, `Authorization` and the allowed headers, and the body
//! when one was read. A 200 allows; a 5xx or no answer is an error; any other status
//! denies with the service's status, body and allowed headers.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use xds_types::http_filter::ext_authz::{CheckPath, HttpService};
use xds_types::http_filter::ExtAuthz;
use xds_types::pb::envoy::service::auth::v3 as auth;
use xds_types::route::StringMatcher;

use super::Verdict;
use crate::config::Snapshot;
use crate::http::filter::Edits;
use crate::http::filters::call::{self, Call};
use crate::local_reply::LocalReply;

/// The service's header naming request headers to remove upstream (comma-separated).
const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";
/// Headers of the client's request the check always carries (and the partial-body mark,
/// when a body was read).
const ALWAYS_SENT: [&str; 4] = ["authorization", ":method", ":path", ":authority"];
/// Headers of a denial a listed `allowed_client_headers` always includes.
const ALWAYS_TO_CLIENT: [&str; 4] = [":status", "content-length", "www-authenticate", "location"];
/// A denial's body is held in memory: bounded.
const MAX_ANSWER_BYTES: usize = 1 << 20;

fn any_matches(matchers: &[StringMatcher], name: &str) -> bool {
    matchers.iter().any(|m| m.matches(name))
}

/// Asks the service; `None` when it gave no usable answer (an error).
pub(super) async fn check(
    snapshot: &Snapshot,
    config: &ExtAuthz,
    service: &HttpService,
    check: auth::CheckRequest,
) -> Option<Verdict> {
    let http = check.attributes?.request?.http?;
    let body = if http.raw_body.is_empty() {
        Bytes::from(http.body)
    } else {
        Bytes::from(http.raw_body)
    };
    let mut headers = HeaderMap::new();
    let (mut method, mut path, mut authority) = (Method::GET, String::from("/"), String::new());
    for (name, value) in &http.headers {
        if name == "content-length"
            || !(ALWAYS_SENT.contains(&name.as_str())
                || name == super::PARTIAL_BODY
                || any_matches(&service.allowed_headers, name))
        {
            continue;
        }
        match name.as_str() {
            ":method" => method = Method::from_bytes(value.as_bytes()).ok()?,
            ":path" => {
                path = match &service.path {
                    CheckPath::Prefix(prefix) => format!("{prefix}{value}"),
                    CheckPath::Override(path) => path.clone(),
                }
            }
            ":authority" => authority = value.clone(),
            _ => {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    headers.append(n, v);
                }
            }
        }
    }
    for (name, value) in &service.headers_to_add {
        headers.insert(name.clone(), value.clone());
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let call = Call {
        cluster: &config.cluster,
        method,
        path: &path,
        authority: if authority.is_empty() {
            &config.authority
        } else {
            &authority
        },
        headers,
        body,
        timeout: config.timeout,
        max_response_bytes: MAX_ANSWER_BYTES,
    };
    let (head, body) = call::send(snapshot, call).await?;
    verdict(service, head, body)
}

/// Headers that describe a message's framing or connection, never copied from the
/// service's answer (the reply is framed anew).
fn is_framing(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "transfer-encoding" | "upgrade" | "proxy-connection" | "te"
    )
}

fn verdict(service: &HttpService, head: http::response::Parts, body: Bytes) -> Option<Verdict> {
    if head.status.is_server_error() {
        return None;
    }
    let headers = head.headers;
    let pick = |matchers: &[StringMatcher]| -> Vec<(HeaderName, HeaderValue)> {
        headers
            .iter()
            .filter(|(n, _)| n.as_str() != HEADERS_TO_REMOVE && any_matches(matchers, n.as_str()))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    };
    if head.status == StatusCode::OK {
        let remove = headers
            .get_all(HEADERS_TO_REMOVE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .filter_map(|n| HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok())
            .filter(|n| n != header::HOST)
            .collect();
        let edits = Edits {
            request: pick(&service.upstream_headers)
                .into_iter()
                .map(|(n, v)| (n, v, false))
                .collect(),
            // Added even when the request lacks the header, unlike the gRPC service's
            // `append`.
            add: pick(&service.upstream_headers_to_append),
            remove,
            response: pick(&service.client_headers_on_success),
        };
        return Some(Verdict::Allow(edits));
    }
    let mut reply = LocalReply::new(head.status, "");
    reply.body = body;
    reply.headers = headers
        .iter()
        .filter(|(n, _)| !is_framing(n) && *n != header::CONTENT_LENGTH)
        .filter(|(n, _)| match &service.client_headers {
            None => *n != header::HOST,
            Some(list) => ALWAYS_TO_CLIENT.contains(&n.as_str()) || any_matches(list, n.as_str()),
        })
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    Some(Verdict::Deny(reply))
}
