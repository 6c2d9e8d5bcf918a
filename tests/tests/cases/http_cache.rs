//! The HTTP cache filter (`envoy.filters.http.cache`) in front of an origin that counts
//! what reaches it: hits and misses, `Age`, revalidation with 304, `Vary`, what is never
//! stored, eviction at the store's bound, 100 concurrent misses coalesced into one, and
//! hostile validators.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use sluice_tests::client::HttpClient;
use sluice_tests::config::{bootstrap, cluster, http_listener};
use sluice_tests::free_addr;
use sluice_tests::process::Sluice;

const CACHE: &str = "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig";
const MEMORY: &str =
    "type.googleapis.com/sluice.extensions.http.cache.memory.v1.MemoryHttpCacheConfig";
/// The store's bound: three 20 KiB bodies fit, a fourth evicts the oldest.
const STORE_BYTES: u64 = 64 * 1024;

/// An origin whose answers depend on the path's first segment, each body naming how many
/// requests for that path it has seen (`n=K`), so a cached answer is told from a fresh one.
struct Origin {
    addr: SocketAddr,
    seen: Arc<Mutex<HashMap<String, Vec<http::HeaderMap>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<HashMap<String, Vec<http::HeaderMap>>>> = Arc::default();
        let state = seen.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    Some(_) = connections.join_next() => continue,
                };
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |r| answer(state.clone(), r));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen, task }
    }

    /// How many requests for `path` reached the origin.
    fn count(&self, path: &str) -> usize {
        self.seen.lock().unwrap().get(path).map_or(0, Vec::len)
    }

    /// The headers of the last request for `path`.
    fn last(&self, path: &str) -> http::HeaderMap {
        self.seen.lock().unwrap()[path].last().unwrap().clone()
    }
}

async fn answer(
    seen: Arc<Mutex<HashMap<String, Vec<http::HeaderMap>>>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_string();
    let n = {
        let mut seen = seen.lock().unwrap();
        let list = seen.entry(path.clone()).or_default();
        list.push(request.headers().clone());
        list.len()
    };
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let kind = path.split('/').nth(1).unwrap_or("").to_string();
    let mut r = Response::builder().status(200);
    let mut body = format!("{path} n={n}");
    match kind.as_str() {
        "fresh" => {
            r = r
                .header("cache-control", "max-age=60")
                .header("etag", "\"v1\"")
        }
        "short" => {
            r = r
                .header("cache-control", "max-age=1")
                .header("etag", "\"e1\"");
            if header("if-none-match") == "\"e1\"" {
                r = r.status(304);
                body.clear();
            }
        }
        "lm" => {
            let date = "Sun, 06 Nov 1994 08:49:37 GMT";
            r = r
                .header("cache-control", "no-cache")
                .header("last-modified", date);
            if header("if-modified-since") == date {
                r = r.status(304);
                body.clear();
            }
        }
        "no-store" => r = r.header("cache-control", "no-store, max-age=60"),
        "private" => r = r.header("cache-control", "private, max-age=60"),
        "cookie" => {
            r = r
                .header("cache-control", "max-age=60")
                .header("set-cookie", "s=1")
        }
        "public" => r = r.header("cache-control", "public, max-age=60"),
        "vary" => {
            r = r
                .header("cache-control", "max-age=60")
                .header("vary", "Accept-Encoding");
            body = format!("{body} enc={}", header("accept-encoding"));
        }
        "vary-ua" => {
            r = r
                .header("cache-control", "max-age=60")
                .header("vary", "User-Agent")
        }
        "uncacheable-status" => r = r.status(500).header("cache-control", "max-age=60"),
        "slow" => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            r = r.header("cache-control", "max-age=60");
        }
        "big" => {
            r = r.header("cache-control", "max-age=60");
            body = format!("{body:<20480}");
        }
        _ => {}
    }
    Ok(r.body(Full::new(Bytes::from(body))).unwrap())
}

