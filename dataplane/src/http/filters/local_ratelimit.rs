//! `envoy.filters.http.local_ratelimit`: token buckets in this proxy. The listener-level
//! config has one [`Limiter`]; a route's override has its own (kept with the compiled
//! route table). Buckets refill lazily, in whole fill intervals since they were made, which
//! is what Envoy's fill timer does.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::request::Parts;
use http::{HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use xds_types::http_filter::local_ratelimit::{LocalRateLimit, TokenBucket};

use super::sample;
use crate::http::ctx::RequestCtx;
use crate::http::filter::{Decision, HttpFilter, PerRoute};
use crate::local_reply::{LocalReply, ResponseFlag};
use crate::proxy::apply_mutations;
use crate::stats::Stats;

static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// One token bucket.
struct Bucket {
    shape: TokenBucket,
    state: Mutex<(u32, Instant)>,
}

impl Bucket {
    fn new(shape: TokenBucket) -> Self {
        Self {
            shape,
            state: Mutex::new((shape.max_tokens, Instant::now())),
        }
    }

    /// Refills, then takes a token if there is one.
    fn take(&self) -> bool {
        let mut state = self.state.lock().expect("bucket lock");
        self.refill(&mut state);
        if state.0 == 0 {
            return false;
        }
        state.0 -= 1;
        true
    }

    fn refill(&self, state: &mut (u32, Instant)) {
        let elapsed = state.1.elapsed();
        let fills = elapsed.as_nanos() / self.shape.fill_interval.as_nanos().max(1);
        if fills > 0 {
            let added = u64::try_from(fills)
                .unwrap_or(u64::MAX)
                .saturating_mul(u64::from(self.shape.tokens_per_fill));
            state.0 = (u64::from(state.0) + added).min(u64::from(self.shape.max_tokens)) as u32;
            state.1 += self.shape.fill_interval * u32::try_from(fills).unwrap_or(u32::MAX);
        }
    }

    /// `(limit, remaining, reset)` for the `x-ratelimit-*` headers. As in Envoy, the
    /// reset is 0 while tokens remain, else the seconds (rounded up) until the next fill.
    fn report(&self) -> (u32, u32, u64) {
        let mut state = self.state.lock().expect("bucket lock");
        self.refill(&mut state);
        let reset = if state.0 > 0 {
            0
        } else {
            // Whole seconds, rounded up.
            let left = self.shape.fill_interval.saturating_sub(state.1.elapsed());
            left.as_secs() + u64::from(left.subsec_nanos() > 0)
        };
        (self.shape.max_tokens, state.0, reset)
    }
}

/// A configured descriptor's buckets: one, or one per value of its wildcard entries.
struct DescriptorBuckets {
    entries: Vec<(String, String)>,
    shape: TokenBucket,
    fixed: Option<Arc<Bucket>>,
    dynamic: Option<Mutex<lru::LruCache<Vec<String>, Arc<Bucket>>>>,
}

impl DescriptorBuckets {
    /// The bucket for a request descriptor, if it matches this one.
    fn bucket_for(&self, descriptor: &[(String, String)]) -> Option<Arc<Bucket>> {
        if descriptor.len() != self.entries.len()
            || !self
                .entries
                .iter()
                .zip(descriptor)
                .all(|((k, v), (rk, rv))| k == rk && (v.is_empty() || v == rv))
        {
            return None;
        }
        if let Some(b) = &self.fixed {
            return Some(b.clone());
        }
        let values: Vec<String> = descriptor.iter().map(|(_, v)| v.clone()).collect();
        let mut cache = self.dynamic.as_ref()?.lock().expect("descriptor lock");
        Some(
            cache
                .get_or_insert(values, || Arc::new(Bucket::new(self.shape)))
                .clone(),
        )
    }

    fn fills_per_second(&self) -> f64 {
        f64::from(self.shape.tokens_per_fill) / self.shape.fill_interval.as_secs_f64()
    }
}

/// The counters of one `stat_prefix` (`<prefix>.http_local_rate_limit.*`).
#[derive(Clone)]
struct Counters {
    enabled: Counter,
    enforced: Counter,
    rate_limited: Counter,
    ok: Counter,
}

/// The buckets and settings of one local rate limit config.
pub struct Limiter {
    config: LocalRateLimit,
    default: Option<Bucket>,
    /// In order of increasing refill rate: the strictest is tried first, as in Envoy.
    descriptors: Vec<DescriptorBuckets>,
    counters: Counters,
}

impl Limiter {
    pub fn new(config: &LocalRateLimit, stats: &Stats) -> Self {
        let c = |n: &str| {
            stats.named_counter(
                "envoy_http_local_rate_limit",
                &config.stat_prefix,
                &format!("{}.http_local_rate_limit.{n}", config.stat_prefix),
                n,
            )
        };
        let counters = Counters {
            enabled: c("enabled"),
            enforced: c("enforced"),
            rate_limited: c("rate_limited"),
            ok: c("ok"),
        };
        Self::new_with_counters(config, counters)
    }

    /// A fresh limiter with the same config and counters, for one downstream connection.
    fn for_connection(&self) -> Self {
        let mut fresh = Self::new_with_counters(&self.config, self.counters.clone());
        fresh.config.per_connection = false;
        fresh
    }

    fn new_with_counters(config: &LocalRateLimit, counters: Counters) -> Self {
        let capacity =
            NonZeroUsize::new(config.max_dynamic_descriptors as usize).unwrap_or(NonZeroUsize::MIN);
        let mut descriptors: Vec<DescriptorBuckets> = config
            .descriptors
            .iter()
            .map(|d| DescriptorBuckets {
                entries: d.entries.clone(),
                shape: d.token_bucket,
                fixed: (!d.is_dynamic()).then(|| Arc::new(Bucket::new(d.token_bucket))),
                dynamic: d
                    .is_dynamic()
                    .then(|| Mutex::new(lru::LruCache::new(capacity))),
            })
            .collect();
        descriptors.sort_by(|a, b| a.fills_per_second().total_cmp(&b.fills_per_second()));
        Self {
            default: config.token_bucket.map(Bucket::new),
            config: config.clone(),
            descriptors,
            counters,
        }
    }

    /// Whether the request may pass; takes a token from every bucket it consumes.
    /// Returns the bucket the `x-ratelimit-*` headers describe.
    fn check(&self, request: &[Vec<(String, String)>]) -> (bool, Option<Arc<Bucket>>) {
        let mut matched = false;
        let mut reported: Option<Arc<Bucket>> = None;
        for d in &self.descriptors {
            let Some(bucket) = request.iter().find_map(|r| d.bucket_for(r)) else {
                continue;
            };
            matched = true;
            let allowed = bucket.take();
            if reported.is_none() {
                reported = Some(bucket);
            }
            if !allowed {
                return (false, reported);
            }
        }
        if !matched || self.config.always_consume_default_token_bucket {
            if let Some(default) = &self.default {
                return (default.take(), reported);
            }
        }
        (true, reported)
    }

    fn report(&self, bucket: Option<&Bucket>) -> Option<(u32, u32, u64)> {
        bucket.or(self.default.as_ref()).map(Bucket::report)
    }

    /// Decides one request with this limiter.
    fn decide(&self, ctx: &mut RequestCtx<'_>, request: &mut Parts, limiter: &Limiter) -> Decision {
        if !sample(self.config.filter_enabled) {
            return Decision::Continue;
        }
        self.counters.enabled.inc();
        let descriptors = if self.descriptors.is_empty() {
            Vec::new()
        } else {
            super::descriptors::descriptors(
                &self.config.rate_limits,
                self.config.stage,
                self.config.vh_rate_limits,
                ctx,
                request,
            )
        };
        let (allowed, bucket) = limiter.check(&descriptors);
        let mut headers = Vec::new();
        if self.config.x_ratelimit_headers {
            if let Some((limit, remaining, reset)) = limiter.report(bucket.as_deref()) {
                headers.push((X_RATELIMIT_LIMIT.clone(), HeaderValue::from(limit)));
                headers.push((X_RATELIMIT_REMAINING.clone(), HeaderValue::from(remaining)));
                headers.push((X_RATELIMIT_RESET.clone(), HeaderValue::from(reset)));
            }
        }
        ctx.response_headers.extend(headers);
        if allowed {
            self.counters.ok.inc();
            return Decision::Continue;
        }
        self.counters.rate_limited.inc();
        if !sample(self.config.filter_enforced) {
            apply_mutations(
                &mut request.headers,
                &self.config.request_headers_when_not_enforced,
            );
            return Decision::Continue;
        }
        self.counters.enforced.inc();
        let mut reply = LocalReply::new(self.config.status, "local_rate_limited");
        reply.flag = Some(ResponseFlag::RateLimited);
        reply.mutations = Some(self.config.response_headers.clone());
        Decision::Respond(reply)
    }
}

/// The listener-level filter.
pub struct LocalRateLimitFilter {
    limiter: Arc<Limiter>,
}

impl LocalRateLimitFilter {
    pub fn new(config: &LocalRateLimit, stats: &Stats) -> Self {
        Self {
            limiter: Arc::new(Limiter::new(config, stats)),
        }
    }
}

impl HttpFilter for LocalRateLimitFilter {
    fn on_request(
        &self,
        ctx: &mut RequestCtx<'_>,
        per_route: Option<&PerRoute>,
        request: &mut Parts,
    ) -> Decision {
        let limiter = match per_route {
            Some(PerRoute::LocalRateLimit(l)) => l.clone(),
            _ => self.limiter.clone(),
        };
        if limiter.config.per_connection {
            let key = Arc::as_ptr(&limiter) as usize;
            let connection = ctx
                .conn_limiters
                .get_or_insert(key, || limiter.for_connection());
            return limiter.decide(ctx, request, &connection);
        }
        limiter.decide(ctx, request, &limiter)
    }
}

/// The limiters of one downstream connection (`local_rate_limit_per_downstream_connection`),
/// keyed by the limiter they were made from.
#[derive(Default)]
pub struct ConnLimiters(Mutex<Vec<(usize, Arc<Limiter>)>>);

impl ConnLimiters {
    fn get_or_insert(&self, key: usize, make: impl FnOnce() -> Limiter) -> Arc<Limiter> {
        let mut list = self.0.lock().expect("connection limiters lock");
        if let Some((_, l)) = list.iter().find(|(k, _)| *k == key) {
            return l.clone();
        }
        let limiter = Arc::new(make());
        list.push((key, limiter.clone()));
        limiter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_types::pb::envoy::extensions::filters::http::local_ratelimit::v3 as pb;

    fn limiter(yaml: &str) -> Limiter {
        let proto: pb::LocalRateLimit = xds_types::decode::from_yaml(
            yaml,
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        )
        .unwrap();
        Limiter::new(&LocalRateLimit::try_from(&proto).unwrap(), &Stats::new())
    }

    fn ip(i: u32) -> Vec<(String, String)> {
        vec![(
            "remote_address".into(),
            std::net::Ipv4Addr::from(i).to_string(),
        )]
    }

    #[test]
    fn wildcard_buckets_are_per_value_and_bounded() {
        let l = limiter(
            "stat_prefix: t
descriptors: [{entries: [{key: remote_address, value: ''}], token_bucket: {max_tokens: 1, fill_interval: 3600s}}]
max_dynamic_descriptors: 1000",
        );
        assert!(l.check(&[ip(1)]).0);
        assert!(
            !l.check(&[ip(1)]).0,
            "the second request of a client is over"
        );
        assert!(l.check(&[ip(2)]).0, "another client has its own bucket");
        for i in 0..100_000 {
            l.check(&[ip(1_000_000 + i)]);
        }
        let held = l.descriptors[0]
            .dynamic
            .as_ref()
            .unwrap()
            .lock()
            .unwrap()
            .len();
        assert_eq!(
            held, 1000,
            "100,000 addresses keep at most max_dynamic_descriptors buckets"
        );
        // The oldest clients were dropped and start over with a full bucket.
        assert!(l.check(&[ip(1)]).0);
    }

    #[test]
    fn strictest_descriptor_and_default_bucket() {
        let l = limiter(
            "stat_prefix: t
token_bucket: {max_tokens: 3, fill_interval: 3600s}
descriptors: [{entries: [{key: k, value: v}], token_bucket: {max_tokens: 5, fill_interval: 3600s}}]",
        );
        let d = vec![vec![("k".to_string(), "v".to_string())]];
        // The default bucket (3) is consumed too and runs out first.
        assert!(l.check(&d).0 && l.check(&d).0 && l.check(&d).0);
        assert!(!l.check(&d).0);
        // A request no descriptor matches uses the default bucket only.
        assert!(!l.check(&[]).0);
    }
}
