//! Certificates from `sluice-cp` over SDS: a listener warms until its secret arrives (and
//! the fleet view says so); `sluicectl apply` of a new certificate under a bounded TLS
//! load loop fails no request, new handshakes present it once the node ACKed, and open
//! connections keep working; a broken key is NACKed with its field while the old
//! certificate serves; `sluice-cp` refuses listeners naming absent secrets or duplicate
//! filter chain matches before any node sees them; and a sidecar's certificate from a
//! local agent over an SDS stream of its own on a Unix socket, as Istio sets it up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::config::{
    address, ads_bootstrap, answer, api_config_source, hcm_filter, http2_options, merge,
};
use sluice_tests::pki::{handshake, http1_over, Authority, ClientSpec, Issued, LeafSpec};
use sluice_tests::process::{ControlPlane, Sluice};
use sluice_tests::proxy::{Kind, Proxy};
use sluice_tests::unix::UnixRelay;
use sluice_tests::{eventually, free_addr};

fn secret_doc(name: &str, issued: &Issued) -> Value {
    json!({ "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": name, "tls_certificate": {
            "certificate_chain": { "inline_string": issued.cert },
            "private_key": { "inline_string": issued.key } } })
}

/// A listener terminating TLS with the SDS secret `secret`, answering `body`.
fn sds_listener(addr: SocketAddr, secret: &str, body: &str) -> Value {
    json!({ "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": "edge", "address": address(addr),
        "filter_chains": [ {
            "transport_socket": { "name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": { "tls_certificate_sds_secret_configs": [
                    { "name": secret, "sds_config": { "ads": {}, "resource_api_version": "V3" } } ] } } },
            "filters": [hcm_filter("edge", answer(body), json!({}))] } ] })
}

fn documents(docs: &[Value]) -> String {
    docs.iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n---\n")
}

fn cert(ca: &Authority, cn: &str) -> Issued {
    ca.issue(&LeafSpec {
        common_name: cn.into(),
        dns: vec!["edge.example".into()],
        ..LeafSpec::default()
    })
    .unwrap()
}

fn client() -> ClientSpec {
    ClientSpec {
        sni: Some("edge.example".into()),
        ..ClientSpec::default()
    }
}

/// The common name the listener presents to a new handshake, if one completes.
async fn presented(listener: SocketAddr) -> Option<String> {
    handshake(listener, &client())
        .await
        .ok()
        .map(|h| h.peer_common_name())
}

fn acked_secret_version(cp: &ControlPlane, node: &str) -> String {
    let (_, json, _) = cp.sluicectl(&["nodes", "-o", "json"]);
    let nodes: Vec<Value> = serde_json::from_str(&json).unwrap_or_default();
    nodes
        .iter()
        .find(|n| n["id"] == node)
        .and_then(|n| n["types"]["secret"]["acked_version"].as_str())
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn a_rotated_certificate_applies_under_load_without_a_failed_request() {
    let ca = Authority::new("rotation CA").unwrap();
    let (v1, v2) = (cert(&ca, "v1"), cert(&ca, "v2"));
    let (xds, listener, admin) = (free_addr(), free_addr(), free_addr());
    let cp = ControlPlane::start_empty(xds).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.yaml");
    let apply = |certificate: &Issued| {
        std::fs::write(
            &file,
            documents(&[
                secret_doc("edge-cert", certificate),
                sds_listener(listener, "edge-cert", "ok"),
            ]),
        )
        .unwrap();
        cp.sluicectl(&["apply", "-f", file.to_str().unwrap()])
    };
    let (ok, out, err) = apply(&v1);
    assert!(ok, "{out}{err}");
    let _node = Sluice::start(&ads_bootstrap(admin, xds, "DELTA_GRPC", "edge-node"), admin)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            presented(listener).await.as_deref() == Some("v1")
        })
        .await
    );

    // A connection opened before the rotation, kept alive across it.
    let kept = handshake(listener, &client()).await.unwrap();
    assert_eq!(kept.peer_common_name(), "v1");
    let (mut kept_sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(kept.stream))
            .await
            .unwrap();
    tokio::spawn(connection);

    // A bounded load loop: a new TLS connection per request, for at most 20 s.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                let served = match handshake(listener, &client()).await {
                    Ok(mut h) => matches!(
                        http1_over(&mut h, "edge.example", "/", &[]).await,
                        Ok((200, _))
                    ),
                    Err(_) => false,
                };
                if served { &done } else { &failed }.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = acked_secret_version(&cp, "edge-node");
    let (ok, out, err) = apply(&v2);
    assert!(ok && out.contains("applied"), "{out}{err}");
    assert!(
        eventually(Duration::from_secs(10), || async {
            acked_secret_version(&cp, "edge-node") != before
        })
        .await,
        "the node ACKs the new secret"
    );
    // ACKed means published: the very next handshake presents the new certificate.
    assert_eq!(presented(listener).await.as_deref(), Some("v2"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(done.load(Ordering::Relaxed) >= 10, "the loop ran: {done:?}");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed during the rotation"
    );

    // The connection from before the rotation still works.
    let request = http::Request::builder()
        .uri("/")
        .header("host", "edge.example")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = kept_sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);

    // /config_dump lists the secret with its key redacted.
    let dump = _node.admin_get("/config_dump").await.unwrap();
    assert!(
        dump.contains("edge-cert") && dump.contains("[redacted]"),
        "{dump}"
    );
    assert!(!dump.contains("PRIVATE KEY"), "no key in the config dump");
}