fn config(admin: SocketAddr, listener: SocketAddr, origin: SocketAddr) -> String {
    let routes = json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": [
        { "match": { "prefix": "/" }, "route": { "cluster": "origin" } } ] } ] });
    let hcm = json!({ "http_filters": [
        { "name": "envoy.filters.http.cache", "typed_config": { "@type": CACHE,
            "typed_config": { "@type": MEMORY, "max_size_bytes": STORE_BYTES },
            "allowed_vary_headers": [ { "exact": "accept-encoding", "ignore_case": true } ] } },
        { "name": "envoy.filters.http.router",
          "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } } ] });
    bootstrap(
        admin,
        vec![http_listener("web", listener, routes, hcm)],
        vec![cluster("origin", &[(origin, 1)], json!({}))],
    )
}

struct Proxy {
    _sluice: Sluice,
    listener: SocketAddr,
    admin: SocketAddr,
    client: HttpClient,
}

impl Proxy {
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> sluice_tests::client::Reply {
        self.client
            .get(self.listener, "cache.test", path, headers)
            .await
            .unwrap()
    }

    fn text(reply: &sluice_tests::client::Reply) -> String {
        String::from_utf8_lossy(&reply.body).trim_end().to_string()
    }

    async fn counter(&self, name: &str) -> i64 {
        let stats = self
            .client
            .get(self.admin, "admin", "/stats", &[])
            .await
            .unwrap();
        let prefix = format!("http.web.cache.{name}: ");
        String::from_utf8_lossy(&stats.body)
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
            .unwrap_or(0)
    }
}

#[tokio::test]
async fn the_cache_stores_revalidates_varies_evicts_and_coalesces() {
    let origin = Origin::start().await;
    let (admin, listener) = (free_addr(), free_addr());
    let sluice = Sluice::start(&config(admin, listener, origin.addr), admin)
        .await
        .expect("start sluice");
    let proxy = Proxy {
        _sluice: sluice,
        listener,
        admin,
        client: HttpClient::http1(),
    };

    // A miss, then hits: the origin sees one request; the hit carries its Age.
    let first = proxy.get("/fresh/a", &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(Proxy::text(&first), "/fresh/a n=1");
    let hit = proxy.get("/fresh/a", &[]).await;
    assert_eq!(Proxy::text(&hit), "/fresh/a n=1");
    assert_eq!(hit.header("etag").as_deref(), Some("\"v1\""));
    let age: u64 = hit.header("age").expect("a hit has Age").parse().unwrap();
    assert!(age <= 1, "age {age}");
    assert_eq!(origin.count("/fresh/a"), 1);
    // HEAD is answered from the stored GET, without a body.
    let head = proxy
        .client
        .send(listener, Method::HEAD, "cache.test", "/fresh/a", &[], "")
        .await
        .unwrap();
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length").as_deref(), Some("12"));
    // A client's matching validator gets 304 from the store.
    let conditional = proxy.get("/fresh/a", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(conditional.status, StatusCode::NOT_MODIFIED);
    assert!(conditional.body.is_empty());
    let other = proxy.get("/fresh/a", &[("if-none-match", "\"v0\"")]).await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(origin.count("/fresh/a"), 1);
    // The query is part of the key.
    assert_eq!(
        Proxy::text(&proxy.get("/fresh/a?x=1", &[]).await),
        "/fresh/a n=2"
    );

    // A request's no-cache revalidates: the origin sees the stored ETag.
    let revalidated = proxy
        .get("/fresh/a", &[("cache-control", "no-cache")])
        .await;
    assert_eq!(revalidated.status, StatusCode::OK);
    assert_eq!(origin.count("/fresh/a"), 3);
    assert_eq!(origin.last("/fresh/a")["if-none-match"], "\"v1\"");
    // A request's no-store neither reads nor writes the store.
    proxy
        .get("/fresh/b", &[("cache-control", "no-store")])
        .await;
    proxy.get("/fresh/b", &[]).await;
    assert_eq!(origin.count("/fresh/b"), 2);

    // Stale after max-age=1: revalidated with If-None-Match, the 304 refreshes the entry
    // and the client gets the stored body.
    assert_eq!(
        Proxy::text(&proxy.get("/short/a", &[]).await),
        "/short/a n=1"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let refreshed = proxy.get("/short/a", &[]).await;
    assert_eq!(refreshed.status, StatusCode::OK);
    assert_eq!(Proxy::text(&refreshed), "/short/a n=1");
    assert_eq!(origin.count("/short/a"), 2);
    assert_eq!(origin.last("/short/a")["if-none-match"], "\"e1\"");
    assert_eq!(
        Proxy::text(&proxy.get("/short/a", &[]).await),
        "/short/a n=1"
    );
    assert_eq!(origin.count("/short/a"), 2, "fresh again after the 304");
    // Age grows while an entry is stored (the sleep above).
    let aged: u64 = proxy
        .get("/fresh/a?x=1", &[])
        .await
        .header("age")
        .unwrap()
        .parse()
        .unwrap();
    assert!(aged >= 2, "age {aged} after two seconds");

    // no-cache in the response: stored, revalidated by Last-Modified on every use.
    assert_eq!(Proxy::text(&proxy.get("/lm/a", &[]).await), "/lm/a n=1");
    assert_eq!(Proxy::text(&proxy.get("/lm/a", &[]).await), "/lm/a n=1");
    assert_eq!(origin.count("/lm/a"), 2);
    assert_eq!(
        origin.last("/lm/a")["if-modified-since"],
        "Sun, 06 Nov 1994 08:49:37 GMT"
    );

    // Never stored: no-store, private, Set-Cookie, a status outside the list, a Vary on a
    // header that is not allowed, and answers to requests with credentials.
    for path in [
        "/no-store/a",
        "/private/a",
        "/cookie/a",
        "/uncacheable-status/a",
        "/vary-ua/a",
    ] {
        proxy.get(path, &[]).await;
        let again = proxy.get(path, &[]).await;
        assert_eq!(origin.count(path), 2, "{path} is not stored");
        assert!(again.header("age").is_none(), "{path}");
    }
    let cookie = proxy.get("/cookie/a", &[]).await;
    assert_eq!(cookie.header("set-cookie").as_deref(), Some("s=1"));
    proxy
        .get("/fresh/auth", &[("authorization", "Bearer t")])
        .await;
    proxy.get("/fresh/auth", &[]).await;
    assert_eq!(
        origin.count("/fresh/auth"),
        2,
        "an authorised answer is not stored"
    );
    proxy
        .get("/public/auth", &[("authorization", "Bearer t")])
        .await;
    let shared = proxy.get("/public/auth", &[]).await;
    assert_eq!(origin.count("/public/auth"), 1, "public allows storing it");
    assert!(shared.header("age").is_some());

    // Vary: Accept-Encoding keeps one variant per value.
    let gzip = [("accept-encoding", "gzip")];
    let br = [("accept-encoding", "br")];
    assert!(Proxy::text(&proxy.get("/vary/a", &gzip).await).ends_with("n=1 enc=gzip"));
    assert!(Proxy::text(&proxy.get("/vary/a", &br).await).ends_with("n=2 enc=br"));
    assert!(Proxy::text(&proxy.get("/vary/a", &gzip).await).ends_with("n=1 enc=gzip"));
    assert!(Proxy::text(&proxy.get("/vary/a", &br).await).ends_with("n=2 enc=br"));
    assert_eq!(origin.count("/vary/a"), 2);

    // An unsafe request invalidates the URL.
    proxy
        .client
        .send(listener, Method::POST, "cache.test", "/fresh/a", &[], "x")
        .await
        .unwrap();
    assert_eq!(origin.count("/fresh/a"), 4);
    assert_eq!(
        Proxy::text(&proxy.get("/fresh/a", &[]).await),
        "/fresh/a n=5"
    );

    // Eviction at the bound: the least recently used 20 KiB body goes first.
    for i in 1..=3 {
        proxy.get(&format!("/big/{i}"), &[]).await;
    }
    proxy.get("/big/1", &[]).await; // /big/2 is now the oldest
    proxy.get("/big/4", &[]).await;
    proxy.get("/big/1", &[]).await;
    proxy.get("/big/4", &[]).await;
    assert_eq!((origin.count("/big/1"), origin.count("/big/4")), (1, 1));
    proxy.get("/big/2", &[]).await;
    assert_eq!(origin.count("/big/2"), 2, "/big/2 was evicted");
    assert!(proxy.counter("evicted").await >= 1);

    // 100 concurrent misses of one key reach the origin once.
    let bodies = futures_util::future::join_all((0..100).map(|_| {
        let client = HttpClient::http1();
        async move {
            let reply = client
                .get(listener, "cache.test", "/slow/x", &[])
                .await
                .unwrap();
            (reply.status, Proxy::text(&reply))
        }
    }))
    .await;
    assert!(bodies
        .iter()
        .all(|b| *b == (StatusCode::OK, "/slow/x n=1".to_string())));
    assert_eq!(origin.count("/slow/x"), 1);
    assert!(proxy.counter("coalesced").await >= 1);

    // Hostile validators: thousands of ETags or a malformed date cost a scan, nothing more.
    let many: String = (0..3000).map(|i| format!("\"t{i}\", ")).collect();
    let reply = proxy
        .get(
            "/fresh/a",
            &[("if-none-match", many.trim_end_matches(", "))],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = proxy
        .get("/fresh/a", &[("if-modified-since", "not a date")])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = proxy
        .get(
            "/fresh/a",
            &[("cache-control", "max-age=-1, ,,=,no-cache=")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);

    assert!(proxy.counter("hit").await >= 10);
    assert!(proxy.counter("miss").await >= 10);
    assert!(proxy.counter("validated").await >= 2);
}
