//! `envoy.extensions.filters.http.rbac.v3.RBAC`: enforced and shadow policies of
//! permissions (what is asked) and principals (who asks), each an and/or/not tree.

use std::collections::BTreeMap;

use crate::error::{Result, ValidationError};
use crate::filter_chain::{cidr, CidrRange};
use crate::pb::envoy::config::rbac::v3 as pb;
use crate::pb::envoy::extensions::filters::http::rbac::v3 as filter_pb;
use crate::route::{string_matcher, HeaderMatcher, StringMatcher};

/// What a matching policy means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Requests no policy matches are denied.
    Allow,
    /// Requests a policy matches are denied.
    Deny,
    /// Every request is allowed; matches are only counted.
    Log,
}

/// One set of policies.
#[derive(Debug, Clone)]
pub struct Rules {
    pub action: Action,
    /// By name, in name order (Envoy reports the first matching name).
    pub policies: BTreeMap<String, Policy>,
}

/// Matches when any permission and any principal match.
#[derive(Debug, Clone)]
pub struct Policy {
    pub permissions: Vec<Permission>,
    pub principals: Vec<Principal>,
}

/// What the request asks for.
#[derive(Debug, Clone)]
pub enum Permission {
    Any,
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    Header(HeaderMatcher),
    /// The path without its query.
    UrlPath(StringMatcher),
    DestinationIp(CidrRange),
    DestinationPort(u16),
    /// `[start, end)`.
    DestinationPortRange(u16, u16),
    RequestedServerName(StringMatcher),
}

/// Who asks.
#[derive(Debug, Clone)]
pub enum Principal {
    Any,
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
    /// A verified client certificate; with a matcher, on its URI SAN, DNS SAN or subject.
    Authenticated(Option<StringMatcher>),
    /// The connection's peer (or the PROXY protocol source).
    DirectRemoteIp(CidrRange),
    /// The client address after `x-forwarded-for` processing.
    RemoteIp(CidrRange),
    Header(HeaderMatcher),
    UrlPath(StringMatcher),
}

/// The validated filter config.
#[derive(Debug, Clone)]
pub struct Rbac {
    /// `None`: nothing is enforced.
    pub rules: Option<Rules>,
    pub rules_stat_prefix: String,
    pub shadow_rules: Option<Rules>,
    pub shadow_rules_stat_prefix: String,
}

impl TryFrom<&filter_pb::Rbac> for Rbac {
    type Error = ValidationError;

    fn try_from(c: &filter_pb::Rbac) -> Result<Self> {
        if c.matcher.is_some() || c.shadow_matcher.is_some() {
            return Err(ValidationError::new(
                "matcher",
                "matcher-based RBAC is not supported; use rules",
            ));
        }
        Ok(Self {
            rules: c
                .rules
                .as_ref()
                .map(|r| rules(r).map_err(|e| e.within("rules")))
                .transpose()?,
            rules_stat_prefix: c.rules_stat_prefix.clone(),
            shadow_rules: c
                .shadow_rules
                .as_ref()
                .map(|r| rules(r).map_err(|e| e.within("shadow_rules")))
                .transpose()?,
            shadow_rules_stat_prefix: c.shadow_rules_stat_prefix.clone(),
        })
    }
}

fn rules(r: &pb::Rbac) -> Result<Rules> {
    let action = match pb::rbac::Action::try_from(r.action) {
        Ok(pb::rbac::Action::Allow) => Action::Allow,
        Ok(pb::rbac::Action::Deny) => Action::Deny,
        Ok(pb::rbac::Action::Log) => Action::Log,
        Err(_) => return Err(ValidationError::new("action", "unknown value")),
    };
    let mut policies = BTreeMap::new();
    for (name, p) in &r.policies {
        let path = format!("policies[{name:?}]");
        if p.condition.is_some() || p.checked_condition.is_some() {
            return Err(ValidationError::new(
                format!("{path}.condition"),
                "CEL conditions are not supported",
            ));
        }
        if p.permissions.is_empty() {
            return Err(ValidationError::required(format!("{path}.permissions")));
        }
        if p.principals.is_empty() {
            return Err(ValidationError::required(format!("{path}.principals")));
        }
        let permissions = p
            .permissions
            .iter()
            .enumerate()
            .map(|(i, x)| permission(x).map_err(|e| e.within(format!("{path}.permissions[{i}]"))))
            .collect::<Result<_>>()?;
        let principals = p
            .principals
            .iter()
            .enumerate()
            .map(|(i, x)| principal(x).map_err(|e| e.within(format!("{path}.principals[{i}]"))))
            .collect::<Result<_>>()?;
        policies.insert(
            name.clone(),
            Policy {
                permissions,
                principals,
            },
        );
    }
    Ok(Rules { action, policies })
}

