//! `envoy.filters.http.cache`: a shared HTTP cache (RFC 9111) in front of the router, in
//! memory, bounded by bytes with the least recently used responses evicted first.
//!
//! - Stored: answers to GET with a status Envoy's filter stores, an explicit freshness
//!   (`s-maxage`, `max-age`, `Expires`) or `no-cache` with a validator, and a `Vary` whose
//!   headers are all allowed. Never stored: `no-store`, `private`, `Vary: *`, `Set-Cookie`
//!   (unless the store allows it, and then without the cookie), answers to requests with
//!   `Authorization` unless the response says `public`, `s-maxage` or `must-revalidate`.
//! - Served: a fresh entry answers with its `Age`; a conditional request that matches it
//!   (`If-None-Match`, else `If-Modified-Since`) gets 304. A stale entry — or any entry
//!   when the request or the response says `no-cache` — is revalidated with its ETag or
//!   Last-Modified, and a 304 from the upstream refreshes it.
//! - Concurrent misses for one key are coalesced: the first goes upstream, the others wait
//!   (at most [`COALESCE_WAIT`], as nginx's `proxy_cache_lock_timeout`) and are answered
//!   from what it stored. A successful unsafe request (POST, PUT, DELETE, …) invalidates
//!   the URL's entries.
//! - Requests with `Range` pass through uncached (a range of a stored body is not served).
//!
//! Envoy's filter has no counters; Sluice's are under `cache.`: `hit`, `miss`, `coalesced`,
//! `validated`, `failed_validation`, `uncacheable`, `inserted`, `evicted`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;
use xds_types::http_filter::Cache;

use crate::body::{self, Body, BoxError};
use crate::http::ctx::RequestCtx;
use crate::http::filter::{Decision, HttpFilter, PerRoute};
use crate::http::filters::file_server::none_match;
use crate::local_reply::LocalReply;
use crate::stats::Stats;

/// How long a request waits for another request's miss of the same key to be stored.
pub const COALESCE_WAIT: Duration = Duration::from_secs(5);

/// The statuses Envoy's cache filter stores (206 is not: ranges pass through).
const CACHEABLE_STATUSES: &[u16] = &[200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 451, 501];

/// The filter: its config, its store and counters.
pub struct CacheFilter {
    config: Cache,
    store: Arc<Store>,
    counters: Counters,
}

struct Counters {
    hit: Counter,
    miss: Counter,
    coalesced: Counter,
    validated: Counter,
    failed_validation: Counter,
    uncacheable: Counter,
    inserted: Counter,
    evicted: Counter,
}

impl CacheFilter {
    pub fn new(config: &Cache, hcm_prefix: &str, stats: &Stats) -> Self {
        let at = |n: &str| stats.filter_counter(hcm_prefix, &format!("cache.{n}"));
        let counters = Counters {
            hit: at("hit"),
            miss: at("miss"),
            coalesced: at("coalesced"),
            validated: at("validated"),
            failed_validation: at("failed_validation"),
            uncacheable: at("uncacheable"),
            inserted: at("inserted"),
            evicted: at("evicted"),
        };
        Self {
            store: Arc::new(Store::new(
                config.store.max_size_bytes,
                counters.evicted.clone(),
            )),
            config: config.clone(),
            counters,
        }
    }

    /// The largest body this filter stores.
    fn body_limit(&self) -> u64 {
        match self.config.max_body_bytes {
            0 => self.config.store.max_size_bytes,
            n => u64::from(n).min(self.config.store.max_size_bytes),
        }
    }
}

/// One stored response.
#[derive(Debug)]
struct Entry {
    status: StatusCode,
    /// Without hop-by-hop headers and `Age`.
    headers: HeaderMap,
    body: Bytes,
    /// When it was received (or last validated), for its resident time.
    received: Instant,
    /// Its age when received (RFC 9111 §4.2.3's corrected initial age).
    initial_age: Duration,
    freshness: Duration,
    /// `no-cache` in the response: revalidated before every use.
    always_revalidate: bool,
    /// `must-revalidate` / `proxy-revalidate`: never served stale.
    must_revalidate: bool,
    /// The key of its URL (its variants share it).
    url: String,
    /// What it costs the store's bound.
    size: u64,
}

