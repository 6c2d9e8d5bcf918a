//! Sluice's static file server (`proto/sluice/extensions/filters/http/file_server/v1`): a
//! terminal HTTP filter that answers from files under a root directory.
//!
//! The root is not checked here: a control plane validates configs for nodes whose disks
//! it cannot see. A node without the directory answers 404 and says so in its log.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::{Result, ValidationError};

/// The generated types of `file_server.proto`.
pub mod pb {
    include!(concat!(
        env!("OUT_DIR"),
        "/sluice.extensions.filters.http.file_server.v1.rs"
    ));
}

/// A validated file server config.
#[derive(Debug, Clone, PartialEq)]
pub struct FileServer {
    pub root: PathBuf,
    /// Tried in order for a directory.
    pub index_files: Vec<String>,
    /// Extension (lower case, no dot) → content type, over the built-in table.
    pub mime_types: BTreeMap<String, String>,
    pub default_mime_type: String,
    /// Taken off the request path before it is resolved.
    pub strip_prefix: String,
}

impl TryFrom<&pb::FileServer> for FileServer {
    type Error = ValidationError;

    fn try_from(f: &pb::FileServer) -> Result<Self> {
        if f.root.is_empty() {
            return Err(ValidationError::required("root"));
        }
        for (i, name) in f.index_files.iter().enumerate() {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(ValidationError::new(
                    format!("index_files[{i}]"),
                    "must be a file name, without slashes",
                ));
            }
        }
        let mime_types = f
            .mime_types
            .iter()
            .map(|(ext, mime)| {
                if http::HeaderValue::from_str(mime).is_err() || mime.is_empty() {
                    return Err(ValidationError::new(
                        format!("mime_types[{ext:?}]"),
                        "must be a valid content type",
                    ));
                }
                Ok((
                    ext.trim_start_matches('.').to_ascii_lowercase(),
                    mime.clone(),
                ))
            })
            .collect::<Result<_>>()?;
        if !f.default_mime_type.is_empty()
            && http::HeaderValue::from_str(&f.default_mime_type).is_err()
        {
            return Err(ValidationError::new(
                "default_mime_type",
                "must be a valid content type",
            ));
        }
        Ok(Self {
            root: PathBuf::from(&f.root),
            index_files: if f.index_files.is_empty() {
                vec!["index.html".to_string()]
            } else {
                f.index_files.clone()
            },
            mime_types,
            default_mime_type: if f.default_mime_type.is_empty() {
                "application/octet-stream".to_string()
            } else {
                f.default_mime_type.clone()
            },
            strip_prefix: f.strip_prefix.clone(),
        })
    }
}

impl TryFrom<&pb::FileServerPerRoute> for FileServer {
    type Error = ValidationError;

    fn try_from(p: &pb::FileServerPerRoute) -> Result<Self> {
        let f = p
            .file_server
            .as_ref()
            .ok_or_else(|| ValidationError::required("file_server"))?;
        FileServer::try_from(f).map_err(|e| e.within("file_server"))
    }
}
