//! `envoy.filters.http.cache`: an HTTP response cache in front of the router, with its
//! storage named by `typed_config` — Envoy's `SimpleHttpCacheConfig` or Sluice's own
//! bounded `MemoryHttpCacheConfig` (`proto/sluice/extensions/http/cache/memory/v1`).

use crate::error::{Result, ValidationError};
use crate::pb::envoy::extensions::filters::http::cache::v3 as pb;
use crate::route::{QueryParameterMatcher, StringMatcher};
use crate::type_urls;

/// The generated types of `memory.proto`.
pub mod memory_pb {
    include!(concat!(
        env!("OUT_DIR"),
        "/sluice.extensions.http.cache.memory.v1.rs"
    ));
}

/// The bound of a store configured without one (and of Envoy's `SimpleHttpCacheConfig`,
/// which has none: an unbounded cache is a memory leak under a crawl of distinct URLs).
pub const DEFAULT_MAX_SIZE_BYTES: u64 = 64 * 1024 * 1024;

/// A validated cache filter config.
#[derive(Debug, Clone)]
pub struct Cache {
    /// `disabled: true`: the filter passes every request through.
    pub disabled: bool,
    pub store: Store,
    /// A response whose `Vary` names a header no matcher allows is not stored.
    pub allowed_vary_headers: Vec<StringMatcher>,
    pub key: KeyParams,
    /// Bodies larger than this are not stored (0: only the store's bound limits them).
    pub max_body_bytes: u32,
    /// Requests' `Cache-Control` / `Pragma` are ignored (a client cannot force a
    /// revalidation or skip the cache).
    pub ignore_request_cache_control_header: bool,
}

/// The storage: one in-memory LRU per filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Store {
    pub max_size_bytes: u64,
    pub store_responses_with_set_cookie: bool,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            max_size_bytes: DEFAULT_MAX_SIZE_BYTES,
            store_responses_with_set_cookie: false,
        }
    }
}

/// What the cache key is made of besides the path.
#[derive(Debug, Clone, Default)]
pub struct KeyParams {
    pub exclude_scheme: bool,
    pub exclude_host: bool,
    /// When not empty, only query parameters matching one of these are in the key.
    pub query_parameters_included: Vec<QueryParameterMatcher>,
    /// Query parameters matching one of these are left out of the key.
    pub query_parameters_excluded: Vec<QueryParameterMatcher>,
}

impl KeyParams {
    /// The query as the key sees it: filtered by the include and exclude lists, in the
    /// request's order.
    pub fn key_query(&self, query: &str) -> String {
        if self.query_parameters_included.is_empty() && self.query_parameters_excluded.is_empty() {
            return query.to_string();
        }
        crate::route::query_pairs(query)
            .filter(|(k, v)| {
                (self.query_parameters_included.is_empty()
                    || self
                        .query_parameters_included
                        .iter()
                        .any(|m| m.matches_pair(k, v)))
                    && !self
                        .query_parameters_excluded
                        .iter()
                        .any(|m| m.matches_pair(k, v))
            })
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }
}

impl TryFrom<&pb::CacheConfig> for Cache {
    type Error = ValidationError;