impl Entry {
    fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.received)
    }

    /// The header that revalidates it with the upstream: its ETag, else its date.
    fn validator(&self) -> Option<(HeaderName, HeaderValue)> {
        match (
            self.headers.get(header::ETAG),
            self.headers.get(header::LAST_MODIFIED),
        ) {
            (Some(tag), _) => Some((header::IF_NONE_MATCH, tag.clone())),
            (None, Some(date)) => Some((header::IF_MODIFIED_SINCE, date.clone())),
            (None, None) => None,
        }
    }

    /// Its answer to a request: a 304 when the request's validators match it.
    fn answer(&self, request: &HeaderMap, now: Instant) -> LocalReply {
        self.reply(now, not_modified(request, self))
    }

    /// The response it answers with, `Age` added (a 304 when `not_modified`).
    fn reply(&self, now: Instant, not_modified: bool) -> LocalReply {
        let mut headers: Vec<(HeaderName, HeaderValue)> = self
            .headers
            .iter()
            .filter(|(n, _)| !not_modified || *n != header::CONTENT_LENGTH)
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        headers.push((header::AGE, HeaderValue::from(self.age(now).as_secs())));
        let (status, body) = if not_modified {
            (StatusCode::NOT_MODIFIED, Bytes::new())
        } else {
            if !self.headers.contains_key(header::CONTENT_LENGTH) {
                headers.push((header::CONTENT_LENGTH, HeaderValue::from(self.body.len())));
            }
            (self.status, self.body.clone())
        };
        let mut reply = LocalReply::new(status, Bytes::new());
        reply.headers = headers;
        reply.stream = Some(body::full(body));
        reply
    }
}

/// The filter's storage: entries by variant key in LRU order, the `Vary` of each URL,
/// and the misses in flight.
struct Store {
    inner: Mutex<Inner>,
    max_bytes: u64,
    evicted: Counter,
}

struct Inner {
    entries: lru::LruCache<String, Arc<Entry>>,
    bytes: u64,
    urls: HashMap<String, UrlRecord>,
    in_flight: HashMap<String, watch::Receiver<()>>,
}

/// What a URL's stored responses vary on, and the keys of its variants.
#[derive(Default)]
struct UrlRecord {
    vary: Vec<HeaderName>,
    variants: Vec<String>,
}

