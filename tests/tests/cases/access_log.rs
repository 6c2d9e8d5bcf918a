//! Access logs as Envoy writes them: the differential corpus logged by real Envoy and by
//! `sluice` through the same formats (Envoy's default text format and a JSON format) gives
//! the same lines once times, durations, ids and per-run addresses are normalised; TCP
//! proxy, listener and admin logs likewise; a full disk or a stalled pipe drops lines and
//! counts them while requests keep flowing; an unknown command operator is refused by name.
//! Both binaries write their own logs as JSON lines with `--log-format json`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use regex::Regex;
use serde_json::{json, Value};
use sluice_tests::client::HttpClient;
use sluice_tests::config::{address, bootstrap, cluster, http_listener, tcp_proxy, to_cluster};
use sluice_tests::envoy::Envoy;
use sluice_tests::process::{binary, validate, Sluice};
use sluice_tests::upstream::Upstream;
use sluice_tests::{eventually, free_addr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::differential::{config_with, corpus, run_corpus};

/// A file access log to `path`; `format` is a `log_format`, or null for Envoy's default.
fn file_log(path: &Path, format: Value) -> Value {
    let mut config = json!({
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": path,
    });
    if !format.is_null() {
        config["log_format"] = format;
    }
    json!({ "name": "envoy.access_loggers.file", "typed_config": config })
}

fn text(format: &str) -> Value {
    json!({ "text_format_source": { "inline_string": format } })
}

/// The corpus's JSON format: every operator both proxies support whose value does not
/// depend on the clock or on random ids.
fn corpus_json_format() -> Value {
    json!({ "json_format": {
        "code": "%RESPONSE_CODE%",
        "flags": "%RESPONSE_FLAGS%",
        "long_flags": "%RESPONSE_FLAGS_LONG%",
        "method": "%REQ(:METHOD)%",
        "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        "upstream_path": "%REQ(:PATH)%",
        "short_path": "%REQ(:PATH):6%",
        "authority": "%REQ(:AUTHORITY)%",
        "protocol": "%PROTOCOL%",
        "received": "%BYTES_RECEIVED%",
        "cluster": "%UPSTREAM_CLUSTER%",
        "upstream": "%UPSTREAM_HOST%",
        "peer": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
        "direct_peer": "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%",
        "local": "%DOWNSTREAM_LOCAL_ADDRESS%",
        "sni": "%REQUESTED_SERVER_NAME%",
        "key": "%REQ(X-TEST-KEY)%",
        "content_type": "%RESP(CONTENT-TYPE)%",
        "xff": "%REQ(X-FORWARDED-FOR)%",
        "absent": "%REQ(X-NOT-SENT)%",
        "nested": { "status": "%RESPONSE_CODE%", "literal": "fixed" },
        "mixed": "code=%RESPONSE_CODE% flags=%RESPONSE_FLAGS%",
    } })
}

/// Lines of `path` once it holds `count` (Envoy flushes its files every 0.1 s here).
pub(super) async fn read_lines(path: &Path, count: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        if lines.len() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lines
}

/// Lines of `path` holding `needle`, once there is one.
async fn read_matching(path: &Path, needle: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect();
        if !lines.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lines
}

/// One run's addresses, replaced by names so two runs' lines compare.
struct Addresses {
    listener: SocketAddr,
    upstream: SocketAddr,
    dead: SocketAddr,
}

impl Addresses {
    fn normalize(&self, line: &str) -> String {
        line.replace(&self.listener.to_string(), "LISTENER")
            .replace(&self.upstream.to_string(), "UPSTREAM")
            .replace(&self.dead.to_string(), "DEAD")
    }
}

/// Envoy's default format with its clock, duration and request id taken out.
fn normalize_default(line: &str) -> String {
    let default = Regex::new(
        r#"^\[(?P<time>[^\]]+)\] (?P<request>"[^"]*") (?P<code>\d+) (?P<flags>\S+) (?P<rx>\d+) (?P<tx>\d+) (?P<duration>\d+) (?P<service>\S+) (?P<rest>.*)$"#,
    )
    .unwrap();
    let Some(c) = default.captures(line) else {
        return format!("unparsed: {line}");
    };
    let time = Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$").unwrap();
    assert!(time.is_match(&c["time"]), "START_TIME: {line}");
    let request_id =
        Regex::new(r#""[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}""#).unwrap();
    let service = if &c["service"] == "-" { "-" } else { "N" };
    format!(
        "{} {} {} {} {} {}",
        &c["request"],
        &c["code"],
        &c["flags"],
        &c["rx"],
        service,
        request_id.replace_all(&c["rest"], "\"ID\"")
    )
}

/// The JSON line as an object, with the response byte count left out: the echo upstream's
/// body repeats the request headers, and the two proxies add different ones (documented).
fn normalize_json(line: &str) -> Value {
    let mut object: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| json!({ "unparsed": line, "error": e.to_string() }));
    if let Some(o) = object.as_object_mut() {
        o.remove("sent");
    }
    object
}

struct LoggedRun {
    json: Vec<Value>,
    text: Vec<String>,
}

async fn logged_corpus(envoy: bool, dir: &Path) -> LoggedRun {
    let upstream = Upstream::start("a").await;
    let dead = free_addr();
    let (admin, listener) = (free_addr(), free_addr());
    let name = if envoy { "envoy" } else { "sluice" };
    let (json_path, text_path) = (
        dir.join(format!("{name}.json.log")),
        dir.join(format!("{name}.text.log")),
    );
    let hcm = json!({ "access_log": [
        file_log(&json_path, corpus_json_format()),
        file_log(&text_path, Value::Null),
    ] });
    let config = config_with(admin, listener, &upstream, dead, hcm);
    let proxy: Box<dyn std::any::Any> = if envoy {
        Box::new(Envoy::start(&config, admin).await.expect("start envoy"))
    } else {
        Box::new(Sluice::start(&config, admin).await.expect("start sluice"))
    };
    // The same retry keys for both: each run has its own upstream.
    run_corpus(listener, "log").await;
    let count = corpus().len();
    let (json_lines, text_lines) = (
        read_lines(&json_path, count).await,
        read_lines(&text_path, count).await,
    );
    drop(proxy);
    let addresses = Addresses {
        listener,
        upstream: upstream.addr,
        dead,
    };
    LoggedRun {
        json: json_lines
            .iter()
            .map(|l| normalize_json(&addresses.normalize(l)))
            .collect(),
        text: text_lines
            .iter()
            .map(|l| normalize_default(&addresses.normalize(l)))
            .collect(),
    }
}

#[tokio::test]
async fn access_log_lines_match_envoy_on_the_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let envoy = logged_corpus(true, dir.path()).await;
    let sluice = logged_corpus(false, dir.path()).await;
    let count = corpus().len();
    assert_eq!(envoy.json.len(), count, "Envoy's JSON lines");
    assert_eq!(sluice.json.len(), count, "sluice's JSON lines");
    assert_eq!(sluice.text.len(), count, "sluice's text lines");
    let mut differences = Vec::new();
    for (i, (label, ..)) in corpus().iter().enumerate() {
        if envoy.json[i] != sluice.json[i] {
            differences.push(format!(
                "{label} (json):\n  envoy:  {}\n  sluice: {}",
                envoy.json[i], sluice.json[i]
            ));
        }
        if envoy.text[i] != sluice.text[i] {
            differences.push(format!(
                "{label} (default):\n  envoy:  {}\n  sluice: {}",
                envoy.text[i], sluice.text[i]
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} differences:\n{}",
        differences.len(),
        differences.join("\n")
    );
    // The lines say something: the corpus's upstream failures are there by flag.
    assert!(sluice.json.iter().any(|l| l["flags"] == "UF"));
    assert!(sluice.json.iter().any(|l| l["flags"] == "NR"));
    assert!(sluice.json.iter().any(|l| l["flags"] == "UT"));
}

/// A TCP listener to `cluster_name` logging through its proxy and its listener.
fn logged_tcp_listener(name: &str, addr: SocketAddr, cluster_name: &str, dir: &Path) -> Value {
    let proxy_log = file_log(
        &dir.join(format!("{name}.tcp.log")),
        text("%UPSTREAM_CLUSTER% %BYTES_RECEIVED% %BYTES_SENT% %RESPONSE_FLAGS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %UPSTREAM_HOST%\n"),
    );
    let listener_log = file_log(
        &dir.join(format!("{name}.listener.log")),
        text("listener %DOWNSTREAM_LOCAL_ADDRESS% %BYTES_RECEIVED% %BYTES_SENT%\n"),
    );
    json!({ "name": name, "address": address(addr),
        "access_log": [listener_log],
        "filter_chains": [ { "filters": [
            tcp_proxy(name, cluster_name, json!({ "access_log": [proxy_log] })) ] } ] })
}

/// One exchange with an echoing TCP upstream (or a refused one): 5 bytes up, half-close.
async fn tcp_exchange(addr: SocketAddr) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"hello").await.unwrap();
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    answer
}

