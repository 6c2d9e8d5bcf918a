//! Validated `Secret`, as SDS delivers it (or `static_resources.secrets` holds it): a TLS
//! certificate chain with its private key, or a validation context (trusted CAs). The
//! key's bytes never appear in `Debug` output or errors.

use crate::error::{Result, ValidationError};
use crate::pb::envoy::extensions::transport_sockets::tls::v3 as pb;
use crate::tls::{certificate_pair, validation_context, CertificatePair, ValidationContext};

/// A named secret.
#[derive(Debug, Clone)]
pub struct Secret {
    pub name: String,
    pub value: SecretValue,
}

/// What a secret holds.
#[derive(Debug, Clone)]
pub enum SecretValue {
    /// A certificate chain and key (a listener's certificate, a cluster's client
    /// certificate).
    TlsCertificate(CertificatePair),
    /// Trusted CAs and SAN matchers for verifying peers.
    ValidationContext(ValidationContext),
}

impl TryFrom<&pb::Secret> for Secret {
    type Error = ValidationError;

    fn try_from(s: &pb::Secret) -> Result<Self> {
        if s.name.is_empty() {
            return Err(ValidationError::required("name"));
        }
        let value = match s.r#type.as_ref() {
            Some(pb::secret::Type::TlsCertificate(tls)) => SecretValue::TlsCertificate(
                certificate_pair(tls).map_err(|e| e.within("tls_certificate"))?,
            ),
            Some(pb::secret::Type::ValidationContext(v)) => SecretValue::ValidationContext(
                validation_context(v).map_err(|e| e.within("validation_context"))?,
            ),
            Some(_) => {
                return Err(ValidationError::new(
                    "",
                    "only tls_certificate and validation_context secrets are supported",
                ))
            }
            None => return Err(ValidationError::required("tls_certificate")),
        };
        Ok(Self {
            name: s.name.clone(),
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(chain: &str, key: &str) -> Result<Secret> {
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
        Secret::try_from(&pb)
    }

    fn generated() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["example.com".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_generated_certificate_is_accepted_and_its_key_never_printed() {
        let (chain, key) = generated();
        let tls = secret(&chain, &key).unwrap();
        let shown = format!("{tls:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    }

    #[test]
    fn a_redacted_or_broken_key_is_refused_without_echoing_it() {
        let (chain, key) = generated();
        let err = secret(&chain, "[redacted]").unwrap_err();
        assert_eq!(err.path, "tls_certificate.private_key");
        assert!(!err.to_string().contains("[redacted]\""), "{err}");
        let err = secret("not a certificate", &key).unwrap_err();
        assert_eq!(err.path, "tls_certificate.certificate_chain");
    }
}
