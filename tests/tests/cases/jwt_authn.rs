//! `envoy.filters.http.jwt_authn` through Envoy and `sluice` with the same config and the
//! same tokens (ES256, signed here): valid, expired, not yet valid, wrong issuer and
//! audience, bad signature, malformed, missing with and without `allow_missing`,
//! requirements (any, all, per-route names, disabled), claims copied into headers, and a
//! remote JWKS fetched through a cluster, cached, and rotated.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{json, Value};
use sluice_tests::client::HttpClient;
use sluice_tests::config::{bootstrap, cluster, http_listener};
use sluice_tests::envoy::Envoy;
use sluice_tests::free_addr;
use sluice_tests::process::Sluice;
use sluice_tests::upstream::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Key {
    encoding: jsonwebtoken::EncodingKey,
    jwk: Value,
}

fn key(kid: &'static str) -> Key {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = pair.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    Key {
        encoding: jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
        jwk: json!({ "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                     "x": b64(&point[1..33]), "y": b64(&point[33..65]) }),
    }
}

fn jwks(keys: &[&Key]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A token signed by `key` claiming `kid`, with `claims` over the defaults.
fn token(key: &Key, kid: &str, claims: Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_string());
    let mut body = json!({ "iss": "https://local.example", "sub": "alice", "aud": "api",
                           "exp": now() + 3600, "team": { "name": "blue" } });
    sluice_tests::config::merge(&mut body, claims);
    jsonwebtoken::encode(&header, &body, &key.encoding).unwrap()
}

/// Serves `GET /keys` with the current JWKS; counts the fetches.
async fn start_jwks_server(document: Arc<Mutex<String>>, fetches: Arc<Mutex<u32>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (document, fetches) = (document.clone(), fetches.clone());
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                let mut read = 0;
                while !buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                *fetches.lock().unwrap() += 1;
                let body = document.lock().unwrap().clone();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

fn jwt_filter(local_jwks: &str) -> Value {
    let provider = |name: &str| json!({ "provider_name": name });
    json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {
            "local": {
                "issuer": "https://local.example", "audiences": ["api"],
                "local_jwks": { "inline_string": local_jwks },
                "forward_payload_header": "x-jwt-payload",
                "claim_to_headers": [ { "header_name": "x-sub", "claim_name": "sub" },
                                      { "header_name": "x-team", "claim_name": "team.name" } ] },
            "remote": {
                "issuer": "https://remote.example", "forward": true,
                "from_headers": [ { "name": "x-token" } ],
                "remote_jwks": { "http_uri": { "uri": "http://jwks.local/keys", "cluster": "jwks", "timeout": "1s" },
                                 "cache_duration": "1s" } }
        },
        "requirement_map": { "remote-only": provider("remote") },
        "rules": [
            { "match": { "prefix": "/optional" }, "requires": { "requires_any": { "requirements": [ provider("local"), { "allow_missing": {} } ] } } },
            { "match": { "prefix": "/remote" }, "requires": provider("remote") },
            { "match": { "prefix": "/both" }, "requires": { "requires_all": { "requirements": [ provider("local"), provider("remote") ] } } },
            { "match": { "prefix": "/either" }, "requires": { "requires_any": { "requirements": [ provider("local"), provider("remote") ] } } },
            { "match": { "prefix": "/aud" }, "requires": { "provider_and_audiences": { "provider_name": "local", "audiences": ["other"] } } },
            { "match": { "prefix": "/lenient" }, "requires": { "allow_missing_or_failed": {} } },
            { "match": { "prefix": "/public" } },
            { "match": { "prefix": "/" }, "requires": provider("local") }
        ]
    })
}