impl Store {
    fn new(max_bytes: u64, evicted: Counter) -> Self {
        Self {
            inner: Mutex::new(Inner {
                entries: lru::LruCache::unbounded(),
                bytes: 0,
                urls: HashMap::new(),
                in_flight: HashMap::new(),
            }),
            max_bytes,
            evicted,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The variant key of a request for `url`, by what the URL's responses vary on.
    fn variant_key(inner: &Inner, url: &str, request: &HeaderMap) -> String {
        match inner.urls.get(url) {
            Some(record) => variant_key(url, &record.vary, request),
            None => url.to_string(),
        }
    }

    fn lookup(&self, url: &str, request: &HeaderMap) -> (String, Option<Arc<Entry>>) {
        let mut inner = self.lock();
        let key = Self::variant_key(&inner, url, request);
        let entry = inner.entries.get(&key).cloned();
        (key, entry)
    }

    /// Registers a miss of `key` in flight, or returns the one already there to wait on.
    fn begin_miss(&self, key: &str) -> Result<InFlight, watch::Receiver<()>> {
        let mut inner = self.lock();
        if let Some(rx) = inner.in_flight.get(key) {
            if rx.has_changed().is_ok() {
                return Err(rx.clone());
            }
        }
        let (tx, rx) = watch::channel(());
        inner.in_flight.insert(key.to_string(), rx);
        Ok(InFlight {
            key: key.to_string(),
            _done: tx,
        })
    }

    fn end_miss(&self, key: &str) {
        let mut inner = self.lock();
        if inner
            .in_flight
            .get(key)
            .is_some_and(|rx| rx.has_changed().is_err())
        {
            inner.in_flight.remove(key);
        }
    }

    /// Stores `entry` for a request with `request` headers, varying on `vary`; evicts the
    /// least recently used entries over the bound.
    fn insert(&self, entry: Entry, vary: Vec<HeaderName>, request: &HeaderMap) {
        let mut inner = self.lock();
        let url = entry.url.clone();
        let record = inner.urls.entry(url.clone()).or_default();
        let stale: Vec<String> = if record.vary != vary {
            record.vary = vary;
            std::mem::take(&mut record.variants)
        } else {
            Vec::new()
        };
        for key in stale {
            if let Some(old) = inner.entries.pop(&key) {
                inner.bytes -= old.size;
            }
        }
        let key = variant_key(&url, &inner.urls[&url].vary, request);
        let size = entry.size;
        if let Some(old) = inner.entries.put(key.clone(), Arc::new(entry)) {
            inner.bytes -= old.size;
        } else if let Some(record) = inner.urls.get_mut(&url) {
            record.variants.push(key);
        }
        inner.bytes += size;
        self.evict_over_bound(&mut inner);
    }

    /// Replaces a validated entry in place (same key, same variants); one evicted while
    /// it was being validated is not stored again.
    fn refresh(&self, key: &str, entry: Entry) {
        let mut inner = self.lock();
        if !inner.entries.contains(key) {
            return;
        }
        let size = entry.size;
        if let Some(old) = inner.entries.put(key.to_string(), Arc::new(entry)) {
            inner.bytes -= old.size;
        }
        inner.bytes += size;
        self.evict_over_bound(&mut inner);
    }

    /// Evicts the least recently used entries until the store is within its bound.
    fn evict_over_bound(&self, inner: &mut Inner) {
        while inner.bytes > self.max_bytes {
            let Some((key, old)) = inner.entries.pop_lru() else {
                break;
            };
            inner.bytes -= old.size;
            self.evicted.inc();
            Self::forget_variant(inner, &old.url, &key);
        }
    }

    /// Drops every variant of `url` (an unsafe request changed it).
    fn invalidate(&self, url: &str) {
        let mut inner = self.lock();
        if let Some(record) = inner.urls.remove(url) {
            for key in record.variants {
                if let Some(old) = inner.entries.pop(&key) {
                    inner.bytes -= old.size;
                }
            }
        }
    }

    fn forget_variant(inner: &mut Inner, url: &str, key: &str) {
        if let Some(record) = inner.urls.get_mut(url) {
            record.variants.retain(|k| k != key);
            if record.variants.is_empty() {
                inner.urls.remove(url);
            }
        }
    }
}

/// A miss in flight: requests for the same key wait until it is dropped (the response
/// stored, found uncacheable, or abandoned).
struct InFlight {
    key: String,
    _done: watch::Sender<()>,
}

/// Holds an [`InFlight`] and removes it from the store when dropped.
struct MissGuard {
    store: Arc<Store>,
    in_flight: Option<InFlight>,
}

impl Drop for MissGuard {
    fn drop(&mut self) {
        if let Some(in_flight) = self.in_flight.take() {
            let key = in_flight.key.clone();
            drop(in_flight);
            self.store.end_miss(&key);
        }
    }
}

/// The key of one variant: the URL's key and the request's values of the `vary` headers.
fn variant_key(url: &str, vary: &[HeaderName], request: &HeaderMap) -> String {
    let mut key = url.to_string();
    for name in vary {
        key.push('\0');
        key.push_str(name.as_str());
        key.push('=');
        for (i, value) in request.get_all(name).iter().enumerate() {
            if i > 0 {
                key.push(',');
            }
            key.push_str(&String::from_utf8_lossy(value.as_bytes()));
        }
    }
    key
}

/// The `Cache-Control` directives Sluice acts on.
#[derive(Debug, Default, Clone, Copy)]
struct Directives {
    no_store: bool,
    no_cache: bool,
    private: bool,
    public: bool,
    must_revalidate: bool,
    only_if_cached: bool,
    max_age: Option<u64>,
    s_maxage: Option<u64>,
    max_stale: Option<u64>,
    min_fresh: Option<u64>,
}

impl Directives {
    /// Parses every `Cache-Control` value; unknown directives and malformed numbers are
    /// ignored (a malformed `max-age` counts as 0, as RFC 9111 §4.2.1 advises).
    fn parse(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            for directive in value.split(',') {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                let seconds = || arg.and_then(|a| a.parse::<u64>().ok()).unwrap_or(0);
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => d.no_store = true,
                    // `no-cache="field"` only limits fields; Sluice revalidates whole.
                    "no-cache" => d.no_cache = true,
                    "private" => d.private = true,
                    "public" => d.public = true,
                    "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                    "only-if-cached" => d.only_if_cached = true,
                    "max-age" => d.max_age = Some(seconds()),
                    "s-maxage" => d.s_maxage = Some(seconds()),
                    "max-stale" => d.max_stale = Some(arg.map_or(u64::MAX, |_| seconds())),
                    "min-fresh" => d.min_fresh = Some(seconds()),
                    _ => {}
                }
            }
        }
        d
    }
}

