//! `envoy.filters.http.header_mutation`: ordered header edits on the request and on the
//! response, the listener's first, then every level's per-route edits (least specific
//! last, unless `most_specific_header_mutations_wins`).

use http::request::Parts;
use http::HeaderMap;
use xds_types::http_filter::header_mutation::{Mutation, Mutations};
use xds_types::http_filter::HeaderMutationConfig;

use crate::http::ctx::RequestCtx;
use crate::http::filter::{Decision, HttpFilter, PerRoute};

/// The filter.
pub struct HeaderMutationFilter {
    config: HeaderMutationConfig,
}

impl HeaderMutationFilter {
    pub fn new(config: &HeaderMutationConfig) -> Self {
        Self {
            config: config.clone(),
        }
    }

    /// The listener's edits, then the routes', in the configured order.
    fn each<'a>(&'a self, ctx: &RequestCtx<'a>) -> Vec<&'a Mutations> {
        let mut levels: Vec<&Mutations> = ctx
            .overrides_of(|p| match p {
                PerRoute::HeaderMutation(m) => Some(&**m),
                _ => None,
            })
            .collect();
        if self.config.most_specific_wins {
            levels.reverse();
        }
        std::iter::once(&self.config.mutations)
            .chain(levels)
            .collect()
    }
}

fn apply(headers: &mut HeaderMap, mutations: &[Mutation]) {
    for m in mutations {
        match m {
            Mutation::Remove(name) => {
                headers.remove(name);
            }
            Mutation::Append(add) => crate::proxy::apply_addition(headers, add),
            Mutation::RemoveOnMatch(matcher) => {
                let names: Vec<_> = headers
                    .keys()
                    .filter(|n| matcher.matches(n.as_str()))
                    .cloned()
                    .collect();
                for name in names {
                    headers.remove(name);
                }
            }
        }
    }
}

impl HttpFilter for HeaderMutationFilter {
    fn on_request(
        &self,
        ctx: &mut RequestCtx<'_>,
        _per_route: Option<&PerRoute>,
        request: &mut Parts,
    ) -> Decision {
        for m in self.each(ctx) {
            apply(&mut request.headers, &m.request);
        }
        Decision::Continue
    }

    fn on_response(
        &self,
        ctx: &mut RequestCtx<'_>,
        _per_route: Option<&PerRoute>,
        response: &mut http::response::Parts,
        _end_stream: bool,
    ) {
        for m in self.each(ctx) {
            apply(&mut response.headers, &m.response);
        }
    }
}
