//! `envoy.extensions.filters.http.basic_auth.v3.BasicAuth`: users from an htpasswd file
//! with SHA-1 hashes (`user:{SHA}base64`), the only format Envoy accepts.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{Result, ValidationError};
use crate::pb::envoy::config::core::v3::DataSource;
use crate::pb::envoy::extensions::filters::http::basic_auth::v3 as pb;
use crate::route::data_source;

/// Username → base64 of the SHA-1 of the password, as in the htpasswd file.
pub type Users = Arc<BTreeMap<String, String>>;

/// The validated filter config.
#[derive(Debug, Clone)]
pub struct BasicAuth {
    pub users: Users,
    /// Request header that carries the authenticated username upstream.
    pub forward_username_header: Option<http::HeaderName>,
    /// Header read instead of `Authorization`.
    pub authentication_header: Option<http::HeaderName>,
}

/// Parses htpasswd lines; a password hash in any format but `{SHA}` is refused.
pub fn users(source: &DataSource) -> Result<Users> {
    let text = data_source(source)?;
    let text = String::from_utf8(text).map_err(|_| ValidationError::new("", "not UTF-8"))?;
    let mut users = BTreeMap::new();
    for (i, line) in text.lines().map(str::trim).enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, hash) = line.split_once(':').ok_or_else(|| {
            ValidationError::new("", format!("line {}: expected user:hash", i + 1))
        })?;
        let hash = hash.strip_prefix("{SHA}").ok_or_else(|| {
            ValidationError::new(
                "",
                format!(
                    "line {}: unsupported htpasswd format: please use {{SHA}}",
                    i + 1
                ),
            )
        })?;
        if name.is_empty() {
            return Err(ValidationError::new(
                "",
                format!("line {}: empty user name", i + 1),
            ));
        }
        if users.insert(name.to_string(), hash.to_string()).is_some() {
            return Err(ValidationError::new(
                "",
                format!("line {}: user {name:?} appears twice", i + 1),
            ));
        }
    }
    if users.is_empty() {
        return Err(ValidationError::new("", "no users"));
    }
    Ok(Arc::new(users))
}

fn header(name: &str, field: &str) -> Result<Option<http::HeaderName>> {
    if name.is_empty() {
        return Ok(None);
    }
    http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map(Some)
        .map_err(|_| ValidationError::new(field, "not a valid header name"))
}

impl TryFrom<&pb::BasicAuth> for BasicAuth {
    type Error = ValidationError;

    fn try_from(c: &pb::BasicAuth) -> Result<Self> {
        let users = c
            .users
            .as_ref()
            .ok_or_else(|| ValidationError::required("users"))
            .and_then(|u| users(u).map_err(|e| e.within("users")))?;
        Ok(Self {
            users,
            forward_username_header: header(&c.forward_username_header, "forward_username_header")?,
            authentication_header: header(&c.authentication_header, "authentication_header")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::envoy::config::core::v3::data_source::Specifier;

    fn source(s: &str) -> DataSource {
        DataSource {
            specifier: Some(Specifier::InlineString(s.into())),
            ..Default::default()
        }
    }

    #[test]
    fn htpasswd_sha_lines_parse_and_other_formats_are_refused() {
        let u = users(&source(
            "alice:{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M=\n# c\n\nbob:{SHA}x\n",
        ))
        .unwrap();
        assert_eq!(u.len(), 2);
        assert!(users(&source("alice:$apr1$abc$def"))
            .unwrap_err()
            .message
            .contains("{SHA}"));
        assert!(users(&source("")).is_err());
        assert!(users(&source("a:{SHA}x\na:{SHA}y")).is_err());
    }
}