/// What the filter decided on the request, for its response phases.
enum State {
    /// A miss (or a follower of one) whose response may be stored.
    Store {
        url: String,
        request: Box<HeaderMap>,
        authorized: bool,
        guard: Option<MissGuard>,
        /// A follower's: set when it was answered from the store after its wait.
        served: Option<Arc<AtomicBool>>,
    },
    /// A stored entry is being validated with the upstream.
    Validate {
        key: String,
        entry: Arc<Entry>,
        url: String,
        request: Box<HeaderMap>,
        authorized: bool,
    },
    /// An unsafe request: a success invalidates the URL.
    Invalidate { url: String },
    /// The validated entry's answer replaces the upstream's (empty) 304 body.
    Replace(Body),
    /// The body is captured into the store as it streams.
    Capture(Box<Capture>),
}

/// The [`State`] in the request's context (whose values must be `Clone`).
#[derive(Clone)]
struct Slot(Arc<Mutex<Option<State>>>);

fn put(ctx: &mut RequestCtx<'_>, state: State) {
    ctx.state.insert(Slot(Arc::new(Mutex::new(Some(state)))));
}

fn take(ctx: &mut RequestCtx<'_>) -> Option<State> {
    let slot = ctx.state.remove::<Slot>()?;
    let mut state = slot.0.lock().unwrap_or_else(|e| e.into_inner());
    state.take()
}

/// Whether a conditional request matches `entry` (a 304 answers it).
fn not_modified(request: &HeaderMap, entry: &Entry) -> bool {
    if let Some(list) = request.get(header::IF_NONE_MATCH) {
        return match entry
            .headers
            .get(header::ETAG)
            .and_then(|t| t.to_str().ok())
        {
            Some(tag) => list.to_str().is_ok_and(|l| none_match(l, tag)),
            None => list.as_bytes() == b"*",
        };
    }
    matches!(
        (
            http_date(request, header::IF_MODIFIED_SINCE),
            http_date(&entry.headers, header::LAST_MODIFIED)
        ),
        (Some(since), Some(modified)) if modified <= since
    )
}

/// A header's value as an HTTP date (`None` when absent or malformed).
fn http_date(headers: &HeaderMap, name: HeaderName) -> Option<SystemTime> {
    httpdate::parse_http_date(headers.get(name)?.to_str().ok()?).ok()
}

/// The URL key: scheme, host and path with the query the key keeps.
fn url_key(config: &Cache, ctx: &RequestCtx<'_>, request: &Parts) -> String {
    let mut key = String::new();
    if !config.key.exclude_scheme {
        key.push_str(ctx.scheme);
        key.push_str("://");
    }
    if !config.key.exclude_host {
        key.push_str(&ctx.host.to_ascii_lowercase());
    }
    key.push_str(request.uri.path());
    if let Some(query) = request.uri.query() {
        let query = config.key.key_query(query);
        if !query.is_empty() {
            key.push('?');
            key.push_str(&query);
        }
    }
    key
}

