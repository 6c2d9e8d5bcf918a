//! Validated `Secret`: a TLS certificate chain and its private key, as SDS delivers them.
//! The key's bytes never appear in `Debug` output.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Result, ValidationError};
use crate::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use crate::pb::envoy::extensions::transport_sockets::tls::v3 as pb;

/// A named TLS certificate: PEM chain (leaf first) and PEM private key.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsCertificate {
    pub name: String,
    pub certificate_chain: Vec<u8>,
    pub private_key: Vec<u8>,
}

impl std::fmt::Debug for TlsCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCertificate")
            .field("name", &self.name)
            .field("private_key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl TryFrom<&pb::Secret> for TlsCertificate {
    type Error = ValidationError;

    fn try_from(s: &pb::Secret) -> Result<Self> {
        if s.name.is_empty() {
            return Err(ValidationError::required("name"));
        }
        let Some(pb::secret::Type::TlsCertificate(tls)) = s.r#type.as_ref() else {
            return Err(ValidationError::required("tls_certificate"));
        };
        let certificate_chain = inline(
            tls.certificate_chain.as_ref(),
            "tls_certificate.certificate_chain",
        )?;
        let certificates = CertificateDer::pem_slice_iter(&certificate_chain)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| {
                ValidationError::new("tls_certificate.certificate_chain", format!("not PEM: {e}"))
            })?;
        if certificates.is_empty() {
            return Err(ValidationError::new(
                "tls_certificate.certificate_chain",
                "no PEM certificate",
            ));
        }
        let private_key = inline(tls.private_key.as_ref(), "tls_certificate.private_key")?;
        PrivateKeyDer::from_pem_slice(&private_key).map_err(|_| {
            // Never echo the value: it may be a key.
            ValidationError::new(
                "tls_certificate.private_key",
                "not a PEM private key (keys read back from sluice-cp are redacted; apply the original)",
            )
        })?;
        Ok(Self {
            name: s.name.clone(),
            certificate_chain,
            private_key,
        })
    }
}

/// The bytes of an inline `DataSource` (files would not travel with the resource).
fn inline(source: Option<&DataSource>, path: &str) -> Result<Vec<u8>> {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::InlineString(s)) => Ok(s.clone().into_bytes()),
        Some(Specifier::InlineBytes(b)) => Ok(b.clone()),
        Some(_) => Err(ValidationError::new(
            path,
            "only inline_string and inline_bytes are supported",
        )),
        None => Err(ValidationError::required(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(chain: &str, key: &str) -> Result<TlsCertificate> {
        let json = serde_json::json!({
            "name": "server",
            "tls_certificate": {
                "certificate_chain": { "inline_string": chain },
                "private_key": { "inline_string": key }
            }
        });
        let pb: pb::Secret = crate::decode::from_json_value(
            json,
            "envoy.extensions.transport_sockets.tls.v3.Secret",
        )?;
        TlsCertificate::try_from(&pb)
    }

    #[test]
    fn a_generated_certificate_is_accepted_and_its_key_never_printed() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["example.com".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let tls = secret(&cert.pem(), &key.serialize_pem()).unwrap();
        let shown = format!("{tls:?}");
        assert!(
            shown.contains("[redacted]") && !shown.contains("PRIVATE KEY"),
            "{shown}"
        );
    }

    #[test]
    fn a_redacted_or_broken_key_is_refused_without_echoing_it() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["example.com".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let err = secret(&cert.pem(), "[redacted]").unwrap_err();
        assert_eq!(err.path, "tls_certificate.private_key");
        assert!(!err.to_string().contains("[redacted]\""), "{err}");
        let err = secret("not a certificate", &key.serialize_pem()).unwrap_err();
        assert_eq!(err.path, "tls_certificate.certificate_chain");
    }
}
