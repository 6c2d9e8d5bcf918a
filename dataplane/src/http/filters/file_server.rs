//! Sluice's static file server (`sluice.extensions.filters.http.file_server.v1`): a
//! terminal filter that answers GET and HEAD from files under a root directory, as nginx's
//! `root` does — content types by extension, strong ETags and `Last-Modified`,
//! `If-None-Match` / `If-Modified-Since` → 304, one byte range (206, suffix ranges, 416),
//! index files, and a redirect that adds the slash to a directory's path.
//!
//! A path never leaves the root: each segment is percent-decoded on its own, and one that
//! decodes to `.`, `..` or holds a slash, backslash or NUL is answered 404, as is a file
//! whose real path (symlinks resolved) is outside the root's. Files stream in 256 KiB reads,
//! so a large file costs one buffer, not its size (no sendfile: hyper owns the socket).
//!
//! The file system calls run on the worker that serves the connection, as nginx's do
//! unless `aio threads` is on: a hand-off to tokio's blocking pool per call cost about
//! three times the CPU of the whole request on a file in the page cache. So a root
//! belongs on a local disk or tmpfs; a slow network file system would stall the worker.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue, Method, StatusCode};
use xds_types::http_filter::FileServer;

use crate::body::{Body, BoxError};
use crate::http::ctx::RequestCtx;
use crate::http::filter::{Decision, HttpFilter, PerRoute};
use crate::local_reply::LocalReply;

/// One read of a file body.
const READ_CHUNK: usize = 256 * 1024;

/// A file server's config with its root resolved once, shared by every request it
/// serves (the listener's, or a route's override).
pub struct Site {
    config: FileServer,
    /// The root's real path, when it existed as the config was compiled; otherwise it is
    /// resolved per request, so a root mounted later is still served.
    root: Option<PathBuf>,
}

impl Site {
    /// Resolves the root once; warns when it is not a directory (yet).
    pub fn new(config: &FileServer) -> Self {
        let root = std::fs::canonicalize(&config.root)
            .ok()
            .filter(|r| r.is_dir());
        if root.is_none() {
            tracing::warn!(root = %config.root.display(), "file server root is not a directory: requests are answered 404 until it is one");
        }
        Self {
            config: config.clone(),
            root,
        }
    }
}

/// The filter: its listener-level site (a route may replace it).
pub struct FileServerFilter {
    site: Arc<Site>,
}

impl FileServerFilter {
    pub fn new(config: &FileServer) -> Self {
        Self {
            site: Arc::new(Site::new(config)),
        }
    }
}

impl HttpFilter for FileServerFilter {
    fn on_request(
        &self,
        _ctx: &mut RequestCtx<'_>,
        per_route: Option<&PerRoute>,
        request: &mut Parts,
    ) -> Decision {
        let site = match per_route {
            Some(PerRoute::FileServer(site)) => site,
            _ => &self.site,
        };
        if request.method != Method::GET && request.method != Method::HEAD {
            let mut reply = LocalReply::new(StatusCode::METHOD_NOT_ALLOWED, "");
            reply
                .headers
                .push((header::ALLOW, HeaderValue::from_static("GET, HEAD")));
            return Decision::Respond(reply);
        }
        Decision::Respond(serve(site, request))
    }
}

fn not_found() -> LocalReply {
    LocalReply::new(StatusCode::NOT_FOUND, "")
}

/// The request path's segments under the root, decoded; `None` for a path that would
/// leave it or that names something no file can be called.
fn segments(path: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for raw in path.split('/').filter(|s| !s.is_empty()) {
        let decoded = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .ok()?
            .into_owned();
        if decoded == "." || decoded == ".." || decoded.contains(['/', '\\', '\0']) {
            return None;
        }
        out.push(decoded);
    }
    Some(out)
}

/// The file a request path names: the file itself, or a directory's first index file.
enum Target {
    File(PathBuf),
    /// A directory asked for without its trailing slash.
    AddSlash,
    Missing,
}

fn locate(config: &FileServer, root: &Path, path: &str) -> Target {
    let Some(relative) = path.strip_prefix(config.strip_prefix.as_str()) else {
        return Target::Missing;
    };
    let Some(segments) = segments(relative) else {
        return Target::Missing;
    };
    let mut candidate = root.to_path_buf();
    candidate.extend(&segments);
    let Ok(meta) = std::fs::metadata(&candidate) else {
        return Target::Missing;
    };
    if meta.is_dir() {
        if !path.ends_with('/') {
            return Target::AddSlash;
        }
        for index in &config.index_files {
            let file = candidate.join(index);
            if std::fs::metadata(&file).is_ok_and(|m| m.is_file()) {
                candidate = file;
                break;
            }
        }
    }
    // Symlinks resolved, the file must still be under the root.
    match std::fs::canonicalize(&candidate) {
        Ok(real) if real.starts_with(root) && real.is_file() => Target::File(real),
        _ => Target::Missing,
    }
}