impl HttpFilter for CacheFilter {
    fn on_request(
        &self,
        ctx: &mut RequestCtx<'_>,
        _per_route: Option<&PerRoute>,
        request: &mut Parts,
    ) -> Decision {
        if self.config.disabled {
            return Decision::Continue;
        }
        match request.method {
            Method::GET | Method::HEAD => {}
            Method::OPTIONS | Method::TRACE | Method::CONNECT => return Decision::Continue,
            _ => {
                let url = url_key(&self.config, ctx, request);
                put(ctx, State::Invalidate { url });
                return Decision::Continue;
            }
        }
        let directives = if self.config.ignore_request_cache_control_header {
            Directives::default()
        } else {
            let mut d = Directives::parse(&request.headers);
            // `Pragma: no-cache` counts only without `Cache-Control` (RFC 9111 §5.4).
            if !request.headers.contains_key(header::CACHE_CONTROL)
                && request
                    .headers
                    .get(header::PRAGMA)
                    .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"no-cache"))
            {
                d.no_cache = true;
            }
            d
        };
        let authorized = request.headers.contains_key(header::AUTHORIZATION);
        if directives.no_store
            || request.headers.contains_key(header::RANGE)
            || request.uri.path().is_empty()
        {
            return Decision::Continue;
        }
        let url = url_key(&self.config, ctx, request);
        let head = request.method == Method::HEAD;
        // As Envoy: a request with credentials is never answered from the store.
        if authorized {
            if !head {
                put(
                    ctx,
                    State::Store {
                        url,
                        request: Box::new(request.headers.clone()),
                        authorized,
                        guard: None,
                        served: None,
                    },
                );
            }
            return Decision::Continue;
        }
        let now = Instant::now();
        let (key, entry) = self.store.lookup(&url, &request.headers);
        if let Some(entry) = entry {
            if usable(&entry, &directives, now) {
                self.counters.hit.inc();
                return Decision::Respond(entry.answer(&request.headers, now));
            }
            if let Some((name, value)) = entry.validator() {
                let client = Box::new(request.headers.clone());
                request.headers.remove(header::IF_NONE_MATCH);
                request.headers.remove(header::IF_MODIFIED_SINCE);
                request.headers.insert(name, value);
                put(
                    ctx,
                    State::Validate {
                        key,
                        entry,
                        url,
                        request: client,
                        authorized,
                    },
                );
                return Decision::Continue;
            }
        }
        if directives.only_if_cached {
            return Decision::Respond(LocalReply::new(StatusCode::GATEWAY_TIMEOUT, ""));
        }
        self.counters.miss.inc();
        if head {
            return Decision::Continue;
        }
        let headers = Box::new(request.headers.clone());
        match self.store.begin_miss(&key) {
            Ok(in_flight) => {
                let guard = MissGuard {
                    store: self.store.clone(),
                    in_flight: Some(in_flight),
                };
                put(
                    ctx,
                    State::Store {
                        url,
                        request: headers,
                        authorized,
                        guard: Some(guard),
                        served: None,
                    },
                );
                Decision::Continue
            }
            Err(mut wait) => {
                self.counters.coalesced.inc();
                let served = Arc::new(AtomicBool::new(false));
                put(
                    ctx,
                    State::Store {
                        url: url.clone(),
                        request: headers.clone(),
                        authorized,
                        guard: None,
                        served: Some(served.clone()),
                    },
                );
                let store = self.store.clone();
                let hit = self.counters.hit.clone();
                Decision::Wait(Box::pin(async move {
                    let _ = tokio::time::timeout(COALESCE_WAIT, wait.changed()).await;
                    let now = Instant::now();
                    match store.lookup(&url, &headers).1 {
                        Some(entry) if usable(&entry, &directives, now) => {
                            served.store(true, Ordering::Relaxed);
                            hit.inc();
                            Decision::Respond(entry.answer(&headers, now))
                        }
                        _ => Decision::Continue,
                    }
                }))
            }
        }
    }

    fn on_response(
        &self,
        ctx: &mut RequestCtx<'_>,
        _per_route: Option<&PerRoute>,
        response: &mut http::response::Parts,
        _end_stream: bool,
    ) {
        let Some(state) = take(ctx) else {
            return;
        };
        let now = Instant::now();
        match state {
            State::Invalidate { url } => {
                if response.status.is_success() || response.status.is_redirection() {
                    self.store.invalidate(&url);
                }
            }
            State::Validate {
                key,
                entry,
                url,
                request,
                authorized,
            } => {
                if response.status == StatusCode::NOT_MODIFIED {
                    self.counters.validated.inc();
                    let refreshed = validated(&entry, &response.headers, now);
                    let mut reply = refreshed.answer(&request, now);
                    response.status = reply.status;
                    response.headers.clear();
                    for (name, value) in reply.headers {
                        response.headers.append(name, value);
                    }
                    let body = reply.stream.take().unwrap_or_else(body::empty);
                    self.store.refresh(&key, refreshed);
                    put(ctx, State::Replace(body));
                    return;
                }
                self.counters.failed_validation.inc();
                self.store_response(ctx, response, url, request, authorized, None, now);
            }
            State::Store {
                url,
                request,
                authorized,
                guard,
                served,
            } => {
                if served.is_some_and(|s| s.load(Ordering::Relaxed)) {
                    return;
                }
                self.store_response(ctx, response, url, request, authorized, guard, now);
            }
            State::Replace(_) | State::Capture(_) => {}
        }
    }

    fn on_response_body(
        &self,
        ctx: &mut RequestCtx<'_>,
        _per_route: Option<&PerRoute>,
        _response: &http::response::Parts,
        body: Body,
    ) -> Body {
        match take(ctx) {
            Some(State::Replace(body)) => body,
            Some(State::Capture(capture)) => http_body_util::BodyExt::boxed(Capturing {
                inner: body,
                capture: Some(capture),
            }),
            _ => body,
        }
    }
}

