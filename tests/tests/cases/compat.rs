//! The compatibility corpus (`tests/compat/`, see `sluice_tests::compat`): real Envoy
//! accepts every config; `sluice` loads each one or refuses it only for reasons its header
//! documents; `docs/compatibility.md` is current; and three of the configs run end to end
//! through both proxies with the same answers.

use std::net::SocketAddr;
use std::process::Command;

use serde_json::{json, Value};
use sluice_tests::assert_same_replies;
use sluice_tests::client::{HttpClient, Reply};
use sluice_tests::compat::{corpus, localized, report, report_path, CompatCerts, CompatConfig};
use sluice_tests::envoy::{envoy_binary, Envoy};
use sluice_tests::process::{binary, Sluice};
use sluice_tests::upstream::Upstream;

#[test]
fn report_is_current() {
    let expected = report(&corpus().unwrap());
    let path = report_path();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &expected).unwrap();
    }
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        written == expected,
        "{} is stale: run `cargo run -p sluice-tests --bin compat-report`",
        path.display()
    );
}

/// `(accepted, stderr)` of `BIN [ARGS] --mode validate -c FILE`.
fn validate_with(bin: &std::path::Path, extra: &[&str], file: &std::path::Path) -> (bool, String) {
    let out = Command::new(bin)
        .args(extra)
        .args(["--mode", "validate", "-c"])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What went wrong with one config, or nothing.
fn disagreements(config: &CompatConfig, certs: &CompatCerts) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(&config.file);
    std::fs::write(&file, config.render(certs.dir())).unwrap();
    let mut wrong = Vec::new();
    let (envoy_ok, envoy_err) = validate_with(
        &envoy_binary().unwrap(),
        &["--disable-hot-restart", "-l", "error"],
        &file,
    );
    if !envoy_ok {
        wrong.push(format!("Envoy refuses it (fix the config):\n{envoy_err}"));
    }
    let (sluice_ok, sluice_err) = validate_with(&binary("sluice"), &[], &file);
    // `--mode validate` prints one problem per indented line.
    let problems: Vec<&str> = sluice_err
        .lines()
        .filter_map(|l| l.strip_prefix("  "))
        .collect();
    if sluice_ok != problems.is_empty() {
        wrong.push(format!(
            "sluice's exit status disagrees with its output:\n{sluice_err}"
        ));
    }
    for problem in &problems {
        if config.reason_for(problem).is_none() {
            wrong.push(format!("refused without a documented reason: {problem}"));
        }
    }
    for (key, _) in &config.refusals {
        if !problems.iter().any(|p| p.contains(key.as_str())) {
            wrong.push(format!("documents a refusal that no longer happens: {key}"));
        }
    }
    let in_process = sluice_tests::compat::Verdict::of(&config.render(certs.dir()));
    if in_process.problems.len() != problems.len() {
        wrong.push(format!(
            "the report would say {:?}, the binary says {problems:?}",
            in_process.problems
        ));
    }
    wrong
        .into_iter()
        .map(|w| format!("{}: {w}", config.file))
        .collect()
}

