//! The admin listener, with Envoy's endpoints where Sluice has the feature:
//! `/ready`, `/server_info`, `/stats`, `/stats/prometheus`, `/config_dump` (private keys
//! redacted), `/clusters`, `/listeners` (`?format=json` lists filter chains), `/certs`
//! and `POST /quitquitquit`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{debug, warn};
use xds_types::listener::ListenAddress;
use xds_types::type_urls;

use crate::access_log::{AccessLogs, Entry, RequestView};
use crate::body::{self, Body};
use crate::config::SnapshotStore;
use crate::listener::ListenerManager;

/// State the admin endpoints read and the shutdown path writes.
pub struct AdminState {
    pub store: SnapshotStore,
    pub listeners: Arc<ListenerManager>,
    /// Set when the server starts draining; `/ready` then answers 503.
    pub draining: AtomicBool,
    /// False until the first full xDS sync (always true without `dynamic_resources`).
    pub ready: Arc<AtomicBool>,
    /// Notified by `/quitquitquit`.
    pub shutdown: Arc<Notify>,
    pub started: Instant,
    pub concurrency: usize,
    /// `admin.access_log`: one line per admin request.
    pub access_logs: Option<Arc<AccessLogs>>,
}

/// Serves the admin API on `socket` until the process exits.
pub async fn serve(socket: TcpListener, state: Arc<AdminState>) {
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(a) => a,
            Err(error) => {
                warn!(%error, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let local = stream.local_addr().unwrap_or(peer);
            let connection_id = crate::access_log::next_connection_id();
            let service = hyper::service::service_fn(move |r| {
                logged(state.clone(), r, peer, local, connection_id)
            });
            if let Err(error) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%error, "admin connection ended");
            }
        });
    }
}

/// Answers one admin request, then writes the admin access logs (when the answer is
/// ready: admin answers are small and never streamed).
async fn logged(
    state: Arc<AdminState>,
    request: Request<Incoming>,
    peer: std::net::SocketAddr,
    local: std::net::SocketAddr,
    connection_id: u64,
) -> Result<Response<Body>, Infallible> {
    let Some(logs) = state.access_logs.clone() else {
        return handle(state, request).await;
    };
    let start = std::time::SystemTime::now();
    let started = Instant::now();
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let authority = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let captured = logs.capture_request(&RequestView {
        method: request.method(),
        path: &path,
        authority: &authority,
        scheme: "http",
        headers: request.headers(),
        original_path: None,
    });
    let protocol = match request.version() {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let store = state.store.clone();
    let response = handle(state, request).await?;
    let bytes_sent = http_body::Body::size_hint(response.body())
        .exact()
        .unwrap_or_default();
    logs.write(
        &Entry {
            request: &captured,
            response: &logs.capture_response(response.headers()),
            status: response.status().as_u16(),
            duration: started.elapsed(),
            response_duration: Some(started.elapsed()),
            bytes_sent,
            protocol: Some(protocol),
            ..Entry::connection(peer, peer, local, connection_id, start)
        },
        &store,
    );
    Ok(response)
}

/// Envoy's server-wide health-check state, set by `/healthcheck/fail` and `/healthcheck/ok`:
/// the health check filter answers 503 while it is set.
static HEALTH_CHECK_FAILED: AtomicBool = AtomicBool::new(false);

/// Whether the proxy is failing its health checks (`/healthcheck/fail`).
pub fn health_check_failed() -> bool {
    HEALTH_CHECK_FAILED.load(Ordering::Relaxed)
}

fn set_health_check_failed(failed: bool) {
    HEALTH_CHECK_FAILED.store(failed, Ordering::Relaxed);
}

async fn handle(
    state: Arc<AdminState>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path();
    let method = request.method();
    let response = match (method, path) {
        (&Method::GET | &Method::HEAD, "/ready") => {
            if state.draining.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "DRAINING\n")
            } else if !state.ready.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "INITIALIZING\n")
            } else {
                text(StatusCode::OK, "LIVE\n")
            }
        }
        (&Method::GET, "/server_info") => json_response(server_info(&state)),
        (&Method::GET, "/stats") => text(StatusCode::OK, state.store.stats().render_text()),
        (&Method::GET, "/stats/prometheus") => {
            let mut r = text(StatusCode::OK, state.store.stats().render_prometheus());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (&Method::GET, "/config_dump") => json_response(config_dump(&state)),
        (&Method::GET, "/clusters") => text(StatusCode::OK, clusters(&state)),
        (&Method::GET, "/listeners") if request.uri().query() == Some("format=json") => {
            json_response(listeners_json(&state))
        }
        (&Method::GET, "/listeners") => text(
            StatusCode::OK,
            state
                .listeners
                .addresses()
                .iter()
                .map(|(n, a)| format!("{n}::{a}\n"))
                .collect::<String>(),
        ),
        (&Method::GET, "/certs") => json_response(certs(&state)),
        (&Method::POST, "/healthcheck/fail") => {
            set_health_check_failed(true);
            text(StatusCode::OK, "OK\n")
        }
        (&Method::POST, "/healthcheck/ok") => {
            set_health_check_failed(false);
            text(StatusCode::OK, "OK\n")
        }
        (&Method::POST, "/quitquitquit") => {
            state.shutdown.notify_one();
            text(StatusCode::OK, "OK\n")
        }
        (_, "/quitquitquit") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "This endpoint requires POST\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "invalid path\n"),
    };
    Ok(response)
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut r = Response::new(body::full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    r
}

