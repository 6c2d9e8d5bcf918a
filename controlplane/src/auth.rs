//! Operator API credentials: bearer tokens (`authorization: Bearer <token>`), each allowed
//! to read (get, diff, validate, history, nodes) or to write as well (apply, delete,
//! rollback), each with a name that history records as a revision's author. Tokens are
//! kept only as SHA-256 digests and never logged.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;
use tonic::Status;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Read,
    Write,
}

/// Why the credentials could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: expected `read TOKEN [NAME]` or `write TOKEN [NAME]`")]
    Syntax { path: PathBuf, line: usize },
    #[error("{path}: no tokens")]
    Empty { path: PathBuf },
}

/// The accepted tokens.
#[derive(Debug, Clone)]
pub struct Tokens {
    accepted: Vec<Accepted>,
}

/// One accepted token.
#[derive(Debug, Clone)]
struct Accepted {
    digest: [u8; 32],
    access: Access,
    /// What history shows as the author of a change made with it.
    name: String,
}

/// Name of the token file `sluice-cp` creates in its store directory when no tokens file
/// is given.
pub const GENERATED_TOKEN_FILE: &str = "admin-token";

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Reads a tokens file: one `read TOKEN [NAME]` or `write TOKEN [NAME]` per line; `#`
    /// comments. A token without a name is named by its digest's first 8 hex digits
    /// (`token:1a2b3c4d`), which identifies it without revealing it.
    pub fn from_file(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut accepted = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = || AuthError::Syntax {
                path: path.to_path_buf(),
                line: i + 1,
            };
            let words: Vec<&str> = line.split_whitespace().collect();
            let (role, token, name) = match words[..] {
                [role, token] => (role, token, None),
                [role, token, name] => (role, token, Some(name)),
                _ => return Err(syntax()),
            };
            let access = match role {
                "read" => Access::Read,
                "write" => Access::Write,
                _ => return Err(syntax()),
            };
            let digest = digest(token);
            let name = name.map_or_else(|| anonymous_name(&digest), str::to_string);
            accepted.push(Accepted {
                digest,
                access,
                name,
            });
        }
        if accepted.is_empty() {
            return Err(AuthError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Self { accepted })
    }

    /// The write token kept in `dir/admin-token`, created (random, mode 0600) on first use,
    /// so the API is never open even when the operator configured no tokens.
    pub fn generated(dir: &Path) -> Result<(Self, PathBuf), AuthError> {
        let path = dir.join(GENERATED_TOKEN_FILE);
        let io = |source| AuthError::Io {
            path: path.clone(),
            source,
        };
        let token = match std::fs::read_to_string(&path) {
            Ok(existing) => existing.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(io)?;
                let token = random_token();
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io)?;
                writeln!(file, "{token}").map_err(io)?;
                token
            }
            Err(e) => return Err(io(e)),
        };
        Ok((
            Self {
                accepted: vec![Accepted {
                    digest: digest(&token),
                    access: Access::Write,
                    name: GENERATED_TOKEN_FILE.to_string(),
                }],
            },
            path,
        ))
    }

    /// Checks the request's bearer token grants `needed` for `method`; returns the token's
    /// name.
    pub fn check(
        &self,
        metadata: &MetadataMap,
        needed: Access,
        method: &str,
    ) -> Result<&str, Status> {
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "a token is required (sluicectl --token, SLUICE_TOKEN or SLUICE_TOKEN_FILE)",
                )
            })?;
        let presented = digest(token.trim());
        let accepted = self
            .accepted
            .iter()
            .filter(|a| a.digest == presented)
            .max_by_key(|a| a.access)
            .ok_or_else(|| Status::unauthenticated("unknown token"))?;
        if accepted.access < needed {
            return Err(Status::permission_denied(format!(
                "{method} needs a write token; this token may only read"
            )));
        }
        Ok(&accepted.name)
    }
}

/// `token:` and the digest's first 8 hex digits.
fn anonymous_name(digest: &[u8; 32]) -> String {
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("token:{hex}")
}

/// 32 random bytes (from rand's cryptographically secure thread generator), hex-encoded.
fn random_token() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(token: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(t) = token {
            m.insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        m
    }

    #[test]
    fn read_tokens_read_and_write_tokens_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# operators\nread r-token\nwrite w-token ci\n").unwrap();
        let tokens = Tokens::from_file(&path).unwrap();
        let reader = tokens
            .check(&metadata(Some("r-token")), Access::Read, "Get")
            .unwrap();
        assert_eq!(reader, anonymous_name(&digest("r-token")));
        assert!(!reader.contains("r-token"));
        let denied = tokens
            .check(&metadata(Some("r-token")), Access::Write, "Apply")
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            tokens
                .check(&metadata(Some("w-token")), Access::Write, "Apply")
                .unwrap(),
            "ci"
        );
        for bad in [None, Some("guess")] {
            let refused = tokens
                .check(&metadata(bad), Access::Read, "Get")
                .unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        }
    }

    #[test]
    fn a_generated_token_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (_, path) = Tokens::generated(dir.path()).unwrap();
        let token = std::fs::read_to_string(&path).unwrap();
        assert_eq!(token.trim().len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, _) = Tokens::generated(dir.path()).unwrap();
        assert!(again
            .check(&metadata(Some(token.trim())), Access::Write, "Apply")
            .is_ok());
    }

    #[test]
    fn a_malformed_tokens_file_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        for bad in ["read ok\nadmin nope\n", "read ok\nwrite a b c\n"] {
            std::fs::write(&path, bad).unwrap();
            let err = Tokens::from_file(&path).unwrap_err().to_string();
            assert!(
                err.ends_with("tokens:2: expected `read TOKEN [NAME]` or `write TOKEN [NAME]`"),
                "{err}"
            );
        }
    }
}