/// The TCP proxy, listener and admin logs of one proxy, addresses normalised.
async fn logged_connections(envoy: bool, dir: &Path) -> Vec<String> {
    let upstream = Upstream::start("tcp").await;
    let (admin, good, bad, dead) = (free_addr(), free_addr(), free_addr(), free_addr());
    let admin_log = dir.join("admin.log");
    let mut config: Value = serde_json::from_str(&bootstrap(
        admin,
        vec![
            logged_tcp_listener("good", good, "echo", dir),
            logged_tcp_listener("bad", bad, "dead", dir),
        ],
        vec![
            cluster("echo", &[(upstream.addr, 1)], json!({})),
            cluster("dead", &[(dead, 1)], json!({})),
        ],
    ))
    .unwrap();
    config["admin"]["access_log"] = json!([file_log(
        &admin_log,
        text("admin %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %PROTOCOL%\n")
    )]);
    let config = config.to_string();
    let proxy: Box<dyn std::any::Any> = if envoy {
        Box::new(Envoy::start(&config, admin).await.expect("start envoy"))
    } else {
        Box::new(Sluice::start(&config, admin).await.expect("start sluice"))
    };
    // An HTTP request over the raw TCP proxy: the echo upstream answers it.
    let mut stream = TcpStream::connect(good).await.unwrap();
    stream
        .write_all(b"GET /tcp HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    drop(stream);
    assert!(tcp_exchange(bad).await.is_empty());
    HttpClient::http1()
        .get(admin, "admin", "/ready?probe=log", &[])
        .await
        .unwrap();
    let mut lines = Vec::new();
    // The admin log also holds the harness's readiness polls: only this test's request.
    for (file, needle) in [
        ("good.tcp.log", ""),
        ("bad.tcp.log", ""),
        ("good.listener.log", ""),
        ("bad.listener.log", ""),
        ("admin.log", "probe=log"),
    ] {
        let read = read_matching(&dir.join(file), needle).await;
        lines.extend(read.into_iter().map(|l| format!("{file}: {l}")));
    }
    drop(proxy);
    lines
        .iter()
        .map(|l| {
            l.replace(&good.to_string(), "GOOD")
                .replace(&bad.to_string(), "BAD")
                .replace(&upstream.addr.to_string(), "UPSTREAM")
                .replace(&dead.to_string(), "DEAD")
        })
        .collect()
}

#[tokio::test]
async fn tcp_listener_and_admin_logs_match_envoy() {
    let (envoy_dir, sluice_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let envoy = logged_connections(true, envoy_dir.path()).await;
    let sluice = logged_connections(false, sluice_dir.path()).await;
    assert_eq!(sluice.len(), 5, "one line per log: {sluice:#?}");
    assert_eq!(envoy, sluice);
    // The bytes are counted: the request went up, the answer came back.
    let good = sluice
        .iter()
        .find(|l| l.starts_with("good.tcp.log"))
        .unwrap();
    let fields: Vec<&str> = good.split(' ').collect();
    assert_eq!(fields[1], "echo");
    assert!(fields[2].parse::<u64>().unwrap() > 40, "{good}");
    assert!(fields[3].parse::<u64>().unwrap() > 100, "{good}");
    assert!(sluice
        .iter()
        .any(|l| l.starts_with("bad.tcp.log: dead 0 0 UF")));
}

#[tokio::test]
async fn a_full_disk_or_a_stalled_pipe_drops_lines_and_never_stalls_requests() {
    let upstream = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let pipe = dir.path().join("stalled.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&pipe)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo {pipe:?}");
    let (admin, listener) = (free_addr(), free_addr());
    let hcm = json!({ "access_log": [
        // The disk is full: every write fails.
        file_log(Path::new("/dev/full"), Value::Null),
        // Nobody ever reads the pipe: its writer blocks opening it.
        file_log(&pipe, Value::Null),
    ] });
    let config = bootstrap(
        admin,
        vec![http_listener("edge", listener, to_cluster("a"), hcm)],
        vec![cluster("a", &[(upstream.addr, 1)], json!({}))],
    );
    let sluice = Sluice::start_with_args(&config, admin, &["--access-log-queue-lines", "16"])
        .await
        .unwrap();
    let client = HttpClient::http1();
    for i in 0..100 {
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            client.get(listener, "h", &format!("/r{i}"), &[]),
        )
        .await
        .expect("a request stalled behind its access log")
        .unwrap();
        assert_eq!(reply.status, 200);
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            sluice.stat("access_log.write_failed").await.unwrap_or(0) >= 1
                && sluice.stat("access_log.dropped").await.unwrap_or(0) >= 100 - 16 - 1
        })
        .await,
        "failed writes {:?}, dropped lines {:?}",
        sluice.stat("access_log.write_failed").await,
        sluice.stat("access_log.dropped").await
    );
}