fn json_response(value: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(body::full(
        serde_json::to_vec_pretty(&value).unwrap_or_default(),
    ));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn server_info(state: &AdminState) -> serde_json::Value {
    let snapshot = state.store.load();
    json!({
        "version": concat!("sluice/", env!("CARGO_PKG_VERSION")),
        "state": if state.draining.load(Ordering::Relaxed) { "DRAINING" } else { "LIVE" },
        "uptime_current_epoch": format!("{}s", state.started.elapsed().as_secs()),
        "node": { "id": snapshot.bootstrap.node_id, "cluster": snapshot.bootstrap.node_cluster },
        "command_line_options": { "concurrency": state.concurrency },
        "config_version": snapshot.version,
    })
}

/// Envoy's config dump shape: the bootstrap, then per type the static resources as loaded
/// and the dynamic ones as received over xDS, each with the version it came in. A dynamic
/// listener or cluster not live yet is listed as warming.
fn config_dump(state: &AdminState) -> serde_json::Value {
    let snapshot = state.store.load();
    let raw = &snapshot.bootstrap.raw;
    let bootstrap = xds_types::decode::to_json(raw, xds_types::bootstrap::BOOTSTRAP)
        .unwrap_or_else(|e| json!({ "error": e.to_string() }));
    let statics = raw.static_resources.clone().unwrap_or_default();
    let listeners: Vec<_> = statics
        .listeners
        .iter()
        .map(|l| json!({ "listener": xds_types::decode::to_json(l, "envoy.config.listener.v3.Listener").ok() }))
        .collect();
    let clusters: Vec<_> = statics
        .clusters
        .iter()
        .map(|c| json!({ "cluster": xds_types::decode::to_json(c, "envoy.config.cluster.v3.Cluster").ok() }))
        .collect();
    let dynamic = state.store.dynamic();
    // `(name, version, resource JSON)` of every resource received of one type.
    let received = |type_url: &str| -> Vec<(String, String, serde_json::Value)> {
        dynamic
            .received
            .iter()
            .filter(|((t, _), _)| t == type_url)
            .map(|((_, name), r)| {
                let message = xds_types::type_urls::message_name(type_url);
                let json = xds_types::decode::bytes_to_json(&r.resource.value, message)
                    .unwrap_or_else(|e| json!({ "error": e.to_string() }));
                (name.clone(), r.version.clone(), json)
            })
            .collect()
    };
    let (mut active_clusters, mut warming_clusters) = (Vec::new(), Vec::new());
    for (name, version, cluster) in received(type_urls::CLUSTER) {
        let entry = json!({ "version_info": version, "cluster": cluster });
        if snapshot.clusters.contains_key(&name) {
            active_clusters.push(entry);
        } else {
            warming_clusters.push(entry);
        }
    }
    let dynamic_listeners: Vec<_> = received(type_urls::LISTENER)
        .into_iter()
        .map(|(name, version, listener)| {
            let state = if snapshot.listeners.contains_key(&name) {
                "active_state"
            } else {
                "warming_state"
            };
            json!({ "name": name, state: { "version_info": version, "listener": listener } })
        })
        .collect();
    let routes: Vec<_> = received(type_urls::ROUTE_CONFIGURATION)
        .into_iter()
        .map(|(_, version, routes)| json!({ "version_info": version, "route_config": routes }))
        .collect();
    let endpoints: Vec<_> = received(type_urls::CLUSTER_LOAD_ASSIGNMENT)
        .into_iter()
        .map(|(_, version, cla)| json!({ "version_info": version, "endpoint_config": cla }))
        .collect();
    let secret_entry = |name: &str, version: Option<&str>, secret: serde_json::Value| {
        let mut entry = json!({ "name": name, "secret": secret });
        if let Some(v) = version {
            entry["version_info"] = json!(v);
        }
        entry
    };
    let static_secrets: Vec<_> = statics
        .secrets
        .iter()
        .map(|s| {
            let secret =
                xds_types::decode::to_json(s, "envoy.extensions.transport_sockets.tls.v3.Secret")
                    .unwrap_or_else(|e| json!({ "error": e.to_string() }));
            secret_entry(&s.name, None, secret)
        })
        .collect();
    let dynamic_secrets: Vec<_> = received(type_urls::SECRET)
        .into_iter()
        .map(|(name, version, secret)| secret_entry(&name, Some(&version), secret))
        .collect();
    let version = snapshot.version.to_string();
    let mut dump = json!({
        "configs": [
            { "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": bootstrap },
            { "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "version_info": version,
              "static_clusters": clusters, "dynamic_active_clusters": active_clusters,
              "dynamic_warming_clusters": warming_clusters },
            { "@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump", "dynamic_endpoint_configs": endpoints },
            { "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "version_info": version,
              "static_listeners": listeners, "dynamic_listeners": dynamic_listeners },
            { "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump", "dynamic_route_configs": routes },
            { "@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
              "static_secrets": static_secrets, "dynamic_active_secrets": dynamic_secrets },
        ]
    });
    redact_private_keys(&mut dump);
    dump
}

/// Replaces every inline private key (in secrets, bootstraps and listeners alike) with
/// `[redacted]`, as Envoy's config dump does; a key's file name is shown as is.
fn redact_private_keys(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(fields) => {
            for (key, field) in fields.iter_mut() {
                let inline = field
                    .as_object()
                    .is_some_and(|o| !o.contains_key("filename"));
                if (key == "private_key" || key == "privateKey") && inline {
                    *field = json!({ "inline_string": "[redacted]" });
                } else {
                    redact_private_keys(field);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_private_keys),
        _ => {}
    }
}

/// `/listeners?format=json`: Envoy's listener statuses, with each listener's filter
/// chains (how they match, TLS or not, their network filter).
fn listeners_json(state: &AdminState) -> serde_json::Value {
    use xds_types::filter_chain::ServerName;
    let snapshot = state.store.load();
    let statuses: Vec<_> = state
        .listeners
        .addresses()
        .into_iter()
        .map(|(name, address)| {
            let chains: Vec<_> = snapshot
                .listeners
                .get(&name)
                .map(|l| {
                    let default = l.config.default_filter_chain.iter().map(|c| (c, true));
                    l.config
                        .filter_chains
                        .iter()
                        .map(|c| (c, false))
                        .chain(default)
                        .map(|(c, is_default)| {
                            let m = &c.matcher;
                            let names: Vec<String> = m
                                .server_names
                                .iter()
                                .map(|n| match n {
                                    ServerName::Exact(e) => e.clone(),
                                    ServerName::Suffix(s) => format!("*{s}"),
                                })
                                .collect();
                            let ranges = |r: &[xds_types::filter_chain::CidrRange]| -> Vec<String> {
                                r.iter().map(|r| format!("{}/{}", r.address, r.prefix_len)).collect()
                            };
                            json!({
                                "name": c.name,
                                "default": is_default,
                                "filter_chain_match": {
                                    "destination_port": m.destination_port,
                                    "prefix_ranges": ranges(&m.prefix_ranges),
                                    "server_names": names,
                                    "transport_protocol": m.transport_protocol,
                                    "application_protocols": m.application_protocols,
                                    "source_prefix_ranges": ranges(&m.source_prefix_ranges),
                                    "direct_source_prefix_ranges": ranges(&m.direct_source_prefix_ranges),
                                    "source_ports": m.source_ports,
                                },
                                "tls": c.tls.is_some(),
                                "network_filter": match c.network {
                                    xds_types::listener::NetworkFilter::Http(_) => "envoy.filters.network.http_connection_manager",
                                    xds_types::listener::NetworkFilter::Tcp(_) => "envoy.filters.network.tcp_proxy",
                                },
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "name": name,
                "local_address": match &address {
                    ListenAddress::Socket(a) => serde_json::json!({ "socket_address": { "address": a.ip().to_string(), "port_value": a.port() } }),
                    ListenAddress::Pipe { path, .. } => serde_json::json!({ "pipe": { "path": path } }),
                },
                "filter_chains": chains,
            })
        })
        .collect();
    json!({ "listener_statuses": statuses })
}

/// `/certs`: every TLS context's certificates and CAs (subject, SANs, serial, validity),
/// never a key.
fn certs(state: &AdminState) -> serde_json::Value {
    use crate::config::ChainTls;
    let snapshot = state.store.load();
    let info = |certs: &[rustls::pki_types::CertificateDer<'_>]| -> Vec<serde_json::Value> {
        certs
            .iter()
            .map(|c| crate::tls::certificate_info(c))
            .collect()
    };
    let mut out = Vec::new();
    let mut names: Vec<&String> = snapshot.listeners.keys().collect();
    names.sort();
    for name in names {
        let listener = &snapshot.listeners[name];
        for chain in listener
            .chains
            .iter()
            .chain(listener.default_chain.as_ref())
        {
            if let ChainTls::Terminate { server, .. } = &chain.tls {
                let chains: Vec<_> = server.chains().flat_map(&info).collect();
                out.push(json!({
                    "listener": name, "filter_chain": chain.name,
                    "ca_cert": info(&server.ca_certificates),
                    "cert_chain": chains,
                }));
            }
        }
    }
    let mut clusters: Vec<&String> = snapshot.clusters.keys().collect();
    clusters.sort();
    for name in clusters {
        if let Some(tls) = snapshot.clusters[name].transport.tls() {
            out.push(json!({
                "cluster": name,
                "ca_cert": info(&tls.ca_certificates),
                "cert_chain": info(&tls.client_chain),
            }));
        }
    }
    json!({ "certificates": out })
}

/// Envoy's `/clusters` text: `cluster::host:port::stat::value` lines, in Envoy's order.
fn clusters(state: &AdminState) -> String {
    use std::fmt::Write;
    let snapshot = state.store.load();
    let mut names: Vec<&String> = snapshot.clusters.keys().collect();
    names.sort();
    let mut out = String::new();
    let rate = |r: Option<f64>| r.map_or("-1".to_string(), |r| format!("{r}"));
    for name in names {
        let cluster = &snapshot.clusters[name];
        let added_via_api = !snapshot.bootstrap.clusters.iter().any(|c| &c.name == name);
        let _ = writeln!(out, "{name}::observability_name::{name}");
        if let Some(detector) = &cluster.outlier {
            let [external, local] = detector.success_rate_stats();
            for (prefix, stats) in [("", external), ("local_origin_", local)] {
                let _ = writeln!(
                    out,
                    "{name}::outlier::{prefix}success_rate_average::{}",
                    rate(stats.map(|s| s.0))
                );
                let _ = writeln!(
                    out,
                    "{name}::outlier::{prefix}success_rate_ejection_threshold::{}",
                    rate(stats.map(|s| s.1))
                );
            }
        }
        let t = &cluster.config.circuit_breakers;
        for (stat, value) in [
            ("max_connections", t.max_connections),
            ("max_pending_requests", t.max_pending_requests),
            ("max_requests", t.max_requests),
            ("max_retries", t.max_retries),
        ] {
            let _ = writeln!(out, "{name}::default_priority::{stat}::{value}");
        }
        let _ = writeln!(out, "{name}::added_via_api::{added_via_api}");
        for m in cluster.members().iter() {
            let h = &m.host;
            let a = &h.authority;
            let c = &h.counters;
            let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
            for (stat, value) in [
                ("cx_active", h.connections().max(0) as u64),
                ("cx_connect_fail", load(&c.cx_connect_fail)),
                ("cx_total", load(&c.cx_total)),
                ("rq_active", load(&h.active)),
                ("rq_error", load(&c.rq_error)),
                ("rq_success", load(&c.rq_success)),
                ("rq_timeout", load(&c.rq_timeout)),
                ("rq_total", load(&c.rq_total)),
            ] {
                let _ = writeln!(out, "{name}::{a}::{stat}::{value}");
            }
            let _ = writeln!(out, "{name}::{a}::hostname::");
            let _ = writeln!(out, "{name}::{a}::health_flags::{}", h.describe_flags());
            let _ = writeln!(out, "{name}::{a}::weight::{}", m.weight);
            let _ = writeln!(out, "{name}::{a}::region::{}", m.locality.region);
            let _ = writeln!(out, "{name}::{a}::zone::{}", m.locality.zone);
            let _ = writeln!(out, "{name}::{a}::sub_zone::{}", m.locality.sub_zone);
            let _ = writeln!(out, "{name}::{a}::canary::false");
            let _ = writeln!(out, "{name}::{a}::priority::{}", m.priority);
            let _ = writeln!(
                out,
                "{name}::{a}::success_rate::{}",
                rate(h.outlier.success_rate())
            );
            let _ = writeln!(out, "{name}::{a}::local_origin_success_rate::-1");
        }
    }
    out
}
