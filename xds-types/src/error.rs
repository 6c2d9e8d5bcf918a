//! Validation errors. Each one names the field path (`virtual_hosts[0].routes[3].match`),
//! because it becomes a NACK `error_detail`, a dry-run error in the control plane, or the
//! message a bad bootstrap exits with — and an operator must find the field from it alone.

use std::fmt;

/// A resource, or part of one, that Sluice refuses. `path` is relative to the resource
/// being converted; callers prefix it with [`ValidationError::within`] as the error climbs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// Dotted proto field path, with `[i]` for repeated fields; empty for the whole resource.
    pub path: String,
    /// What is wrong, lowercase, without the path.
    pub message: String,
}

impl ValidationError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }

    /// A field Sluice does not implement and would change behaviour if ignored.
    pub fn unsupported(path: impl Into<String>) -> Self {
        Self::new(path, "field is not supported by sluice")
    }

    /// A required field that is missing or empty.
    pub fn required(path: impl Into<String>) -> Self {
        Self::new(path, "field is required")
    }

    /// Prefixes the path with the parent field (`parent.path`).
    #[must_use]
    pub fn within(mut self, parent: impl AsRef<str>) -> Self {
        let parent = parent.as_ref();
        self.path = match (parent.is_empty(), self.path.is_empty()) {
            (true, _) => self.path,
            (false, true) => parent.to_string(),
            (false, false) if self.path.starts_with('[') => format!("{parent}{}", self.path),
            (false, false) => format!("{parent}.{}", self.path),
        };
        self
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Shorthand for conversions in this crate.
pub type Result<T, E = ValidationError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_builds_nested_paths() {
        let e = ValidationError::required("cluster")
            .within("route")
            .within("routes[2]")
            .within("virtual_hosts[0]");
        assert_eq!(
            e.to_string(),
            "virtual_hosts[0].routes[2].route.cluster: field is required"
        );
    }
}
