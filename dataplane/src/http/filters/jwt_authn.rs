//! `envoy.filters.http.jwt_authn`: JWTs from the request's headers or query, verified
//! against each provider's issuer, audiences, time window and keys (a local JWKS, or one
//! fetched through a cluster and cached), under the requirement the first matching rule
//! (or the route's `requirement_name`) names. Envoy's status texts and codes: 401 with
//! `WWW-Authenticate: Bearer`, 403 for an audience that is not allowed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::request::Parts;
use http::{header, HeaderValue, Method, StatusCode};
use jsonwebtoken::jwk::JwkSet;
use prometheus_client::metrics::counter::Counter;
use tracing::{debug, warn};
use xds_types::http_filter::jwt_authn::{Jwks, Provider, Requirement};
use xds_types::http_filter::{JwtAuthn, JwtPerRoute};

use crate::config::Snapshot;
use crate::http::ctx::RequestCtx;
use crate::http::filter::{Decision, Edits, HttpFilter, PerRoute};
use crate::local_reply::{LocalReply, ResponseFlag};
use crate::stats::Stats;

/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// Why a token did not verify, with Envoy's texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JwtError {
    Missing,
    BadFormat,
    HeaderBadJson,
    PayloadBadJson,
    UnknownIssuer,
    NotYetValid,
    Expired,
    ExpirationMissing,
    AudienceNotAllowed,
    NoMatchingKey,
    VerificationFailed,
    JwksFetchFailed,
}

impl JwtError {
    fn text(self) -> &'static str {
        match self {
            Self::Missing => "Jwt is missing",
            Self::BadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            Self::HeaderBadJson => "Jwt header is an invalid JSON",
            Self::PayloadBadJson => "Jwt payload is an invalid JSON",
            Self::UnknownIssuer => "Jwt issuer is not configured",
            Self::NotYetValid => "Jwt not yet valid",
            Self::Expired => "Jwt is expired",
            Self::ExpirationMissing => "Jwt doesn't have expiration",
            Self::AudienceNotAllowed => "Audiences in Jwt are not allowed",
            Self::NoMatchingKey => "Jwks doesn't have key to match kid or alg from Jwt",
            Self::VerificationFailed => "Jwt verification fails",
            Self::JwksFetchFailed => "Jwks remote fetch is failed",
        }
    }

    fn status(self) -> StatusCode {
        if self == Self::AudienceNotAllowed {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        }
    }
}

/// Keys fetched through a cluster, kept for `cache_duration`.
struct RemoteKeys {
    cached: Mutex<Option<(Instant, Arc<JwkSet>)>>,
}

enum Keys {
    Local(Option<Arc<JwkSet>>),
    Remote(RemoteKeys),
}

struct ProviderRuntime {
    name: String,
    config: Provider,
    keys: Keys,
}

impl ProviderRuntime {
    /// The token this provider reads from the request, and where it was found.
    fn token(&self, request: &Parts) -> Option<(String, Option<header::HeaderName>)> {
        let defaults = self.config.from_headers.is_empty() && self.config.from_params.is_empty();
        let headers: Vec<(header::HeaderName, &str)> = if defaults {
            vec![(header::AUTHORIZATION, "Bearer ")]
        } else {
            self.config
                .from_headers
                .iter()
                .map(|h| (h.name.clone(), h.value_prefix.as_str()))
                .collect()
        };
        for (name, prefix) in headers {
            if let Some(value) = request.headers.get(&name).and_then(|v| v.to_str().ok()) {
                if let Some(token) = value.strip_prefix(prefix) {
                    return Some((token.trim().to_string(), Some(name)));
                }
            }
        }
        let params: Vec<&str> = if defaults {
            vec!["access_token"]
        } else {
            self.config.from_params.iter().map(String::as_str).collect()
        };
        let query = request.uri.query()?;
        xds_types::route::query_pairs(query)
            .find(|(k, _)| params.contains(k))
            .map(|(_, v)| (v.to_string(), None))
    }

    /// The provider's keys, fetching them through the cluster when the cache is stale.
    async fn keys(&self, snapshot: &Snapshot) -> Result<Arc<JwkSet>, JwtError> {
        match &self.keys {
            Keys::Local(keys) => keys.clone().ok_or(JwtError::NoMatchingKey),
            Keys::Remote(remote) => {
                let Jwks::Remote {
                    path,
                    authority,
                    cluster,
                    timeout,
                    cache_duration,
                } = &self.config.jwks
                else {
                    return Err(JwtError::JwksFetchFailed);
                };
                if let Some((at, keys)) = &*remote.cached.lock().expect("jwks lock") {
                    if at.elapsed() < *cache_duration {
                        return Ok(keys.clone());
                    }
                }
                let fetched = fetch(snapshot, cluster, authority, path, *timeout).await;
                match fetched {
                    Some(keys) => {
                        let keys = Arc::new(keys);
                        *remote.cached.lock().expect("jwks lock") =
                            Some((Instant::now(), keys.clone()));
                        Ok(keys)
                    }
                    None => {
                        warn!(provider = %self.name, %cluster, "JWKS fetch failed");
                        Err(JwtError::JwksFetchFailed)
                    }
                }
            }
        }
    }
}