/// Whether a stored entry may answer a request without validation.
fn usable(entry: &Entry, request: &Directives, now: Instant) -> bool {
    if entry.always_revalidate || request.no_cache {
        return false;
    }
    let age = entry.age(now).as_secs();
    let freshness = entry.freshness.as_secs();
    if request.max_age.is_some_and(|max| age > max) {
        return false;
    }
    let min_fresh = request.min_fresh.unwrap_or(0);
    if age.saturating_add(min_fresh) < freshness {
        return true;
    }
    // Stale: only when the request accepts it and the response allows it.
    !entry.must_revalidate
        && request
            .max_stale
            .is_some_and(|stale| age.saturating_sub(freshness) <= stale)
}

/// The entry a 304 validated: its headers updated with the 304's (RFC 9111 §3.2), its
/// age and freshness restarted from them.
fn validated(entry: &Entry, not_modified: &HeaderMap, now: Instant) -> Entry {
    let mut headers = entry.headers.clone();
    for name in not_modified.keys() {
        if name == header::CONTENT_LENGTH || name == header::AGE {
            continue;
        }
        headers.remove(name);
        for value in not_modified.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let directives = Directives::parse(&headers);
    Entry {
        status: entry.status,
        freshness: freshness(&headers, &directives).unwrap_or_default(),
        initial_age: initial_age(not_modified),
        always_revalidate: directives.no_cache,
        must_revalidate: directives.must_revalidate,
        size: entry_size(&entry.url, &headers, &entry.body),
        headers,
        body: entry.body.clone(),
        received: now,
        url: entry.url.clone(),
    }
}

/// The freshness lifetime a shared cache gives a response (RFC 9111 §4.2.1): `s-maxage`,
/// `max-age`, then `Expires` less `Date`; `None` without one (no heuristic freshness).
fn freshness(headers: &HeaderMap, d: &Directives) -> Option<Duration> {
    if let Some(s) = d.s_maxage.or(d.max_age) {
        return Some(Duration::from_secs(s));
    }
    let expires = headers.get(header::EXPIRES)?;
    // An invalid Expires (such as "0") means already expired.
    let Some(expires) = http_date(headers, header::EXPIRES) else {
        return (!expires.is_empty()).then_some(Duration::ZERO);
    };
    let now = http_date(headers, header::DATE).unwrap_or_else(SystemTime::now);
    Some(expires.duration_since(now).unwrap_or_default())
}

/// The age of a response as received: its `Age`, or how long ago its `Date` was.
fn initial_age(headers: &HeaderMap) -> Duration {
    let age = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let apparent = http_date(headers, header::DATE)
        .and_then(|date| SystemTime::now().duration_since(date).ok())
        .unwrap_or_default();
    age.max(apparent)
}

fn entry_size(url: &str, headers: &HeaderMap, body: &Bytes) -> u64 {
    let headers: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 32)
        .sum();
    (url.len() * 2 + headers + body.len() + 128) as u64
}

