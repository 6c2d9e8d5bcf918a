//! The same config and the same corpus of requests through real Envoy and through
//! `sluice`; statuses, bodies and the relevant headers must match. The config comes once
//! from a static bootstrap, once from `sluice-cp` over ADS (routes over RDS, endpoints over
//! EDS). Documented differences (docs/differences.md) are excluded by name below, each with
//! its reason there.

use std::net::SocketAddr;

use http::Method;
use serde_json::{json, Value};
use sluice_tests::client::{HttpClient, Reply};
use sluice_tests::config::{
    ads_bootstrap, bootstrap, cluster, endpoints_doc, http_listener, merge,
};
use sluice_tests::envoy::Envoy;
use sluice_tests::free_addr;
use sluice_tests::process::{ControlPlane, Sluice};
use sluice_tests::upstream::Upstream;

/// Request headers (as seen by the upstream) and response headers worth comparing.
const UPSTREAM_HEADERS: &[&str] = &[
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-route",
    "x-vhost",
    "x-table",
    "x-remove-me",
    "x-hop",
    "keep-alive",
    "connection",
    "upgrade",
    "te",
    "content-length",
    "transfer-encoding",
    "x-custom",
];
const RESPONSE_HEADERS: &[&str] = &[
    "location",
    "content-type",
    "x-resp-route",
    "x-resp-vhost",
    "x-resp-table",
    "x-upstream",
];

fn direct(body: &str) -> Value {
    json!({ "status": 200, "body": { "inline_string": body } })
}