/// GETs a JWKS through the cluster.
async fn fetch(
    snapshot: &Snapshot,
    cluster: &str,
    authority: &str,
    path: &str,
    timeout: Duration,
) -> Option<JwkSet> {
    let call = super::call::Call {
        cluster,
        method: Method::GET,
        path,
        authority,
        headers: http::HeaderMap::new(),
        body: bytes::Bytes::new(),
        timeout,
        max_response_bytes: MAX_JWKS_BYTES,
    };
    let (head, body) = super::call::send(snapshot, call).await?;
    if !head.status.is_success() {
        debug!(status = %head.status, "JWKS fetch answered");
        return None;
    }
    serde_json::from_slice(&body).ok()
}

/// The decoded, verified token.
struct Verified {
    payload: serde_json::Value,
    /// The payload segment as sent (base64url).
    payload_segment: String,
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The token's header and payload, before any key is needed (a token is bounded by the
/// connection manager's header size limit).
fn parse(token: &str) -> Result<(jsonwebtoken::Header, serde_json::Value, String), JwtError> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(JwtError::BadFormat);
    }
    let segment = |s: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .map_err(|_| JwtError::BadFormat)
    };
    let header_json: serde_json::Value =
        serde_json::from_slice(&segment(parts[0])?).map_err(|_| JwtError::HeaderBadJson)?;
    let header: jsonwebtoken::Header =
        serde_json::from_value(header_json).map_err(|_| JwtError::BadFormat)?;
    let payload = serde_json::from_slice::<serde_json::Value>(&segment(parts[1])?)
        .ok()
        .filter(serde_json::Value::is_object)
        .ok_or(JwtError::PayloadBadJson)?;
    Ok((header, payload, parts[1].to_string()))
}

/// Issuer, time window and audiences (Envoy checks these before the signature).
fn check_claims(
    provider: &Provider,
    audiences: Option<&[String]>,
    payload: &serde_json::Value,
) -> Result<(), JwtError> {
    if let Some(issuer) = &provider.issuer {
        if payload.get("iss").and_then(|v| v.as_str()) != Some(issuer.as_str()) {
            return Err(JwtError::UnknownIssuer);
        }
    }
    let now = now_seconds();
    let skew = provider.clock_skew.as_secs();
    if let Some(nbf) = payload.get("nbf").and_then(|v| v.as_u64()) {
        if nbf > now + skew {
            return Err(JwtError::NotYetValid);
        }
    }
    match payload.get("exp").and_then(|v| v.as_u64()) {
        Some(exp) if exp + skew < now => return Err(JwtError::Expired),
        None if provider.require_expiration => return Err(JwtError::ExpirationMissing),
        _ => {}
    }
    let allowed = audiences.unwrap_or(&provider.audiences);
    if !allowed.is_empty() {
        let token_audiences: Vec<&str> = match payload.get("aud") {
            Some(serde_json::Value::String(a)) => vec![a.as_str()],
            Some(serde_json::Value::Array(list)) => {
                list.iter().filter_map(|a| a.as_str()).collect()
            }
            _ => Vec::new(),
        };
        if !token_audiences
            .iter()
            .any(|a| allowed.iter().any(|x| x == a))
        {
            return Err(JwtError::AudienceNotAllowed);
        }
    }
    Ok(())
}

/// The signature against the provider's keys (by `kid`, else every key of the algorithm).
fn check_signature(
    token: &str,
    header: &jsonwebtoken::Header,
    keys: &JwkSet,
) -> Result<(), JwtError> {
    let candidates: Vec<_> = keys
        .keys
        .iter()
        .filter(|k| match (&header.kid, &k.common.key_id) {
            (Some(kid), Some(id)) => kid == id,
            (Some(_), None) => false,
            (None, _) => true,
        })
        .collect();
    if candidates.is_empty() {
        return Err(JwtError::NoMatchingKey);
    }
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let verified = candidates.iter().any(|jwk| {
        jsonwebtoken::DecodingKey::from_jwk(jwk)
            .ok()
            .is_some_and(|key| {
                jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).is_ok()
            })
    });
    if verified {
        Ok(())
    } else {
        Err(JwtError::VerificationFailed)
    }
}