#[tokio::test]
async fn a_broken_key_is_nacked_with_its_field_and_the_old_certificate_serves() {
    let ca = Authority::new("nack CA").unwrap();
    let (good, other) = (cert(&ca, "good"), cert(&ca, "other"));
    let (xds, listener, admin) = (free_addr(), free_addr(), free_addr());
    let resources = |certificate: &Issued, key: &str| {
        let mut secret = secret_doc("edge-cert", certificate);
        secret["tls_certificate"]["private_key"]["inline_string"] = json!(key);
        documents(&[secret, sds_listener(listener, "edge-cert", "ok")])
    };
    // The test hook skips the control plane's own check, so the node sees the bad key.
    let cp = ControlPlane::start_with_args(
        &resources(&good, &good.key),
        xds,
        &["--unsafe-skip-validation"],
    )
    .await
    .unwrap();
    let _node = Sluice::start(&ads_bootstrap(admin, xds, "GRPC", "nack-node"), admin)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            presented(listener).await.as_deref() == Some("good")
        })
        .await
    );
    cp.update(&resources(&good, &other.key)).unwrap();
    let nacked = || async {
        let (_, json, _) = cp.sluicectl(&["nodes", "-o", "json"]);
        json.contains("tls_certificate.private_key: does not match the first certificate")
    };
    assert!(
        eventually(Duration::from_secs(10), nacked).await,
        "the node NACKs naming the field"
    );
    assert_eq!(
        presented(listener).await.as_deref(),
        Some("good"),
        "the old certificate serves"
    );

    // Without the test hook, sluice-cp refuses the same key before any node sees it.
    let strict = ControlPlane::start_empty(free_addr()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, resources(&good, &other.key)).unwrap();
    let (ok, _, err) = strict.sluicectl(&["apply", "-f", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("tls_certificate.private_key: does not match"),
        "{err}"
    );
    assert!(!err.contains("PRIVATE KEY"), "{err}");
}

