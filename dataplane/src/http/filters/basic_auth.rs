//! `envoy.filters.http.basic_auth`: `Authorization: Basic` checked against htpasswd SHA-1
//! users (a route may replace them); a failure is 401 with `WWW-Authenticate` naming the
//! request's URI as realm, and Envoy's texts.

use base64::Engine as _;
use http::request::Parts;
use http::{header, HeaderValue, StatusCode};
use prometheus_client::metrics::counter::Counter;
use sha1::{Digest, Sha1};
use xds_types::http_filter::basic_auth::Users;
use xds_types::http_filter::BasicAuth;

use crate::http::ctx::RequestCtx;
use crate::http::filter::{Decision, HttpFilter, PerRoute};
use crate::local_reply::LocalReply;
use crate::stats::Stats;

/// Envoy cuts the realm's URI to this many bytes.
const MAX_REALM_URI: usize = 256;

/// The filter and its counters (`http.<prefix>.basic_auth.*`).
pub struct BasicAuthFilter {
    config: BasicAuth,
    allowed: Counter,
    denied: Counter,
}

impl BasicAuthFilter {
    pub fn new(config: &BasicAuth, hcm_prefix: &str, stats: &Stats) -> Self {
        let c = |n: &str| stats.filter_counter(hcm_prefix, &format!("basic_auth.{n}"));
        Self {
            config: config.clone(),
            allowed: c("allowed"),
            denied: c("denied"),
        }
    }

    fn deny(&self, ctx: &RequestCtx<'_>, request: &Parts, text: &'static str) -> Decision {
        self.denied.inc();
        let mut reply = LocalReply::new(StatusCode::UNAUTHORIZED, text);
        let mut uri = format!(
            "{}://{}{}",
            ctx.scheme,
            ctx.host,
            request.uri.path_and_query().map_or("/", |p| p.as_str())
        );
        if uri.len() > MAX_REALM_URI {
            let mut end = MAX_REALM_URI;
            while !uri.is_char_boundary(end) {
                end -= 1;
            }
            uri.truncate(end);
        }
        if let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{uri}\"")) {
            reply.headers.push((header::WWW_AUTHENTICATE, v));
        }
        Decision::Respond(reply)
    }
}

/// Whether `password` hashes to the user's stored `{SHA}` value.
fn valid(users: &Users, username: &str, password: &[u8]) -> bool {
    let Some(stored) = users.get(username) else {
        return false;
    };
    let digest = Sha1::digest(password);
    base64::engine::general_purpose::STANDARD.encode(digest) == *stored
}

impl HttpFilter for BasicAuthFilter {
    fn on_request(
        &self,
        ctx: &mut RequestCtx<'_>,
        per_route: Option<&PerRoute>,
        request: &mut Parts,
    ) -> Decision {
        let users = match per_route {
            Some(PerRoute::BasicAuth(users)) => users,
            _ => &self.config.users,
        };
        let name = self
            .config
            .authentication_header
            .as_ref()
            .unwrap_or(&header::AUTHORIZATION);
        let Some(value) = request.headers.get(name) else {
            return self.deny(
                ctx,
                request,
                "User authentication failed. Missing username and password.",
            );
        };
        let Some(token) = value.as_bytes().strip_prefix(b"Basic ") else {
            return self.deny(
                ctx,
                request,
                "User authentication failed. Expected 'Basic' authentication scheme.",
            );
        };
        // Envoy decodes leniently: padding is optional.
        let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(
                token
                    .strip_suffix(b"==")
                    .or(token.strip_suffix(b"="))
                    .unwrap_or(token),
            )
            .unwrap_or_default();
        let Some(colon) = decoded.iter().position(|b| *b == b':') else {
            return self.deny(
                ctx,
                request,
                "User authentication failed. Invalid basic credential format.",
            );
        };
        let (username, password) = (&decoded[..colon], &decoded[colon + 1..]);
        let username = String::from_utf8_lossy(username);
        if !valid(users, &username, password) {
            return self.deny(
                ctx,
                request,
                "User authentication failed. Invalid username/password combination.",
            );
        }
        if let Some(forward) = &self.config.forward_username_header {
            if let Ok(v) = HeaderValue::from_str(&username) {
                request.headers.insert(forward.clone(), v);
            }
        }
        self.allowed.inc();
        Decision::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha_passwords_verify() {
        // `{SHA}` of "test", as `htpasswd -s` writes it.
        let users: Users = std::sync::Arc::new(
            [(
                "user".to_string(),
                "qUqP5cyxm6YcTAhz05Hph5gvu9M=".to_string(),
            )]
            .into(),
        );
        assert!(valid(&users, "user", b"test"));
        assert!(!valid(&users, "user", b"nope"));
        assert!(!valid(&users, "other", b"test"));
    }
}
