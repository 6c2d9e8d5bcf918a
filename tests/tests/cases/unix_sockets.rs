//! Unix domain sockets (`Address.pipe`), as a sidecar uses them: cluster endpoints on a
//! socket path and on an abstract name (HTTP and a TCP proxy), a listener on a socket
//! with its file mode, the same answers from Envoy, and ADS to a control plane over a
//! socket.

use std::net::SocketAddr;

use serde_json::{json, Value};
use sluice_tests::client::{serves, HttpClient};
use sluice_tests::config::{
    address, ads_bootstrap, http2_options, http_listener, merge, xds_resources,
};
use sluice_tests::envoy::Envoy;
use sluice_tests::free_addr;
use sluice_tests::process::{ControlPlane, Sluice};
use sluice_tests::unix::UnixRelay;
use sluice_tests::upstream::Upstream;

fn pipe_cluster(name: &str, socket: &str) -> Value {
    json!({
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": { "cluster_name": name, "endpoints": [ { "lb_endpoints": [
            { "endpoint": { "address": { "pipe": { "path": socket } } } } ] } ] }
    })
}

/// An HTTP listener routing `/file` and `/abstract` to the two socket clusters, and a TCP
/// proxy listener to the path socket.
fn bootstrap(
    admin: SocketAddr,
    http: SocketAddr,
    tcp: SocketAddr,
    file: &str,
    abstract_name: &str,
) -> String {
    let routes = json!({ "name": "r", "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": [
        { "match": { "prefix": "/file" }, "route": { "cluster": "file_socket" } },
        { "match": { "prefix": "/abstract" }, "route": { "cluster": "abstract_socket" } } ] } ] });
    let tcp_listener = json!({
        "name": "tcp", "address": address(tcp),
        "filter_chains": [ { "filters": [ { "name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "tcp", "cluster": "file_socket" } } ] } ]
    });
    json!({
        "node": { "id": "uds", "cluster": "test" },
        "admin": { "address": address(admin) },
        "static_resources": {
            "listeners": [ http_listener("http", http, routes, json!({})), tcp_listener ],
            "clusters": [ pipe_cluster("file_socket", file), pipe_cluster("abstract_socket", abstract_name) ]
        }
    })
    .to_string()
}

/// Status, the upstream's name and the path it saw, for each probe.
async fn answers(http: SocketAddr, tcp: SocketAddr) -> Vec<(u16, Value, Value)> {
    let mut out = Vec::new();
    for (at, path) in [
        (http, "/file/a"),
        (http, "/abstract/b"),
        (tcp, "/over-tcp-proxy"),
    ] {
        let r = HttpClient::http1()
            .get(at, "uds.test", path, &[])
            .await
            .unwrap();
        let body = r.json();
        out.push((
            r.status.as_u16(),
            body["server"].clone(),
            body["path"].clone(),
        ));
    }
    out
}

#[tokio::test]
async fn endpoints_on_unix_sockets_answer_as_through_envoy() {
    let upstream = Upstream::start("behind-a-socket").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upstream.sock").display().to_string();
    let abstract_name = format!(
        "@sluice-test-{}-{}",
        std::process::id(),
        upstream.addr.port()
    );
    let file_relay = UnixRelay::start(&file, upstream.addr).unwrap();
    let abstract_relay = UnixRelay::start(&abstract_name, upstream.addr).unwrap();

    let (admin, http, tcp) = (free_addr(), free_addr(), free_addr());
    let envoy = Envoy::start(&bootstrap(admin, http, tcp, &file, &abstract_name), admin)
        .await
        .expect("start envoy (installed by tests/run.sh)");
    let from_envoy = answers(http, tcp).await;
    drop(envoy);
    let through_envoy = (file_relay.accepted(), abstract_relay.accepted());

    let (admin, http, tcp) = (free_addr(), free_addr(), free_addr());
    let sluice = Sluice::start(&bootstrap(admin, http, tcp, &file, &abstract_name), admin)
        .await
        .unwrap();
    let from_sluice = answers(http, tcp).await;
    assert_eq!(from_sluice, from_envoy);
    assert_eq!(
        from_sluice[0],
        (200, json!("behind-a-socket"), json!("/file/a"))
    );
    assert_eq!(from_sluice[2].2, json!("/over-tcp-proxy"));
    assert!(
        file_relay.accepted() >= through_envoy.0 + 2 && abstract_relay.accepted() > through_envoy.1,
        "sluice dialled the sockets: {through_envoy:?} then {} / {}",
        file_relay.accepted(),
        abstract_relay.accepted()
    );
    assert!(
        sluice
            .stat("cluster.file_socket.upstream_cx_total")
            .await
            .unwrap()
            >= 2
    );
}

#[tokio::test]
async fn ads_reaches_the_control_plane_over_a_unix_socket() {
    let upstream = Upstream::start("first").await;
    let (xds, listener, admin) = (free_addr(), free_addr(), free_addr());
    let _cp = ControlPlane::start(&xds_resources(listener, upstream.addr, "v1"), xds)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("XDS").display().to_string();
    let relay = UnixRelay::start(&socket, xds).unwrap();
    // The bootstrap of the other suites, with the xDS cluster's endpoint on the socket.
    let mut bootstrap: Value =
        serde_json::from_str(&ads_bootstrap(admin, xds, "GRPC", "sluice-uds")).unwrap();
    let mut xds_cluster = pipe_cluster("xds", &socket);
    merge(&mut xds_cluster, http2_options());
    bootstrap["static_resources"]["clusters"] = json!([xds_cluster]);
    // `start` returns once /ready is 200: the first full sync came over the socket.
    let _sluice = Sluice::start(&bootstrap.to_string(), admin).await.unwrap();
    assert!(serves(listener, "first", "v1").await);
    assert!(relay.accepted() >= 1);
}

/// A listener on the Unix socket `listen` (mode 0600) routing everything to the cluster on
/// the socket `upstream`.
fn listening_bootstrap(admin: SocketAddr, listen: &str, upstream: &str) -> String {
    let routes = json!({ "name": "r", "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": [
        { "match": { "prefix": "/" }, "route": { "cluster": "app" } } ] } ] });
    let mut listener = http_listener("uds", free_addr(), routes, json!({}));
    listener["address"] = json!({ "pipe": { "path": listen, "mode": 0o600 } });
    json!({
        "node": { "id": "uds-listener", "cluster": "test" },
        "admin": { "address": address(admin) },
        "static_resources": { "listeners": [listener], "clusters": [pipe_cluster("app", upstream)] }
    })
    .to_string()
}

#[tokio::test]
async fn a_listener_on_a_unix_socket_serves_as_envoys_does() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let upstream = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let upstream_socket = dir.path().join("app.sock").display().to_string();
    let _relay = UnixRelay::start(&upstream_socket, upstream.addr).unwrap();
    let mut replies = Vec::new();
    for proxy in ["envoy", "sluice"] {
        let listen = dir
            .path()
            .join(format!("{proxy}.sock"))
            .display()
            .to_string();
        // A stale socket file, as a crashed process leaves: replaced, not an error.
        drop(std::os::unix::net::UnixListener::bind(&listen).unwrap());
        let admin = free_addr();
        let config = listening_bootstrap(admin, &listen, &upstream_socket);
        let process: Box<dyn std::any::Any> = match proxy {
            "envoy" => Box::new(Envoy::start(&config, admin).await.expect("start envoy")),
            _ => Box::new(Sluice::start(&config, admin).await.unwrap()),
        };
        let meta = std::fs::metadata(&listen).unwrap();
        assert!(
            meta.file_type().is_socket(),
            "{proxy}: {listen} is a socket"
        );
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{proxy}: the mode"
        );
        let (status, body) = sluice_tests::unix::get(&listen, "app.test", "/over/uds")
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        replies.push((
            status,
            body["server"].clone(),
            body["path"].clone(),
            body["headers"]["host"].clone(),
        ));
        drop(process);
    }
    assert_eq!(replies[0], replies[1], "envoy, then sluice");
    assert_eq!(replies[1].0, 200);
    assert_eq!(replies[1].2, json!("/over/uds"));
}