#[test]
fn an_unknown_command_operator_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, listener) = (free_addr(), free_addr());
    let hcm = json!({ "access_log": [ file_log(
        &dir.path().join("x.log"),
        text("%REQ(:PATH)% %NOT_AN_OPERATOR%\n"),
    ) ] });
    let config = bootstrap(
        admin,
        vec![http_listener(
            "edge",
            listener,
            json!({ "virtual_hosts": [] }),
            hcm,
        )],
        vec![],
    );
    let (ok, stderr) = validate(&config);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("NOT_AN_OPERATOR"), "{stderr}");
    assert!(stderr.contains("access_log"), "names the field: {stderr}");
}

/// The first line `binary` writes to stderr with `args`, as JSON; the process is stopped.
fn first_json_log_line(binary_name: &str, args: &[&str]) -> Value {
    use std::io::BufRead;
    let mut child = std::process::Command::new(binary(binary_name))
        .args(args)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stderr).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("a log line within 20 s");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{binary_name}: not JSON ({e}): {line}"))
}

#[test]
fn both_binaries_log_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, listener) = (free_addr(), free_addr());
    let config = bootstrap(
        admin,
        vec![http_listener("edge", listener, to_cluster("a"), json!({}))],
        vec![cluster("a", &[(listener, 1)], json!({}))],
    );
    let path = dir.path().join("bootstrap.json");
    std::fs::write(&path, config).unwrap();
    let line = first_json_log_line(
        "sluice",
        &["--log-format", "json", "-c", path.to_str().unwrap()],
    );
    assert_eq!(line["level"], "INFO", "{line}");
    assert!(line["fields"]["message"].is_string(), "{line}");
    assert!(
        line["target"].as_str().unwrap().starts_with("sluice"),
        "{line}"
    );

    let (xds, api) = (free_addr().to_string(), free_addr().to_string());
    let store = format!("file:{}", dir.path().join("store").display());
    let line = first_json_log_line(
        "sluice-cp",
        &[
            "--log-format",
            "json",
            "--xds-listen",
            &xds,
            "--api-listen",
            &api,
            "--store",
            &store,
        ],
    );
    assert!(
        line["level"].is_string() && line["fields"]["message"].is_string(),
        "{line}"
    );
    assert!(
        line["target"].as_str().unwrap().starts_with("sluice_cp"),
        "{line}"
    );
}
