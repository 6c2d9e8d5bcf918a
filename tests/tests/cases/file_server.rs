//! Sluice's static file server (`sluice.extensions.filters.http.file_server.v1`): content
//! types, validators and 304s, byte ranges, index files and the directory redirect, the
//! per-route forms, traversal probes, and a 1 GiB file streamed in bounded memory.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::Method;
use serde_json::json;
use sluice_tests::client::{raw_exchange, raw_status, HttpClient};
use sluice_tests::config::{bootstrap, cluster, http_listener};
use sluice_tests::free_addr;
use sluice_tests::process::Sluice;
use sluice_tests::upstream::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FILE_SERVER: &str =
    "type.googleapis.com/sluice.extensions.filters.http.file_server.v1.FileServer";
const FILE_SERVER_PER_ROUTE: &str =
    "type.googleapis.com/sluice.extensions.filters.http.file_server.v1.FileServerPerRoute";

/// `root/site` is served under `/static/`; `root/other` under `/other/` (a route's own
/// config); `/api/` goes to the upstream (the filter is off there); `root/secret.txt` is
/// outside every served root.
fn config(admin: SocketAddr, listener: SocketAddr, upstream: SocketAddr, root: &Path) -> String {
    let site = root.join("site");
    let routes = json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": [
        { "match": { "prefix": "/api/" }, "route": { "cluster": "app" },
          "typed_per_filter_config": { "files": {
              "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": true } } },
        { "match": { "prefix": "/other/" }, "route": { "cluster": "app" },
          "typed_per_filter_config": { "files": { "@type": FILE_SERVER_PER_ROUTE,
              "file_server": { "root": root.join("other"), "strip_prefix": "/other",
                               "index_files": ["home.htm"] } } } },
        { "match": { "prefix": "/" }, "route": { "cluster": "app" } } ] } ] });
    let hcm = json!({ "http_filters": [
        { "name": "files", "typed_config": { "@type": FILE_SERVER, "root": site,
            "strip_prefix": "/static", "mime_types": { "data": "application/x-sluice-data" },
            "default_mime_type": "application/x-unknown" } },
        { "name": "envoy.filters.http.router",
          "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } } ] });
    bootstrap(
        admin,
        vec![http_listener("web", listener, routes, hcm)],
        vec![cluster("app", &[(upstream, 1)], json!({}))],
    )
}

fn write(path: &Path, body: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
}

#[tokio::test]
async fn the_file_server_serves_files_with_validators_ranges_and_no_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let css: Vec<u8> = b"body { color: teal; }\n".repeat(20);
    write(&root.join("site/style.css"), &css);
    // Larger than one read (256 KiB), so it streams in chunks; no two KiB alike.
    let pages: Vec<u8> = (0..700u32)
        .flat_map(|i| format!("{i:>1023}\n").into_bytes())
        .collect();
    write(&root.join("site/pages.txt"), &pages);
    write(&root.join("site/index.html"), b"<h1>home</h1>");
    write(&root.join("site/sub/index.html"), b"<h1>sub</h1>");
    write(&root.join("site/x.data"), b"data");
    write(&root.join("site/blob.zzz"), b"blob");
    write(&root.join("site/app.js"), b"console.log(1)");
    write(&root.join("other/home.htm"), b"other home");
    write(&root.join("secret.txt"), b"secret");
    std::os::unix::fs::symlink(root.join("secret.txt"), root.join("site/out-link")).unwrap();
    std::os::unix::fs::symlink(root.join("site/app.js"), root.join("site/in-link.js")).unwrap();
    let big = std::fs::File::create(root.join("site/big.bin")).unwrap();
    big.set_len(1 << 30).unwrap();
    drop(big);

    let upstream = Upstream::start("app").await;
    let (admin, listener) = (free_addr(), free_addr());
    let sluice = Sluice::start(&config(admin, listener, upstream.addr, root), admin)
        .await
        .expect("start sluice");
    let client = HttpClient::http1();
    let get = |path: &'static str, headers: Vec<(&'static str, String)>| {
        let client = &client;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            client.get(listener, "h", path, &headers).await.unwrap()
        }
    };

    let css_reply = get("/static/style.css", vec![]).await;
    assert_eq!(css_reply.status, 200);
    assert_eq!(css_reply.body.as_ref(), css.as_slice());
    assert_eq!(
        css_reply.header("content-type").as_deref(),
        Some("text/css")
    );
    assert_eq!(
        css_reply.header("content-length"),
        Some(css.len().to_string())
    );
    assert_eq!(css_reply.header("accept-ranges").as_deref(), Some("bytes"));
    let etag = css_reply.header("etag").unwrap();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "a strong tag: {etag}"
    );
    let last_modified = css_reply.header("last-modified").unwrap();

    for (path, kind, body) in [
        ("/static/", "text/html", &b"<h1>home</h1>"[..]),
        ("/static/sub/", "text/html", b"<h1>sub</h1>"),
        ("/static/x.data", "application/x-sluice-data", b"data"),
        ("/static/blob.zzz", "application/x-unknown", b"blob"),
        ("/static/in-link.js", "text/javascript", b"console.log(1)"),
        ("/other/", "text/html", b"other home"),
    ] {
        let reply = get(path, vec![]).await;
        assert_eq!(
            (reply.status.as_u16(), reply.body.as_ref()),
            (200, body),
            "{path}"
        );
        assert_eq!(
            reply.header("content-type").as_deref(),
            Some(kind),
            "{path}"
        );
    }
    let redirect = get("/static/sub", vec![]).await;
    assert_eq!(redirect.status, 301);
    assert_eq!(redirect.header("location").as_deref(), Some("/static/sub/"));
    let api = get("/api/x", vec![]).await;
    assert_eq!(api.json()["server"], "app", "the filter is off on /api/");

    // Validators: 304 with the tags, no body; a stale date or another tag gets the file.
    for headers in [
        vec![("if-none-match", etag.clone())],
        vec![("if-none-match", format!("\"other\", W/{etag}"))],
        vec![("if-none-match", "*".to_string())],
        vec![("if-modified-since", last_modified.clone())],
    ] {
        let reply = get("/static/style.css", headers.clone()).await;
        assert_eq!(reply.status, 304, "{headers:?}");
        assert!(reply.body.is_empty());
        assert_eq!(reply.header("etag"), Some(etag.clone()));
    }
    for headers in [
        vec![("if-none-match", "\"other\"".to_string())],
        vec![(
            "if-modified-since",
            "Thu, 01 Jan 1998 00:00:00 GMT".to_string(),
        )],
        // If-None-Match wins over If-Modified-Since.
        vec![
            ("if-none-match", "\"other\"".to_string()),
            ("if-modified-since", last_modified.clone()),
        ],
        vec![("if-none-match", "\"x\",".repeat(2000))],
    ] {
        let reply = get("/static/style.css", headers).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body.len(), css.len());
    }

    // Ranges.
    let len = css.len();
    let ranged_of = |path: &'static str, range: String| get(path, vec![("range", range)]);
    let ranged = |range: String| ranged_of("/static/style.css", range);
    let part = ranged("bytes=0-9".into()).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body.as_ref(), &css[..10]);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 0-9/{len}"))
    );
    let suffix = ranged("bytes=-5".into()).await;
    assert_eq!(suffix.status, 206);
    assert_eq!(suffix.body.as_ref(), &css[len - 5..]);
    let open = ranged(format!("bytes={}-", len - 3)).await;
    assert_eq!(open.body.as_ref(), &css[len - 3..]);
    let beyond = ranged(format!("bytes={len}-")).await;
    assert_eq!(beyond.status, 416);
    assert_eq!(
        beyond.header("content-range"),
        Some(format!("bytes */{len}"))
    );
    for whole in [
        "bytes=0-1,4-5".to_string(),
        "bytes=0-0,".repeat(5000),
        "bytes=5-1".into(),
        "lines=1-2".into(),
    ] {
        let reply = ranged(whole).await;
        assert_eq!((reply.status.as_u16(), reply.body.len()), (200, len));
    }
    let stale = get(
        "/static/style.css",
        vec![
            ("range", "bytes=0-9".into()),
            ("if-range", "\"old\"".into()),
        ],
    )
    .await;
    assert_eq!((stale.status.as_u16(), stale.body.len()), (200, len));
    let current = get(
        "/static/style.css",
        vec![("range", "bytes=0-9".into()), ("if-range", etag.clone())],
    )
    .await;
    assert_eq!(current.status, 206);
    // A file of several reads, whole and from a range that starts in its second read.
    let whole = get("/static/pages.txt", vec![]).await;
    assert_eq!(
        (whole.status.as_u16(), whole.body.len()),
        (200, pages.len())
    );
    assert!(
        whole.body.as_ref() == pages.as_slice(),
        "the streamed file differs"
    );
    let tail = ranged_of("/static/pages.txt", "bytes=300000-".into()).await;
    assert_eq!(tail.status, 206);
    assert!(
        tail.body.as_ref() == &pages[300_000..],
        "the ranged tail differs"
    );

    // HEAD: the headers, no body; other methods are refused.
    let head = client
        .send(
            listener,
            Method::HEAD,
            "h",
            "/static/style.css",
            &[],
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some(len.to_string()));
    assert!(head.body.is_empty());
    let post = client
        .send(
            listener,
            Method::POST,
            "h",
            "/static/style.css",
            &[],
            b"x".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow").as_deref(), Some("GET, HEAD"));

    // Traversal probes, sent raw so no client tidies the path: all 404.
    for probe in [
        "/static/../secret.txt",
        "/static/sub/../../secret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/%2E%2E%2fsecret.txt",
        "/static/sub%2f..%2f..%2fsecret.txt",
        "/static/..%5csecret.txt",
        "/static/out-link",
        "/static/missing.css",
        "/secret.txt",
    ] {
        let raw = format!("GET {probe} HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n");
        let answer = raw_exchange(listener, raw.as_bytes(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(raw_status(&answer), Some(404), "{probe}: {answer}");
        assert!(
            !answer.contains("secret"),
            "{probe} leaked the file: {answer}"
        );
    }

    // A 1 GiB file streams whole, and sluice holds a few buffers of it at a time.
    let mut stream = tokio::net::TcpStream::connect(listener).await.unwrap();
    stream
        .write_all(b"GET /static/big.bin HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("the big file arrives within 2 minutes")
            .unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert!(total > 1 << 30, "got {total} bytes of headers and body");
    assert!(total < (1 << 30) + 1024, "got {total} bytes");
    let peak = sluice_tests::process::peak_rss_of(sluice.pid());
    assert!(
        peak < 64 << 20,
        "peak RSS {} MiB serving a 1 GiB file",
        peak >> 20
    );
}