/// What a requirement made of the request.
enum Outcome {
    /// Passed; the tokens that verified, with their providers.
    Passed(Vec<(usize, Verified, Option<header::HeaderName>)>),
    Failed(JwtError),
}

/// Counters `http.<prefix>.jwt_authn.{allowed,denied}`.
#[derive(Clone)]
struct Counters {
    allowed: Counter,
    denied: Counter,
}

/// The filter.
pub struct JwtAuthnFilter {
    config: Arc<JwtAuthn>,
    providers: Arc<Vec<ProviderRuntime>>,
    counters: Counters,
}

impl JwtAuthnFilter {
    pub fn new(config: &JwtAuthn, hcm_prefix: &str, stats: &Stats) -> Self {
        let prefix = super::stat_scope("jwt_authn", &config.stat_prefix);
        let c = |n: &str| stats.filter_counter(hcm_prefix, &format!("{prefix}{n}"));
        let providers = config
            .providers
            .iter()
            .map(|(name, p)| ProviderRuntime {
                name: name.clone(),
                keys: match &p.jwks {
                    Jwks::Local(text) => Keys::Local(match serde_json::from_str::<JwkSet>(text) {
                        Ok(keys) => Some(Arc::new(keys)),
                        Err(error) => {
                            warn!(provider = %name, %error, "local_jwks is not a JWKS: every token fails");
                            None
                        }
                    }),
                    Jwks::Remote { .. } => Keys::Remote(RemoteKeys {
                        cached: Mutex::new(None),
                    }),
                },
                config: p.clone(),
            })
            .collect();
        Self {
            config: Arc::new(config.clone()),
            providers: Arc::new(providers),
            counters: Counters {
                allowed: c("allowed"),
                denied: c("denied"),
            },
        }
    }

    /// The requirement for a request: the route's named one, else the first matching rule's.
    fn requirement(
        &self,
        ctx: &RequestCtx<'_>,
        per_route: Option<&PerRoute>,
        request: &Parts,
    ) -> Result<Option<Requirement>, ()> {
        if let Some(PerRoute::JwtAuthn(JwtPerRoute::RequirementName(name))) = per_route {
            return self
                .config
                .requirement_map
                .get(name)
                .cloned()
                .map(Some)
                .ok_or(());
        }
        let path = request.uri.path_and_query().map_or("/", |p| p.as_str());
        Ok(self
            .config
            .rules
            .iter()
            .find(|r| {
                crate::router::request_matches(
                    &r.matcher,
                    &request.method,
                    ctx.host,
                    path,
                    &request.headers,
                )
            })
            .and_then(|r| r.requires.clone()))
    }
}

/// Evaluates `requirement` with the tokens found and the keys fetched.
fn evaluate(
    requirement: &Requirement,
    providers: &[ProviderRuntime],
    tokens: &[Option<(String, Option<header::HeaderName>)>],
    keys: &[Option<Result<Arc<JwkSet>, JwtError>>],
) -> Outcome {
    match requirement {
        Requirement::Provider { name, audiences } => {
            let Some(index) = providers.iter().position(|p| &p.name == name) else {
                return Outcome::Failed(JwtError::Missing);
            };
            let Some((token, source)) = &tokens[index] else {
                return Outcome::Failed(JwtError::Missing);
            };
            let provider = &providers[index].config;
            let verified = parse(token).and_then(|(header, payload, segment)| {
                check_claims(provider, audiences.as_deref(), &payload)?;
                let keys = match &keys[index] {
                    Some(Ok(k)) => k.clone(),
                    Some(Err(e)) => return Err(*e),
                    None => return Err(JwtError::JwksFetchFailed),
                };
                check_signature(token, &header, &keys)?;
                Ok(Verified {
                    payload,
                    payload_segment: segment,
                })
            });
            match verified {
                Ok(v) => Outcome::Passed(vec![(index, v, source.clone())]),
                Err(e) => Outcome::Failed(e),
            }
        }
        Requirement::Any(list) => {
            let mut last = JwtError::Missing;
            for r in list {
                match evaluate(r, providers, tokens, keys) {
                    Outcome::Passed(v) => return Outcome::Passed(v),
                    Outcome::Failed(e) => {
                        // A real failure says more than a missing token.
                        if last == JwtError::Missing || e != JwtError::Missing {
                            last = e;
                        }
                    }
                }
            }
            Outcome::Failed(last)
        }
        Requirement::All(list) => {
            let mut passed = Vec::new();
            for r in list {
                match evaluate(r, providers, tokens, keys) {
                    Outcome::Passed(v) => passed.extend(v),
                    failed => return failed,
                }
            }
            Outcome::Passed(passed)
        }
        Requirement::AllowMissing | Requirement::AllowMissingOrFailed => {
            let lenient = matches!(requirement, Requirement::AllowMissingOrFailed);
            let mut passed = Vec::new();
            for (index, _) in providers
                .iter()
                .enumerate()
                .filter(|(i, _)| tokens[*i].is_some())
            {
                let single = Requirement::Provider {
                    name: providers[index].name.clone(),
                    audiences: None,
                };
                match evaluate(&single, providers, tokens, keys) {
                    Outcome::Passed(v) => passed.extend(v),
                    Outcome::Failed(e) if !lenient => return Outcome::Failed(e),
                    Outcome::Failed(_) => {}
                }
            }
            Outcome::Passed(passed)
        }
    }
}