fn config(
    admin: SocketAddr,
    listener: SocketAddr,
    upstream: &Upstream,
    jwks_server: SocketAddr,
    local_jwks: &str,
) -> String {
    let per_route = |v: Value| {
        let mut v = v;
        v["@type"] =
            json!("type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig");
        json!({ "envoy.filters.http.jwt_authn": v })
    };
    let routes = json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": [
        { "match": { "prefix": "/open" }, "route": { "cluster": "a" }, "typed_per_filter_config": per_route(json!({ "disabled": true })) },
        { "match": { "prefix": "/named" }, "route": { "cluster": "a" }, "typed_per_filter_config": per_route(json!({ "requirement_name": "remote-only" })) },
        { "match": { "prefix": "/" }, "route": { "cluster": "a" } } ] } ] });
    let filters = json!([
        { "name": "envoy.filters.http.jwt_authn", "typed_config": jwt_filter(local_jwks) },
        { "name": "envoy.filters.http.router",
          "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }
    ]);
    bootstrap(
        admin,
        vec![http_listener(
            "jwt",
            listener,
            routes,
            json!({ "http_filters": filters }),
        )],
        vec![
            cluster("a", &[(upstream.addr, 1)], json!({})),
            cluster("jwks", &[(jwks_server, 1)], json!({})),
        ],
    )
}

struct Tokens {
    local: String,
    remote: String,
    remote_rotated: String,
    expired: String,
    early: String,
    wrong_issuer: String,
    bad_signature: String,
}

/// `(label, path, request headers)`.
type Case<'a> = (&'static str, &'a str, Vec<(&'static str, &'a str)>);

async fn run(listener: SocketAddr, t: &Tokens) -> Vec<Value> {
    let client = HttpClient::http1();
    let bearer = |s: &str| Box::leak(format!("Bearer {s}").into_boxed_str()) as &str;
    let query = Box::leak(format!("/q?access_token={}", t.local).into_boxed_str()) as &str;
    let huge = bearer(&format!(
        "{}.{}.{}",
        "a".repeat(6000),
        "b".repeat(6000),
        "c".repeat(100)
    ));
    let cases: Vec<Case> = vec![
        ("valid", "/x", vec![("authorization", bearer(&t.local))]),
        ("missing", "/x?y=1", vec![]),
        ("expired", "/x", vec![("authorization", bearer(&t.expired))]),
        (
            "not yet valid",
            "/x",
            vec![("authorization", bearer(&t.early))],
        ),
        (
            "wrong issuer",
            "/x",
            vec![("authorization", bearer(&t.wrong_issuer))],
        ),
        (
            "bad signature",
            "/x",
            vec![("authorization", bearer(&t.bad_signature))],
        ),
        (
            "two sections",
            "/x",
            vec![("authorization", "Bearer abc.def")],
        ),
        ("not a prefix", "/x", vec![("authorization", "Basic abc")]),
        (
            "alg none",
            "/x",
            vec![(
                "authorization",
                "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
            )],
        ),
        (
            "not base64",
            "/x",
            vec![("authorization", "Bearer !!!.???.***")],
        ),
        ("huge", "/x", vec![("authorization", huge)]),
        ("token in the query", query, vec![]),
        ("optional missing", "/optional", vec![]),
        (
            "optional bad",
            "/optional",
            vec![("authorization", bearer(&t.expired))],
        ),
        ("remote valid", "/remote", vec![("x-token", &t.remote)]),
        (
            "remote unknown kid",
            "/remote",
            vec![("x-token", &t.remote_rotated)],
        ),
        (
            "both present",
            "/both",
            vec![("authorization", bearer(&t.local)), ("x-token", &t.remote)],
        ),
        (
            "both, one missing",
            "/both",
            vec![("authorization", bearer(&t.local))],
        ),
        ("either, remote", "/either", vec![("x-token", &t.remote)]),
        ("either, none", "/either", vec![]),
        (
            "audience not allowed",
            "/aud",
            vec![("authorization", bearer(&t.local))],
        ),
        (
            "lenient with a bad token",
            "/lenient",
            vec![("authorization", bearer(&t.expired))],
        ),
        ("rule without requirement", "/public", vec![]),
        ("disabled per route", "/open", vec![]),
        (
            "named requirement met",
            "/named",
            vec![("x-token", &t.remote)],
        ),
        (
            "named requirement not met",
            "/named",
            vec![("authorization", bearer(&t.local))],
        ),
    ];
    let mut out = Vec::new();
    for (label, path, headers) in cases {
        let reply = client.get(listener, "h", path, &headers).await.unwrap();
        let json = reply.json();
        let body = if json.get("server").is_some() {
            let seen: serde_json::Map<String, Value> = [
                "x-sub",
                "x-team",
                "x-jwt-payload",
                "authorization",
                "x-token",
            ]
            .iter()
            .filter_map(|h| {
                json["headers"][*h]
                    .as_str()
                    .map(|v| (h.to_string(), Value::from(v.len() as u64)))
            })
            .collect();
            json!({ "upstream_header_lengths": seen, "sub": json["headers"]["x-sub"], "team": json["headers"]["x-team"] })
        } else {
            Value::from(String::from_utf8_lossy(&reply.body).into_owned())
        };
        out.push(json!({ "case": label, "status": reply.status.as_u16(),
                         "www-authenticate": reply.header("www-authenticate"), "body": body }));
    }
    out
}