fn port(value: i64, field: &str) -> Result<u16> {
    u16::try_from(value).map_err(|_| ValidationError::new(field, "not a port"))
}

fn permission(p: &pb::Permission) -> Result<Permission> {
    use pb::permission::Rule as R;
    let set = |s: &pb::permission::Set, field: &str| -> Result<Vec<Permission>> {
        s.rules
            .iter()
            .enumerate()
            .map(|(i, r)| permission(r).map_err(|e| e.within(format!("{field}.rules[{i}]"))))
            .collect()
    };
    Ok(match p.rule.as_ref() {
        Some(R::Any(true)) => Permission::Any,
        Some(R::Any(false)) => return Err(ValidationError::new("any", "must be true")),
        Some(R::AndRules(s)) => Permission::And(set(s, "and_rules")?),
        Some(R::OrRules(s)) => Permission::Or(set(s, "or_rules")?),
        Some(R::NotRule(n)) => Permission::Not(Box::new(
            permission(n).map_err(|e| e.within("not_rule"))?,
        )),
        Some(R::Header(h)) => {
            Permission::Header(HeaderMatcher::try_from(h).map_err(|e| e.within("header"))?)
        }
        Some(R::UrlPath(m)) => Permission::UrlPath(path_matcher(m).map_err(|e| e.within("url_path"))?),
        Some(R::DestinationIp(r)) => Permission::DestinationIp(cidr(r, "destination_ip")?),
        Some(R::DestinationPort(p)) => {
            Permission::DestinationPort(port(i64::from(*p), "destination_port")?)
        }
        Some(R::DestinationPortRange(r)) => Permission::DestinationPortRange(
            port(i64::from(r.start), "destination_port_range.start")?,
            port(i64::from(r.end), "destination_port_range.end")?,
        ),
        Some(R::RequestedServerName(m)) => Permission::RequestedServerName(
            string_matcher(m).map_err(|e| e.within("requested_server_name"))?,
        ),
        Some(_) => {
            return Err(ValidationError::new(
                "rule",
                "only any, and_rules, or_rules, not_rule, header, url_path, destination_ip, destination_port, destination_port_range and requested_server_name are supported",
            ))
        }
        None => return Err(ValidationError::required("rule")),
    })
}

fn principal(p: &pb::Principal) -> Result<Principal> {
    use pb::principal::Identifier as I;
    let set = |s: &pb::principal::Set, field: &str| -> Result<Vec<Principal>> {
        s.ids
            .iter()
            .enumerate()
            .map(|(i, r)| principal(r).map_err(|e| e.within(format!("{field}.ids[{i}]"))))
            .collect()
    };
    Ok(match p.identifier.as_ref() {
        Some(I::Any(true)) => Principal::Any,
        Some(I::Any(false)) => return Err(ValidationError::new("any", "must be true")),
        Some(I::AndIds(s)) => Principal::And(set(s, "and_ids")?),
        Some(I::OrIds(s)) => Principal::Or(set(s, "or_ids")?),
        Some(I::NotId(n)) => {
            Principal::Not(Box::new(principal(n).map_err(|e| e.within("not_id"))?))
        }
        Some(I::Authenticated(a)) => Principal::Authenticated(
            a.principal_name
                .as_ref()
                .map(|m| string_matcher(m).map_err(|e| e.within("authenticated.principal_name")))
                .transpose()?,
        ),
        Some(I::SourceIp(r)) | Some(I::DirectRemoteIp(r)) => {
            Principal::DirectRemoteIp(cidr(r, "direct_remote_ip")?)
        }
        Some(I::RemoteIp(r)) => Principal::RemoteIp(cidr(r, "remote_ip")?),
        Some(I::Header(h)) => {
            Principal::Header(HeaderMatcher::try_from(h).map_err(|e| e.within("header"))?)
        }
        Some(I::UrlPath(m)) => Principal::UrlPath(path_matcher(m).map_err(|e| e.within("url_path"))?),
        Some(_) => {
            return Err(ValidationError::new(
                "identifier",
                "only any, and_ids, or_ids, not_id, authenticated, source_ip, direct_remote_ip, remote_ip, header and url_path are supported",
            ))
        }
        None => return Err(ValidationError::required("identifier")),
    })
}

fn path_matcher(m: &crate::pb::envoy::r#type::matcher::v3::PathMatcher) -> Result<StringMatcher> {
    use crate::pb::envoy::r#type::matcher::v3::path_matcher::Rule;
    match m.rule.as_ref() {
        Some(Rule::Path(s)) => string_matcher(s).map_err(|e| e.within("path")),
        None => Err(ValidationError::required("path")),
    }
}