fn routes() -> Value {
    json!({
        "name": "diff",
        "request_headers_to_add": [ { "header": { "key": "x-table", "value": "t" }, "append_action": "ADD_IF_ABSENT" } ],
        "response_headers_to_add": [ { "header": { "key": "x-resp-table", "value": "t" } } ],
        "virtual_hosts": [
            { "name": "exact", "domains": ["exact.test"], "routes": [ { "match": { "prefix": "/" }, "direct_response": direct("vh-exact") } ] },
            { "name": "suffix", "domains": ["*.wild.test"], "routes": [ { "match": { "prefix": "/" }, "direct_response": direct("vh-suffix") } ] },
            { "name": "prefix", "domains": ["pre.*"], "routes": [ { "match": { "prefix": "/" }, "direct_response": direct("vh-prefix") } ] },
            { "name": "main", "domains": ["*"],
              "request_headers_to_add": [ { "header": { "key": "x-vhost", "value": "v" } } ],
              "response_headers_to_add": [ { "header": { "key": "x-resp-vhost", "value": "v" } } ],
              "routes": [
                { "match": { "path": "/exact" }, "route": { "cluster": "a" } },
                { "match": { "prefix": "/CaseLess", "case_sensitive": false }, "direct_response": direct("caseless") },
                { "match": { "safe_regex": { "regex": "/regex/[0-9]+" } }, "direct_response": direct("regex") },
                { "match": { "path_separated_prefix": "/sep" }, "direct_response": direct("sep") },
                { "match": { "prefix": "/hdr", "headers": [ { "name": "x-match", "string_match": { "exact": "yes" } } ] }, "direct_response": direct("hdr-exact") },
                { "match": { "prefix": "/hdr", "headers": [ { "name": "x-match", "string_match": { "suffix": "end" } } ] }, "direct_response": direct("hdr-suffix") },
                { "match": { "prefix": "/hdr", "headers": [ { "name": "x-present", "present_match": true } ] }, "direct_response": direct("hdr-present") },
                { "match": { "prefix": "/hdr" }, "direct_response": direct("hdr-none") },
                { "match": { "prefix": "/q", "query_parameters": [ { "name": "v", "string_match": { "exact": "1" } } ] }, "direct_response": direct("q-exact") },
                { "match": { "prefix": "/q", "query_parameters": [ { "name": "flag", "present_match": true } ] }, "direct_response": direct("q-present") },
                { "match": { "prefix": "/q" }, "direct_response": direct("q-none") },
                { "match": { "prefix": "/rewrite/prefix/" }, "route": { "cluster": "a", "prefix_rewrite": "/new/" } },
                { "match": { "prefix": "/rewrite/regex/" }, "route": { "cluster": "a",
                    "regex_rewrite": { "pattern": { "regex": "^/rewrite/regex/([a-z]+)/([0-9]+)$" }, "substitution": "/r/\\2/\\1" } } },
                { "match": { "prefix": "/host" }, "route": { "cluster": "a", "host_rewrite_literal": "rewritten.example" } },
                { "match": { "prefix": "/redirect/https" }, "redirect": { "https_redirect": true } },
                { "match": { "prefix": "/redirect/path" }, "redirect": { "path_redirect": "/elsewhere", "response_code": "PERMANENT_REDIRECT", "strip_query": true } },
                { "match": { "prefix": "/redirect/prefix/" }, "redirect": { "prefix_rewrite": "/moved/", "host_redirect": "other.example", "port_redirect": 8443, "response_code": "FOUND" } },
                { "match": { "prefix": "/direct" }, "direct_response": { "status": 418, "body": { "inline_string": "teapot" } } },
                { "match": { "prefix": "/empty" }, "direct_response": { "status": 204 } },
                { "match": { "prefix": "/headers" },
                  "route": { "cluster": "a" },
                  "request_headers_to_add": [
                    { "header": { "key": "x-route", "value": "r" }, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD" },
                    { "header": { "key": "x-custom", "value": "added" } } ],
                  "request_headers_to_remove": ["x-remove-me"],
                  "response_headers_to_add": [ { "header": { "key": "x-resp-route", "value": "r" } } ],
                  "response_headers_to_remove": ["x-upstream"] },
                { "match": { "prefix": "/retry" }, "route": { "cluster": "a",
                    "retry_policy": { "retry_on": "5xx", "num_retries": 2, "retry_back_off": { "base_interval": "0.001s" } } } },
                { "match": { "prefix": "/timeout" }, "route": { "cluster": "a", "timeout": "0.2s" } },
                { "match": { "prefix": "/down" }, "route": { "cluster": "dead" } },
                { "match": { "prefix": "/api/" }, "route": { "cluster": "a" } }
              ]
            }
        ]
    })
}

/// `(label, host, method, path, headers, body)`.
type Case = (
    &'static str,
    &'static str,
    Method,
    &'static str,
    Vec<(&'static str, &'static str)>,
    &'static str,
);

pub(crate) fn corpus() -> Vec<Case> {
    use Method as M;
    vec![
        ("vh exact", "exact.test", M::GET, "/", vec![], ""),
        ("vh exact case", "EXACT.TEST", M::GET, "/x", vec![], ""),
        ("vh suffix", "a.wild.test", M::GET, "/", vec![], ""),
        ("vh suffix deep", "a.b.wild.test", M::GET, "/", vec![], ""),
        ("vh prefix", "pre.example", M::GET, "/", vec![], ""),
        (
            "vh catch-all",
            "unknown.example",
            M::GET,
            "/exact",
            vec![],
            "",
        ),
        ("path exact", "h", M::GET, "/exact", vec![], ""),
        (
            "path exact with query",
            "h",
            M::GET,
            "/exact?x=1",
            vec![],
            "",
        ),
        ("path exact miss", "h", M::GET, "/exactly", vec![], ""),
        ("caseless", "h", M::GET, "/caseless/a", vec![], ""),
        ("caseless upper", "h", M::GET, "/CASELESS", vec![], ""),
        ("regex", "h", M::GET, "/regex/42", vec![], ""),
        ("regex miss", "h", M::GET, "/regex/4x", vec![], ""),
        ("separated prefix", "h", M::GET, "/sep", vec![], ""),
        (
            "separated prefix child",
            "h",
            M::GET,
            "/sep/child",
            vec![],
            "",
        ),
        (
            "separated prefix miss",
            "h",
            M::GET,
            "/separate",
            vec![],
            "",
        ),
        (
            "header exact",
            "h",
            M::GET,
            "/hdr",
            vec![("x-match", "yes")],
            "",
        ),
        (
            "header suffix",
            "h",
            M::GET,
            "/hdr",
            vec![("x-match", "the-end")],
            "",
        ),
        (
            "header present",
            "h",
            M::GET,
            "/hdr",
            vec![("x-present", "1")],
            "",
        ),
        (
            "header none",
            "h",
            M::GET,
            "/hdr",
            vec![("x-match", "no")],
            "",
        ),
        ("query exact", "h", M::GET, "/q?v=1", vec![], ""),
        ("query present", "h", M::GET, "/q?a=1&flag", vec![], ""),
        ("query none", "h", M::GET, "/q?v=2", vec![], ""),
        (
            "prefix rewrite",
            "h",
            M::GET,
            "/rewrite/prefix/a/b?c=d",
            vec![],
            "",
        ),
        (
            "regex rewrite",
            "h",
            M::GET,
            "/rewrite/regex/abc/123",
            vec![],
            "",
        ),
        ("host rewrite", "orig.example", M::GET, "/host", vec![], ""),
        (
            "https redirect",
            "site.example",
            M::GET,
            "/redirect/https/x?y=1",
            vec![],
            "",
        ),
        (
            "path redirect",
            "site.example",
            M::GET,
            "/redirect/path/x?y=1",
            vec![],
            "",
        ),
        (
            "prefix redirect",
            "site.example",
            M::GET,
            "/redirect/prefix/rest?q=1",
            vec![],
            "",
        ),
        ("direct response", "h", M::GET, "/direct", vec![], ""),
        ("direct empty", "h", M::GET, "/empty", vec![], ""),
        (
            "header mutations",
            "h",
            M::GET,
            "/headers",
            vec![
                ("x-remove-me", "1"),
                ("x-route", "client"),
                ("x-table", "client"),
            ],
            "",
        ),
        (
            "header mutations defaults",
            "h",
            M::GET,
            "/headers",
            vec![],
            "",
        ),
        (
            "hop by hop",
            "h",
            M::GET,
            "/exact",
            vec![
                ("connection", "x-hop"),
                ("x-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
            ],
            "",
        ),
        (
            "xff append",
            "h",
            M::GET,
            "/exact",
            vec![("x-forwarded-for", "203.0.113.7")],
            "",
        ),
        (
            "xfp overwrite",
            "h",
            M::GET,
            "/exact",
            vec![("x-forwarded-proto", "https")],
            "",
        ),
        (
            "post body",
            "h",
            M::POST,
            "/api/upload",
            vec![("content-type", "text/plain")],
            "hello world",
        ),
        ("put body", "h", M::PUT, "/api/item", vec![], "0123456789"),
        ("delete", "h", M::DELETE, "/api/item/1", vec![], ""),
        ("head", "h", M::HEAD, "/exact", vec![], ""),
        (
            "upstream 500 passthrough",
            "h",
            M::GET,
            "/api/fail",
            vec![("x-test-status", "500")],
            "",
        ),
        (
            "upstream 404 passthrough",
            "h",
            M::GET,
            "/api/none",
            vec![("x-test-status", "404")],
            "",
        ),
        (
            "retry then success",
            "h",
            M::GET,
            "/retry/ok",
            vec![("x-test-fail-first", "1")],
            "",
        ),
        (
            "retry exhausted",
            "h",
            M::GET,
            "/retry/fail",
            vec![("x-test-fail-first", "5")],
            "",
        ),
        (
            "timeout",
            "h",
            M::GET,
            "/timeout",
            vec![("x-test-delay-ms", "1000")],
            "",
        ),
        ("connect failure", "h", M::GET, "/down", vec![], ""),
        ("no route", "h", M::GET, "/nothing-here", vec![], ""),
    ]
}

fn config(
    admin: SocketAddr,
    listener: SocketAddr,
    upstream: &Upstream,
    dead: SocketAddr,
) -> String {
    config_with(admin, listener, upstream, dead, json!({}))
}

/// The corpus's bootstrap, with `hcm_extra` merged into the connection manager.
pub(crate) fn config_with(
    admin: SocketAddr,
    listener: SocketAddr,
    upstream: &Upstream,
    dead: SocketAddr,
    mut hcm_extra: Value,
) -> String {
    merge(&mut hcm_extra, json!({ "use_remote_address": true }));
    bootstrap(
        admin,
        vec![http_listener("diff", listener, routes(), hcm_extra)],
        vec![
            cluster("a", &[(upstream.addr, 1)], json!({})),
            cluster("dead", &[(dead, 1)], json!({})),
        ],
    )
}

/// A reply reduced to what both proxies must agree on.
fn normalize(reply: &Reply) -> Value {
    let response_headers = reply.headers_named(RESPONSE_HEADERS);
    let body = match serde_json::from_slice::<Value>(&reply.body) {
        Ok(json) if json.get("server").is_some() => {
            let headers = sluice_tests::client::echoed_headers(&json, UPSTREAM_HEADERS);
            // For a loopback peer both append the node's own address: compared as is.
            json!({
                "server": json["server"], "method": json["method"], "path": json["path"],
                "body_bytes": json["body_bytes"], "headers": headers,
                "request_id_generated": json["headers"]["x-request-id"].as_str().is_some_and(|id| id.len() == 36),
            })
        }
        _ => Value::from(String::from_utf8_lossy(&reply.body).into_owned()),
    };
    json!({ "status": reply.status.as_u16(), "headers": response_headers, "body": body })
}

pub(crate) async fn run_corpus(listener: SocketAddr, key_prefix: &str) -> Vec<Value> {
    let client = HttpClient::http1();
    let mut out = Vec::new();
    for (i, (label, host, method, path, headers, body)) in corpus().into_iter().enumerate() {
        // Retry keys are per proxy, so both start from a fresh failure count.
        let key = format!("{key_prefix}-{i}");
        let mut headers = headers;
        headers.push(("x-test-key", Box::leak(key.into_boxed_str())));
        let reply = client
            .send(
                listener,
                method,
                host,
                path,
                &headers,
                body.as_bytes().to_vec(),
            )
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        out.push(json!({ "case": label, "reply": normalize(&reply) }));
    }
    out
}

/// The corpus through Envoy's and sluice's replies must agree on, each reply paired.
fn assert_same(envoy_replies: &[Value], sluice_replies: &[Value]) {
    let mut differences = Vec::new();
    for (e, s) in envoy_replies.iter().zip(sluice_replies) {
        if e != s {
            differences.push(format!(
                "{}:\n  envoy:  {}\n  sluice: {}",
                e["case"], e["reply"], s["reply"]
            ));
        }
    }
    assert_eq!(envoy_replies.len(), sluice_replies.len());
    assert!(
        differences.is_empty(),
        "{} of {} differ:\n{}",
        differences.len(),
        envoy_replies.len(),
        differences.join("\n")
    );
}

#[tokio::test]
async fn sluice_matches_envoy_on_the_corpus() {
    assert!(corpus().len() >= 40);
    let upstream_for_envoy = Upstream::start("a").await;
    let upstream_for_sluice = Upstream::start("a").await;
    let dead = free_addr();

    let (envoy_admin, envoy_listener) = (free_addr(), free_addr());
    let envoy = Envoy::start(
        &config(envoy_admin, envoy_listener, &upstream_for_envoy, dead),
        envoy_admin,
    )
    .await
    .expect("start envoy (installed by tests/run.sh)");
    let envoy_replies = run_corpus(envoy_listener, "envoy").await;
    drop(envoy);

    let (sluice_admin, sluice_listener) = (free_addr(), free_addr());
    let sluice = Sluice::start(
        &config(sluice_admin, sluice_listener, &upstream_for_sluice, dead),
        sluice_admin,
    )
    .await
    .expect("start sluice");
    let sluice_replies = run_corpus(sluice_listener, "sluice").await;
    drop(sluice);
    assert_same(&envoy_replies, &sluice_replies);
}

/// The same listener, routes and clusters as sluice-cp documents: the routes over RDS,
/// cluster `a`'s endpoints over EDS.
fn xds_documents(listener: SocketAddr, upstream: &Upstream, dead: SocketAddr) -> String {
    let mut listener_doc = http_listener(
        "diff",
        listener,
        Value::Null,
        json!({ "use_remote_address": true,
                "rds": { "route_config_name": "diff", "config_source": { "ads": {}, "resource_api_version": "V3" } } }),
    );
    let hcm = &mut listener_doc["filter_chains"][0]["filters"][0]["typed_config"];
    hcm.as_object_mut().unwrap().remove("route_config");
    let typed = |mut doc: Value, type_url: &str| {
        merge(&mut doc, json!({ "@type": type_url }));
        doc
    };
    let documents = [
        typed(
            json!({ "name": "a", "type": "EDS", "connect_timeout": "1s",
                    "eds_cluster_config": { "eds_config": { "ads": {}, "resource_api_version": "V3" } } }),
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        ),
        endpoints_doc("a", upstream.addr),
        typed(
            cluster("dead", &[(dead, 1)], json!({})),
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        ),
        typed(
            listener_doc,
            "type.googleapis.com/envoy.config.listener.v3.Listener",
        ),
        typed(
            routes(),
            "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        ),
    ];
    documents
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n---\n")
}

#[tokio::test]
async fn sluice_matches_envoy_on_the_corpus_over_xds() {
    let upstream = Upstream::start("a").await;
    let (dead, xds, listener) = (free_addr(), free_addr(), free_addr());
    let _cp = ControlPlane::start(&xds_documents(listener, &upstream, dead), xds)
        .await
        .unwrap();
    // One after the other on the same listener address, as both take the same resource.
    let admin = free_addr();
    let envoy = Envoy::start(&ads_bootstrap(admin, xds, "GRPC", "envoy-diff"), admin)
        .await
        .expect("start envoy (installed by tests/run.sh)");
    assert!(
        sluice_tests::eventually(std::time::Duration::from_secs(15), || async {
            tokio::net::TcpStream::connect(listener).await.is_ok()
        })
        .await,
        "Envoy's listener from xDS"
    );
    let envoy_replies = run_corpus(listener, "envoy-xds").await;
    drop(envoy);

    let admin = free_addr();
    let sluice = Sluice::start(
        &ads_bootstrap(admin, xds, "DELTA_GRPC", "sluice-diff"),
        admin,
    )
    .await
    .expect("start sluice");
    let sluice_replies = run_corpus(listener, "sluice-xds").await;
    drop(sluice);
    assert_same(&envoy_replies, &sluice_replies);
}
