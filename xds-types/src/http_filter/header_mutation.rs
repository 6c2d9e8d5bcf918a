//! `envoy.extensions.filters.http.header_mutation.v3.HeaderMutation`: ordered request and
//! response header edits, on the listener and per route.

use crate::error::{Result, ValidationError};
use crate::pb::envoy::config::common::mutation_rules::v3 as rules;
use crate::pb::envoy::extensions::filters::http::header_mutation::v3 as pb;
use crate::route::{header_addition, string_matcher, HeaderAddition, StringMatcher};

/// One edit, applied in order.
#[derive(Debug, Clone)]
pub enum Mutation {
    Remove(http::HeaderName),
    Append(HeaderAddition),
    /// Removes every header whose name matches.
    RemoveOnMatch(StringMatcher),
}

/// The request and response edits of one config.
#[derive(Debug, Clone, Default)]
pub struct Mutations {
    pub request: Vec<Mutation>,
    pub response: Vec<Mutation>,
}

/// The validated filter config.
#[derive(Debug, Clone, Default)]
pub struct HeaderMutationConfig {
    pub mutations: Mutations,
    /// Per-route edits apply least specific last (false, Envoy's default) or most
    /// specific last (true).
    pub most_specific_wins: bool,
}

fn mutation(m: &rules::HeaderMutation) -> Result<Mutation> {
    use rules::header_mutation::Action;
    Ok(match m.action.as_ref() {
        Some(Action::Remove(name)) => Mutation::Remove(
            http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map_err(|_| ValidationError::new("remove", "not a valid header name"))?,
        ),
        Some(Action::Append(o)) => {
            Mutation::Append(header_addition(o).map_err(|e| e.within("append"))?)
        }
        Some(Action::RemoveOnMatch(r)) => Mutation::RemoveOnMatch(
            r.key_matcher
                .as_ref()
                .ok_or_else(|| ValidationError::required("remove_on_match.key_matcher"))
                .and_then(|m| {
                    string_matcher(m).map_err(|e| e.within("remove_on_match.key_matcher"))
                })?,
        ),
        None => return Err(ValidationError::required("action")),
    })
}

fn list(items: &[rules::HeaderMutation], field: &str) -> Result<Vec<Mutation>> {
    items
        .iter()
        .enumerate()
        .map(|(i, m)| mutation(m).map_err(|e| e.within(format!("{field}[{i}]"))))
        .collect()
}

impl TryFrom<&pb::Mutations> for Mutations {
    type Error = ValidationError;

    fn try_from(m: &pb::Mutations) -> Result<Self> {
        for (set, field) in [
            (
                !m.query_parameter_mutations.is_empty(),
                "query_parameter_mutations",
            ),
            (
                !m.response_trailers_mutations.is_empty(),
                "response_trailers_mutations",
            ),
            (
                !m.request_trailers_mutations.is_empty(),
                "request_trailers_mutations",
            ),
        ] {
            if set {
                return Err(ValidationError::unsupported(field));
            }
        }
        Ok(Self {
            request: list(&m.request_mutations, "request_mutations")?,
            response: list(&m.response_mutations, "response_mutations")?,
        })
    }
}

impl TryFrom<&pb::HeaderMutation> for HeaderMutationConfig {
    type Error = ValidationError;

    fn try_from(c: &pb::HeaderMutation) -> Result<Self> {
        Ok(Self {
            mutations: c
                .mutations
                .as_ref()
                .map(|m| Mutations::try_from(m).map_err(|e| e.within("mutations")))
                .transpose()?
                .unwrap_or_default(),
            most_specific_wins: c.most_specific_header_mutations_wins,
        })
    }
}

impl TryFrom<&pb::HeaderMutationPerRoute> for Mutations {
    type Error = ValidationError;

    fn try_from(c: &pb::HeaderMutationPerRoute) -> Result<Self> {
        c.mutations
            .as_ref()
            .map(|m| Mutations::try_from(m).map_err(|e| e.within("mutations")))
            .transpose()
            .map(Option::unwrap_or_default)
    }
}