impl CacheFilter {
    /// Decides whether the response may be stored; when it may, its body is captured as it
    /// streams (see [`Capturing`]).
    #[allow(clippy::too_many_arguments)]
    fn store_response(
        &self,
        ctx: &mut RequestCtx<'_>,
        response: &http::response::Parts,
        url: String,
        request: Box<HeaderMap>,
        authorized: bool,
        guard: Option<MissGuard>,
        now: Instant,
    ) {
        let headers = &response.headers;
        let d = Directives::parse(headers);
        let has_validator =
            headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
        let freshness = freshness(headers, &d);
        let vary = vary_names(headers);
        let storable = CACHEABLE_STATUSES.contains(&response.status.as_u16())
            && !d.no_store
            && !d.private
            && (freshness.is_some() || (d.no_cache && has_validator))
            && (!authorized || d.public || d.s_maxage.is_some() || d.must_revalidate)
            && (self.config.store.store_responses_with_set_cookie
                || !headers.contains_key(header::SET_COOKIE))
            && !headers.contains_key(header::CONTENT_RANGE)
            && vary.as_ref().is_some_and(|names| {
                names.iter().all(|n| {
                    self.config
                        .allowed_vary_headers
                        .iter()
                        .any(|m| m.matches(n.as_str()))
                })
            })
            && headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_none_or(|len| len <= self.body_limit());
        if !storable {
            self.counters.uncacheable.inc();
            return;
        }
        // Hop-by-hop headers are already gone: the proxy strips them from upstream responses.
        let mut stored = headers.clone();
        stored.remove(header::AGE);
        stored.remove(header::SET_COOKIE);
        put(
            ctx,
            State::Capture(Box::new(Capture {
                store: self.store.clone(),
                status: response.status,
                initial_age: initial_age(headers),
                freshness: freshness.unwrap_or_default(),
                always_revalidate: d.no_cache,
                must_revalidate: d.must_revalidate,
                headers: stored,
                url,
                vary: vary.unwrap_or_default(),
                request,
                received: now,
                body: BytesMut::new(),
                limit: self.body_limit(),
                inserted: self.counters.inserted.clone(),
                uncacheable: self.counters.uncacheable.clone(),
                _guard: guard,
            })),
        );
    }
}

