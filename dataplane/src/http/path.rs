//! The connection manager's path policy, applied before filters and routing (the upstream
//! sees the result), in Envoy's order: escaped slashes (`%2F`, `%5C`), RFC 3986
//! normalisation, then merging slashes. The query is never touched.

use std::borrow::Cow;

use xds_types::hcm::{EscapedSlashes, PathPolicy};

/// What the policy makes of a request's path.
#[derive(Debug, PartialEq, Eq)]
pub enum PathOutcome<'a> {
    /// Forward this path (and query).
    Forward(Cow<'a, str>),
    /// Refuse the request (400).
    Reject,
    /// Answer 307 with this path (and query) as the new location.
    Redirect(String),
}

/// Applies `policy` to `path_and_query`.
pub fn apply<'a>(policy: &PathPolicy, path_and_query: &'a str) -> PathOutcome<'a> {
    if !policy.normalize && !policy.merge_slashes && policy.escaped_slashes == EscapedSlashes::Keep
    {
        return PathOutcome::Forward(Cow::Borrowed(path_and_query));
    }
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut out = Cow::Borrowed(path);
    let mut redirect = false;
    if policy.escaped_slashes != EscapedSlashes::Keep && has_escaped_slash(&out) {
        match policy.escaped_slashes {
            EscapedSlashes::Reject => return PathOutcome::Reject,
            EscapedSlashes::UnescapeAndRedirect => redirect = true,
            _ => {}
        }
        out = Cow::Owned(unescape_slashes(&out));
    }
    if policy.normalize {
        match normalize(&out) {
            Some(n) => out = Cow::Owned(n),
            None => return PathOutcome::Reject,
        }
    }
    if policy.merge_slashes && out.contains("//") {
        out = Cow::Owned(merge_slashes(&out));
    }
    let joined = match (out, query) {
        (Cow::Borrowed(_), _) => Cow::Borrowed(path_and_query),
        (Cow::Owned(p), None) => Cow::Owned(p),
        (Cow::Owned(p), Some(q)) => Cow::Owned(format!("{p}?{q}")),
    };
    if redirect {
        return PathOutcome::Redirect(joined.into_owned());
    }
    PathOutcome::Forward(joined)
}

fn has_escaped_slash(path: &str) -> bool {
    path.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && ((w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f'))
                || (w[1] == b'5' && w[2].eq_ignore_ascii_case(&b'c')))
    })
}

fn unescape_slashes(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let (a, b) = (bytes[i + 1], bytes[i + 2].to_ascii_lowercase());
            if a == b'2' && b == b'f' {
                out.push('/');
                i += 3;
                continue;
            }
            if a == b'5' && b == b'c' {
                out.push('\\');
                i += 3;
                continue;
            }
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 normalisation as Envoy does it: percent-encoded unreserved characters
/// decoded (other escapes, and `%` not followed by two hex digits, left as they are),
/// backslashes turned into slashes, then dot segments removed (§5.2.4). `None` for a
/// path that does not start with `/`.
fn normalize(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let escaped = (b == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match escaped {
            Some(value) if unreserved(value) => {
                decoded.push(value as char);
                i += 3;
            }
            _ => {
                decoded.push(if b == b'\\' { '/' } else { b as char });
                i += 1;
            }
        }
    }
    Some(remove_dot_segments(&decoded))
}

fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path[1..].split('/').collect();
    let last = parts.len() - 1;
    for (i, segment) in parts.iter().enumerate() {
        match *segment {
            "." => {
                if i == last {
                    segments.push("");
                }
            }
            ".." => {
                segments.pop();
                if i == last {
                    segments.push("");
                }
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/"))
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(normalize: bool, merge: bool, escaped: EscapedSlashes) -> PathPolicy {
        PathPolicy {
            normalize,
            merge_slashes: merge,
            escaped_slashes: escaped,
        }
    }

    fn forward(p: &PathPolicy, path: &str) -> String {
        match apply(p, path) {
            PathOutcome::Forward(p) => p.into_owned(),
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn normalisation_removes_dots_and_decodes_unreserved() {
        let p = policy(true, false, EscapedSlashes::Keep);
        assert_eq!(forward(&p, "/a/./b/../c?x=/../y"), "/a/c?x=/../y");
        assert_eq!(forward(&p, "/../../a"), "/a");
        assert_eq!(forward(&p, "/a/%2e%2E/b"), "/b");
        assert_eq!(forward(&p, "/%41%7e%2f%3a"), "/A~%2f%3a");
        assert_eq!(forward(&p, "/a/.."), "/");
        assert_eq!(forward(&p, "/a/b/."), "/a/b/");
        assert_eq!(forward(&p, "/odd%zz%4"), "/odd%zz%4");
        assert_eq!(forward(&p, "/a\\b"), "/a/b");
    }

    #[test]
    fn slashes_merge_and_escaped_slashes_follow_the_action() {
        assert_eq!(
            forward(&policy(false, true, EscapedSlashes::Keep), "//a///b/?q=//"),
            "/a/b/?q=//"
        );
        assert_eq!(
            apply(&policy(false, false, EscapedSlashes::Reject), "/a%2Fb"),
            PathOutcome::Reject
        );
        assert_eq!(
            forward(
                &policy(false, false, EscapedSlashes::UnescapeAndForward),
                "/a%2fb%5Cc"
            ),
            "/a/b\\c"
        );
        assert_eq!(
            apply(
                &policy(true, true, EscapedSlashes::UnescapeAndRedirect),
                "/a%2F%2Fb/../c?q"
            ),
            PathOutcome::Redirect("/a/c?q".into())
        );
        assert_eq!(
            forward(
                &policy(true, false, EscapedSlashes::UnescapeAndForward),
                "/b%2fx%5Cy"
            ),
            "/b/x/y"
        );
        assert_eq!(
            forward(&policy(true, false, EscapedSlashes::Reject), "/plain"),
            "/plain"
        );
    }
}