/// A file's strong validator, as nginx forms it: modification time and length in hex.
fn etag(modified: SystemTime, len: u64) -> String {
    let secs = modified
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("\"{secs:x}-{len:x}\"")
}

/// Whether `If-None-Match` lists `tag` (weak comparison) or `*` (the cache filter's
/// validators too).
pub(crate) fn none_match(value: &str, tag: &str) -> bool {
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_string();
    value
        .split(',')
        .any(|t| t.trim() == "*" || bare(t) == bare(tag))
}

/// A byte range of a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Range {
    /// No usable `Range` (absent, malformed, several ranges): the whole file.
    Whole,
    Part {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

/// Parses one `bytes=` range; several ranges (multipart) and anything malformed are
/// ignored, which RFC 9110 allows, so a header of thousands of ranges costs nothing.
fn range(value: &str, len: u64) -> Range {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Range::Whole;
    };
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Range::Whole;
    };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (number(first), number(last)) {
        (None, Some(suffix)) if first.trim().is_empty() => {
            if suffix == 0 || len == 0 {
                Range::Unsatisfiable
            } else {
                Range::Part {
                    start: len.saturating_sub(suffix),
                    end: len - 1,
                }
            }
        }
        (Some(start), None) if last.trim().is_empty() => {
            if start >= len {
                Range::Unsatisfiable
            } else {
                Range::Part {
                    start,
                    end: len - 1,
                }
            }
        }
        (Some(start), Some(end)) if end >= start => {
            if start >= len {
                Range::Unsatisfiable
            } else {
                Range::Part {
                    start,
                    end: end.min(len - 1),
                }
            }
        }
        _ => Range::Whole,
    }
}

fn content_type(config: &FileServer, file: &Path) -> HeaderValue {
    let ext = file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let mime = config
        .mime_types
        .get(&ext)
        .cloned()
        .or_else(|| mime_guess::from_ext(&ext).first_raw().map(str::to_string))
        .unwrap_or_else(|| config.default_mime_type.clone());
    HeaderValue::from_str(&mime).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

/// The answer to one request (file system calls, on the worker: see the module docs).
fn serve(site: &Site, request: &Parts) -> LocalReply {
    let config = &site.config;
    let resolved;
    let root = match &site.root {
        Some(root) => root,
        None => match std::fs::canonicalize(&config.root) {
            Ok(root) => {
                resolved = root;
                &resolved
            }
            Err(_) => return not_found(),
        },
    };
    let path = request.uri.path();
    let head = request.method == Method::HEAD;
    let header = |name: header::HeaderName| request.headers.get(name).and_then(|v| v.to_str().ok());
    let file = match locate(config, root, path) {
        Target::File(file) => file,
        Target::Missing => return not_found(),
        Target::AddSlash => {
            let mut reply = LocalReply::new(StatusCode::MOVED_PERMANENTLY, "");
            let location = match request.uri.query() {
                Some(q) => format!("{path}/?{q}"),
                None => format!("{path}/"),
            };
            if let Ok(v) = HeaderValue::from_str(&location) {
                reply.headers.push((header::LOCATION, v));
            }
            return reply;
        }
    };
    let Ok(mut opened) = File::open(&file) else {
        return not_found();
    };
    let Ok(meta) = opened.metadata() else {
        return not_found();
    };
    let len = meta.len();
    let modified = meta.modified().unwrap_or(UNIX_EPOCH);
    let tag = etag(modified, len);
    let last_modified = httpdate::fmt_http_date(modified);
    let mut validators = vec![
        (
            header::ETAG,
            HeaderValue::from_str(&tag).expect("hex and quotes"),
        ),
        (
            header::LAST_MODIFIED,
            HeaderValue::from_str(&last_modified).expect("an HTTP date"),
        ),
    ];
    let not_modified = match header(header::IF_NONE_MATCH) {
        Some(list) => none_match(list, &tag),
        None => header(header::IF_MODIFIED_SINCE)
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .is_some_and(|since| whole_seconds(modified) <= whole_seconds(since)),
    };
    if not_modified {
        let mut reply = LocalReply::new(StatusCode::NOT_MODIFIED, "");
        reply.headers.append(&mut validators);
        return reply;
    }
    let mut wanted = match header(header::RANGE) {
        Some(r) if !head => range(r, len),
        _ => Range::Whole,
    };
    if let Some(if_range) = header(header::IF_RANGE) {
        // A range of another version of the file is no range at all.
        let current = if if_range.trim_start().starts_with('"') {
            if_range.trim() == tag
        } else {
            if_range.trim() == last_modified
        };
        if !current {
            wanted = Range::Whole;
        }
    }
    let mut reply = LocalReply::new(StatusCode::OK, "");
    reply.headers.append(&mut validators);
    reply
        .headers
        .push((header::CONTENT_TYPE, content_type(config, &file)));
    reply
        .headers
        .push((header::ACCEPT_RANGES, HeaderValue::from_static("bytes")));
    let (start, count) = match wanted {
        Range::Whole => (0, len),
        Range::Part { start, end } => {
            reply.status = StatusCode::PARTIAL_CONTENT;
            reply.headers.push((
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")).expect("digits"),
            ));
            (start, end - start + 1)
        }
        Range::Unsatisfiable => {
            let mut reply = LocalReply::new(StatusCode::RANGE_NOT_SATISFIABLE, "");
            reply.headers.push((
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).expect("digits"),
            ));
            return reply;
        }
    };
    reply
        .headers
        .push((header::CONTENT_LENGTH, HeaderValue::from(count)));
    if head || count == 0 {
        reply.stream = Some(crate::body::empty());
        return reply;
    }
    if start > 0 {
        use std::io::{Seek, SeekFrom};
        if opened.seek(SeekFrom::Start(start)).is_err() {
            return not_found();
        }
    }
    // A file that fits one read is read now and answered whole.
    if count <= READ_CHUNK as u64 {
        match read_chunk(&mut opened, count) {
            Ok(whole) if whole.len() as u64 == count => {
                reply.stream = Some(crate::body::full(whole));
            }
            Ok(_) => reply.stream = Some(failed(shrank())),
            Err(e) => reply.stream = Some(failed(e)),
        }
        return reply;
    }
    reply.stream = Some(http_body_util::BodyExt::boxed(FileBody {
        file: opened,
        left: count,
    }));
    reply
}