    fn try_from(c: &pb::CacheConfig) -> Result<Self> {
        let disabled = c.disabled.as_ref().is_some_and(|d| d.value);
        let store = match c.typed_config.as_ref() {
            None if disabled => Store::default(),
            None => return Err(ValidationError::required("typed_config")),
            Some(any) => match any.type_url.as_str() {
                type_urls::SIMPLE_HTTP_CACHE => Store::default(),
                type_urls::MEMORY_HTTP_CACHE => {
                    let m: memory_pb::MemoryHttpCacheConfig = crate::util::unpack_any(
                        any,
                        type_urls::MEMORY_HTTP_CACHE,
                        "typed_config",
                    )?;
                    Store {
                        max_size_bytes: if m.max_size_bytes == 0 {
                            DEFAULT_MAX_SIZE_BYTES
                        } else {
                            m.max_size_bytes
                        },
                        store_responses_with_set_cookie: m.store_responses_with_set_cookie,
                    }
                }
                other => {
                    return Err(ValidationError::new(
                        "typed_config",
                        format!(
                            "cache storage {} is not supported by sluice (use SimpleHttpCacheConfig or sluice.extensions.http.cache.memory.v1.MemoryHttpCacheConfig)",
                            type_urls::message_name(other)
                        ),
                    ))
                }
            },
        };
        let allowed_vary_headers = c
            .allowed_vary_headers
            .iter()
            .enumerate()
            .map(|(i, m)| {
                crate::route::string_matcher(m)
                    .map_err(|e| e.within(format!("allowed_vary_headers[{i}]")))
            })
            .collect::<Result<_>>()?;
        let key = match c.key_creator_params.as_ref() {
            None => KeyParams::default(),
            Some(k) => {
                let matchers =
                    |list: &[crate::pb::envoy::config::route::v3::QueryParameterMatcher],
                     field: &str| {
                        list.iter()
                            .enumerate()
                            .map(|(i, q)| {
                                crate::route::query_matcher(q).map_err(|e| {
                                    e.within(format!("key_creator_params.{field}[{i}]"))
                                })
                            })
                            .collect::<Result<Vec<_>>>()
                    };
                KeyParams {
                    exclude_scheme: k.exclude_scheme,
                    exclude_host: k.exclude_host,
                    query_parameters_included: matchers(
                        &k.query_parameters_included,
                        "query_parameters_included",
                    )?,
                    query_parameters_excluded: matchers(
                        &k.query_parameters_excluded,
                        "query_parameters_excluded",
                    )?,
                }
            }
        };
        Ok(Self {
            disabled,
            store,
            allowed_vary_headers,
            key,
            max_body_bytes: c.max_body_bytes,
            ignore_request_cache_control_header: c.ignore_request_cache_control_header,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn any(url: &str, bytes: Vec<u8>) -> crate::pb::google::protobuf::Any {
        crate::pb::google::protobuf::Any {
            type_url: url.to_string(),
            value: bytes,
        }
    }

    #[test]
    fn storage_is_required_and_known() {
        let mut c = pb::CacheConfig::default();
        assert_eq!(
            Cache::try_from(&c).unwrap_err().path,
            "typed_config",
            "no storage"
        );
        c.typed_config = Some(any(
            "type.googleapis.com/envoy.extensions.http.cache.file_system_http_cache.v3.FileSystemHttpCacheConfig",
            vec![],
        ));
        let e = Cache::try_from(&c).unwrap_err();
        assert!(e.to_string().contains("FileSystemHttpCacheConfig"), "{e}");
        let m = memory_pb::MemoryHttpCacheConfig {
            max_size_bytes: 1000,
            store_responses_with_set_cookie: true,
        };
        c.typed_config = Some(any(type_urls::MEMORY_HTTP_CACHE, m.encode_to_vec()));
        let cache = Cache::try_from(&c).unwrap();
        assert_eq!(cache.store.max_size_bytes, 1000);
        assert!(cache.store.store_responses_with_set_cookie);
        c.typed_config = Some(any(type_urls::SIMPLE_HTTP_CACHE, vec![]));
        assert_eq!(
            Cache::try_from(&c).unwrap().store.max_size_bytes,
            DEFAULT_MAX_SIZE_BYTES
        );
    }

    #[test]
    fn the_key_query_keeps_included_and_drops_excluded_parameters() {
        let matcher = |name: &str| QueryParameterMatcher {
            name: name.to_string(),
            value: None,
        };
        let mut k = KeyParams::default();
        assert_eq!(k.key_query("b=2&a=1"), "b=2&a=1");
        k.query_parameters_excluded = vec![matcher("utm")];
        assert_eq!(k.key_query("a=1&utm=x&b=2"), "a=1&b=2");
        k.query_parameters_included = vec![matcher("a")];
        assert_eq!(k.key_query("a=1&utm=x&b=2"), "a=1");
    }
}