/// The providers a requirement can consult.
fn consulted(requirement: &Requirement, providers: &[ProviderRuntime], out: &mut Vec<usize>) {
    match requirement {
        Requirement::Provider { name, .. } => {
            if let Some(i) = providers.iter().position(|p| &p.name == name) {
                out.push(i);
            }
        }
        Requirement::Any(list) | Requirement::All(list) => {
            list.iter().for_each(|r| consulted(r, providers, out));
        }
        Requirement::AllowMissing | Requirement::AllowMissingOrFailed => {
            out.extend(0..providers.len())
        }
    }
}

/// A claim as a header value (`a.b` for nested claims); objects and arrays are skipped.
fn claim(payload: &serde_json::Value, name: &str) -> Option<HeaderValue> {
    let value = name.split('.').try_fold(payload, |v, part| v.get(part))?;
    let text = match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    HeaderValue::from_str(&text).ok()
}

fn deny(error: JwtError, host: &str, path: &str, scheme: &str, counters: &Counters) -> Decision {
    counters.denied.inc();
    let mut reply = LocalReply::new(error.status(), error.text());
    // Envoy sends the challenge with the 403 for an audience too.
    let challenge = if error == JwtError::Missing {
        format!("Bearer realm=\"{scheme}://{host}{path}\"")
    } else {
        format!("Bearer realm=\"{scheme}://{host}{path}\", error=\"invalid_token\"")
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        reply.headers.push((header::WWW_AUTHENTICATE, v));
    }
    reply.flag = Some(ResponseFlag::UnauthorizedExternalService);
    Decision::Respond(reply)
}

impl HttpFilter for JwtAuthnFilter {
    fn on_request(
        &self,
        ctx: &mut RequestCtx<'_>,
        per_route: Option<&PerRoute>,
        request: &mut Parts,
    ) -> Decision {
        if matches!(per_route, Some(PerRoute::JwtAuthn(JwtPerRoute::Disabled))) {
            return Decision::Continue;
        }
        if self.config.bypass_cors_preflight
            && request.method == Method::OPTIONS
            && request.headers.contains_key(header::ORIGIN)
            && request
                .headers
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return Decision::Continue;
        }
        let path = request
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let requirement = match self.requirement(ctx, per_route, request) {
            Ok(Some(r)) => r,
            Ok(None) => return Decision::Continue,
            Err(()) => {
                return deny(
                    JwtError::Missing,
                    ctx.host,
                    &path,
                    ctx.scheme,
                    &self.counters,
                )
            }
        };
        let tokens: Vec<_> = self.providers.iter().map(|p| p.token(request)).collect();
        let mut wanted = Vec::new();
        consulted(&requirement, &self.providers, &mut wanted);
        wanted.retain(|i| tokens[*i].is_some());
        wanted.dedup();
        let providers = self.providers.clone();
        let counters = self.counters.clone();
        let snapshot = ctx.snapshot.clone();
        let (host, scheme) = (ctx.host.to_string(), ctx.scheme);
        Decision::Wait(Box::pin(async move {
            let mut keys: Vec<Option<Result<Arc<JwkSet>, JwtError>>> = vec![None; providers.len()];
            for i in wanted {
                keys[i] = Some(providers[i].keys(&snapshot).await);
            }
            match evaluate(&requirement, &providers, &tokens, &keys) {
                Outcome::Failed(e) => deny(e, &host, &path, scheme, &counters),
                Outcome::Passed(verified) => {
                    counters.allowed.inc();
                    let mut edits = Edits::default();
                    for (index, v, source) in verified {
                        let provider = &providers[index].config;
                        if !provider.forward {
                            if let Some(name) = source {
                                edits.remove.push(name);
                            }
                        }
                        if let Some(name) = &provider.forward_payload_header {
                            if let Ok(value) = HeaderValue::from_str(&v.payload_segment) {
                                edits.request.push((name.clone(), value, false));
                            }
                        }
                        for (name, claim_name) in &provider.claim_to_headers {
                            if let Some(value) = claim(&v.payload, claim_name) {
                                edits.request.push((name.clone(), value, false));
                            }
                        }
                    }
                    Decision::ContinueWith(edits)
                }
            }
        }))
    }
}