/// The header names a response varies on; `None` for `Vary: *`.
fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(header::VARY) {
        for name in value.to_str().ok()?.split(',') {
            let name = name.trim();
            if name == "*" {
                return None;
            }
            if name.is_empty() {
                continue;
            }
            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names.sort_by(|a: &HeaderName, b| a.as_str().cmp(b.as_str()));
    Some(names)
}

/// A response on its way to the store.
struct Capture {
    store: Arc<Store>,
    status: StatusCode,
    initial_age: Duration,
    freshness: Duration,
    always_revalidate: bool,
    must_revalidate: bool,
    headers: HeaderMap,
    url: String,
    vary: Vec<HeaderName>,
    request: Box<HeaderMap>,
    received: Instant,
    body: BytesMut,
    limit: u64,
    inserted: Counter,
    uncacheable: Counter,
    /// Requests waiting for this miss are released when the capture ends either way.
    _guard: Option<MissGuard>,
}

impl Capture {
    fn finish(self: Box<Self>) {
        let body = self.body.freeze();
        let entry = Entry {
            status: self.status,
            size: entry_size(&self.url, &self.headers, &body),
            headers: self.headers,
            body,
            received: self.received,
            initial_age: self.initial_age,
            freshness: self.freshness,
            always_revalidate: self.always_revalidate,
            must_revalidate: self.must_revalidate,
            url: self.url,
        };
        if entry.size <= self.store.max_bytes {
            self.inserted.inc();
            self.store.insert(entry, self.vary, &self.request);
        } else {
            self.uncacheable.inc();
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body passed through unchanged while a copy goes to the store; a body
    /// over the limit, or one that fails, is not stored.
    struct Capturing {
        #[pin]
        inner: Body,
        capture: Option<Box<Capture>>,
    }
}

impl http_body::Body for Capturing {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let mut this = self.project();
        let polled = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(capture) = this.capture.as_mut() {
                        if (capture.body.len() + data.len()) as u64 > capture.limit {
                            capture.uncacheable.inc();
                            *this.capture = None;
                        } else {
                            capture.body.extend_from_slice(data);
                        }
                    }
                    // The last frame: a peer that knows the length does not poll again.
                    if this.inner.is_end_stream() {
                        if let Some(capture) = this.capture.take() {
                            capture.finish();
                        }
                    }
                } else if let Some(capture) = this.capture.take() {
                    // Trailers end the body; they are not stored.
                    capture.finish();
                }
            }
            Some(Err(_)) => *this.capture = None,
            None => {
                if let Some(capture) = this.capture.take() {
                    capture.finish();
                }
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn directives_parse_as_rfc_9111() {
        let d = Directives::parse(&headers(&[
            ("cache-control", "Public, max-age=60"),
            (
                "cache-control",
                "s-maxage=\"30\", max-stale, junk=1, no-cache",
            ),
        ]));
        assert!(d.public && d.no_cache && !d.no_store);
        assert_eq!(
            (d.max_age, d.s_maxage, d.max_stale),
            (Some(60), Some(30), Some(u64::MAX))
        );
        let bad = Directives::parse(&headers(&[("cache-control", "max-age=soon")]));
        assert_eq!(bad.max_age, Some(0));
    }

    #[test]
    fn freshness_prefers_s_maxage_then_max_age_then_expires() {
        let h = headers(&[("cache-control", "max-age=60, s-maxage=5")]);
        assert_eq!(
            freshness(&h, &Directives::parse(&h)),
            Some(Duration::from_secs(5))
        );
        let h = headers(&[
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("expires", "Sun, 06 Nov 1994 08:50:37 GMT"),
        ]);
        assert_eq!(
            freshness(&h, &Directives::parse(&h)),
            Some(Duration::from_secs(60))
        );
        let h = headers(&[("expires", "0")]);
        assert_eq!(freshness(&h, &Directives::parse(&h)), Some(Duration::ZERO));
        let h = headers(&[("etag", "\"a\"")]);
        assert_eq!(freshness(&h, &Directives::parse(&h)), None);
    }

    #[test]
    fn vary_star_is_uncacheable_and_names_are_normalised() {
        assert_eq!(vary_names(&headers(&[("vary", "*")])), None);
        let names = vary_names(&headers(&[
            ("vary", "User-Agent, accept-encoding"),
            ("vary", "Accept-Encoding"),
        ]))
        .unwrap();
        assert_eq!(names, vec![header::ACCEPT_ENCODING, header::USER_AGENT]);
    }

    fn entry(url: &str, body_len: usize) -> Entry {
        let headers = headers(&[
            ("etag", "\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let body = Bytes::from(vec![b'x'; body_len]);
        Entry {
            status: StatusCode::OK,
            size: entry_size(url, &headers, &body),
            headers,
            body,
            received: Instant::now(),
            initial_age: Duration::ZERO,
            freshness: Duration::from_secs(60),
            always_revalidate: false,
            must_revalidate: false,
            url: url.to_string(),
        }
    }

    #[test]
    fn the_store_evicts_least_recently_used_over_its_bound() {
        let one = entry("/a", 1000).size;
        let store = Store::new(one * 2 + 10, Counter::default());
        let none = HeaderMap::new();
        store.insert(entry("/a", 1000), vec![], &none);
        store.insert(entry("/b", 1000), vec![], &none);
        assert!(
            store.lookup("/a", &none).1.is_some(),
            "/a used: /b is now the oldest"
        );
        store.insert(entry("/c", 1000), vec![], &none);
        assert!(store.lookup("/b", &none).1.is_none());
        assert!(store.lookup("/a", &none).1.is_some());
        assert!(store.lookup("/c", &none).1.is_some());
        assert_eq!(store.evicted.get(), 1);
        assert!(store.lock().bytes <= store.max_bytes);
        assert!(
            !store.lock().urls.contains_key("/b"),
            "an evicted URL is forgotten"
        );
    }

    #[test]
    fn variants_are_kept_per_vary_value_and_replaced_when_vary_changes() {
        let store = Store::new(1 << 20, Counter::default());
        let gzip = headers(&[("accept-encoding", "gzip")]);
        let br = headers(&[("accept-encoding", "br")]);
        let vary = vec![header::ACCEPT_ENCODING];
        store.insert(entry("/a", 10), vary.clone(), &gzip);
        assert!(store.lookup("/a", &gzip).1.is_some());
        assert!(store.lookup("/a", &br).1.is_none());
        store.insert(entry("/a", 10), vary, &br);
        assert!(store.lookup("/a", &gzip).1.is_some() && store.lookup("/a", &br).1.is_some());
        store.insert(entry("/a", 10), vec![], &br);
        assert_eq!(
            store.lock().entries.len(),
            1,
            "the old variants are dropped"
        );
        store.invalidate("/a");
        assert!(store.lookup("/a", &br).1.is_none());
        assert_eq!(store.lock().bytes, 0);
    }

    #[test]
    fn conditional_requests_match_by_etag_then_date() {
        let e = entry("/a", 1);
        assert!(not_modified(
            &headers(&[("if-none-match", "W/\"v1\", \"v2\"")]),
            &e
        ));
        assert!(!not_modified(&headers(&[("if-none-match", "\"v2\"")]), &e));
        assert!(not_modified(
            &headers(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]),
            &e
        ));
        assert!(!not_modified(
            &headers(&[
                ("if-none-match", "\"v2\""),
                ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")
            ]),
            &e
        ));
        assert!(!not_modified(
            &headers(&[("if-modified-since", "garbage")]),
            &e
        ));
    }
}
