//! The control plane's security defaults: the operator API needs a token and separates
//! read from write; both the API and xDS speak TLS, and with a client CA mutual TLS, which
//! a real Envoy and `sluice` use (from one bootstrap document) to take their config.
//! Certificates are generated with rcgen.

use std::time::Duration;

use serde_json::json;
use sluice_tests::client::serves;
use sluice_tests::config::{ads_bootstrap, xds_resources};
use sluice_tests::envoy::Envoy;
use sluice_tests::pki::Pki;
use sluice_tests::process::{binary, ControlPlane, Sluice};
use sluice_tests::upstream::Upstream;
use sluice_tests::{eventually, free_addr};

/// Runs `sluicectl` with exactly `args` (no token from the environment).
fn sluicectl(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(binary("sluicectl"))
        .args(args)
        .env_remove("SLUICE_TOKEN")
        .env_remove("SLUICE_TOKEN_FILE")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(if out.status.success() {
        &out.stdout
    } else {
        &out.stderr
    })
    .into_owned();
    (out.status.success(), text)
}

#[tokio::test]
async fn api_tokens_separate_read_from_write() {
    let upstream = Upstream::start("up").await;
    let (xds, listener) = (free_addr(), free_addr());
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "read reader-secret\nwrite writer-secret\n").unwrap();
    let cp = ControlPlane::start_with_args(
        &xds_resources(listener, upstream.addr, "v1"),
        xds,
        &["--api-tokens", tokens.to_str().unwrap()],
    )
    .await
    .unwrap();
    let server = format!("http://{}", cp.api);
    let file = dir.path().join("v2.yaml");
    std::fs::write(&file, xds_resources(listener, upstream.addr, "v2")).unwrap();
    let file = file.to_str().unwrap();

    let (ok, err) = sluicectl(&["--server", &server, "nodes"]);
    assert!(!ok && err.contains("token is required"), "{err}");
    let (ok, err) = sluicectl(&["--server", &server, "--token", "guess", "nodes"]);
    assert!(!ok && err.contains("unknown token"), "{err}");

    let read = ["--server", &server, "--token", "reader-secret"];
    let (ok, out) = sluicectl(&[&read[..], &["get", "listener"]].concat());
    assert!(ok && out.contains("ingress"), "a read token reads: {out}");
    let (ok, err) = sluicectl(&[&read[..], &["apply", "-f", file]].concat());
    assert!(
        !ok && err.contains("Apply needs a write token"),
        "a read token cannot apply: {err}"
    );
    let (ok, err) = sluicectl(&[&read[..], &["rollback", "1"]].concat());
    assert!(!ok && err.contains("Rollback needs a write token"), "{err}");

    let write = ["--server", &server, "--token", "writer-secret"];
    let (ok, out) = sluicectl(&[&write[..], &["apply", "-f", file]].concat());
    assert!(
        ok && out.contains("applied"),
        "a write token applies: {out}"
    );
}

#[tokio::test]
async fn mutual_tls_on_the_api_and_on_xds_for_envoy_and_sluice() {
    let pki = Pki::generate().unwrap();
    let upstream = Upstream::start("up").await;
    let (xds, listener, admin) = (free_addr(), free_addr(), free_addr());
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let cp = ControlPlane::start_with_args(
        &xds_resources(listener, upstream.addr, "tls"),
        xds,
        &[
            "--tls-cert",
            &path(&pki.server_cert),
            "--tls-key",
            &path(&pki.server_key),
            "--tls-client-ca",
            &path(&pki.ca),
        ],
    )
    .await
    .unwrap();
    let token = path(&cp.token_file());
    let server = format!("https://{}", cp.api);
    let base = [
        "--server",
        &server,
        "--token-file",
        &token,
        "--ca-cert",
        &path(&pki.ca),
    ];

    let client_cert = [
        "--cert",
        &path(&pki.client_cert),
        "--key",
        &path(&pki.client_key),
    ];
    let (ok, out) = sluicectl(&[&base[..], &client_cert[..], &["history"]].concat());
    assert!(ok && out.contains("resources file"), "mutual TLS: {out}");
    // A change over mutual TLS names its token and the client certificate in history.
    let dir = tempfile::tempdir().unwrap();
    let v2 = dir.path().join("v2.yaml");
    std::fs::write(&v2, xds_resources(listener, upstream.addr, "tls-v2")).unwrap();
    let v2 = path(&v2);
    let apply = [&base[..], &client_cert[..], &["apply", "-f", &v2]].concat();
    let (ok, out) = sluicectl(&apply);
    assert!(ok && out.contains("applied"), "{out}");
    let history = [&base[..], &client_cert[..], &["history", "-o", "json"]].concat();
    let (_, out) = sluicectl(&history);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(
        rows.last().unwrap()["author"],
        "admin-token (cert CN=sluice test operator)",
        "{out}"
    );
    let (ok, err) = sluicectl(&[&base[..], &["history"]].concat());
    assert!(!ok, "no client certificate, no API: {err}");
    let plain = format!("http://{}", cp.api);
    let (ok, err) = sluicectl(&["--server", &plain, "--token-file", &token, "history"]);
    assert!(!ok, "no cleartext API: {err}");

    // Envoy reaches xDS over mutual TLS and serves the config.
    let mut bootstrap: serde_json::Value =
        serde_json::from_str(&ads_bootstrap(admin, xds, "GRPC", "envoy-tls")).unwrap();
    bootstrap["static_resources"]["clusters"][0]["transport_socket"] = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [ {
                    "certificate_chain": { "filename": path(&pki.client_cert) },
                    "private_key": { "filename": path(&pki.client_key) }
                } ],
                "validation_context": { "trusted_ca": { "filename": path(&pki.ca) } }
            }
        }
    });
    let _envoy = Envoy::start(&bootstrap.to_string(), admin).await.unwrap();
    assert!(
        eventually(Duration::from_secs(15), || serves(listener, "up", "tls-v2")).await,
        "Envoy took its config over mutual TLS"
    );

    // sluice reads the same bootstrap document: ready only after its first sync, which
    // went over mutual TLS.
    let sluice_admin = free_addr();
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = json!(sluice_admin.port());
    bootstrap["node"]["id"] = json!("sluice-tls");
    let sluice = Sluice::start(&bootstrap.to_string(), sluice_admin)
        .await
        .unwrap();
    let dump = sluice.admin_get("/config_dump").await.unwrap();
    assert!(
        dump.contains("\"active_state\"") && dump.contains("\"ingress\""),
        "{dump}"
    );
}