#[test]
fn envoy_accepts_every_config_and_every_refusal_is_explained() {
    let certs = CompatCerts::generate().unwrap();
    let corpus = corpus().unwrap();
    assert!(
        corpus.len() >= 10,
        "the corpus has {} configs",
        corpus.len()
    );
    let wrong: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = corpus
            .chunks(corpus.len().div_ceil(4))
            .map(|chunk| {
                let certs = &certs;
                scope.spawn(move || {
                    chunk
                        .iter()
                        .flat_map(|c| disagreements(c, certs))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// One request of a differential corpus.
struct Probe {
    host: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
}

const fn probe(host: &'static str, path: &'static str) -> Probe {
    Probe {
        host,
        path,
        headers: &[],
    }
}

/// Headers of the request as the upstream saw it whose presence is compared (values
/// such as ids and addresses differ by nature), and those whose value is.
const UPSTREAM_PRESENCE: &[&str] = &[
    "x-request-id",
    "x-forwarded-for",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-external-address",
];
const UPSTREAM_VALUES: &[&str] = &["host", "x-forwarded-proto", "x-user"];
const RESPONSE_HEADERS: &[&str] = &["location", "content-type", "server"];

/// What is compared of one answer.
fn summary(reply: &Reply) -> Value {
    let upstream = reply.json();
    let seen = &upstream["headers"];
    let mut headers = reply.headers_named(RESPONSE_HEADERS);
    // Each proxy names itself (`server_name` unset): documented in docs/differences.md.
    if let Some(server) = headers.get_mut("server") {
        if server == "envoy" || server == "sluice" {
            *server = "(the proxy's own name)".into();
        }
    }
    let mut out = json!({
        "status": reply.status.as_u16(),
        "headers": headers,
        "x-envoy-upstream-service-time": reply.header("x-envoy-upstream-service-time").is_some(),
    });
    if upstream.is_object() {
        out["upstream"] = json!({
            "server": upstream["server"],
            "path": upstream["path"],
            "method": upstream["method"],
            "present": UPSTREAM_PRESENCE.iter().filter(|h| !seen[**h].is_null()).collect::<Vec<_>>(),
            "values": UPSTREAM_VALUES.iter().map(|h| (h.to_string(), seen[*h].clone())).collect::<serde_json::Map<_, _>>(),
        });
    } else if reply.status.is_success() {
        out["body"] = String::from_utf8_lossy(&reply.body).into();
    }
    out
}

async fn answers(listener: SocketAddr, probes: &[Probe]) -> Vec<Value> {
    let client = HttpClient::http1();
    let mut out = Vec::new();
    for p in probes {
        let reply = client.get(listener, p.host, p.path, p.headers).await;
        out.push(match reply {
            Ok(r) => json!({ "probe": p.path, "answer": summary(&r) }),
            Err(e) => json!({ "probe": p.path, "error": e.to_string() }),
        });
    }
    out
}

/// Runs `file` through Envoy and through sluice, upstream ports mapped to `upstreams`,
/// sends `probes` to the listener written on `listener_port` of each, and compares.
async fn differential(
    file: &str,
    upstreams: &[(u16, u16)],
    listener_port: u16,
    admin_port: u16,
    probes: &[Probe],
) {
    let config = corpus()
        .unwrap()
        .into_iter()
        .find(|c| c.file == file)
        .unwrap_or_else(|| panic!("{file} is in tests/compat"));
    assert!(config.refusals.is_empty(), "{file} loads in sluice");
    let (envoy_config, envoy_ports) = localized(&config.text, upstreams).unwrap();
    let (sluice_config, sluice_ports) = localized(&config.text, upstreams).unwrap();
    let at = |ports: &std::collections::HashMap<u16, u16>, port: u16| {
        SocketAddr::from(([127, 0, 0, 1], ports[&port]))
    };
    let envoy = Envoy::start(&envoy_config, at(&envoy_ports, admin_port))
        .await
        .unwrap();
    let sluice = Sluice::start(&sluice_config, at(&sluice_ports, admin_port))
        .await
        .unwrap();
    let from_envoy = answers(at(&envoy_ports, listener_port), probes).await;
    let from_sluice = answers(at(&sluice_ports, listener_port), probes).await;
    drop((envoy, sluice));
    assert_same_replies(&from_envoy, &from_sluice);
}

#[tokio::test]
async fn differential_front_proxy() {
    let backend = Upstream::start("backend").await;
    differential(
        "front-proxy.yaml",
        &[(18080, backend.addr.port())],
        10000,
        19901,
        &[
            probe("example.test", "/"),
            probe("example.test", "/static/"),
            probe("example.test", "/static/file.css"),
            probe("example.test", "/api/v1/items?limit=2"),
            Probe {
                host: "example.test",
                path: "/forwarded",
                headers: &[("x-forwarded-proto", "https"), ("x-user", "u1")],
            },
        ],
    )
    .await;
}

#[tokio::test]
async fn differential_resilience_retries_around_a_failing_host() {
    let good = Upstream::start("good").await;
    let failing = Upstream::start("failing").await;
    // Health checks still pass, so only the router's retries (to another host, by the
    // previous_hosts predicate) keep every answer a 200 from `good`.
    failing.fail_with(503, true);
    let mut probes: Vec<Probe> = (0..12).map(|_| probe("app.test", "/")).collect();
    probes.extend((0..4).map(|_| Probe {
        host: "app.test",
        path: "/sticky",
        headers: &[("x-user", "same-user")],
    }));
    differential(
        "resilience.yaml",
        &[(18080, good.addr.port()), (18081, failing.addr.port())],
        10000,
        19901,
        &probes,
    )
    .await;
}

#[tokio::test]
async fn differential_envoy_gateway_route() {
    let backend = Upstream::start("backend").await;
    differential(
        "envoy-gateway-resources.yaml",
        &[(18080, backend.addr.port())],
        10080,
        19000,
        &[
            probe("www.example.com", "/"),
            probe("www.example.com:10080", "/port/ignored"),
            probe("other.example.com", "/"),
            probe("www.example.com", "/a//b/../c"),
            probe("www.example.com", "/a/%2Fb"),
            Probe {
                host: "www.example.com",
                path: "/underscore",
                headers: &[("x_bad_header", "1")],
            },
        ],
    )
    .await;
}