#[tokio::test]
async fn sluice_cp_refuses_absent_secrets_and_duplicate_matches() {
    let cp = ControlPlane::start_empty(free_addr()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let apply = |name: &str, docs: &[Value]| {
        let file = dir.path().join(name);
        std::fs::write(&file, documents(docs)).unwrap();
        cp.sluicectl(&["apply", "-f", file.to_str().unwrap()])
    };
    let (ok, _, err) = apply("absent.yaml", &[sds_listener(free_addr(), "nowhere", "x")]);
    assert!(!ok);
    assert!(
        err.contains("listener \"edge\" references unknown secret \"nowhere\""),
        "{err}"
    );
    let chain = json!({ "filters": [hcm_filter("d", answer("d"), json!({}))] });
    let duplicate = json!({ "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": "dup", "address": address(free_addr()), "filter_chains": [chain.clone(), chain] });
    let (ok, _, err) = apply("duplicate.yaml", &[duplicate]);
    assert!(!ok);
    assert!(
        err.contains("filter_chains[1].filter_chain_match: multiple filter chains with the same matching rules"),
        "{err}"
    );
}

#[tokio::test]
async fn a_listener_warms_until_its_secret_arrives_and_the_fleet_view_says_so() {
    let ca = Authority::new("warming CA").unwrap();
    let late = cert(&ca, "late");
    let (xds, listener, admin) = (free_addr(), free_addr(), free_addr());
    let cp = ControlPlane::start_empty(xds).await.unwrap();
    // A static listener in the bootstrap names a secret the group does not have yet.
    let mut bootstrap: Value =
        serde_json::from_str(&ads_bootstrap(admin, xds, "GRPC", "warm-node")).unwrap();
    let mut edge = sds_listener(listener, "late-cert", "ok");
    edge.as_object_mut().unwrap().remove("@type");
    bootstrap["static_resources"]["listeners"] = json!([edge]);
    bootstrap["dynamic_resources"]["lds_config"]["initial_fetch_timeout"] = json!("1s");
    let _node = Sluice::start(&bootstrap.to_string(), admin).await.unwrap();
    let warming = || async {
        let (_, table, _) = cp.sluicectl(&["nodes"]);
        table.contains("secret/late-cert")
    };
    assert!(
        eventually(Duration::from_secs(10), warming).await,
        "{}",
        cp.sluicectl(&["nodes"]).1
    );
    assert_eq!(
        presented(listener).await,
        None,
        "nothing listens while the listener warms"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("late.yaml");
    std::fs::write(&file, documents(&[secret_doc("late-cert", &late)])).unwrap();
    assert!(cp.sluicectl(&["apply", "-f", file.to_str().unwrap()]).0);
    assert!(
        eventually(Duration::from_secs(10), || async {
            presented(listener).await.as_deref() == Some("late")
        })
        .await
    );
    assert!(eventually(Duration::from_secs(10), || async { !warming().await }).await);
}

#[tokio::test]
async fn a_cluster_whose_secret_never_arrives_fails_its_connections_never_in_plaintext() {
    // A plaintext upstream: were TLS skipped, the request would succeed.
    let upstream = sluice_tests::upstream::Upstream::start("plain").await;
    let (xds, listener, admin) = (free_addr(), free_addr(), free_addr());
    let _cp = ControlPlane::start_empty(xds).await.unwrap();
    let mut bootstrap: Value =
        serde_json::from_str(&ads_bootstrap(admin, xds, "GRPC", "late-node")).unwrap();
    let mut secured = sluice_tests::config::cluster("secured", &[(upstream.addr, 1)], json!({}));
    secured["transport_socket"] = json!({ "name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": { "tls_certificate_sds_secret_configs": [ { "name": "never",
            "sds_config": { "ads": {}, "initial_fetch_timeout": "0.5s" } } ] } } });
    bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .push(secured);
    bootstrap["static_resources"]["listeners"] = json!([ { "name": "in", "address": address(listener),
        "filter_chains": [ { "filters": [hcm_filter("in", sluice_tests::config::to_cluster("secured"), json!({}))] } ] } ]);
    bootstrap["dynamic_resources"]["lds_config"]["initial_fetch_timeout"] = json!("1s");
    let node = Sluice::start(&bootstrap.to_string(), admin).await.unwrap();
    let client = sluice_tests::client::HttpClient::http1();
    assert!(
        eventually(Duration::from_secs(10), || async {
            client
                .get(listener, "a", "/", &[])
                .await
                .is_ok_and(|r| r.status == 503)
        })
        .await,
        "after the secret's initial_fetch_timeout the cluster is live and refuses to connect"
    );
    assert!(
        upstream.seen().is_empty(),
        "nothing reached the upstream in plaintext"
    );
    assert!(
        node.stat("cluster.secured.upstream_cx_connect_fail")
            .await
            .unwrap()
            >= 1
    );
}

/// The sidecar pattern of Istio: no ADS, a static listener whose certificate comes over an
/// SDS stream of its own (`api_config_source`) from a local agent on a Unix socket (here
/// `sluice-cp` behind a relay). The listener serves once the secret arrives and a rotated
/// secret reaches new handshakes, through sluice and Envoy alike.
async fn certificate_from_a_local_agent(kind: Kind) {
    let ca = Authority::new("agent CA").unwrap();
    let (xds, listener, admin) = (free_addr(), free_addr(), free_addr());
    let cp = ControlPlane::start(&documents(&[secret_doc("default", &cert(&ca, "one"))]), xds)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock").display().to_string();
    let relay = UnixRelay::start(&socket, xds).unwrap();
    let mut edge = sds_listener(listener, "default", "ok");
    edge.as_object_mut().unwrap().remove("@type");
    edge["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
        ["tls_certificate_sds_secret_configs"][0]["sds_config"] =
        api_config_source("GRPC", "sds-grpc");
    let mut agent = json!({ "name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": { "cluster_name": "sds-grpc", "endpoints": [ { "lb_endpoints": [
            { "endpoint": { "address": { "pipe": { "path": socket } } } } ] } ] } });
    merge(&mut agent, http2_options());
    let bootstrap = json!({
        "node": { "id": format!("sidecar-{kind:?}"), "cluster": "default" },
        "admin": { "address": address(admin) },
        "static_resources": { "listeners": [edge], "clusters": [agent] }
    });
    let _proxy = Proxy::start(kind, &bootstrap.to_string(), admin)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(15), || async {
            presented(listener).await.as_deref() == Some("one")
        })
        .await,
        "{kind:?} presents the agent's certificate"
    );
    cp.update(&documents(&[secret_doc("default", &cert(&ca, "two"))]))
        .unwrap();
    assert!(
        eventually(Duration::from_secs(15), || async {
            presented(listener).await.as_deref() == Some("two")
        })
        .await,
        "{kind:?} presents the rotated certificate"
    );
    assert!(relay.accepted() >= 1, "the SDS stream went over the socket");
}

#[tokio::test]
async fn sluice_takes_its_certificate_from_a_local_agent() {
    certificate_from_a_local_agent(Kind::Sluice).await;
}

#[tokio::test]
async fn envoy_takes_its_certificate_from_a_local_agent() {
    certificate_from_a_local_agent(Kind::Envoy).await;
}