/// At most one chunk of what is `left` of the file, from where it stands, into a buffer
/// that is not zeroed first (`read_to_end` reads into spare capacity).
fn read_chunk(file: &mut File, left: u64) -> std::io::Result<Bytes> {
    let want = left.min(READ_CHUNK as u64);
    let mut buf = Vec::with_capacity(want as usize);
    file.take(want).read_to_end(&mut buf)?;
    if buf.is_empty() {
        return Err(shrank());
    }
    Ok(Bytes::from(buf))
}

/// A body that fails at once: the headers promised a length the file could not give.
fn failed(e: std::io::Error) -> Body {
    tracing::warn!(error = %e, "file server read failed");
    let frames =
        futures_util::stream::once(
            async move { Err::<http_body::Frame<Bytes>, BoxError>(Box::new(e)) },
        );
    http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(frames))
}

fn shrank() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the file shrank while it was sent",
    )
}

fn whole_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// The rest of a file, a chunk per poll: the body of a file larger than one read, which
/// hyper pulls as fast as the client takes it, so memory stays at one chunk.
struct FileBody {
    file: File,
    left: u64,
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let left = self.left;
        let frame = match read_chunk(&mut self.file, left) {
            Ok(chunk) => {
                self.left -= chunk.len() as u64;
                Ok(http_body::Frame::data(chunk))
            }
            Err(e) => {
                self.left = 0;
                Err(Box::new(e) as BoxError)
            }
        };
        std::task::Poll::Ready(Some(frame))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_as_rfc_9110() {
        assert_eq!(range("bytes=0-9", 100), Range::Part { start: 0, end: 9 });
        assert_eq!(range("bytes=90-", 100), Range::Part { start: 90, end: 99 });
        assert_eq!(range("bytes=-10", 100), Range::Part { start: 90, end: 99 });
        assert_eq!(range("bytes=-500", 100), Range::Part { start: 0, end: 99 });
        assert_eq!(
            range("bytes=50-500", 100),
            Range::Part { start: 50, end: 99 }
        );
        assert_eq!(range("bytes=100-", 100), Range::Unsatisfiable);
        assert_eq!(range("bytes=-0", 100), Range::Unsatisfiable);
        assert_eq!(range("bytes=9-0", 100), Range::Whole);
        assert_eq!(range("bytes=0-1,5-6", 100), Range::Whole);
        assert_eq!(range("items=0-1", 100), Range::Whole);
        assert_eq!(range("bytes=x-1", 100), Range::Whole);
        assert_eq!(range("bytes=+1-2", 100), Range::Whole);
    }

    #[test]
    fn segments_refuse_what_leaves_the_root() {
        assert_eq!(segments("/a/b.txt"), Some(vec!["a".into(), "b.txt".into()]));
        assert_eq!(segments("//a//"), Some(vec!["a".into()]));
        assert_eq!(segments("/a%20b"), Some(vec!["a b".into()]));
        for hostile in [
            "/../x",
            "/a/%2e%2e/x",
            "/a%2fb",
            "/a%5cb",
            "/%00",
            "/.",
            "/%2E%2E",
        ] {
            assert_eq!(segments(hostile), None, "{hostile}");
        }
    }

    #[test]
    fn if_none_match_compares_weakly() {
        assert!(none_match("\"a-1\"", "\"a-1\""));
        assert!(none_match("W/\"a-1\"", "\"a-1\""));
        assert!(none_match("\"x\", \"a-1\"", "\"a-1\""));
        assert!(none_match("*", "\"a-1\""));
        assert!(!none_match("\"a-2\"", "\"a-1\""));
    }
}