/// The remote JWKS after a rotation: a token under the new key passes once the cache
/// has expired.
async fn after_rotation(
    listener: SocketAddr,
    t: &Tokens,
    document: &Mutex<String>,
    rotated: &str,
) -> u16 {
    *document.lock().unwrap() = rotated.to_string();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    HttpClient::http1()
        .get(listener, "h", "/remote", &[("x-token", &t.remote_rotated)])
        .await
        .unwrap()
        .status
        .as_u16()
}

#[tokio::test]
async fn jwt_authn_matches_envoy() {
    let (k1, k2, k3) = (key("k1"), key("k2"), key("k3"));
    let remote = |claims: Value| {
        let mut c = json!({ "iss": "https://remote.example" });
        sluice_tests::config::merge(&mut c, claims);
        c
    };
    let tokens = Tokens {
        local: token(&k1, "k1", json!({})),
        remote: token(&k2, "k2", remote(json!({}))),
        remote_rotated: token(&k3, "k3", remote(json!({}))),
        expired: token(&k1, "k1", json!({ "exp": now() - 3600 })),
        early: token(&k1, "k1", json!({ "nbf": now() + 3600 })),
        wrong_issuer: token(&k1, "k1", json!({ "iss": "https://other.example" })),
        bad_signature: token(&k2, "k1", json!({})),
    };
    let upstream = Upstream::start("a").await;
    let local_jwks = jwks(&[&k1]);
    let (initial, rotated) = (jwks(&[&k2]), jwks(&[&k2, &k3]));

    let mut results = Vec::new();
    for proxy in ["envoy", "sluice"] {
        let document = Arc::new(Mutex::new(initial.clone()));
        let fetches = Arc::new(Mutex::new(0));
        let server = start_jwks_server(document.clone(), fetches.clone()).await;
        let (admin, listener) = (free_addr(), free_addr());
        let bootstrap = config(admin, listener, &upstream, server, &local_jwks);
        let (replies, rotated_status) = if proxy == "envoy" {
            let _envoy = Envoy::start(&bootstrap, admin)
                .await
                .expect("start envoy (installed by tests/run.sh)");
            let replies = run(listener, &tokens).await;
            (
                replies,
                after_rotation(listener, &tokens, &document, &rotated).await,
            )
        } else {
            let _sluice = Sluice::start(&bootstrap, admin)
                .await
                .expect("start sluice");
            let replies = run(listener, &tokens).await;
            (
                replies,
                after_rotation(listener, &tokens, &document, &rotated).await,
            )
        };
        let fetched = *fetches.lock().unwrap();
        results.push((replies, rotated_status, fetched));
    }
    let (envoy, sluice) = (&results[0], &results[1]);
    sluice_tests::assert_same_replies(&envoy.0, &sluice.0);
    assert_eq!(sluice.0[0]["body"]["sub"], "alice");
    assert_eq!(
        sluice.1, 200,
        "a rotated key is picked up after the cache expires"
    );
    assert_eq!(sluice.1, envoy.1);
    // Cached: far fewer fetches than requests that needed the remote keys.
    assert!(
        sluice.2 >= 2 && sluice.2 <= 4,
        "sluice fetched the JWKS {} times",
        sluice.2
    );
}
